"""Each bench/ script runs end to end with --smoke and prints its table (so none can rot).

Not a speed test: the smoke shapes are tiny and nothing here asserts a ratio. What it does
check is what makes the numbers meaningful: both training sides start from the same loss
(same weights, same batch, same loss), both decoders return the same top-k item lists, the
pipeline counts examples, and every run appends a complete record to the results file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], results: Path, extra_path: str = "") -> str:
    env = dict(os.environ, FLANREC_BENCH_RESULTS=str(results), TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), extra_path,
                                                      os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, *args, "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|---|" in proc.stdout, proc.stdout  # the markdown table was printed
    return proc.stdout


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_throughput_smoke(tmp_path: Path) -> None:
    out = _run(["bench/train_throughput.py"], tmp_path / "r.jsonl")
    assert "flanrec / transformers target tokens/s" in out
    (rec,) = _records(tmp_path / "r.jsonl")
    assert rec["bench"] == "train_throughput" and rec["smoke"] is True
    ours, theirs = rec["sides"]["flanrec"], rec["sides"]["transformers"]
    # Same weights, batch and loss on both sides: the first losses must agree.
    assert ours["first_loss"] == pytest.approx(theirs["first_loss"], rel=1e-4)
    for side in (ours, theirs):
        assert side["step_s"] > 0 and 0 < side["mfu"] < 1
        assert side["peak_rss"] > side["base_rss"] > 0
    assert rec["estimate_bytes"]["total"] > rec["estimate_bytes"]["params"] > 0


def test_decode_throughput_smoke(tmp_path: Path) -> None:
    out = _run(["bench/decode_throughput.py"], tmp_path / "r.jsonl")
    assert "users/s" in out
    (rec,) = _records(tmp_path / "r.jsonl")
    assert rec["identical_users"] == rec["batch"], out
    assert rec["invalid_items"] == 0 and rec["max_score_diff"] < 1e-3


def test_seqrec_inference_smoke(tmp_path: Path) -> None:
    out = _run(["bench/seqrec_inference.py"], tmp_path / "r.jsonl")
    assert "users/s" in out
    (rec,) = _records(tmp_path / "r.jsonl")
    # The infer job's path and the one-shot scorer agree: same items, seen ones never returned.
    assert rec["identical_users"] == rec["batch"], out
    assert rec["seen_returned"] == 0 and rec["max_score_diff"] < 1e-4


def test_input_pipeline_smoke(tmp_path: Path) -> None:
    from train_fixtures import make_task

    task = make_task(tmp_path / "task")
    results = tmp_path / "r.jsonl"
    # A previous train record gives the pipeline something to compare against.
    results.write_text(json.dumps({"bench": "train_throughput", "preset": "tiny", "smoke": False,
                                   "batch": 16, "enc_len": 128, "dec_len": 8,
                                   "sides": {"flanrec": {"examples_per_s": 2.0}}}) + "\n")
    out = _run(["bench/input_pipeline.py", "--module", task["module"], "--task", task["task"],
                "--inputs", "64", "--targets", "16"], results, task["dir"])
    rec = _records(results)[-1]
    assert rec["bench"] == "input_pipeline"
    for stream in ("unpacked", "packed"):
        assert rec["streams"][stream]["examples_per_s"] > 0
    assert rec["streams"]["unpacked"]["examples_per_row"] == pytest.approx(1.0)
    assert rec["streams"]["packed"]["examples_per_row"] > 1.0
    assert rec["consumers_examples_per_s"] == {"tiny": 2.0} and "vs tiny step" in out
