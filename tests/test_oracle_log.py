"""bench/oracle_log.py: the generated process and its Bayes-optimal ranking agree.

The oracle is only worth reporting if its probabilities are the process's: checked against
the frequencies of sequences the generator samples (not against its own formula), then end
to end through prepare, the baselines and `flanrec.eval`, where it must rank above
popularity.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import oracle_log  # noqa: E402


def test_next_item_probabilities_match_sampled_frequencies():
    rng = np.random.default_rng(1)
    process = oracle_log.make_process(items=8, clusters=2, rng=rng, affinity=10.0)
    seqs = oracle_log.sample_sequences(process, users=40_000, min_len=3, median_len=3, rng=rng)
    assert {len(s) for s in seqs} == {3}
    by_prefix = collections.defaultdict(list)
    for s in seqs:
        by_prefix[tuple(s[:2])].append(s[2])
    checked = 0
    for prefix, nexts in sorted(by_prefix.items(), key=lambda kv: -len(kv[1]))[:4]:
        probs = oracle_log.next_item_probs(process, list(prefix))
        assert probs[list(prefix)].sum() == 0 and abs(probs.sum() - 1) < 1e-12
        freq = np.bincount(nexts, minlength=8) / len(nexts)
        tv = 0.5 * np.abs(freq - probs).sum()
        # a few thousand draws of an 8-way distribution: sampling noise ~0.02
        assert tv < 0.05, (prefix, len(nexts), freq.round(3), probs.round(3))
        checked += 1
    assert checked == 4
    # the first item: the cluster mixture, uniform prior
    first = np.bincount([s[0] for s in seqs], minlength=8) / len(seqs)
    assert 0.5 * np.abs(first - process.theta.mean(axis=0)).sum() < 0.02


def test_expected_ndcg_of_a_certain_target_is_one():
    assert oracle_log.expected_ndcg(np.array([1.0, 0.0])) == 1.0
    assert oracle_log.expected_ndcg(np.array([0.0, 1.0])) == pytest.approx(1 / np.log2(3))


def test_oracle_ranks_above_popularity_through_eval(tmp_path):
    log = tmp_path / "log.txt"
    n, params = oracle_log.generate("tiny", str(log), seed=0)
    assert n > 400 * 5 and Path(params).exists()
    data, base = tmp_path / "data", tmp_path / "baselines"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}

    def run(*args):
        subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=600)

    run("-m", "flanrec.prepare", "--dataset", "sequences", "--raw_dir", str(log),
        "--out", str(data), "--families", "seqrec")
    run("-m", "flanrec.baselines", "--data_dir", str(data), "--model", "popularity",
        "--split", "test", "--out", str(base))
    m = oracle_log.rank(params, str(data), "test", str(base))
    assert m["queries"] == 400 and 0 < m["expected_ndcg@10"] < 1
    # eval reads the oracle shard as any baseline and compares it with popularity
    run("-m", "flanrec.eval", "--predictions", str(base), "--data_dir", str(data),
        "--out", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    flat = json.dumps(metrics)
    assert "bayes_optimal/ndcg@10" in flat and "popularity" in flat
    oracle_ndcg = m["ndcg@10"]
    # popularity ignores the taste cluster and the successor structure the oracle uses
    assert oracle_ndcg > 2 * _popularity_ndcg(metrics), (oracle_ndcg, metrics)


def _popularity_ndcg(metrics: dict) -> float:
    for key, value in _walk(metrics):
        if "popularity" in key and key.endswith("ndcg@10"):
            return float(value)
    raise AssertionError(f"no popularity NDCG@10 in {sorted(k for k, _ in _walk(metrics))}")


def _walk(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(node, (int, float)):
        yield prefix, node
