"""Packaging: every runtime import is declared, and a built wheel carries the gin configs and
runs the jobs without a checkout (`--gin_file=runs/infer.gin`, `flanrec.convert --to hf`)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Declared but never imported by flanrec itself, and why they are needed anyway.
RUNTIME_ONLY = {
    "tensorboard": "clu.metric_writers writes the event files through it",
    "msgpack": "flax's msgpack serialisation of T5X checkpoints",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_requires() -> set[str]:
    """Distribution names in setup.py's install_requires (parsed, not imported)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            names = [ast.literal_eval(elt) for elt in node.value.elts]
            return {_norm(re.split(r"[\[<>=!~; ]", n, maxsplit=1)[0]) for n in names}
    raise AssertionError("setup.py has no install_requires")


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside `try: ... except ImportError/ModuleNotFoundError:` is optional."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                               "ModuleNotFoundError")
                for h in node.handlers):
            return True
    return False


def imported_modules(optional: bool = False) -> dict[str, list[str]]:
    """Top-level third-party module -> files importing it (required imports only, unless
    `optional`: then also those guarded by `except ImportError`)."""
    ours = {"flanrec", "tasks"}
    found: dict[str, list[str]] = {}
    for root in ("flanrec", "tasks"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree)
                       for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                if not optional and _optional(node, parents):
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ours or top == "__future__":
                        continue
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_runtime_import_is_in_install_requires():
    declared = install_requires()
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in imported_modules().items():
        provided_by = {_norm(d) for d in dists.get(module, [])}
        assert provided_by, f"{module} (imported by {files[0]}) is not installed here"
        if not provided_by & declared:
            missing[module] = (sorted(provided_by), files[0])
    assert not missing, f"imported but not in install_requires: {missing}"


def test_every_requirement_is_used():
    used = set()
    dists = importlib.metadata.packages_distributions()
    for module in imported_modules(optional=True):
        used |= {_norm(d) for d in dists.get(module, [])}
    unused = install_requires() - used - set(RUNTIME_ONLY)
    assert not unused, f"in install_requires but never imported: {sorted(unused)}"


# ------------------------------------------------------------------------ gin search path


def test_gin_files_resolve_t5x_style_from_any_directory(tmp_path, monkeypatch):
    """`runs/finetune.gin` (T5X's style) from a directory that is no checkout, includes
    inside it, and `--gin_search_paths` in T5X's comma-separated form, searched first."""
    import gin

    import flanrec.configurables  # noqa: F401 - every name the gin files bind
    from flanrec.eval.cli import parse_args as eval_args
    from flanrec.infer.cli import parse_args as infer_args
    from flanrec.train import cli as train

    mine, other = tmp_path / "mine", tmp_path / "other"
    for d in (mine, other):
        (d / "runs").mkdir(parents=True)
    # A user's own runs/finetune.gin shadows flanrec's: user paths come first.
    (mine / "runs" / "finetune.gin").write_text(
        "include 'gin/runs/finetune.gin'\nTRAIN_STEPS = 7\nMINE = 1\n")
    monkeypatch.chdir(tmp_path)
    required = ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 't'",
                "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
                "INITIAL_CHECKPOINT_PATH = None"]
    try:
        train.configure_gin(["runs/finetune.gin", "models/tiny.gin"], required,
                            [f"{tmp_path / 'nope'},{mine}", str(other)])
        assert gin.query_parameter("%TRAIN_STEPS") == 7
        assert gin.query_parameter("%BATCH_SIZE") == 128  # from flanrec's finetune.gin
        gin.clear_config()
        train.configure_gin(["runs/finetune.gin", "models/tiny.gin"],
                            [*required, "TRAIN_STEPS = 3"])
        assert gin.query_parameter("%TRAIN_STEPS") == 3
        with pytest.raises(ValueError):  # flanrec's own file now: the last run's paths are gone
            gin.query_parameter("%MINE")
    finally:
        gin.clear_config()
    # Every job takes the flag, repeated and comma-separated.
    for parse in (train.parse_args, infer_args):
        args, _ = parse(["--gin_search_paths=a,b", "--gin_search_paths=c"])
        assert args.gin_search_paths == ["a,b", "c"]
    args, _ = eval_args(["--gin_search_paths=a,b", "--gin_file=runs/eval.gin"])
    assert args.gin_search_paths == ["a,b"]


# ------------------------------------------------------------------------------------ wheel


def _gin_files() -> list[str]:
    return sorted(str(p.relative_to(REPO / "gin")) for p in (REPO / "gin").rglob("*.gin"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of the tracked sources (a clean copy: no build/ leftovers)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for rel in filter(None, tracked):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                           "--no-build-isolation", "-w", str(root / "dist"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (root / "dist").glob("flanrec-*.whl")
    return built


def test_wheel_ships_every_gin_config(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n[len("flanrec/gin/"):] for n in names
                     if n.startswith("flanrec/gin/") and n.endswith(".gin"))
    assert shipped == _gin_files() and "runs/infer.gin" in shipped
    assert any(n.startswith("tasks/") for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """The wheel unpacked as site-packages (what `pip install` puts there), an environment
    whose PYTHONPATH has it and not the checkout, and a working dir outside the checkout."""
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    return {"site": str(site), "cwd": str(cwd), "env": env}


def _run(installed: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_wheel_finds_its_gin_files_from_anywhere(installed, tmp_path):
    proc = _run(installed, "-c", "import flanrec, tasks; print(flanrec.__file__); "
                                 "print(tasks.__file__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(line.startswith(installed["site"]) for line in proc.stdout.split())
    # T5X's form (runs/infer.gin) and the checkout's form (gin/runs/infer.gin) both resolve
    # from a directory that is no checkout: the job gets past gin and reaches the task.
    for gin_file in ("runs/infer.gin", "gin/runs/infer.gin"):
        proc = _run(installed, "-m", "flanrec.infer", f"--gin_file={gin_file}",
                    "--gin.CHECKPOINT_PATH=/nonexistent", "--gin.MIXTURE_OR_TASK_NAME=no_task",
                    f"--gin.INFER_OUTPUT_DIR={tmp_path / 'out'}")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Unable to open file" not in proc.stderr
        assert "'no_task' is not registered" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_installed_wheel_converts_to_hf(installed, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hf_fixtures import save_hf_t5

    hf_dir = save_hf_t5(tmp_path / "hf")
    proc = _run(installed, "-m", "flanrec.convert", "--from", "hf", "--src", str(hf_dir),
                "--out", str(tmp_path / "flan"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(installed, "-m", "flanrec.convert", "--from", "flanrec", "--src",
                str(tmp_path / "flan"), "--to", "hf", "--out", str(tmp_path / "export"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("flanrec -> hf: tiny")
    assert (tmp_path / "export" / "model.safetensors").is_file()
