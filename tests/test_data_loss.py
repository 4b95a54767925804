"""Issue 13, "Data loss (must never happen)": no job deletes or writes into what a user owns.

Every job that writes a directory (prepare, convert, infer, eval, baselines, ensemble,
train, quickstart) writes only into a new or empty directory or into its own earlier output
(the `.flanrec-output.json` marker, `flanrec.files.storage`); anything else is refused with one
line naming the directory, before any work, and the user's files stay byte for byte. The
data is a real `flanrec.prepare` output of a small CSV log and the checkpoint a real Orbax
params checkpoint, so each job runs exactly as a user's would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hf_fixtures import random_params

REPO = Path(__file__).resolve().parents[1]
THESIS = "four years of work\n"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def _write_log(path: Path, users: int = 20, items: int = 25) -> Path:
    rng = np.random.default_rng(1)
    rows = ["user_id,item_id,timestamp"]
    for u in range(users):
        for t, item in enumerate(rng.choice(np.arange(1, items + 1), size=7, replace=False)):
            rows.append(f"u{u},{item},{1000 + 10 * t}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def _user_dir(path: Path) -> Path:
    """A directory of the user's own files (what must survive every job)."""
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text(THESIS)
    (path / "notes").mkdir()
    (path / "notes" / "n.txt").write_text("n")
    return path


def _intact(path: Path) -> None:
    assert (path / "thesis.txt").read_text() == THESIS
    assert (path / "notes" / "n.txt").read_text() == "n"
    assert sorted(os.listdir(path)) == ["notes", "thesis.txt"], os.listdir(path)


def _opts(**kw):
    from flanrec.prepare import PrepareOptions

    base = dict(dataset="csv", train_vocab=True, vocab_size=400, families=("seq",),
                allow_download=False, task_prefix="dl")
    base.update(kw)
    return PrepareOptions(**base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(CSV log, prepared dir, checkpoint dir, baseline predictions dir)."""
    from flanrec.baselines.__main__ import main as baselines_main
    from flanrec.checkpoints import save_params_checkpoint
    from flanrec.model.config import T5Config
    from flanrec.prepare import prepare

    root = tmp_path_factory.mktemp("dataloss")
    log = _write_log(root / "raw" / "log.csv")
    data = root / "data"
    prepare(_opts(raw_dir=str(log), out=str(data)), log=lambda m: None)
    cfg = T5Config(vocab_size=512, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                   num_encoder_layers=1, num_decoder_layers=1, name="tiny-dataloss")
    ckpt = save_params_checkpoint(cfg, random_params(cfg, 0), root / "ckpt")
    preds = root / "preds"
    assert baselines_main(["--data_dir", str(data), "--model", "popularity", "--out",
                           str(preds), "--k", "5"]) == 0
    yield log, data, Path(str(ckpt)), preds
    # The infer jobs here register the `dl` tasks in this process's seqio registries; later
    # modules (the Flan bridge picks the vocabulary of the registered dirs) must not see them.
    import tasks

    tasks.unregister_prepared("dl")


# ------------------------------------------------------------------------------ prepare


def test_prepare_cli_refuses_a_users_directory_in_one_line(toy, tmp_path):
    log = toy[0]
    out = _user_dir(tmp_path / "thesis")
    proc = subprocess.run([sys.executable, "-m", "flanrec.prepare", "--dataset", "csv",
                           "--raw_dir", str(log), "--out", str(out), "--families", "seq"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flanrec.prepare: error: --out "), lines
    assert str(out) in lines[0] and "thesis.txt" in lines[0] and "not written by flanrec" \
        in lines[0]
    _intact(out)
    assert sorted(os.listdir(tmp_path)) == ["thesis"]  # no scratch dir left next to it


def test_prepare_refuses_an_out_that_holds_its_input(tmp_path):
    from flanrec.files import storage
    from flanrec.prepare import prepare

    log = _write_log(tmp_path / "project" / "raw" / "log.csv")
    before = log.read_bytes()
    for out in (log.parent, log.parent.parent):  # the CSV's folder, and a folder above it
        with pytest.raises(storage.StorageError, match="--raw_dir") as e:
            prepare(_opts(raw_dir=str(log), out=str(out)), log=lambda m: None)
        assert str(out) in str(e.value) and "\n" not in str(e.value)
        assert log.read_bytes() == before
    # A directory input may hold neither the output nor be inside it.
    with pytest.raises(storage.StorageError, match="inside --raw_dir"):
        prepare(_opts(dataset="ml-100k", raw_dir=str(log.parent), out=str(log.parent / "p")),
                log=lambda m: None)
    assert sorted(os.listdir(log.parent)) == ["log.csv"] and log.read_bytes() == before


def test_prepare_never_deletes_an_unrelated_tmp_dir(toy, tmp_path):
    """Today's code rmtree'd `OUT.tmp` at start: a user's `data.tmp` next to --out."""
    from flanrec.data.errors import DataError
    from flanrec.prepare import prepare

    log = toy[0]
    mine = _user_dir(tmp_path / "data.tmp")
    out = tmp_path / "data"
    prepare(_opts(raw_dir=str(log), out=str(out)), log=lambda m: None)
    _intact(mine)
    with pytest.raises(DataError, match="missing.csv"):  # a failed run cleans its scratch only
        prepare(_opts(raw_dir=str(tmp_path / "missing.csv"), out=str(out)), log=lambda m: None)
    _intact(mine)
    assert sorted(os.listdir(tmp_path)) == ["data", "data.tmp"]
    assert json.loads((out / ".flanrec-output.json").read_text())["job"] == "prepare"


def test_no_overwrite_fails_before_any_work_naming_a_real_flag(toy, tmp_path):
    """--no_overwrite on an existing output must fail before the data is read (here the
    raw file does not even exist: reading it first would give another error), and every
    flag its hint names must exist."""
    from flanrec.prepare.cli import build_parser

    data = toy[1]
    out = tmp_path / "again"
    subprocess.run(["cp", "-r", str(data), str(out)], check=True)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "flanrec.prepare", "--dataset", "csv",
                           "--raw_dir", str(tmp_path / "no-such.csv"), "--out", str(out),
                           "--no_overwrite"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "--no_overwrite" in err and str(out) in err, err
    assert "no-such.csv" not in err  # refused before the input was looked at
    flags = {f for a in build_parser()._actions for f in a.option_strings}
    named = set(re.findall(r"--[a-z_]+", err))
    assert named and named <= flags, f"hint names flags that do not exist: {named - flags}"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert time.time() - t0 < 120
    # Without --no_overwrite the same (flanrec.prepare) output is replaced, stale parts too.
    from flanrec.prepare import prepare

    (out / "tasks" / "stale_task").mkdir()  # from an earlier run with other families
    prepare(_opts(raw_dir=str(toy[0]), out=str(out), seed=3), log=lambda m: None)
    assert not (out / "tasks" / "stale_task").exists()
    assert json.loads((out / "prepare.json").read_text())["options"]["seed"] == 3


# ------------------------------------------------------------------------------ other jobs


def _run_infer(toy, out: Path) -> tuple[int, str]:
    import contextlib
    import io

    import gin

    from flanrec.infer import cli as infer

    _, data, ckpt, _ = toy
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.ExitStack() as stack:
        stack.callback(gin.clear_config)  # the job locks gin's config; other jobs register
        rc = infer.main(["--gin_file=gin/runs/infer.gin", f"--gin.CHECKPOINT_PATH={ckpt}",
                         "--gin.MIXTURE_OR_TASK_NAME=dl_seq_seqidx",
                         f"--gin.INFER_OUTPUT_DIR={out}", f"--gin.DATA_DIR={data}",
                         "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                         "--gin.NUM_BEAMS=3"])
    return rc, err.getvalue()


def _capture(fn, *args):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = fn(*args)
    return rc, err.getvalue()


def _job(name: str, toy, out: Path) -> tuple[int, str]:
    """Run job `name` with its output directory at `out`; (exit code, stderr)."""
    _, data, ckpt, preds = toy
    if name == "infer":
        return _run_infer(toy, out)
    if name == "eval":
        from flanrec.eval.cli import main

        return _capture(main, ["--predictions", str(preds), "--data_dir", str(data),
                               "--out", str(out), "--no_plot"])
    if name == "baselines":
        from flanrec.baselines.__main__ import main

        return _capture(main, ["--data_dir", str(data), "--model", "popularity", "--out",
                               str(out)])
    if name == "ensemble":
        from flanrec.ensemble.__main__ import main

        return _capture(main, ["fuse", "--predictions", str(preds), str(preds), "--out",
                               str(out)])
    if name == "convert":
        from flanrec.convert.cli import main

        return _capture(main, ["--from", "flanrec", "--src", str(ckpt), "--out", str(out),
                               "--to", "hf", "--overwrite"])
    if name == "quickstart":
        proc = subprocess.run([sys.executable, "-m", "flanrec.quickstart", "--data_dir",
                               str(data), "--model_dir", str(out), "--baselines", "none"],
                              cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stderr
    raise AssertionError(name)


JOBS = ["infer", "eval", "baselines", "ensemble", "convert", "quickstart"]


@pytest.mark.parametrize("job", JOBS)
def test_every_job_refuses_a_directory_it_did_not_write(toy, tmp_path, job):
    out = _user_dir(tmp_path / "mine")
    rc, err = _job(job, toy, out)
    assert rc == 2, err[-2000:]
    assert str(out) in err and "not written by flanrec" in err and "thesis.txt" in err, err
    assert len(err.strip().splitlines()) == 1, err
    _intact(out)


def test_train_refuses_a_model_dir_of_user_files(tmp_path):
    import gin
    import train_fixtures as tfx

    from flanrec.files import storage
    from flanrec.train import cli as train

    task = tfx.make_task(tmp_path / "task", n_train=8, n_val=4)
    sys.path.insert(0, task["dir"])
    out = _user_dir(tmp_path / "run")
    try:
        with pytest.raises(storage.NotOwnedError, match="MODEL_DIR .*thesis.txt"):
            train.cli(tfx.train_args(task, out, steps=1, batch=4))
    finally:
        gin.clear_config()
        sys.path.remove(task["dir"])
    _intact(out)


@pytest.mark.parametrize("job", ["eval", "baselines", "ensemble"])
def test_a_job_adds_to_its_own_output_but_not_to_another_jobs(toy, tmp_path, job):
    """Rerunning a job into its output works; another job's output directory is refused,
    and so is an unmarked one, even if it holds only file names that job writes (a familiar
    name proves nothing: ownership is the marker's)."""
    first = tmp_path / "first"
    assert _job(job, toy, first)[0] == 0
    marker = (first / ".flanrec-output.json").read_text()
    assert json.loads(marker)["job"] == job
    assert _job(job, toy, first)[0] == 0
    (first / ".flanrec-output.json").unlink()
    rc, err = _job(job, toy, first)
    assert rc == 2 and "not written by flanrec" in err, err
    (first / ".flanrec-output.json").write_text(marker)
    other = {"eval": "baselines", "baselines": "ensemble", "ensemble": "eval"}[job]
    rc, err = _job(other, toy, first)
    assert rc == 2 and f"holds the output of flanrec.{job}" in err, err
