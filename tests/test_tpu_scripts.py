"""tpu_scripts/*.sh with --dry_run: the exact gcloud commands they would run, parsed back the
way a shell would (shlex), including the command each worker's shell receives."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TPU_NAME", "ZONE", "PROJECT")}
    full_env["PATH"] = "/usr/bin:/bin"  # no gcloud needed (nor used) for --dry_run
    full_env.update(env or {})
    proc = subprocess.run(["bash", str(SCRIPTS / script), *args, "--dry_run"],
                          capture_output=True, text=True, env=full_env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def fails(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "PROJECT")}
    proc = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True,
                          text=True, env=env, timeout=30)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout)
    return proc.stderr


def remote_command(argv: list[str]) -> list[str]:
    (cmd,) = [a for a in argv if a.startswith("--command=")]
    return shlex.split(cmd[len("--command="):])


def test_create_pod_slice():
    cmds = dry_run("create.sh", "--name=rec-v4", "--zone", "us-central2-b",
                   "--accelerator_type=v4-32", "--project=my-proj", "--spot")
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "rec-v4",
                     "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
                     "--version=tpu-ubuntu2204-base", "--spot"]]


def test_install_on_all_workers():
    cmds = dry_run("install.sh", env={"TPU_NAME": "rec-v4", "ZONE": "europe-west4-a"})
    assert [c[:2] for c in cmds] == [["tar", "-czf"], ["gcloud", "compute"], ["gcloud", "compute"]]
    tar, scp, ssh = cmds
    assert "--exclude=.venv" in tar and tar[-3:] == ["-C", str(SCRIPTS.parent), "."]
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/flanrec-src.tgz"]
    assert "rec-v4:flanrec-src.tgz" in scp and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rec-v4"]
    assert "--worker=all" in ssh and "--zone=europe-west4-a" in ssh
    remote = remote_command(ssh)
    assert "jax[tpu]" in remote and ["-e", "~/flanrec"] == remote[remote.index("-e"):][:2]


def test_launch_passes_gin_flags_through_on_all_workers():
    gin = ["--gin_file=gin/models/flan_t5_base.gin", "--gin_file=gin/runs/finetune.gin",
           "--gin.MODEL_DIR=gs://bucket/runs/ml 100k", "--gin.MIXTURE_OR_TASK_NAME='ml100k'",
           "--gin.TRAIN_STEPS=2000"]
    (ssh,) = dry_run("launch.sh", "--name=rec-v4", "--zone=us-central2-b", *gin)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rec-v4"]
    assert "--worker=all" in ssh
    remote = remote_command(ssh)
    assert remote[:3] == ["cd", "~/flanrec", "&&"]
    start = remote.index("python3")
    end = remote.index(">")
    # Each worker's shell gets exactly our argv back, quotes and spaces included.
    assert remote[start:end] == ["python3", "-m", "flanrec.train", *gin, "--distributed"]
    assert remote[end:] == [">", "~/flanrec_train.log", "2>&1", "<", "/dev/null", "&"]
    assert "nohup" in remote


def test_logs_and_delete():
    (tail,) = dry_run("logs.sh", "--name=rec-v4", "--zone=z", "--worker=all", "--lines=20")
    assert "--worker=all" in tail and remote_command(tail) == ["tail", "-n", "20", "-f",
                                                                "~/flanrec_train.log"]
    (tail,) = dry_run("logs.sh", "--name=rec-v4", "--zone=z", "--no_follow")
    assert "--worker=0" in tail and "-f" not in remote_command(tail)
    (delete,) = dry_run("delete.sh", "--name=rec-v4", "--zone=z")
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rec-v4", "--zone=z",
                      "--quiet"]


def test_bad_invocations_are_refused():
    assert "--name (or TPU_NAME) is required" in fails("delete.sh", "--zone=z", "--dry_run")
    assert "--zone (or ZONE) is required" in fails("create.sh", "--name=a", "--dry_run",
                                                   "--accelerator_type=v4-8")
    assert "--accelerator_type" in fails("create.sh", "--name=a", "--zone=z", "--dry_run")
    assert "unknown flag --bogus" in fails("install.sh", "--name=a", "--zone=z", "--bogus")
    assert "nothing to configure" in fails("launch.sh", "--name=a", "--zone=z", "--dry_run")
    assert "--worker must be" in fails("logs.sh", "--name=a", "--zone=z", "--worker=x",
                                       "--dry_run")
