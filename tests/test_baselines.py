"""Popularity and SASRec baselines: checked against independent numpy code and a learnable
synthetic pattern; the popularity numbers on the real ml-100k split as well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flanrec import metrics as M
from flanrec.baselines import popularity, sasrec
from flanrec.baselines.__main__ import main as baselines_main
from flanrec.data import splits, types
from flanrec.eval import job as E


def random_split(seed: int, n_users: int = 40, n_items: int = 30) -> types.Split:
    """Users with 5-15 distinct items drawn with a skewed popularity (many count ties)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.7
    users = []
    for u in range(n_users):
        n = int(rng.integers(5, 16))
        seq = rng.choice(n_items, size=n, replace=False, p=weights / weights.sum()) + 1
        s = [str(i) for i in seq]
        users.append(types.UserSequence(user=str(u + 1), train_items=s[:-2], valid_item=s[-2],
                                        test_item=s[-1]))
    return types.Split(users=users, all_items=[str(i) for i in range(1, n_items + 1)])


def numpy_popularity_metrics(split: types.Split, stage: str, k: int = 10) -> dict[str, float]:
    """Independent path: a [users, items] score matrix, seen items at -inf, one argsort.

    Ties by lower numeric id: score = count - id / (max_id + 1), so a smaller id wins ties.
    """
    ids = np.array([int(i) for i in split.all_items])
    col = {item: j for j, item in enumerate(split.all_items)}
    counts = np.zeros(len(ids))
    for u in split.users:
        for item in u.train_items:
            counts[col[item]] += 1
    base = counts - ids / (ids.max() + 1)
    evaluated = [u for u in split.users if u.valid_item and u.test_item]
    scores = np.tile(base, (len(evaluated), 1))
    targets = np.zeros(len(evaluated), dtype=int)
    for r, u in enumerate(evaluated):
        seen = u.train_items + ([u.valid_item] if stage == "test" else [])
        scores[r, [col[i] for i in seen]] = -np.inf
        targets[r] = col[u.test_item if stage == "test" else u.valid_item]
    order = np.argsort(-scores, axis=1)
    rank = np.argmax(order == targets[:, None], axis=1) + 1
    hit = rank <= k
    return {f"hr@{k}": hit.mean(), f"ndcg@{k}": np.where(hit, 1 / np.log2(rank + 1), 0).mean(),
            f"mrr@{k}": np.where(hit, 1 / rank, 0).mean()}


def write_prepared(root: Path, split: types.Split) -> Path:
    import dataclasses

    (root / "split").mkdir(parents=True)
    (root / "split" / "split.json").write_text(json.dumps({
        "max_history": split.max_history, "all_items": split.all_items,
        "users": [dataclasses.asdict(u) for u in split.users]}))
    return root


@pytest.mark.parametrize("stage", ["validation", "test"])
@pytest.mark.parametrize("seed", [0, 1])
def test_popularity_cli_and_eval_equal_numpy(tmp_path: Path, stage: str, seed: int):
    split = random_split(seed)
    data = write_prepared(tmp_path / "data", split)
    assert baselines_main(["--data_dir", str(data), "--model", "popularity", "--split", stage,
                           "--out", str(tmp_path / "out"), "--k", "10"]) == 0
    (section,) = E.evaluate_dir(str(tmp_path / "out"), ks=(10,),
                                catalogue=E.Catalogue.load(str(data)))
    assert section.task == "popularity" and section.split == stage
    expected = numpy_popularity_metrics(split, stage)
    for key, value in expected.items():
        assert section.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert section.metrics["masked"] == 0  # the baseline masked seen items itself


def test_popularity_ml100k_equals_numpy(ml100k_split: types.Split):
    examples, ranked, _ = popularity.recommend(ml100k_split, "test", k=10)
    got = M.ranking_metrics(ranked, [e.target for e in examples], ks=(10,),
                            exclude=[set(e.seen) for e in examples])
    expected = numpy_popularity_metrics(ml100k_split, "test")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["num_users"] == 943
    # The protocol's deterministic popularity numbers (a check of split + metric code).
    assert round(got["hr@10"], 4) == 0.0859 and round(got["ndcg@10"], 4) == 0.0449


def test_popularity_counts_train_items_only():
    split = types.Split(users=[
        types.UserSequence("1", ["1", "2"], "3", "4"),
        types.UserSequence("2", ["2", "5"], "3", "1")], all_items=["1", "2", "3", "4", "5"])
    counts = popularity.train_counts(split)
    assert counts == {"1": 1, "2": 2, "3": 0, "4": 0, "5": 1}
    order, _ = popularity.global_order(split)
    assert order == ["2", "1", "5", "3", "4"]


def sequential_split(n_users: int = 64, n_items: int = 40, seed: int = 0) -> types.Split:
    """Item i is always followed by i+1 (cyclically); users start anywhere."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n_users):
        start, n = int(rng.integers(n_items)), int(rng.integers(8, 16))
        seq = [str((start + t) % n_items + 1) for t in range(n)]
        users.append(types.UserSequence(str(u + 1), seq[:-2], seq[-2], seq[-1]))
    return types.Split(users=users, all_items=[str(i) for i in range(1, n_items + 1)])


def test_training_windows_cover_every_train_position():
    split = types.Split(users=[types.UserSequence("1", [str(i) for i in range(1, 8)], "8", "9")],
                        all_items=[str(i) for i in range(1, 10)])
    ids = sasrec.item_ids(split)
    xs, ys = sasrec.training_windows(split, ids, max_len=3)
    # 7 train items, windows of 4 from the end: [4..7], [1..4] -> targets 5,6,7 and 2,3,4
    assert xs.tolist() == [[4, 5, 6], [1, 2, 3]]
    assert ys.tolist() == [[5, 6, 7], [2, 3, 4]]
    assert sorted(ys[ys > 0].tolist()) == list(range(2, 8))  # never 8 (valid) or 9 (test)


def test_sasrec_learns_sequential_pattern_and_masks_seen():
    split = sequential_split()
    cfg = sasrec.SASRecConfig(max_len=20, max_epochs=60, eval_every=10, patience=2, seed=0)
    result = sasrec.train(split, cfg, progress=lambda _: None)
    examples, ranked, _ = sasrec.recommend(result, split, "test", k=5)
    m = M.ranking_metrics(ranked, [e.target for e in examples], ks=(1, 5))
    pex, pranked, _ = popularity.recommend(split, "test", k=5)
    pm = M.ranking_metrics(pranked, [e.target for e in pex], ks=(1, 5))
    assert m["hr@1"] >= 0.9, (m, result.history)
    assert pm["hr@1"] < 0.3
    assert result.best_valid_ndcg10 >= 0.9
    for ex, items in zip(examples, ranked, strict=True):
        assert len(items) == 5 and not set(items) & set(ex.seen)


def test_sasrec_is_deterministic():
    # Same model shape as above, so the compiled programs are shared (sasrec.trainer_for).
    split = sequential_split(n_users=16, seed=1)
    cfg = sasrec.SASRecConfig(max_len=20, max_epochs=2, eval_every=1, seed=3)
    a = sasrec.train(split, cfg, progress=lambda _: None)
    b = sasrec.train(split, cfg, progress=lambda _: None)
    leaves_a = [np.asarray(x) for x in __import__("jax").tree.leaves(a.params)]
    leaves_b = [np.asarray(x) for x in __import__("jax").tree.leaves(b.params)]
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    assert a.history == b.history


def test_eval_examples_used_by_baselines_follow_protocol():
    split = sequential_split(n_users=3)
    for stage in ("validation", "test"):
        for ex, u in zip(splits.eval_examples(split, stage), split.users, strict=True):
            assert ex.target == (u.test_item if stage == "test" else u.valid_item)
