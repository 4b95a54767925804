"""Paired bootstrap comparisons and seed-averaged rows of `flanrec.eval`, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_cli import rec, write_prepared, write_shards

from flanrec.eval import job as E
from flanrec.eval import paired


def test_bootstrap_interval_brackets_the_mean_difference_and_is_deterministic():
    rng = np.random.default_rng(0)
    a = {str(u): float(v) for u, v in enumerate(rng.random(500))}
    b = {u: v - 0.05 + 0.01 * rng.standard_normal() for u, v in a.items()}
    r1 = paired.paired_bootstrap(a, b, seed=3)
    r2 = paired.paired_bootstrap(a, b, seed=3)
    assert r1 == r2
    diff = np.mean([a[u] - b[u] for u in a])
    assert r1["diff"] == pytest.approx(diff)
    assert r1["lo"] < diff < r1["hi"] and r1["lo"] > 0  # a clear, paired improvement
    # The paired interval is much narrower than the spread of either system's values.
    assert r1["hi"] - r1["lo"] < 0.01
    assert r1["p_value"] < 0.001 and r1["num_users"] == 500
    # Two identical systems: an interval around 0.
    same = paired.paired_bootstrap(a, a)
    assert same["lo"] == same["hi"] == same["diff"] == 0.0


def test_bootstrap_uses_only_shared_users_and_refuses_none():
    r = paired.paired_bootstrap({"1": 1.0, "2": 0.0}, {"2": 0.5, "3": 0.0}, n_bootstrap=100)
    assert r["num_users"] == 1 and r["diff"] == -0.5
    with pytest.raises(ValueError, match="share no user"):
        paired.paired_bootstrap({"1": 1.0}, {"2": 1.0})
    with pytest.raises(ValueError, match="other users"):
        paired.mean_over_runs([{"1": 1.0}, {"2": 1.0}])


def _run(d: Path, items: dict[str, list[str]], targets: dict[str, str]) -> None:
    rows = [rec("ml_seq", "predict", i, u, target_item=targets[u], items=items[u])
            for i, u in enumerate(sorted(items))]
    write_shards(d, "ml_seq", "predict", [rows])


def test_eval_averages_seeds_and_compares_them_with_a_baseline_per_user(tmp_path: Path):
    data = write_prepared(tmp_path / "data")
    targets = {"1": "5", "2": "1", "3": "3"}
    # Seed runs: user 1 hit at rank 1 in both, user 2 at rank 1 in one of them.
    _run(tmp_path / "s1", {"1": ["5"], "2": ["1"], "3": ["4"]}, targets)
    _run(tmp_path / "s2", {"1": ["5"], "2": ["4"], "3": ["4"]}, targets)
    base = tmp_path / "base"
    write_shards(base, "pop", "predict", [[
        rec("pop", "predict", i, u, target_item=targets[u], items=["6"])
        for i, u in enumerate(["1", "2", "3"])]])
    out = tmp_path / "eval"
    flat = E.evaluate(predictions=f"{tmp_path / 's1'},{tmp_path / 's2'}", out_dir=str(out),
                      baselines=str(base), data_dir=str(data), plot=False, echo=False)
    # Seed NDCG@10: (1 + 1 + 0) / 3 and (1 + 0 + 0) / 3; the row is their mean.
    assert flat["ndcg@10"] == pytest.approx(0.5)
    assert flat["num_runs"] == 2.0
    assert flat["ndcg@10_std"] == pytest.approx(np.std([2 / 3, 1 / 3], ddof=1))
    key = "paired/ml_seq_vs_pop/ndcg@10"
    # Per-user seed means 1, 0.5, 0 against the baseline's 0, 0, 0.
    assert flat[f"{key}_diff"] == pytest.approx(0.5)
    assert flat[f"{key}_lo"] <= 0.5 <= flat[f"{key}_hi"]
    table = (out / "metrics.md").read_text()
    assert "| ml_seq | pop | ndcg@10 |" in table
    assert json.loads((out / "metrics.json").read_text())[f"{key}_diff"] == pytest.approx(0.5)


def test_runs_must_hold_the_same_tasks(tmp_path: Path):
    _run(tmp_path / "s1", {"1": ["5"]}, {"1": "5"})
    other = tmp_path / "s2"
    write_shards(other, "other", "predict", [[rec("other", "predict", 0, "1",
                                                   target_item="5", items=["5"])]])
    with pytest.raises(E.EvalInputError, match="run 2"):
        E.evaluate(predictions=f"{tmp_path / 's1'},{other}", out_dir=str(tmp_path / "e"),
                   data_dir=str(write_prepared(tmp_path / "data")), allow_partial=True,
                   plot=False, echo=False)
