"""tpu_scripts/*.sh: the gcloud commands they print under --dry_run, the command each worker's
shell receives *executed* by bash here (with a stand-in python that records its argv), the
argument checks, stop.sh against a real detached job, and the --restart_on_preemption loop
driven by a stand-in `gcloud` on PATH that answers PREEMPTED, then READY.

No Google Cloud is involved: what runs is the scripts' own control flow and the exact shell
strings they would send over ssh.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
TARGET = ("--name=rec-v4", "--zone=us-central2-b", "--project=my-proj")
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rec-v4", "--zone=us-central2-b",
       "--project=my-proj"]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# Gin values whose quotes and spaces must reach the trainer unchanged across the ssh hop.
TRICKY_GIN = ["--gin.MIXTURE_OR_TASK_NAME='ml100k_rec_mix'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 16}",
              "--gin.MODEL_DIR=gs://bucket/runs/ml 100k",
              '--gin_bindings=train.log_period = 7  # "$HOME" `not run` \\n']


CLOUD_TOOLS = {"gcloud", "gsutil", "bq", "docker-credential-gcloud"}


def _safe_path() -> str:
    """A PATH with the system's tools but never a real Google Cloud CLI (a machine running
    these tests may have one installed and logged in): links to everything in /usr/bin and
    /bin except the Cloud SDK commands."""
    bin_dir = Path(tempfile.gettempdir()) / f"flanrec-test-safe-bin-{os.getuid()}"
    if not (bin_dir / "bash").exists():
        tmp = Path(tempfile.mkdtemp(prefix="safe-bin-"))
        for src in (Path("/bin"), Path("/usr/bin")):
            for exe in src.iterdir():
                if exe.name not in CLOUD_TOOLS and not (tmp / exe.name).exists():
                    (tmp / exe.name).symlink_to(exe)
        try:
            tmp.replace(bin_dir)
        except OSError:  # another test process made it first
            shutil.rmtree(tmp)
    return str(bin_dir)


SAFE_PATH = _safe_path()


def _env(extra: dict | None = None, path: str = SAFE_PATH) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TPU_NAME", "ZONE", "PROJECT", "CLOUDSDK_CORE_PROJECT", "JOB")}
    env["PATH"] = path  # no gcloud here: --dry_run must not need it
    env.update(extra or {})
    return env


def script(name: str, *args: str, env: dict | None = None, cwd: Path = REPO,
           timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *args], capture_output=True,
                          text=True, env=env or _env(), cwd=cwd, timeout=timeout)


def dry_run(name: str, *args: str, env: dict | None = None, cwd: Path = REPO
            ) -> list[list[str]]:
    proc = script(name, *args, "--dry_run", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def fails(name: str, *args: str, env: dict | None = None) -> str:
    proc = script(name, *args, env=env)
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout,
                                                        proc.stderr)
    assert proc.stderr.startswith("error: ")
    return proc.stderr


def remote_command(argv: list[str]) -> str:
    (cmd,) = [a for a in argv if a.startswith("--command=")]
    return cmd[len("--command="):]


# ------------------------------------------------------------------------------- lint
def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (CI installs the Debian package)")
    # From the repository root, as CI and users run it (sourcing resolves via SCRIPTDIR).
    files = sorted(str(p.relative_to(REPO)) for p in SCRIPTS.glob("*.sh"))
    proc = subprocess.run(["shellcheck", "-x", "-s", "bash", *files], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- create
@pytest.mark.parametrize("accelerator,runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-32", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_picks_the_runtime_of_the_generation(accelerator, runtime):
    (cmd,) = dry_run("create.sh", *TARGET, f"--accelerator_type={accelerator}", "--spot")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rec-v4",
                   "--zone=us-central2-b", "--project=my-proj",
                   f"--accelerator-type={accelerator}", f"--version={runtime}", "--spot"]


def test_create_reports_the_slice_shape():
    proc = script("create.sh", *TARGET, "--accelerator_type=v4-32", "--dry_run")
    assert "v4-32: 16 JAX devices on 4 worker(s), 32 GiB HBM each" in proc.stderr
    proc = script("create.sh", *TARGET, "--accelerator_type=v5litepod-16", "--dry_run")
    assert "v5litepod-16: 16 JAX devices on 4 worker(s), 16 GiB HBM each" in proc.stderr


def test_create_preemptible_and_queued():
    (cmd,) = dry_run("create.sh", *TARGET, "--accelerator_type", "v4-8", "--preemptible",
                     "--version=tpu-vm-v4-base")
    assert cmd[-2:] == ["--version=tpu-vm-v4-base", "--preemptible"]
    (cmd,) = dry_run("create.sh", *TARGET, "--accelerator_type=v5p-32", "--spot", "--queued",
                     "--valid_until_duration=6h")
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "rec-v4-qr",
                   "--node-id=rec-v4", "--zone=us-central2-b", "--project=my-proj",
                   "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5",
                   "--valid-until-duration=6h", "--spot"]


def test_create_refuses_bad_arguments():
    acc = "--accelerator_type=v4-8"
    assert "--zone (or ZONE) is required" in fails("create.sh", "--name=a", "--project=p",
                                                   acc, "--dry_run")
    assert "--project (or PROJECT) is required" in fails("create.sh", "--name=a", "--zone=z",
                                                         acc, "--dry_run")
    assert "--name (or TPU_NAME) is required" in fails("create.sh", "--zone=z", "--project=p",
                                                       acc, "--dry_run")
    assert "--name 'Bad_Name' is not a valid TPU name" in fails(
        "create.sh", "--name=Bad_Name", "--zone=z", "--project=p", acc, "--dry_run")
    assert "--accelerator_type is required" in fails("create.sh", *TARGET, "--dry_run")
    for bad in ("v4-7", "v9-8", "v5litepod-12", "tpu-v4", "v5p"):
        err = fails("create.sh", *TARGET, f"--accelerator_type={bad}", "--dry_run")
        assert f"--accelerator_type '{bad}' is not a known TPU type" in err
        assert "v4-32" in err and "v5litepod-16" in err  # the known list is shown
    err = fails("create.sh", *TARGET, "--accelerator_type=v5litepod-16",
                "--version=tpu-ubuntu2204-base", "--dry_run")
    assert "--version tpu-ubuntu2204-base is a runtime image for v2 v3 v4" in err
    assert "v5litepod's default (v2-alpha-tpuv5-lite)" in err
    err = fails("create.sh", *TARGET, acc, "--version=v2-alpha-tpuv5-lite", "--dry_run")
    assert "not for v4 TPUs" in err
    assert "use --spot" in fails("create.sh", *TARGET, acc, "--queued", "--preemptible",
                                 "--dry_run")
    assert "unknown flag --bogus" in fails("create.sh", *TARGET, acc, "--bogus")
    assert "--zone needs a value" in fails("create.sh", "--zone")


def test_environment_supplies_the_target():
    env = _env({"TPU_NAME": "rec-v4", "ZONE": "europe-west4-a", "PROJECT": "p2"})
    (cmd,) = dry_run("delete.sh", env=env)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rec-v4",
                   "--zone=europe-west4-a", "--project=p2", "--quiet"]
    (cmd,) = dry_run("delete.sh", "--queued", env=env)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "rec-v4-qr"]
    assert "--force" in cmd


def test_without_gcloud_only_dry_run_works():
    assert shutil.which("gcloud", path=SAFE_PATH) is None
    err = fails("delete.sh", *TARGET)
    assert "gcloud not found" in err and "--dry_run" in err


# ------------------------------------------------------------------------------ setup
def test_setup_from_this_checkout_on_all_workers():
    cmds = dry_run("setup.sh", *TARGET, "--checkpoint",
                   "gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000")
    assert [c[:2] for c in cmds] == [["tar", "-czf"], ["gcloud", "compute"],
                                     ["gcloud", "compute"]]
    tar, scp, ssh = cmds
    assert "--exclude=.venv" in tar and "--exclude=./data" in tar
    assert tar[-3:] == ["-C", str(REPO), "."]
    assert scp[4] == "scp" and scp[6] == "rec-v4:flanrec-src.tgz" and "--worker=all" in scp
    assert ssh[:8] == SSH and "--worker=all" in ssh
    remote = remote_command(ssh)
    words = shlex.split(remote)
    assert "python3.11" in words and "jax[tpu]" in words
    assert words[words.index("-e"):][:2] == ["-e", "$HOME/flanrec"]
    assert ("gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000 "
            "$HOME/flanrec/checkpoints/flan_t5_base/") in remote
    # install.sh is the old name: same commands.
    assert dry_run("install.sh", *TARGET, "--checkpoint",
                   "gs://t5-data/pretrained_models/t5x/flan_t5_base/checkpoint_1184000"
                   ) == cmds


def test_setup_from_git_or_wheel(tmp_path):
    (ssh,) = dry_run("setup.sh", *TARGET, "--git_url=https://github.com/me/flanrec.git",
                     "--git_ref=v0.1.0", "--jax=jax[tpu]==0.6.2")
    words = shlex.split(remote_command(ssh))
    assert words[words.index("clone"):][:3] == [
        "clone", "-q", "https://github.com/me/flanrec.git"]
    assert "v0.1.0" in words and "jax[tpu]==0.6.2" in words
    wheel = tmp_path / "flanrec-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    tar, scp, ssh = dry_run("setup.sh", *TARGET, f"--wheel={wheel}")
    assert tar[-3:] == ["-C", str(REPO), "gin"]
    assert str(wheel) in scp and "--worker=all" in scp
    assert "$HOME/flanrec-0.1.0-py3-none-any.whl" in remote_command(ssh)


def test_setup_only_copies_checkpoints():
    (ssh,) = dry_run("setup.sh", *TARGET, "--only_checkpoints",
                     "--checkpoint=gs://b/runs/base_ml1m/checkpoint_20000/")
    assert "--worker=all" in ssh
    remote = remote_command(ssh)
    assert "pip" not in remote and "tar" not in remote
    assert ("gsutil -m -q cp -r gs://b/runs/base_ml1m/checkpoint_20000 "
            "$HOME/flanrec/checkpoints/base_ml1m/") in remote
    assert "needs at least one --checkpoint" in fails("setup.sh", *TARGET, "--only_checkpoints",
                                                      "--dry_run")


@pytest.mark.parametrize("name", ["create.sh", "setup.sh", "install.sh", "launch.sh", "logs.sh",
                                  "stop.sh", "delete.sh"])
def test_help_is_the_header_comment(name):
    proc = script(name, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(
        (SCRIPTS / ("setup.sh" if name == "install.sh" else name)).read_text().splitlines()[1][2:])
    assert "_common.sh" not in proc.stdout and "shellcheck" not in proc.stdout


def test_setup_refuses_bad_arguments(tmp_path):
    assert "--git_ref needs --git_url" in fails("setup.sh", *TARGET, "--git_ref=main",
                                                "--dry_run")
    assert "no such .whl file" in fails("setup.sh", *TARGET,
                                        f"--wheel={tmp_path}/missing.whl", "--dry_run")
    assert "--checkpoint /tmp/ckpt: expected gs://" in fails(
        "setup.sh", *TARGET, "--checkpoint=/tmp/ckpt", "--dry_run")
    assert "--python must name" in fails("setup.sh", *TARGET, "--python=python3; rm -rf ~",
                                         "--dry_run")
    assert "--remote_dir must be a plain path" in fails(
        "setup.sh", *TARGET, "--remote_dir=../x", "--dry_run")


# ----------------------------------------------------------------------------- launch
def fake_worker_home(root: Path, python_body: str) -> Path:
    """A worker's $HOME: the code dir and a venv whose `python` is the given bash script."""
    home = root / "home"
    (home / "flanrec").mkdir(parents=True)
    py = home / "flanrec-venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/bash\n" + textwrap.dedent(python_body))
    py.chmod(0o755)
    return home


RECORD_ARGV = """\
/usr/bin/python3 -c 'import json, os, sys
json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(),
           "data_dir": os.environ.get("FLANREC_DATA_DIR")},
          open(os.environ["HOME"] + "/argv.json", "w"))' "$@"
echo "fake job ran"
"""


def run_remote(cmd: str, home: Path) -> subprocess.CompletedProcess:
    """What a worker's login shell does with the ssh command string."""
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30,
                          env={"HOME": str(home), "PATH": SAFE_PATH})


def wait_for(path: Path, timeout: float = 20) -> str:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


def test_launch_round_trips_gin_quoting_through_the_worker_shell(tmp_path):
    gin = ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/finetune.gin", *TRICKY_GIN]
    (ssh,) = dry_run("launch.sh", "train", *TARGET, *gin,
                     "--env=FLANREC_DATA_DIR=gs://b/prepared/ml 1m's")
    assert ssh[:8] == SSH and "--worker=all" in ssh
    home = fake_worker_home(tmp_path, RECORD_ARGV)
    proc = run_remote(remote_command(ssh), home)
    assert proc.returncode == 0, proc.stderr
    assert "train started, log" in proc.stdout
    logs = home / "flanrec_logs"
    assert wait_for(logs / "train.exit").strip() == "0"
    record = json.loads((home / "argv.json").read_text())
    # The trainer sees exactly the argv given to launch.sh, plus --distributed.
    assert record["argv"] == ["-m", "flanrec.train", *gin, "--distributed"]
    assert record["cwd"] == str(home / "flanrec")
    assert record["data_dir"] == "gs://b/prepared/ml 1m's"
    assert (logs / "train.log").read_text() == "fake job ran\n"
    assert (logs / "train.pid").read_text().strip().isdigit()


def test_launch_refuses_a_second_job_while_one_runs(tmp_path):
    (ssh,) = dry_run("launch.sh", "train", *TARGET, "--gin_file=gin/models/tiny.gin")
    home = fake_worker_home(tmp_path, "sleep 30\n")
    assert run_remote(remote_command(ssh), home).returncode == 0
    pid = int(wait_for(home / "flanrec_logs" / "train.pid"))
    try:
        again = run_remote(remote_command(ssh), home)
        assert again.returncode == 3 and "train is still running (stop.sh first)" in again.stderr
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_stop_terminates_the_job_so_it_can_checkpoint(tmp_path):
    """stop.sh's command, run by bash against a real detached job: the job gets SIGTERM, its
    shell survives it and records the job's exit status, exactly as after a trainer's
    checkpoint-and-exit."""
    (ssh,) = dry_run("launch.sh", "train", *TARGET, "--gin_file=gin/models/tiny.gin")
    home = fake_worker_home(tmp_path, """\
        trap 'echo "SIGTERM: saving"; exit 0' TERM
        echo ready
        sleep 60 & wait
        """)
    assert run_remote(remote_command(ssh), home).returncode == 0
    logs = home / "flanrec_logs"
    wait_for(logs / "train.pid")
    deadline = time.time() + 10
    while "ready" not in (logs / "train.log").read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    (stop,) = dry_run("stop.sh", *TARGET, "--timeout=20")
    assert "--worker=all" in stop
    proc = run_remote(remote_command(stop), home)
    assert proc.returncode == 0, proc.stderr
    assert "train stopped, exit 0" in proc.stdout
    assert (logs / "train.log").read_text() == "ready\nSIGTERM: saving\n"
    assert (logs / "train.exit").read_text().strip() == "0"
    assert "no running train job" in run_remote(remote_command(stop), home).stdout
    (force,) = dry_run("stop.sh", *TARGET, "--force", "--worker=2")
    assert "--worker=2" in force and "kill -KILL" in remote_command(force)


def test_launch_infer_and_eval(tmp_path):
    (ssh,) = dry_run("launch.sh", "infer", *TARGET, "--gin_file=gin/models/tiny.gin")
    assert "--worker=all" in ssh
    words = shlex.split(remote_command(ssh))
    assert "flanrec.infer" in " ".join(words) and "--distributed" in remote_command(ssh)
    # eval: host-side metrics over the predictions, on worker 0 only, no jax.distributed.
    (ssh,) = dry_run("launch.sh", "eval", *TARGET, "--gin_file=gin/models/tiny.gin")
    assert "--worker=0" in ssh
    home = fake_worker_home(tmp_path, RECORD_ARGV)
    assert run_remote(remote_command(ssh), home).returncode == 0
    wait_for(home / "flanrec_logs" / "eval.exit")
    assert json.loads((home / "argv.json").read_text())["argv"] == [
        "-m", "flanrec.eval", "--gin_file=gin/models/tiny.gin"]


def test_launch_resolves_gin_files_relative_to_the_checkout(tmp_path):
    (ssh,) = dry_run("launch.sh", "train", *TARGET, "--gin_file=models/tiny.gin",
                     cwd=REPO / "gin")
    assert "--gin_file=gin/models/tiny.gin" in remote_command(ssh)
    (ssh,) = dry_run("launch.sh", "train", *TARGET, f"--gin_file={REPO}/gin/models/tiny.gin",
                     cwd=tmp_path)
    assert "--gin_file=gin/models/tiny.gin" in remote_command(ssh)


def test_launch_refuses_bad_arguments(tmp_path):
    gin = "--gin_file=gin/models/tiny.gin"
    assert "give train, infer or eval" in fails("launch.sh", *TARGET, gin, "--dry_run")
    assert "unknown job 'fit'" in fails("launch.sh", "--job=fit", *TARGET, gin, "--dry_run")
    assert "no --gin_file given" in fails("launch.sh", "train", *TARGET, "--dry_run")
    err = fails("launch.sh", "train", *TARGET, "--gin_file=gin/models/nope.gin", "--dry_run")
    assert "--gin_file gin/models/nope.gin: no such file" in err
    outside = tmp_path / "mine.gin"
    outside.write_text("TRAIN_STEPS = 1\n")
    err = fails("launch.sh", "train", *TARGET, f"--gin_file={outside}", "--dry_run")
    assert f"--gin_file {outside} is outside this checkout" in err
    assert "--env expects NAME=VALUE" in fails("launch.sh", "train", *TARGET, gin,
                                               "--env=1X=y", "--dry_run")
    assert "--zone (or ZONE) is required" in fails("launch.sh", "train", "--name=a",
                                                   "--project=p", gin, "--dry_run")
    assert "--project (or PROJECT) is required" in fails("launch.sh", "train", "--name=a",
                                                         "--zone=z", gin, "--dry_run")
    assert "--on_preemption must be" in fails("launch.sh", "train", *TARGET, gin,
                                              "--on_preemption=pray", "--dry_run")
    err = fails("launch.sh", "train", *TARGET, gin, "--restart_on_preemption",
                "--accelerator_type=v4-9", "--dry_run")
    assert "--accelerator_type 'v4-9' is not a known TPU type" in err
    assert "gin macros are passed as --gin.NAME=VALUE" in fails(
        "launch.sh", "train", *TARGET, gin, "--gin.TRAIN_STEPS", "--dry_run")


def test_local_sim_runs_the_worker_command_with_localhost_coordination():
    """--local_sim's per-worker commands are the TPU command with --distributed replaced by
    explicit jax.distributed flags; nothing else differs."""
    args = ("--gin_file=gin/models/tiny.gin", *TRICKY_GIN)
    (tpu,) = dry_run("launch.sh", "train", *TARGET, *args)
    sims = dry_run("launch.sh", "train", *args, "--local_sim=2", "--local_sim_dir=/tmp/sim",
                   f"--local_venv={REPO / '.venv'}")
    assert len(sims) == 2
    for i, sim in enumerate(sims):
        assert sim[:2] == ["env", f"HOME=/tmp/sim/worker{i}"] and sim[-3] == "bash"
        port = sim[-1].split("--coordinator_address=127.0.0.1:")[1].split()[0]
        dist = f"--coordinator_address=127.0.0.1:{port} --num_processes=2 --process_id={i}"
        assert sim[-1] == remote_command(tpu).replace("--distributed", dist)


def test_local_sim_ends_the_other_workers_when_one_fails(tmp_path):
    """Worker 1's job fails at once while worker 0's would wait forever (as in a collective
    whose peer died): the simulation kills worker 0 and reports the failure, without waiting
    for its timeout."""
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text('#!/bin/bash\n'
                  '[ "$1" = -c ] && exec /usr/bin/python3 "$@"  # the free-port query\n'
                  'case "$*" in *--process_id=1*) echo boom; exit 7 ;; esac\nsleep 120\n')
    py.chmod(0o755)
    start = time.time()
    proc = script("launch.sh", "train", "--gin_file=gin/models/tiny.gin", "--local_sim=2",
                  f"--local_sim_dir={tmp_path / 'sim'}", f"--local_venv={venv}",
                  "--local_sim_timeout=100")
    assert proc.returncode == 7, proc.stderr
    assert time.time() - start < 30
    assert "worker 1: exit 7" in proc.stderr and "boom" in proc.stderr
    assert "worker 0: exit killed" in proc.stderr


# --------------------------------------------------------------- restart on preemption
FAKE_GCLOUD = """\
#!/bin/bash
# Stand-in for the Google Cloud CLI: logs its argv, answers state queries from scripts.
dir="$(dirname "$0")/.."
printf '%s\\n' "$*" >> "$dir/calls.log"
next() {  # pop the first line of a script file
  local line; line="$(head -n 1 "$dir/$1")"; sed -i 1d "$dir/$1"; printf '%s' "$line"
}
case "$*" in
  *" describe "*acceleratorType*) printf 'v4-32\ttpu-ubuntu2204-base\tTrue\t\n' ;;
  *" describe "*)
    s="$(next states)"
    if [ "$s" = NOT_FOUND ]; then
      echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource not found" >&2
      exit 1
    elif [ "$s" = DENIED ]; then
      echo "ERROR: (gcloud) You do not currently have an active account selected." >&2
      exit 1
    fi
    echo "$s" ;;
  *" ssh "*RESUMABLE*) echo "Warning: something chatty"; next jobs; echo ;;
  *) ;;
esac
"""


def fake_gcloud(tmp_path: Path, states: list[str], jobs: list[str]) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    (tmp_path / "states").write_text("".join(s + "\n" for s in states))
    (tmp_path / "jobs").write_text("".join(j + "\n" for j in jobs))
    (tmp_path / "calls.log").write_text("")
    return _env({"TMPDIR": str(tmp_path)}, path=f"{bin_dir}:{SAFE_PATH}")


RESTART = ("train", *TARGET, "--gin_file=gin/models/tiny.gin",
           "--gin.MODEL_DIR=gs://b/run 1", "--restart_on_preemption",
           "--accelerator_type=v4-32", "--spot", "--poll_seconds=0")


def _kinds(cmds: list[list[str]]) -> list[str]:
    out = []
    for c in cmds:
        if c[0] == "tar":
            out.append("tar")
        elif c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]:
            kind = c[4]
            if kind == "ssh":
                kind = "launch" if "flanrec.train" in remote_command(c) else "setup"
            out.append(kind)
        else:
            out.append(" ".join(c[:5]))
    return out


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def test_restart_loop_recreates_a_preempted_slice_and_resumes(tmp_path):
    env = fake_gcloud(tmp_path, ["READY", "READY", "PREEMPTED", "CREATING", "READY", "READY",
                                 "READY"], ["RUNNING", "RUNNING", "EXIT 0"])
    proc = script("launch.sh", *RESTART, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = _calls(tmp_path)
    # Launch, then after PREEMPTED delete + create, setup on the new slice and the same
    # launch again; the describes and worker-0 status queries in between.
    acts = [c for c in calls if " describe " not in c and "--worker=0" not in c]
    kinds = [c.split()[3] for c in acts]
    assert kinds == ["ssh", "delete", "create", "scp", "ssh", "ssh"]
    assert acts[0] == acts[-1] and "flanrec.train" in acts[0]
    assert "--accelerator-type=v4-32" in acts[2] and "--spot" in acts[2]
    assert "--worker=all" in acts[0] and "--worker=all" in acts[4]
    assert "is PREEMPTED: recreating it (restart 1)" in proc.stderr
    assert "the train job finished (exit 0)" in proc.stderr
    assert sum(" describe rec-v4 " in c for c in calls) == 7
    assert sum(" ssh rec-v4 " in c and "--worker=0" in c for c in calls) == 3
    assert all("--format=value(state)" in c for c in calls if " describe " in c)


def test_restart_as_the_readme_writes_it_recreates_the_slice_as_it_was(tmp_path):
    """No create.sh flags: the accelerator type, runtime and spot come from the slice."""
    env = fake_gcloud(tmp_path, ["READY", "PREEMPTED", "READY", "READY"], ["EXIT 0"])
    readme = [a for a in RESTART if a not in ("--accelerator_type=v4-32", "--spot")]
    proc = script("launch.sh", *readme, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = _calls(tmp_path)
    assert "acceleratorType" in calls[0]
    (create,) = [c for c in calls if " create " in c]
    assert "--accelerator-type=v4-32" in create and "--spot" in create
    assert "--version=tpu-ubuntu2204-base" in create
    assert "recreated as it is now: v4-32" in proc.stderr


def test_restart_dry_run_calls_no_gcloud(tmp_path):
    """--dry_run prints the plan (poll, launch, recreate, setup, relaunch) and runs nothing,
    with or without gcloud on PATH."""
    readme = [a for a in RESTART if a not in ("--accelerator_type=v4-32", "--spot")]
    for env in (_env(), fake_gcloud(tmp_path, ["READY"], [])):
        proc = script("launch.sh", *readme, "--dry_run", env=env)
        assert proc.returncode == 0, proc.stderr
        cmds = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
        assert _kinds(cmds) == ["describe", "launch", "describe", "delete", "create", "tar",
                                "scp", "setup", "launch"]
        assert "--format=value(state)" in cmds[0]
        assert "--accelerator-type=SLICE_TYPE" in cmds[4]
        assert "dry run:" in proc.stderr
    assert _calls(tmp_path) == []


def test_restart_loop_runs_the_commands_for_real_without_dry_run(tmp_path):
    """Same loop, not dry: the stand-in gcloud receives every command, in order; a slice that
    vanished (NOT_FOUND) is created without a delete; a job that stopped after SIGTERM on a
    live slice (RESUMABLE) is relaunched."""
    env = fake_gcloud(tmp_path, ["READY", "NOT_FOUND", "READY", "READY", "READY", "READY"],
                      ["RESUMABLE", "EXIT 0"])
    proc = script("launch.sh", *RESTART, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    kinds = [c.split()[3] if c.split()[2] == "tpu-vm" else c for c in calls]
    assert kinds == ["describe", "ssh",                         # READY: launch
                     "describe", "create",                      # NOT_FOUND: no delete
                     "describe", "scp", "ssh", "ssh",           # READY: setup, launch
                     "describe", "ssh",                         # job RESUMABLE
                     "describe", "ssh",                         # relaunch
                     "describe", "ssh"]                         # job EXIT 0: done
    assert (tmp_path / "flanrec-src.tgz").exists()  # setup's tar ran for real
    assert "is NOT_FOUND: recreating it" in proc.stderr
    assert "stopped (RESUMABLE) on a READY slice: relaunching" in proc.stderr


def test_restart_loop_stops_on_a_real_job_failure(tmp_path):
    env = fake_gcloud(tmp_path, ["READY", "READY"], ["EXIT 1"])
    proc = script("launch.sh", *RESTART, env=env)
    assert proc.returncode == 2
    assert "the train job failed with exit status 1 (not a preemption)" in proc.stderr
    # Before giving up it ends the job on every worker (the others would hang in a
    # collective and keep the TPU busy).
    acts = [c for c in _calls(tmp_path) if " describe " not in c and "--worker=0" not in c]
    launch, stop = acts
    assert "flanrec.train" in launch
    assert "--worker=all" in stop and "kill -TERM" in stop


def test_restart_loop_does_not_mistake_a_gcloud_error_for_preemption(tmp_path):
    env = fake_gcloud(tmp_path, ["DENIED"], [])
    proc = script("launch.sh", *RESTART, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no active account" not in proc.stderr  # gcloud's own message is shown…
    assert "You do not currently have an active account" in proc.stderr
    assert "describe rec-v4 failed" in proc.stderr  # …and nothing is recreated
    assert not [c for c in _calls(tmp_path) if " create " in c or " delete " in c]


def test_restart_loop_gives_up_after_max_restarts(tmp_path):
    env = fake_gcloud(tmp_path, ["PREEMPTED", "PREEMPTED"], [])
    proc = script("launch.sh", *RESTART, "--max_restarts=1", env=env)
    assert proc.returncode == 2 and "more than --max_restarts=1 times" in proc.stderr


def test_restart_loop_with_a_queued_resource(tmp_path):
    # A spot queued resource goes SUSPENDED when its node is preempted: delete it (with the
    # node) and queue a new one.
    env = fake_gcloud(tmp_path, ["ACTIVE", "READY", "SUSPENDED", "WAITING_FOR_RESOURCES",
                                 "ACTIVE", "READY", "ACTIVE", "READY"], ["EXIT 0"])
    proc = script("launch.sh", *RESTART, "--queued", env=env)
    assert proc.returncode == 0, proc.stderr
    acts = [c.split() for c in _calls(tmp_path) if " describe " not in c]
    assert acts[1][:5] == ["compute", "tpus", "queued-resources", "delete", "rec-v4-qr"]
    assert "--force" in acts[1]
    assert acts[2][:6] == ["compute", "tpus", "queued-resources", "create", "rec-v4-qr",
                           "--node-id=rec-v4"]
    assert "is WAITING_FOR_RESOURCES: waiting" in proc.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "queued-resources describe rec-v4-qr" in calls and "value(state.state)" in calls


# ------------------------------------------------------------------------ logs / delete
def test_logs_and_delete():
    (tail,) = dry_run("logs.sh", *TARGET, "--worker=all", "--lines=20", "--job=infer")
    assert "--worker=all" in tail
    assert remote_command(tail) == ('tail -n 20 -F $HOME/flanrec_logs/infer.log'
                                    ' | sed -u "s/^/$(hostname): /"')
    (tail,) = dry_run("logs.sh", *TARGET, "--no_follow")
    assert "--worker=0" in tail
    assert remote_command(tail) == "tail -n 100 $HOME/flanrec_logs/train.log"
    (delete,) = dry_run("delete.sh", *TARGET)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rec-v4",
                      "--zone=us-central2-b", "--project=my-proj", "--quiet"]
    assert "--worker must be" in fails("logs.sh", *TARGET, "--worker=x", "--dry_run")
    assert "unknown job 'fit'" in fails("logs.sh", *TARGET, "--job=fit", "--dry_run")
