"""Rank-metric validation inside training, the best checkpoint and early stopping.

Real runs of `python -m flanrec.train` on a real prepared dataset (seqrec task), then real
`flanrec.infer` + `flanrec.eval` on what training chose: the validation NDCG@10 recorded in
best_checkpoint.json must be exactly what a user gets from the two jobs on that checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import FAST_COMPILE, read_scalars

REPO = Path(__file__).resolve().parents[1]
TASK = "toyre_seqrec_seqidx"
LENGTHS = "{'inputs': 64, 'targets': 8}"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("rank_eval")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, 41):
        for t, item in enumerate(rng.choice(np.arange(1, 31), size=12, replace=False)):
            rows.append(f"{u},{item},{int(rng.integers(1, 6))},{1000 + 10 * t}")
    (root / "raw" / "ratings.csv").write_text("\n".join(rows) + "\n")
    out = root / "data"
    prepare(PrepareOptions(dataset="ml-latest-small", out=str(out), raw_dir=str(root / "raw"),
                           train_vocab=True, vocab_size=400, families=("seqrec",),
                           seqrec_window=4, seqrec_encoder_items=2, allow_download=False,
                           task_prefix="toyre"), log=lambda m: None)
    return out


def _env(data: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               FLANREC_DATA_DIR=str(data), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=FAST_COMPILE, PYTHONUNBUFFERED="1")
    return env


def _train(data: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "flanrec.train", "--gin_file=gin/models/tiny.gin",
            "--gin_file=gin/runs/from_scratch.gin", f"--gin.MODEL_DIR={model_dir}",
            "--gin.MIXTURE_OR_TASK_MODULE=tasks", f"--gin.MIXTURE_OR_TASK_NAME={TASK}",
            f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8",
            "--gin.T5Config.vocab_size=512", "--gin.EVAL_PERIOD=2", "--gin.LOG_PERIOD=2",
            "--gin.CHECKPOINT_PERIOD=100", "--gin.KEEP_CHECKPOINTS=1", "--gin.PACK=False",
            f"--gin.RANK_EVAL_TASK={TASK}", "--gin.RANK_EVAL_BATCH_SIZE=16",
            "--gin.LEARNING_RATE=0.01", "--gin.make_optimizer.schedule=@constant_schedule()",
            "--gin.constant_schedule.value=%LEARNING_RATE", *extra]
    proc = subprocess.run(args, cwd=REPO, env=_env(data), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _best(model_dir: Path) -> dict:
    return json.loads((model_dir / "best_checkpoint.json").read_text())


def test_best_checkpoint_is_kept_recorded_and_used_by_infer(data, tmp_path):
    from flanrec.checkpoints import complete_steps, resolve_checkpoint

    run = tmp_path / "run"
    _train(data, run, "--gin.TRAIN_STEPS=6")
    best = _best(run)
    assert [h["step"] for h in best["history"]] == [2, 4, 6]
    top = max(best["history"], key=lambda h: (h["ndcg@10"], -h["step"]))
    assert best["step"] == top["step"] and best["value"] == top["ndcg@10"]
    # KEEP_CHECKPOINTS=1 keeps the latest; the best is never rotated away.
    assert {best["step"], 6} <= set(complete_steps(run))
    assert resolve_checkpoint(run).name == f"checkpoint_{best['step']}"
    scalars = read_scalars(run / "validation", "ndcg@10")
    assert sorted(scalars) == [2, 4, 6]
    # flanrec.infer on CHECKPOINT_PATH=MODEL_DIR + flanrec.eval give the recorded number.
    out, ev = tmp_path / "infer", tmp_path / "eval"
    for cmd in ([sys.executable, "-m", "flanrec.infer", "--gin_file=gin/runs/infer.gin",
                 f"--gin.CHECKPOINT_PATH={run}", f"--gin.MIXTURE_OR_TASK_NAME={TASK}",
                 f"--gin.INFER_OUTPUT_DIR={out}", "--gin.SPLIT='validation'",
                 f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"],
                [sys.executable, "-m", "flanrec.eval", "--predictions", str(out),
                 "--data_dir", str(data), "--out", str(ev), "--no_plot"]):
        proc = subprocess.run(cmd, cwd=REPO, env=_env(data), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["ndcg@10"] == pytest.approx(best["value"], abs=1e-6)
    assert metrics["hr@20"] == pytest.approx(top["hr@20"], abs=1e-6)


def test_early_stopping_and_resume_keep_one_history(data, tmp_path):
    run = tmp_path / "run"
    # Learning rate 0: nothing changes, so no evaluation after the first is better.
    proc = _train(data, run, "--gin.TRAIN_STEPS=20", "--gin.LEARNING_RATE=0.0",
                  "--gin.EARLY_STOPPING_PATIENCE=2")
    assert "early stopping at step 6" in proc.stdout + proc.stderr
    best = _best(run)
    assert best["step"] == 2 and [h["step"] for h in best["history"]] == [2, 4, 6]
    # A record of evaluations past the checkpoint resumed from (a run killed after it
    # evaluated but before it saved) is trimmed, not duplicated.
    best["history"].append({**best["history"][-1], "step": 8, "ndcg@10": 9.0})
    best.update(step=8, value=9.0)
    (run / "best_checkpoint.json").write_text(json.dumps(best))
    _train(data, run, "--gin.TRAIN_STEPS=8", "--gin.LEARNING_RATE=0.01")
    best = _best(run)
    assert [h["step"] for h in best["history"]] == [2, 4, 6, 8]
    assert best["value"] < 9.0
