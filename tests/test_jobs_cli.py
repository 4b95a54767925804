"""One way to fail, for every job (`flanrec.frontend.jobs`).

Each job runs as a real subprocess (`python -m flanrec.JOB`) with an input it must refuse:
the exit code is 2, stderr is exactly one line `flanrec.JOB: error: ...` naming the file,
line, field or flag, and no traceback; `--verbose` adds the traceback. (Quiet logs of a job
that succeeds: tests/test_data_dir.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flanrec.errors import UserError
from flanrec.frontend import jobs

REPO = Path(__file__).resolve().parents[1]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("FLANREC_DATA_DIR", "FLANREC_VERBOSE", "TF_CPP_MIN_LOG_LEVEL",
                "FLANREC_SEQIO_CACHE_DIRS"):
        env.pop(key, None)
    # Nothing of the user's home: the default data dir is under this test's tmp dir.
    env.update(FLANREC_CACHE=str(tmp / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return env


def _run(job: str, args: list[str], tmp: Path, timeout: float = 300
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"flanrec.{job}", *args], cwd=REPO,
                          env=_env(tmp), capture_output=True, text=True, timeout=timeout)


def _bad_csv(tmp: Path) -> Path:
    path = tmp / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,1,100\nu1,2,abc\n")
    return path


def _bad_predictions(tmp: Path) -> Path:
    d = tmp / "preds"
    d.mkdir()
    good = {"task": "t", "split": "test", "mode": "predict", "index": 0, "user": "u1",
            "items": ["1"], "target_item": "1"}
    (d / "t-predict.jsonl-00000-of-00001").write_text(json.dumps(good) + "\n{not json\n")
    return d


# (job, arguments given the tmp dir, a piece of the expected message)
CASES = {
    "prepare_bad_csv_field": (
        "prepare", lambda t: ["--dataset", "csv", "--raw_dir", str(_bad_csv(t)),
                              "--out", str(t / "out")],
        "log.csv line 3, field 'timestamp': expected an integral number"),
    "prepare_bad_option": (
        "prepare", lambda t: ["--dataset", "ml-100k", "--out", str(t / "o"), "--indexing",
                              "alphabetical"], "unknown indexing 'alphabetical'"),
    "prepare_usage": ("prepare", lambda t: ["--bogus"], "unrecognised argument '--bogus'"),
    "train_misspelled_macro": (
        "train", lambda t: ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/finetune.gin",
                            f"--gin.MODEL_DIR={t / 'run'}", "--gin.TRAIN_STEP=3"],
        "gin macro TRAIN_STEP is set on the command line but no gin file uses it"),
    "train_unknown_task": (
        "train", lambda t: ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/finetune.gin",
                            f"--gin.MODEL_DIR={t / 'run'}", "--gin.MIXTURE_OR_TASK_NAME=nope",
                            "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
                            "--gin.TRAIN_STEPS=1", "--gin.INITIAL_CHECKPOINT_PATH=None"],
        "MIXTURE_OR_TASK_NAME 'nope' is not registered"),
    "infer_bad_mode": (
        "infer", lambda t: ["--gin.CHECKPOINT_PATH=/nonexistent", "--gin.MIXTURE_OR_TASK_NAME=x",
                            f"--gin.INFER_OUTPUT_DIR={t / 'infer'}", "--gin.MODE='predikt'"],
        "MODE 'predikt' is not one of"),
    # Targets come from the prepared split, never from the file: no data dir, no metrics
    # (malformed lines with a data dir: tests/test_trust_eval.py, tests/test_eval.py).
    "eval_without_data_dir": (
        "eval", lambda t: ["--predictions", str(_bad_predictions(t)), "--out", str(t / "ev")],
        "no prepared data dir (--data_dir, $FLANREC_DATA_DIR"),
    "eval_checkpoint_without_task": (
        "eval", lambda t: ["--gin_file=gin/runs/eval.gin", "--gin.CHECKPOINT_PATH=/ckpt",
                           f"--gin.EVAL_OUTPUT_DIR={t / 'ev'}"],
        "MIXTURE_OR_TASK_NAME (the task to infer and score) is required"),
    "baselines_no_data": (
        "baselines", lambda t: ["--data_dir", str(t / "nothing"), "--out", str(t / "b")],
        "split.json: not found"),
    "convert_missing_source": (
        "convert", lambda t: ["--from", "hf", "--src", str(t / "nothing"), "--out",
                              str(t / "c")], "nothing"),
    "ensemble_missing_predictions": (
        "ensemble", lambda t: ["fuse", "--predictions", str(t / "a"), str(t / "b"), "--out",
                               str(t / "e")], "no '*-predict.jsonl-*' prediction shards found"),
    "quickstart_missing_experiment": (
        "quickstart", lambda t: ["--experiment", "nope.gin"], "--experiment 'nope.gin': file "
        "not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_line_and_exit_code_2(case, tmp_path):
    job, args, message = CASES[case]
    proc = _run(job, args(tmp_path), tmp_path)
    # Warnings logged on the way (stderr too, as "... W logger] ...") are not the error.
    lines = [ln for ln in proc.stderr.strip().splitlines()
             if not re.match(r"^\S+ \S+ W \S+\] ", ln)]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"flanrec.{job}: error: "), lines[0]
    assert message in lines[0], lines[0]


def test_verbose_adds_the_traceback(tmp_path):
    args = ["--dataset", "ml-100k", "--out", str(tmp_path / "o"), "--indexing", "alphabetical"]
    proc = _run("prepare", [*args, "--verbose"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "flanrec.prepare: error: unknown indexing 'alphabetical'; choose from ")


def test_bugs_keep_their_traceback_and_user_errors_become_one_line(capsys):
    def bug(argv: list[str]) -> int:
        raise KeyError("a flanrec bug")

    with pytest.raises(KeyError):
        jobs.run("flanrec.x", bug, [], tensorflow=False)

    def mistake(argv: list[str]) -> int:
        raise UserError("bad.csv line 3, field 'x': expected an integer,\ngot 'y'")

    assert jobs.run("flanrec.x", mistake, [], tensorflow=False) == 2
    assert capsys.readouterr().err == (
        "flanrec.x: error: bad.csv line 3, field 'x': expected an integer,; got 'y'\n")


def test_no_job_module_imports_tensorflow_at_import_time():
    """The front end sets TF's environment before TF loads: no job may import it earlier."""
    code = ("import sys\n"
            "for m in ['flanrec.prepare', 'flanrec.train.cli', 'flanrec.infer.cli',\n"
            "          'flanrec.eval.cli', 'flanrec.baselines.__main__', 'flanrec.convert.cli',\n"
            "          'flanrec.ensemble.__main__', 'flanrec.quickstart.job']:\n"
            "    __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'seqio')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
