"""A multi-host launch rehearsed on this machine: `tpu_scripts/launch.sh train --local_sim=2`
runs the very command string a TPU worker's shell would receive, once per simulated worker
(own $HOME, 2 fake CPU devices each, jax.distributed on localhost instead of --distributed),
and the two processes train the tiny model on a real seqio task into one Orbax checkpoint.
A second launch of the same command resumes from that checkpoint, as after a preemption.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import train_fixtures as tfx
from test_tpu_scripts import SAFE_PATH

from flanrec import checkpoints

LAUNCH = tfx.REPO / "tpu_scripts" / "launch.sh"


def _launch(task: dict, model_dir: Path, sim_dir: Path, steps: int
            ) -> subprocess.CompletedProcess:
    args = tfx.train_args(task, model_dir, steps=steps, batch=8,
                          extra=("--gin.CHECKPOINT_PERIOD=2",))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    # No persistent compilation cache: with a warm cache a rerun's processes reached their
    # first collective tens of seconds apart (one loading, one compiling), and gloo's fixed
    # 30 s rendezvous timed out on this loaded 2-core machine. Both compiling keeps them even.
    env.update(PATH=SAFE_PATH, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=tfx.FAST_COMPILE)
    # The task module is importable only through --env: the simulated workers, like TPU
    # workers, see what launch.sh forwards, not the caller's PYTHONPATH.
    return subprocess.run(
        ["bash", str(LAUNCH), "train", *args, f"--env=PYTHONPATH={task['dir']}",
         "--local_sim=2", "--local_sim_devices=2", f"--local_sim_dir={sim_dir}",
         f"--local_venv={sys.prefix}", "--local_sim_timeout=400"],
        cwd=tfx.REPO, env=env, capture_output=True, text=True, timeout=450)


def _log(sim_dir: Path, worker: int) -> str:
    return (sim_dir / f"worker{worker}" / "flanrec_logs" / "train.log").read_text()


@pytest.mark.slow
def test_local_two_worker_launch_trains_to_one_checkpoint_and_resumes(tmp_path):
    task = tfx.make_task(tmp_path / "task")
    model_dir = tmp_path / "model"

    first = _launch(task, model_dir, tmp_path / "sim1", steps=4)
    logs = [_log(tmp_path / "sim1", i) for i in range(2)]
    assert first.returncode == 0, first.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    for i in range(2):
        assert f"worker {i}: exit 0" in first.stderr
        assert f"process {i} of 2" in logs[i]
    assert "mesh {'data': 4, 'model': 1} over 4 devices (2 processes)" in logs[0]
    assert checkpoints.latest_complete_step(model_dir) == 4
    assert checkpoints.is_complete(model_dir / "checkpoint_2")
    # Only process 0 writes files besides the checkpoint shards: one config, one event file
    # per writer (process 1 logs its metrics to its own stdout only).
    assert (model_dir / "config.gin").is_file()
    assert len(list((model_dir / "train").glob("events.out.tfevents.*"))) == 1
    assert "step 4/4" in logs[0] and "step 4/4" in logs[1]

    # The same launch with more steps, as the restart loop issues after a preemption.
    second = _launch(task, model_dir, tmp_path / "sim2", steps=6)
    logs = [_log(tmp_path / "sim2", i) for i in range(2)]
    assert second.returncode == 0, second.stderr[-3000:] + logs[0][-3000:]
    for i in range(2):
        assert "at step 4 (skipping 4 input batches)" in logs[i]
    assert checkpoints.latest_complete_step(model_dir) == 6
    read = tfx.read_scalars(model_dir / "train", "loss")
    assert sorted(read) == [1, 2, 3, 4, 5, 6]
