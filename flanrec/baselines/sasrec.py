"""SASRec (Kang & McAuley, 2018) in Flax linen, trained with a full softmax.

The strong classical baseline for next-item prediction on leave-one-out splits. What is
fixed (the baseline flanrec promises users): 2 self-attention blocks, hidden size 64, 1 head,
inputs of the split's history window (50 items in amazon5-loo and ml100k-loo; shorter when
no user has that many), dropout 0.2, learned positional embeddings, causal attention,
shared input/output item embeddings, Adam (lr 1e-3), batches of 128, early stopping on
validation NDCG@10 with the best parameters kept.

Two choices differ from the 2018 paper, on purpose:

* the loss is cross-entropy over ALL items at every position of the training sequences
  instead of binary cross-entropy with one sampled negative. It is what makes SASRec strong
  on full-ranking evaluation (Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold
  Loss: is BERT4Rec really better than SASRec?") and is cheap at MovieLens catalogue sizes;
* every training position is used: a user's training items are cut into consecutive
  windows of up to 51 items from the most recent backwards (50 inputs, 50 shifted targets),
  so each training item ``i_2 .. i_{n-2}`` is a target once per epoch, matching the
  protocol's training examples (the paper keeps only the last 50 items per user).

Only training items are ever targets; the validation item is appended to the input for the
test stage (as the protocol says), seen items are masked at ranking, and the validation
metric comes from ``flanrec.metrics`` so early stopping and the report use the same code.
Seeded and deterministic on CPU (same seed, same numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flanrec import metrics as metrics_lib
from flanrec.data import splits, types
from flanrec.frontend.progress import Progress

log = logging.getLogger("flanrec.baselines.sasrec")


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """Architecture and training settings (defaults: the baseline flanrec reports)."""

    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int | None = None  # None: from the data (`history_length`)
    dropout: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    eval_every: int = 5
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    max_train_seconds: float | None = None  # wall-clock budget: stop at the next evaluation
    seed: int = 0


class SASRec(nn.Module):
    """Causal self-attention over item embeddings; position p predicts item p+1.

    Inputs are left-padded with 0 (item ids are 1..num_items), so the most recent item is
    always at the last position and learned positions count back from it.
    """

    num_items: int
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 50
    dropout: float = 0.2

    def setup(self) -> None:
        init = nn.initializers.glorot_normal()
        self.item_emb = nn.Embed(self.num_items + 1, self.hidden, embedding_init=init)
        self.pos_emb = self.param("pos_emb", init, (self.max_len, self.hidden))
        self.emb_dropout = nn.Dropout(self.dropout)
        self.attn_norms = [nn.LayerNorm(epsilon=1e-8) for _ in range(self.num_blocks)]
        self.attns = [nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.hidden, out_features=self.hidden,
            dropout_rate=self.dropout, broadcast_dropout=False) for _ in range(self.num_blocks)]
        self.ffn_norms = [nn.LayerNorm(epsilon=1e-8) for _ in range(self.num_blocks)]
        self.ffn_in = [nn.Dense(self.hidden) for _ in range(self.num_blocks)]
        self.ffn_out = [nn.Dense(self.hidden) for _ in range(self.num_blocks)]
        self.ffn_dropout = nn.Dropout(self.dropout)
        self.final_norm = nn.LayerNorm(epsilon=1e-8)

    def encode(self, seq: jax.Array, train: bool) -> jax.Array:
        """[batch, L] item ids (0 = padding) -> [batch, L, hidden] states."""
        length = seq.shape[1]
        valid = (seq > 0)[..., None]
        x = self.item_emb(seq) * math.sqrt(self.hidden) + self.pos_emb[-length:]
        x = self.emb_dropout(x, deterministic=not train) * valid
        mask = (nn.make_causal_mask(seq, dtype=jnp.bool_)
                & nn.make_attention_mask(seq > 0, seq > 0, dtype=jnp.bool_))
        # A padded query row has no valid key; let it attend to itself so its softmax stays
        # finite (its output is zeroed and never used).
        mask = mask | jnp.eye(length, dtype=bool)[None, None]
        for i in range(self.num_blocks):
            q = self.attn_norms[i](x)
            x = q + self.attns[i](q, x, mask=mask, deterministic=not train)
            h = self.ffn_norms[i](x)
            h = self.ffn_dropout(nn.relu(self.ffn_in[i](h)), deterministic=not train)
            h = self.ffn_dropout(self.ffn_out[i](h), deterministic=not train)
            x = (x + h) * valid
        return self.final_norm(x)

    def __call__(self, seq: jax.Array, train: bool = False) -> jax.Array:
        """Logits over [padding, item 1 .. item N] at every position: [batch, L, N + 1]."""
        states = self.encode(seq, train)
        logits = states @ self.item_emb.embedding.T
        return logits.at[..., 0].set(-1e9)  # padding is never a prediction

    def target_logits(self, seq: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        """Logits over [padding, items] at `positions` of the flattened [batch * L] states:
        [len(positions), N + 1]. Only the positions that carry a target are projected onto
        the catalogue: on short-sequence data (median 6 items in windows of 50) that is a
        tenth of the positions, and the projection is most of a step's work."""
        states = self.encode(seq, train).reshape(-1, self.hidden)[positions]
        return (states @ self.item_emb.embedding.T).at[:, 0].set(-1e9)

    def last_logits(self, seq: jax.Array) -> jax.Array:
        """Next-item logits after the last (most recent) position: [batch, N + 1]."""
        states = self.encode(seq, train=False)[:, -1]
        return (states @ self.item_emb.embedding.T).at[:, 0].set(-1e9)


# ------------------------------------------------------------------------------ data


def item_ids(split: types.Split) -> dict[str, int]:
    """raw item id -> 1..N, in catalogue order (0 is padding)."""
    return {item: j + 1 for j, item in enumerate(split.all_items)}


def history_length(split: types.Split, max_len: int | None = None) -> int:
    """The input length: the protocol's history window (the split's `max_history`, 50 for
    amazon5-loo and ml100k-loo) or `max_len`, but no longer than the longest input the data
    has (a user's training items, plus the validation item at test time), so a log of short
    sequences does not pad every row to the window."""
    cap = split.max_history if max_len is None else max_len
    longest = max((len(u.train_items) + 1 for u in split.users), default=1)
    return max(1, min(cap, longest))


def training_windows(split: types.Split, ids: dict[str, int], max_len: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both int32 [rows, max_len], left-padded with 0.

    Each user's training items are cut from the most recent backwards into windows of up to
    max_len + 1 items; a window's inputs are its first items, its targets the same shifted
    by one, so every training item but the first is a target exactly once.
    """
    xs, ys = [], []
    for seq in split.users:
        s = [ids[i] for i in seq.train_items]
        end = len(s)
        while end > 1:
            window = s[max(0, end - max_len - 1):end]
            x, y = window[:-1], window[1:]
            pad = max_len - len(x)
            xs.append([0] * pad + x)
            ys.append([0] * pad + y)
            end -= max_len
    if not xs:
        raise ValueError("no training sequences with at least 2 items")
    return np.asarray(xs, dtype=np.int32), np.asarray(ys, dtype=np.int32)


def query_inputs(examples: Sequence[splits.EvalExample], ids: dict[str, int], max_len: int
                 ) -> np.ndarray:
    """Left-padded int32 [users, max_len] of each query's most recent items."""
    out = np.zeros((len(examples), max_len), dtype=np.int32)
    for r, ex in enumerate(examples):
        hist = [ids[i] for i in ex.history][-max_len:]
        if hist:
            out[r, max_len - len(hist):] = hist
    return out


# ------------------------------------------------------------------------------ training


def target_positions(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, targets, weights) of a batch's targets `y` [batch, L] (0 = none), padded
    to a multiple of a sixteenth of batch * L so a run compiles a few step shapes, not one
    per target count. Padding rows point at position 0 with target 0 and weight 0."""
    flat = y.reshape(-1)
    pos = np.flatnonzero(flat > 0).astype(np.int32)
    quantum = max(flat.size // 16, 1)
    size = max(-(-len(pos) // quantum) * quantum, quantum)
    out_pos = np.zeros(size, np.int32)
    out_pos[:len(pos)] = pos
    targets = np.zeros(size, np.int32)
    targets[:len(pos)] = flat[pos]
    weights = np.zeros(size, np.float32)
    weights[:len(pos)] = 1.0
    return out_pos, targets, weights


def _loss_fn(model: SASRec) -> Callable[..., jax.Array]:
    def loss(params: Any, x: jax.Array, pos: jax.Array, y: jax.Array, w: jax.Array,
             rng: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, x, pos, True, rngs={"dropout": rng},
                             method=SASRec.target_logits)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

    return loss


def make_train_step(model: SASRec, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """One jitted Adam step: (params, opt_state, x, positions, targets, weights, rng) ->
    (params, opt_state, loss), the loss over the targets `target_positions` lists."""
    grad_fn = jax.value_and_grad(_loss_fn(model))

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, pos: jax.Array, y: jax.Array,
             w: jax.Array, rng: jax.Array):
        loss, grads = grad_fn(params, x, pos, y, w, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def make_scorer(model: SASRec) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted (params, x [B, L], seen [B, N] bool, k) -> (top-k logits, top-k item columns
    0..N-1) with seen items at -inf; `lax.top_k` puts the lower column first among equal
    scores, so ties keep catalogue order."""
    def top(params: Any, x: jax.Array, seen: jax.Array, k: int):
        logits = model.apply({"params": params}, x, method=SASRec.last_logits)[:, 1:]
        return jax.lax.top_k(jnp.where(seen, -jnp.inf, logits), k)

    return jax.jit(top, static_argnums=3)


# Linen modules hash by their fields, so retraining an equal model (another seed, the test
# suite, recommend() after train()) reuses XLA's compiled programs instead of compiling again.
@functools.lru_cache(maxsize=8)
def trainer_for(model: SASRec, learning_rate: float
                ) -> tuple[optax.GradientTransformation, Callable[..., Any]]:
    """(Adam, jitted train step) for a model, cached."""
    tx = optax.adam(learning_rate, b1=0.9, b2=0.98)
    return tx, make_train_step(model, tx)


@functools.lru_cache(maxsize=8)
def scorer_for(model: SASRec) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted masked top-k for a model (`make_scorer`), cached."""
    return make_scorer(model)


@dataclasses.dataclass(frozen=True)
class Queries:
    """One stage's queries as arrays, built once and ranked at every evaluation."""

    x: np.ndarray  # [users, max_len] left-padded item ids
    seen_rows: np.ndarray  # (row, column) of every seen item, columns 0..N-1
    seen_cols: np.ndarray
    targets: list[str]


def make_queries(examples: Sequence[splits.EvalExample], ids: dict[str, int], max_len: int
                 ) -> Queries:
    rows = [np.full(len(ex.seen), r, np.int64) for r, ex in enumerate(examples)]
    cols = [np.fromiter((ids[i] - 1 for i in ex.seen), np.int64, len(ex.seen))
            for ex in examples]
    return Queries(query_inputs(examples, ids, max_len),
                   np.concatenate(rows) if rows else np.zeros(0, np.int64),
                   np.concatenate(cols) if cols else np.zeros(0, np.int64),
                   [ex.target for ex in examples])


def rank_queries(scorer: Callable[..., tuple[jax.Array, jax.Array]], params: Any,
                 examples: Sequence[splits.EvalExample] | Queries, split: types.Split,
                 ids: dict[str, int], max_len: int, k: int, batch_size: int = 1024,
                 ) -> tuple[list[list[str]], list[list[float]]]:
    """Top-k unseen items (raw ids) and their logits per query.

    Seen items are set to -inf before the cut; ties keep catalogue order (lower id first).
    Users are ranked `batch_size` at a time, the cut made on the device: only [users, k]
    comes back to the host.
    """
    q = examples if isinstance(examples, Queries) else make_queries(examples, ids, max_len)
    catalogue = np.asarray(split.all_items, dtype=object)
    n_items = len(catalogue)
    k_eff = min(k, n_items)
    users = q.x.shape[0]
    batch_size = max(1, min(batch_size, users))
    # Seen entries sorted by row, so each batch's are one slice.
    order = np.argsort(q.seen_rows, kind="stable")
    seen_rows, seen_cols = q.seen_rows[order], q.seen_cols[order]
    bounds = np.searchsorted(seen_rows, np.arange(0, users + batch_size, batch_size))
    ranked: list[list[str]] = []
    scores: list[list[float]] = []
    for b, start in enumerate(range(0, users, batch_size)):
        xb = q.x[start:start + batch_size]
        rows = xb.shape[0]
        if rows < batch_size:  # one compiled shape
            xb = np.concatenate([xb, np.zeros((batch_size - rows, max_len), np.int32)])
        seen = np.zeros((batch_size, n_items), bool)
        lo, hi = bounds[b], bounds[b + 1]
        seen[seen_rows[lo:hi] - start, seen_cols[lo:hi]] = True
        top_s, top_i = jax.device_get(scorer(params, xb, seen, k_eff))
        for r in range(rows):
            keep = np.isfinite(top_s[r])
            ranked.append(catalogue[top_i[r][keep]].tolist())
            scores.append(top_s[r][keep].astype(np.float64).tolist())
    return ranked, scores


@dataclasses.dataclass
class TrainResult:
    params: Any
    model: SASRec
    ids: dict[str, int]
    best_epoch: int
    best_valid_ndcg10: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def train(split: types.Split, config: SASRecConfig = SASRecConfig(),
          progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train on the split's training items; keep the params with the best validation
    NDCG@10 (evaluated every ``eval_every`` epochs; stop after ``patience`` evaluations
    without improvement, or at the first epoch end past ``max_train_seconds``, which is then
    evaluated too: a quickstart on a busy machine gets a bounded run, not an unbounded one)."""
    progress = progress or log.info
    t0 = time.time()
    ids = item_ids(split)
    max_len = history_length(split, config.max_len)
    model = SASRec(num_items=len(ids), hidden=config.hidden, num_blocks=config.num_blocks,
                   num_heads=config.num_heads, max_len=max_len, dropout=config.dropout)
    xs, ys = training_windows(split, ids, max_len)
    valid = splits.eval_examples(split, "validation")
    if not valid:
        raise ValueError("the split has no validation users to early-stop on")
    valid_q = make_queries(valid, ids, max_len)
    rng = jax.random.PRNGKey(config.seed)
    rng, init_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1, max_len), jnp.int32))["params"]
    tx, step = trainer_for(model, config.learning_rate)
    scorer = scorer_for(model)
    opt_state = tx.init(params)
    order_rng = np.random.default_rng(config.seed)
    bs = config.batch_size
    best = (-1.0, 0, jax.device_get(params))
    history: list[dict[str, float]] = []
    bad = 0
    epoch = 0
    # One line every 30 s; with a time budget the total is the epochs that fit in it.
    epochs = Progress("sasrec training", total=config.max_epochs, unit="epochs", every=30.0,
                      log=progress, untimed_first=False)
    for epoch in range(1, config.max_epochs + 1):
        perm = order_rng.permutation(len(xs))
        # Pad the permutation so every batch has the compiled shape; the repeated rows of
        # the last batch are real examples drawn again, not zeros.
        perm = np.concatenate([perm, perm[: (-len(perm)) % bs]])
        losses = []
        for b in range(0, len(perm), bs):
            idx = perm[b:b + bs]
            rng, drop_rng = jax.random.split(rng)
            params, opt_state, loss = step(params, opt_state, xs[idx],
                                           *target_positions(ys[idx]), drop_rng)
            losses.append(loss)
        if config.max_train_seconds is not None:
            spent = time.time() - t0
            epochs.total = min(config.max_epochs,
                               epoch + int(max(config.max_train_seconds - spent, 0)
                                           / (spent / epoch)) + 1)
        epochs.update(1)
        out_of_time = (config.max_train_seconds is not None
                       and time.time() - t0 >= config.max_train_seconds)
        if epoch % config.eval_every and epoch != config.max_epochs and not out_of_time:
            continue
        ranked, _ = rank_queries(scorer, params, valid_q, split, ids, max_len, k=10)
        m = metrics_lib.ranking_metrics(ranked, valid_q.targets, ks=(10,))
        loss_mean = float(np.mean(jax.device_get(losses)))
        history.append({"epoch": epoch, "loss": loss_mean, "valid_ndcg@10": m["ndcg@10"],
                        "valid_hr@10": m["hr@10"]})
        progress(f"sasrec epoch {epoch:3d} loss {loss_mean:.4f} valid NDCG@10 "
                 f"{m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f} ({time.time() - t0:.0f}s)")
        if m["ndcg@10"] > best[0]:
            best = (m["ndcg@10"], epoch, jax.device_get(params))
            bad = 0
        else:
            bad += 1
            if bad >= config.patience:
                break
        if out_of_time:
            progress(f"sasrec: time budget of {config.max_train_seconds:.0f}s used up after "
                     f"epoch {epoch}; keeping the best evaluated params")
            break
    return TrainResult(params=best[2], model=model, ids=ids, best_epoch=best[1],
                       best_valid_ndcg10=best[0], epochs_run=epoch,
                       seconds=time.time() - t0, history=history)


def recommend(result: TrainResult, split: types.Split, stage: str, k: int = 20
              ) -> tuple[list[splits.EvalExample], list[list[str]], list[list[float]]]:
    """The protocol's queries for ``stage`` with the trained model's top-k unseen items."""
    examples = splits.eval_examples(split, stage)
    ranked, scores = rank_queries(scorer_for(result.model), result.params, examples, split,
                                  result.ids, result.model.max_len, k)
    return examples, ranked, scores
