"""SASRec's scaled paths against the direct computation they replace: the loss over the
target positions only equals the mean cross-entropy over every position, and the batched,
device-side masked top-k equals a per-user stable argsort of the full logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flanrec.baselines import sasrec
from flanrec.data import splits, types


def short_split(seed: int = 0, n_users: int = 60, n_items: int = 40) -> types.Split:
    """Short sequences (3-9 items, like Amazon 5-core), so windows are mostly padding."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n_users):
        n = int(rng.integers(3, 10))
        s = [str(i + 1) for i in rng.choice(n_items, size=n, replace=False)]
        users.append(types.UserSequence(str(u + 1), s[:-2], s[-2], s[-1]))
    return types.Split(users=users, all_items=[str(i) for i in range(1, n_items + 1)])


def test_target_positions_pad_to_few_shapes_with_zero_weight():
    y = np.zeros((8, 10), np.int32)
    y[0, 7:] = [3, 4, 5]
    y[5, 9] = 2
    pos, tgt, w = sasrec.target_positions(y)
    assert len(pos) == 5 and len(pos) % (y.size // 16) == 0  # quantum 5: 4 targets -> 5
    assert pos[:4].tolist() == [7, 8, 9, 59] and tgt[:4].tolist() == [3, 4, 5, 2]
    assert w.tolist() == [1, 1, 1, 1, 0] and tgt[4] == 0
    assert len(sasrec.target_positions(np.zeros((8, 10), np.int32))[0]) == 5


def test_loss_over_target_positions_equals_the_full_loss():
    split = short_split()
    ids = sasrec.item_ids(split)
    xs, ys = sasrec.training_windows(split, ids, max_len=12)
    model = sasrec.SASRec(num_items=len(ids), hidden=16, max_len=12, dropout=0.3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12), jnp.int32))["params"]
    rng = jax.random.PRNGKey(7)
    x, y = xs[:32], ys[:32]
    # The direct loss: logits at every position, weighted by y > 0 (dropout keys identical).
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
    w = (y > 0).astype(np.float32)
    full = float(np.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)
                 / w.sum())
    fast = float(sasrec._loss_fn(model)(params, x, *sasrec.target_positions(y), rng))
    assert fast == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize("stage", ["validation", "test"])
def test_batched_topk_equals_per_user_argsort(stage: str):
    split = short_split(seed=1)
    ids = sasrec.item_ids(split)
    model = sasrec.SASRec(num_items=len(ids), hidden=16, max_len=12)
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 12), jnp.int32))["params"]
    # Round the embeddings so many logits tie: ties must keep catalogue order.
    params = jax.tree.map(lambda a: jnp.round(a * 2) / 2, params)
    examples = splits.eval_examples(split, stage)
    ranked, scores = sasrec.rank_queries(sasrec.make_scorer(model), params, examples, split,
                                         ids, 12, k=38, batch_size=16)  # 38 > unseen for some
    x = sasrec.query_inputs(examples, ids, 12)
    logits = np.asarray(model.apply({"params": params}, x,
                                    method=sasrec.SASRec.last_logits))[:, 1:]
    assert len(ranked) == len(examples)
    for r, ex in enumerate(examples):
        s = logits[r].astype(np.float64)
        s[[ids[i] - 1 for i in ex.seen]] = -np.inf
        top = np.argsort(-s, kind="stable")[:38]
        top = top[np.isfinite(s[top])]
        assert ranked[r] == [split.all_items[j] for j in top]
        assert scores[r] == pytest.approx(s[top].tolist(), rel=1e-5, abs=1e-6)  # other shapes
        assert not set(ranked[r]) & set(ex.seen)


def test_history_length_is_the_window_or_the_longest_input():
    split = short_split()  # at most 7 train items: inputs of at most 8 (+ validation item)
    assert sasrec.history_length(split) == max(len(u.train_items) for u in split.users) + 1
    assert sasrec.history_length(split) <= 8
    assert sasrec.history_length(split, max_len=5) == 5
    long = types.Split(users=[types.UserSequence("1", [str(i) for i in range(1, 80)], "80",
                                                 "81")],
                       all_items=[str(i) for i in range(1, 82)])
    assert sasrec.history_length(long) == long.max_history == 50
