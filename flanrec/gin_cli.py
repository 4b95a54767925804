"""T5X-style gin flags, shared by the train, infer and eval jobs: `--gin.NAME=VALUE` bindings
and the search path behind `--gin_file` / `include`.

Search path, as in T5X: the user's `--gin_search_paths` (comma-separated and/or repeated),
then the working directory, then flanrec's own gin configs twice: as the directory that holds
`gin/` (so `--gin_file=gin/runs/infer.gin` and the `include 'gin/...'` lines inside the
configs resolve) and as `gin/` itself (so `--gin_file=runs/infer.gin` works from anywhere,
T5X's `--gin_file=t5x/configs/...` habit). Those configs are the checkout's top-level `gin/`
directory, or the copy a wheel ships as `flanrec/gin/` (setup.py), whichever exists.

Kept free of JAX and TF imports so `flanrec.eval` stays a light job.
"""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Sequence
from pathlib import Path

import gin

_PACKAGE_DIR = Path(__file__).resolve().parent


def as_binding(name: str, value: str) -> str:
    """`--gin.X=V` → `X = V`, quoting V when it is not a literal or a gin reference."""
    v = value.strip()
    if v[:1] in "@%([{'\"" or v in ("None", "True", "False"):
        return f"{name} = {v}"
    try:
        ast.literal_eval(v)
        return f"{name} = {v}"
    except (ValueError, SyntaxError):
        return f"{name} = {v!r}"


def bindings_from_flags(parser: argparse.ArgumentParser, rest: Sequence[str],
                        raw: Sequence[str] = ()) -> list[str]:
    """`raw` gin bindings plus one per `--gin.NAME=VALUE` in `rest`; anything else in `rest`
    is a usage error naming the argument."""
    bindings = list(raw)
    for arg in rest:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(as_binding(name, value))
        else:
            parser.error(f"unrecognised argument {arg!r} (gin macros are --gin.NAME=VALUE)")
    return bindings


def packaged_gin_dir() -> Path | None:
    """flanrec's gin configs: `flanrec/gin/` in an installed wheel, else the checkout's `gin/`
    (also what an editable install sees); None if neither exists."""
    for candidate in (_PACKAGE_DIR / "gin", _PACKAGE_DIR.parent / "gin"):
        if (candidate / "runs").is_dir():
            return candidate
    return None


def split_search_paths(values: Sequence[str]) -> list[str]:
    """`--gin_search_paths` values, each possibly comma-separated (T5X's form), flattened."""
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def search_paths(user_paths: Sequence[str] = ()) -> list[str]:
    """Directories searched for gin files and includes, in order (see the module doc)."""
    paths = [*split_search_paths(user_paths), os.getcwd()]
    configs = packaged_gin_dir()
    if configs is not None:
        paths += [str(configs.parent), str(configs)]
    return list(dict.fromkeys(paths))


def add_search_paths(user_paths: Sequence[str] = ()) -> list[str]:
    """Make `search_paths(user_paths)` gin's search path; returns them.

    gin keeps its search path across `gin.clear_config()` and has no call to reset it, so
    the list it keeps is reset here (to gin's own start: the bare relative path); otherwise a
    job run twice in one process (tests, notebooks) would still search the first run's
    directories."""
    paths = search_paths(user_paths)
    prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
    if isinstance(prefixes, list):
        prefixes[:] = [""]
    for p in paths:
        gin.add_config_file_search_path(p)
    return paths


def resolve_gin_files(files: Sequence[str], paths: Sequence[str]) -> list[str]:
    """Each `--gin_file` as the file gin would find on `paths`, made absolute.

    gin also tries a relative name as a Python package path (`runs/infer.gin` -> package
    `runs`), and crashes with a TypeError when a directory of that name in the cwd is a
    namespace package, as `runs/` is after a training run. Resolving the name here first
    keeps T5X's `--gin_file=runs/infer.gin` working from any directory. A name found nowhere
    is passed on unchanged, so gin's own "not found" message names it."""
    out = []
    for name in files:
        found = next((os.path.abspath(c) for c in
                      [name, *[os.path.join(p, name) for p in paths if p]]
                      if os.path.isfile(c)), None)
        out.append(found or name)
    return out


def add_gin_flags(parser: argparse.ArgumentParser, job: str = "train") -> None:
    """T5X's gin flags, identical in every gin job: `--gin_file` (repeatable),
    `--gin_bindings` (raw, repeatable), `--gin_search_paths` (comma-separated or repeated);
    `--gin.NAME=VALUE` is read from the rest of the command line (`bindings_from_flags`)."""
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repeatable; later files override earlier ones)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help=f"raw gin binding, e.g. '{job}.NAME = VALUE' (repeatable)")
    parser.add_argument("--gin_search_paths", action="append", default=[],
                        help="directories searched for gin files and includes "
                             "(comma-separated or repeated; the cwd and flanrec's own gin "
                             "configs are added)")
