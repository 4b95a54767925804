"""Output directories under concurrent runs, crashes, symlinks and full disks (issue 24).

Real runs of the jobs (train and infer as subprocesses where a second process or a killed
one is the point, prepare in-process), each asserting the exit code or error, the one-line
message, and that every file a user put there is intact:

* run locks: a second training into a busy MODEL_DIR is refused naming the holder's pid and
  host; a killed run's lock is taken over with a note; another host's lock is refused with
  the file to delete; SIGTERM releases the lock; a prepare refuses while another holds
  its output;
* ownership by marker: a user's folder holding a `config.gin` is not adopted as a MODEL_DIR;
  an older MODEL_DIR is recognised by its checkpoints' flanrec checksums;
* user files inside a prepare output are never deleted by a rerun;
* symlinks: an input reached through a link into the output is refused; an `--out` link is
  followed, never replaced;
* scratch: a killed prepare's scratch dir (named with host and pid) is removed by the next
  run, a live run's never;
* full disks (RLIMIT_FSIZE in the child, SIGXFSZ ignored: writes fail with EFBIG, as they
  would with ENOSPC): a checkpoint save and an infer write end in one line, the previous
  checkpoint / finished chunks intact, no scratch left, and a rerun completes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gin
import pytest
import train_fixtures as tfx

from flanrec.files import outputs, storage
from flanrec.frontend import jobs
from flanrec.prepare import cli as prepare

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
LOCK = outputs.LOCK


# ------------------------------------------------------------------------------ helpers


def _limited(limit: int) -> list[str]:
    """A command prefix running the rest with files limited to `limit` bytes: writes past it
    fail with EFBIG (SIGXFSZ ignored), what a full disk does with ENOSPC, without a mount."""
    code = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    return [sys.executable, "-c", code]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def _one_error(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The single error line of a refused run (and no traceback anywhere)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    [line] = _error_lines(proc.stderr)
    assert line.startswith(f"{prog}: error: ")
    return line


def _wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the lock file `path` names `proc` (written in full)."""
    deadline = time.time() + timeout
    while not (path.exists() and f'"pid": {proc.pid},' in path.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(errors="replace")
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("trust2") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


@pytest.fixture(scope="module")
def env(task, tmp_path_factory):
    return tfx.subprocess_env(task, cache_dir=tmp_path_factory.mktemp("jaxcache"))


def _largest_array_bytes(item_dir: Path) -> int:
    """Bytes of the largest float32 array of a saved checkpoint item (its Orbax _METADATA)."""
    tree = json.loads((item_dir / "_METADATA").read_text())["tree_metadata"]
    return max(4 * math.prod(leaf["value_metadata"]["write_shape"]) for leaf in tree.values())


def _train_cmd(task, model_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "flanrec.train",
            *tfx.train_args(task, model_dir, steps=steps,
                            extra=("--gin.CHECKPOINT_PERIOD=1",))]


def _train(task, env, model_dir: Path, steps: int, prefix: tuple[str, ...] = ()
           ) -> subprocess.CompletedProcess:
    cmd = _train_cmd(task, model_dir, steps)
    if prefix:  # the prefix execs the interpreter itself
        cmd = [*prefix, *cmd[1:]]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _train_in_process(task, model_dir: Path, steps: int = 1) -> int:
    from flanrec.train import cli as train_cli

    try:
        return train_cli.cli(tfx.train_args(task, model_dir, steps=steps))
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def trained(task, env, tmp_path_factory):
    """A MODEL_DIR with committed, checksummed checkpoints 1 and 2."""
    d = tmp_path_factory.mktemp("trained") / "run"
    p = _train(task, env, d, steps=2)
    assert p.returncode == 0, p.stderr[-3000:]
    return d


# ------------------------------------------------------------------------------ run locks


def test_second_training_into_a_busy_model_dir_is_refused_naming_the_holder(task, env,
                                                                            tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(task, run, steps=3), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(run / LOCK, first)
        first.send_signal(signal.SIGSTOP)  # it holds the lock, frozen, for as long as we look
        holder = json.loads((run / LOCK).read_text())
        assert (holder["pid"], holder["host"], holder["job"]) == (first.pid, HOST, "train")
        second = _train(task, env, run, steps=3)
        assert second.returncode == 2
        line = _one_error(second, "flanrec.train")
        assert f"MODEL_DIR {run} is in use by flanrec.train (pid {first.pid} on host {HOST}, " \
               "since " in line and "refusing to run a second job into it" in line
        assert json.loads((run / LOCK).read_text()) == holder  # the holder's lock untouched
        # SIGTERM: the first run stops cleanly (a checkpoint first, if it was training) and
        # releases its lock.
        first.send_signal(signal.SIGTERM)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode in (0, 143), err[-3000:]  # preempted with a checkpoint, or in setup
    assert "Traceback" not in err
    assert not (run / LOCK).exists()
    if first.returncode == 0:
        assert list(run.glob("checkpoint_*"))


def test_killed_training_lock_is_taken_over_and_its_orbax_scratch_removed(task, env,
                                                                          tmp_path):
    run = tmp_path / "run"
    killed = subprocess.Popen(_train_cmd(task, run, steps=2), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(run / LOCK, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == killed.pid  # left behind
    scratch = run / "checkpoint_7.orbax-checkpoint-tmp"  # a save cut short
    (scratch / "params").mkdir(parents=True)
    (scratch / "params" / "d").write_bytes(b"\0" * 1000)
    again = _train(task, env, run, steps=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"note: MODEL_DIR {run}: taking over the lock of flanrec.train (pid {killed.pid} " \
           f"on host {HOST}, since " in again.stderr
    assert "which is no longer running" in again.stderr
    assert f"removing {scratch}" in again.stdout + again.stderr  # a warning, wherever logged
    assert not scratch.exists() and not (run / LOCK).exists()
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_1", "checkpoint_2"]


def test_another_hosts_lock_is_refused_with_the_file_to_delete(task, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    lock = {"format": "flanrec.lock", "job": "train", "pid": 4242, "host": "elsewhere-7",
            "started": time.time() - 7200, "started_utc": "2026-01-01T00:00:00Z"}
    (run / LOCK).write_text(json.dumps(lock))
    before = _tree(run)
    with pytest.raises(outputs.OutputInUseError) as e:
        _train_in_process(task, run, steps=3)
    message = jobs.one_line(e.value)  # as the job prints it (gin adds a line of context)
    assert f"MODEL_DIR {run} is locked by flanrec.train (pid 4242 on host elsewhere-7, since " \
           "2026-01-01T00:00:00Z, 2.0 h ago); flanrec cannot see processes on another host: " \
           f"if that run has ended, delete {run / LOCK} and rerun" == message
    assert _tree(run) == before  # nothing written, the other host's lock kept


def test_prepare_refuses_while_another_process_holds_its_output(tmp_path):
    raw, out = _log(tmp_path), tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flanrec.files import outputs; "
         f"outputs.acquire_lock({str(out)!r}, 'prepare', beside=True); print('held', "
         "flush=True); time.sleep(120)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(outputs.OutputInUseError,
                           match=rf"--out {out} is in use by flanrec.prepare \(pid "
                                 rf"{holder.pid} on host {HOST}, since "):
            _prepare(raw, out)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    _prepare(raw, out)  # its holder is gone: taken over
    assert (out / "prepare.json").is_file()
    assert not list(tmp_path.glob(f".out{LOCK}"))  # released


def test_locks_on_object_stores_name_the_holder_and_are_taken_over_when_dead():
    root = f"ram://flanrec-trust2-locks-{os.getpid()}"
    mine = outputs.claim_dir(storage.join(root, "a"), "eval")
    path = storage.join(mine, LOCK)
    assert json.loads(storage.read_text(path))["pid"] == os.getpid()
    outputs.release_lock(path)
    assert not storage.exists(path)
    theirs = storage.join(root, "b")
    outputs.claim_dir(theirs, "eval")
    outputs.release_lock(storage.join(theirs, LOCK))
    for host, pid, expect in [("elsewhere-7", 4242, "cannot see processes on another host"),
                              (HOST, os.getppid(), "is in use by flanrec.eval")]:
        storage.write_json_atomic(storage.join(theirs, LOCK), {
            "format": "flanrec.lock", "job": "eval", "pid": pid, "host": host,
            "started": time.time(), "started_utc": "now"})
        with pytest.raises(outputs.OutputInUseError, match=expect):
            outputs.claim_dir(theirs, "eval")
    storage.write_json_atomic(storage.join(theirs, LOCK), {
        "format": "flanrec.lock", "job": "eval", "pid": _dead_pid(), "host": HOST,
        "started": time.time(), "started_utc": "then"})
    outputs.claim_dir(theirs, "eval")  # dead on this host: taken over
    assert json.loads(storage.read_text(storage.join(theirs, LOCK)))["pid"] == os.getpid()
    outputs.release_locks()


# ------------------------------------------------------------------------------ ownership


def test_users_folder_with_a_config_gin_is_not_adopted_as_a_model_dir(task, tmp_path):
    folder = tmp_path / "my-experiments"
    folder.mkdir()
    (folder / "config.gin").write_text("# my own settings\nLEARNING_RATE = 0.5\n")
    (folder / "notes.txt").write_text("keep me")
    before = _tree(folder)
    with pytest.raises(storage.NotOwnedError) as e:
        _train_in_process(task, folder)
    assert jobs.one_line(e.value) == (
        f"MODEL_DIR {folder} exists and was not written by flanrec (no .flanrec-output.json; "
        "it holds config.gin, notes.txt); refusing to write into it: choose a new or empty "
        "directory")
    assert _tree(folder) == before


def test_older_model_dir_is_recognised_by_its_checkpoint_checksums_only(trained, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(trained, older)
    (older / storage.MARKER).unlink()  # as written before the marker existed
    assert outputs.ownership_problem(str(older), "train") is None
    (older / "thesis.tex").write_text("mine")  # not something training writes
    assert "not written by flanrec" in outputs.ownership_problem(str(older), "train")
    (older / "thesis.tex").unlink()
    for ckpt in older.glob("checkpoint_*"):
        (ckpt / "checksums.json").unlink()  # no flanrec proof left: names alone are not one
    assert "not written by flanrec" in outputs.ownership_problem(str(older), "train")


# ------------------------------------------------------------------------------ prepare


def _log(tmp_path: Path, users: int = 12, length: int = 6) -> Path:
    raw = tmp_path / "raw" / "log.csv"
    raw.parent.mkdir(exist_ok=True)
    rows = ["user_id,item_id,timestamp"] + [
        f"u{u},i{(u * 3 + t * 5) % 17},{1000 + 10 * t + u}"
        for u in range(users) for t in range(length)]
    raw.write_text("\n".join(rows) + "\n")
    return raw


def _prepare(raw: Path | str, out: Path | str, *flags: str) -> int:
    try:
        return prepare.cli(["--dataset", "csv", "--raw_dir", str(raw), "--out", str(out),
                            "--offline", "--families", "seq", "--num_shards", "1", *flags])
    finally:
        gin.clear_config()


def test_users_files_inside_a_prepare_output_are_never_deleted(tmp_path):
    raw, out = _log(tmp_path), tmp_path / "out"
    assert _prepare(raw, out) == 0
    marker = json.loads((out / storage.MARKER).read_text())
    assert "split/split.json" in marker["files"]  # the marker lists what prepare wrote
    (out / "mylog.csv").write_text("the only copy")
    (out / "split" / "notes.txt").write_text("mine too")
    before = _tree(out)
    with pytest.raises(storage.NotOwnedError) as e:
        _prepare(raw, out)
    assert str(e.value) == (
        f"--out {out} holds files flanrec.prepare did not write (mylog.csv, split/notes.txt); "
        "refusing to replace it, which would delete them: move them out of it, or choose "
        "another directory")
    assert _tree(out) == before
    (out / "mylog.csv").unlink()
    (out / "split" / "notes.txt").unlink()
    assert _prepare(raw, out) == 0  # its own files only: replaced as before


def test_input_reached_through_a_link_into_the_output_is_refused(tmp_path):
    raw, out = _log(tmp_path), tmp_path / "out"
    assert _prepare(raw, out) == 0
    shutil.copy(raw, out / "mylog.csv")
    (tmp_path / "out_link").symlink_to(out)
    before = _tree(out)
    with pytest.raises(storage.StorageError,
                       match=rf"^--out {out} is or contains the folder holding --raw_dir "
                             rf"{tmp_path / 'out_link' / 'mylog.csv'}; writing it would "
                             "replace the input: choose another directory$"):
        _prepare(tmp_path / "out_link" / "mylog.csv", out)
    assert _tree(out) == before
    # and the other way round: the output given through the link
    with pytest.raises(storage.StorageError, match="is or contains the folder holding"):
        _prepare(out / "mylog.csv", tmp_path / "out_link")
    assert _tree(out) == before


def test_out_given_as_a_symlink_is_followed_never_replaced(tmp_path):
    raw = _log(tmp_path)
    disk = tmp_path / "bigdisk" / "prepared"
    disk.mkdir(parents=True)
    link = tmp_path / "prepared"
    link.symlink_to(disk)
    for _ in range(2):  # a new output, then its replacement: both through the link
        assert _prepare(raw, link) == 0
        assert link.is_symlink() and os.readlink(link) == str(disk)
        assert (disk / "prepare.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigdisk", "prepared", "raw"]
    assert sorted(p.name for p in disk.parent.iterdir()) == ["prepared"]  # no scratch, no lock


def test_killed_prepares_scratch_is_removed_but_a_live_ones_never(tmp_path, capsys):
    raw, out = _log(tmp_path), tmp_path / "out"
    dead = tmp_path / f".out.tmp-{HOST}-pid{_dead_pid()}-k1ll3d"
    (dead / "out" / "split").mkdir(parents=True)
    (dead / "out" / "split" / "half.tsv").write_text("x")
    live = tmp_path / f".out.tmp-{HOST}-pid{os.getppid()}-l1ve"  # a running process
    live.mkdir()
    elsewhere = tmp_path / ".out.tmp-otherhost-pid1-abc"  # another host's: not ours to judge
    elsewhere.mkdir()
    assert _prepare(raw, out) == 0
    err = capsys.readouterr().err
    assert f"note: removing {dead}: the scratch directory of a run that was killed" in err
    assert not dead.exists() and live.is_dir() and elsewhere.is_dir()


def test_sigterm_during_prepare_leaves_no_scratch_and_no_lock(tmp_path):
    # A log large enough that prepare holds its lock for a while (a tiny one can finish
    # between two polls of the lock file).
    raw, out = _log(tmp_path, users=4000, length=30), tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flanrec.prepare", "--dataset", "csv", "--raw_dir", str(raw),
         "--out", str(out), "--offline", "--families", "seq", "--num_shards", "1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / f".out{LOCK}"
    try:
        _wait_for_lock(lock, proc)
        proc.send_signal(signal.SIGSTOP)
        scratch = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
        assert [p.name.split("-pid")[1].split("-")[0] for p in scratch] in ([], [str(proc.pid)])
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output, scratch, lock


# ------------------------------------------------------------------------------ full disks


def test_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_last_one(task, env,
                                                                               trained,
                                                                               tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("mine")  # the user's file inside a marked MODEL_DIR
    before = {p: (run / p).read_bytes() for p in ("checkpoint_2/checksums.json", "notes.txt")}
    # The resumed run trains step 3 and fails to save it. OCDBT groups arrays into data files
    # as its writes happen to batch, so only a limit below the largest single array fails
    # every layout of a save (a 100 kB limit let checkpoint 3 through now and then).
    limit = _largest_array_bytes(run / "checkpoint_2" / "params") * 3 // 4
    full = _train(task, env, run, steps=4, prefix=tuple(_limited(limit)))
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_error(full, "flanrec.train")
    assert line == (f"flanrec.train: error: MODEL_DIR {run}: cannot save checkpoint 3: File too "
                    "large [EFBIG]; its unfinished files were removed and checkpoint 2, the "
                    "last committed, is intact: free space on that disk (or raise the quota / "
                    "the file size limit) and rerun the same command to resume")
    assert "orbax" not in full.stderr.lower()  # none of Orbax's per-array reports
    assert "Event loop is closed" not in full.stderr + full.stdout
    assert not [p for p in run.iterdir() if "orbax-checkpoint-tmp" in p.name]
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_1", "checkpoint_2"]
    assert {p: (run / p).read_bytes() for p in before} == before
    assert not (run / LOCK).exists()
    again = _train(task, env, run, steps=4)  # space freed: resumes from step 2
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "checkpoint_2 at step 2" in again.stdout
    assert (run / "checkpoint_4" / "checksums.json").is_file()
    assert (run / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(prepared data dir, checkpoint dir) for inference: the toy of tests/test_infer_job."""
    from test_infer_job import toy as infer_toy

    return infer_toy.__wrapped__(tmp_path_factory)


def test_full_disk_during_infer_is_one_line_and_keeps_finished_chunks(toy, tmp_path):
    from test_infer_job import _args, _env, _records

    data, ckpt = toy
    out = tmp_path / "out"
    task = "toyinf_direct_seqidx"
    cmd = _args(ckpt, out, task, "--gin.MODE=score", "--gin.BATCH_SIZE=4",
                "--gin.CHUNK_SIZE=8")
    # chunks of 8 records fit in the limit, the shard of all 24 does not
    full = subprocess.run(_limited(12_000) + cmd[1:], cwd=REPO, env=_env(data),
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_error(full, "flanrec.infer")
    shard = out / f"{task}-score.jsonl-00000-of-00001"
    assert line == (f"flanrec.infer: error: {shard}: cannot write it: File too large "
                    "[EFBIG]; no half-written file was left; finished chunks are kept and a "
                    "rerun resumes from them; free space on that disk (or raise the quota / "
                    "the file size limit) and rerun")
    chunks = out / f".{shard.name}.chunks"
    assert len(list(chunks.glob("chunk-*.jsonl"))) == 3
    assert not shard.exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no half-written file
    assert not (out / LOCK).exists()
    again = subprocess.run(cmd, cwd=REPO, env=_env(data), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r["index"] for r in _records(out, task, "score")) == list(range(24))


def test_full_disk_during_prepare_keeps_the_previous_output_and_no_scratch(tmp_path):
    raw, out = _log(tmp_path), tmp_path / "out"
    assert _prepare(raw, out) == 0
    before = _tree(out)
    big = raw.parent / "big.csv"  # a larger log: its split files pass the size limit
    big.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{(u * 3 + t * 5) % 97},{1000 + 10 * t + u}\n"
        for u in range(300) for t in range(8)))
    full = subprocess.run(
        _limited(20_000) + ["-m", "flanrec.prepare", "--dataset", "csv", "--raw_dir", str(big),
                            "--out", str(out), "--offline", "--families", "seq",
                            "--num_shards", "1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_error(full, "flanrec.prepare")
    assert line == (f"flanrec.prepare: error: --out {out}: cannot write its files: File too "
                    "large [EFBIG]; nothing was published: the scratch directory is removed "
                    "and the previous output is intact; free space on that disk (or raise the "
                    "quota / the file size limit) and rerun")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no scratch, no lock

