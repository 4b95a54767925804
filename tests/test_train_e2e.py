"""`python -m flanrec.train` as users run it, in subprocesses: exact resume after SIGKILL and
after SIGTERM, and a real 2-process jax.distributed job (gloo) against a 1-process run.

Every run here is the tiny model on a real seqio task (tests/train_fixtures.py) with real
Orbax checkpoints; runs of one test share JAX's persistent compilation cache, so the runs
being compared execute the very same compiled programs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import train_fixtures as tfx

from flanrec import checkpoints

STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    task = tfx.make_task(root / "task")
    return {"root": root, "task": task, "cache": root / "jax_cache"}


def _args(setup, name: str, steps: int = STEPS, extra: tuple[str, ...] = ()) -> list[str]:
    return tfx.train_args(setup["task"], setup["root"] / name, steps=steps, batch=8,
                          extra=("--gin.CHECKPOINT_PERIOD=5", *extra))


def _popen_until(args, env, stderr_path: Path, pattern: str) -> tuple[subprocess.Popen, str]:
    """Start a training process and return once a stdout line matches `pattern`."""
    proc = subprocess.Popen([sys.executable, "-m", "flanrec.train", *args], cwd=tfx.REPO,
                            env=env, stdout=subprocess.PIPE, stderr=open(stderr_path, "w"),
                            text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return proc, "".join(seen)
    proc.wait()
    raise AssertionError(f"process ended (rc {proc.returncode}) before {pattern!r}:\n"
                         + "".join(seen)[-3000:] + stderr_path.read_text()[-3000:])


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs (max |Δ| "\
            f"{np.max(np.abs(a[k] - b[k]))})"


@pytest.fixture(scope="module")
def straight(setup):
    env = tfx.subprocess_env(setup["task"], 1, setup["cache"])
    proc = tfx.run_train(_args(setup, "straight"), env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model_dir = setup["root"] / "straight"
    assert checkpoints.latest_complete_step(model_dir) == STEPS
    return tfx.params_of(model_dir)


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bitwise_exact(setup, straight):
    """One run interrupted twice: SIGTERM (checkpoint at the next step, exit 0), then SIGKILL
    of the resumed run right after its next checkpoint commits; the last restart finishes
    with exactly the parameters of the uninterrupted run."""
    env = tfx.subprocess_env(setup["task"], 1, setup["cache"])
    model_dir = setup["root"] / "interrupted"
    args = _args(setup, "interrupted")

    proc, _ = _popen_until(args, env, setup["root"] / "term.err", rf"step 7/{STEPS} ")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait()
    assert proc.returncode == 0, rest[-3000:]
    rest += (setup["root"] / "term.err").read_text()  # warnings go to stderr
    match = re.search(r"preempted: checkpoint (\d+) saved", rest)
    assert match, rest[-3000:]
    saved = int(match.group(1))
    assert 7 <= saved < STEPS
    assert checkpoints.latest_complete_step(model_dir) == saved

    proc, seen = _popen_until(args, env, setup["root"] / "kill.err", rf"step {saved + 1}/")
    assert f"at step {saved} (skipping {saved} input batches)" in seen
    for _ in proc.stdout:  # kill as soon as a newer (async) checkpoint has committed
        if (checkpoints.latest_complete_step(model_dir) or 0) > saved:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoints.latest_complete_step(model_dir)
    assert saved < killed_at < STEPS, (saved, killed_at)

    again = tfx.run_train(args, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"at step {killed_at} (skipping {killed_at} input batches)" in again.stdout
    _assert_bitwise_equal(tfx.params_of(model_dir), straight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_and_write_one_checkpoint(setup):
    # Unshuffled, unpacked and without dropout, the 2 hosts' shards (examples 0,2,4,… and
    # 1,3,5,…) form exactly the global batches of the 1-process run, in another row order;
    # per-token normalised losses are order-free up to float rounding.
    extra = ("--gin.DROPOUT_RATE=0.0", "--gin.train/DatasetConfig.shuffle=False")
    steps = 5
    ref_env = tfx.subprocess_env(setup["task"], 4)
    port = _free_port()
    multi_dir = setup["root"] / "multi"
    procs = []
    for pid in range(2):
        env = tfx.subprocess_env(setup["task"], 2)
        args = [*_args(setup, "multi", steps, extra), f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={pid}"]
        procs.append(subprocess.Popen([sys.executable, "-m", "flanrec.train", *args],
                                      cwd=tfx.REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    ref = tfx.run_train(_args(setup, "single4", steps, extra), ref_env)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert "mesh {'data': 4, 'model': 1} over 4 devices (2 processes)" in outs[0]

    multi = tfx.read_scalars(multi_dir / "train", "loss")
    single = tfx.read_scalars(setup["root"] / "single4" / "train", "loss")
    assert sorted(multi) == list(range(1, steps + 1)) == sorted(single)
    np.testing.assert_allclose([multi[s] for s in sorted(multi)],
                               [single[s] for s in sorted(single)], rtol=1e-5)
    # One checkpoint, written jointly, complete, and it restores to the single-process params.
    names = sorted(p.name for p in multi_dir.iterdir())
    assert [n for n in names if n.startswith("checkpoint")] == [f"checkpoint_{steps}"], names
    assert checkpoints.is_complete(multi_dir / f"checkpoint_{steps}")
    got, want = tfx.params_of(multi_dir), tfx.params_of(setup["root"] / "single4")
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert os.path.exists(multi_dir / "config.gin")
