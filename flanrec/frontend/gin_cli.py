"""T5X-style gin flags, shared by the train, infer and eval jobs: `--gin.NAME=VALUE` bindings,
the search path behind `--gin_file` / `include`, and `configure_gin`, the one gin set-up
those three jobs run (so a misspelled macro is refused the same way by each of them).

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
import contextlib
import importlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import gin

from flanrec.data import derived, locations, prepared
from flanrec.errors import ConfigError
from flanrec.frontend import jobs

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # flanrec/


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


def add_gin_job_flags(parser: argparse.ArgumentParser, job: str) -> None:
    """Every flag a gin job (train, infer, eval) shares: the gin flags, the multi-process
    flags and --verbose. One place, so the three jobs cannot drift apart."""

    add_gin_flags(parser, job=job)
    jobs.add_distributed_flags(parser)
    jobs.add_verbose_flag(parser)


def parse_gin_job_args(parser: argparse.ArgumentParser, argv: Sequence[str]
                       ) -> tuple[argparse.Namespace, list[str]]:
    """(flags, gin bindings) of a gin job's command line: `--gin_bindings` plus one binding
    per `--gin.NAME=VALUE`; any other unknown argument is a usage error (exit 2)."""
    args, rest = parser.parse_known_args(argv)
    return args, bindings_from_flags(parser, rest, args.gin_bindings)


# Read by `configure_gin` itself, or by the task modules it imports (vocab.gin_macro), so no
# gin binding references them and yet they are not misspelled.
DRIVER_MACROS = frozenset({"MIXTURE_OR_TASK_MODULE", "FLANREC_DATA_DIR",
                           "FLANREC_AMAZON_DATA_DIR", "FLANREC_VOCAB", "FLANREC_FLAN_DATA",
                           *derived.INPUT_MACROS})


def check_macros_used(bindings: Sequence[str]) -> None:
    """gin accepts any new macro silently, so `--gin.TRAIN_STEP=5` would be ignored; refuse
    a command-line macro that no gin binding references."""
    config = gin.config_str()
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        used = re.search(rf"%{re.escape(name)}\b", config)
        if name.isupper() and name not in DRIVER_MACROS and not used:
            raise ConfigError(f"gin macro {name} is set on the command line but no gin file "
                              f"uses it (misspelled? known macros are in the --gin_file "
                              "files, e.g. gin/runs/finetune.gin)")


def configure_gin(files: Sequence[str], bindings: Sequence[str],
                  search_paths: Sequence[str] = ()) -> None:
    """Parse gin files and bindings, import MIXTURE_OR_TASK_MODULE, then lock the config.

    The caller imports `flanrec.configurables` first (train, infer and eval each do), so
    every name a gin file may bind exists and a misspelled one fails here with gin's own
    message, before anything is compiled; a command-line macro no file uses fails too.
    """
    gin.clear_config()
    files = resolve_gin_files(files, add_search_paths(search_paths))
    try:
        gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
    except (ValueError, OSError) as e:  # a misspelled name, a missing file: gin's own message
        raise ConfigError(str(e)) from e
    check_macros_used(bindings)
    resolve_derived()
    try:
        module = gin.query_parameter("%MIXTURE_OR_TASK_MODULE")
    except ValueError:
        module = None
    if module:
        importlib.import_module(module)
    gin.finalize()


def _macro(name: str, depth: int = 0) -> object:
    """A macro's value, following `X = %Y` references; `derived` when not defined."""
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return derived
    if isinstance(value, gin.config.ConfigurableReference) and depth < 8:
        selector = value.scoped_selector
        if selector.endswith("/macro") or selector == "macro":
            return _macro(selector.rsplit("/", 1)[0], depth + 1)
    return value


def _data_dirs() -> list[str]:
    """Where the run's prepared data is: the infer job's DATA_DIR, else the gin macro
    FLANREC_DATA_DIR, else $FLANREC_DATA_DIR, else the default (`flanrec.data.locations`)."""
    for name in ("DATA_DIR", "FLANREC_DATA_DIR"):
        value = _macro(name)
        if isinstance(value, str) and value:
            return locations.configured_data_dirs(value)
    return locations.configured_data_dirs()


def resolve_derived(log: object = print) -> dict[str, object]:
    """Fill in the macros an experiment leaves to the data (`flanrec.data.derived`: 'auto'
    values and `{prefix}` task names) from the prepared dir's prepare.json, before the
    config is locked; one line per value says what it is and why. A value the user bound
    is never touched. Returns macro -> value."""
    values = {m: v for m in derived.MACROS if (v := _macro(m)) is not derived}
    if not derived.needs_data(values):
        return {}
    source, doc = derived.data_dir_for(_data_dirs(), values, prepared.read_prepare_json)
    out = derived.derive(values, doc, source)
    for macro, (value, why) in out.items():
        gin.bind_parameter(f"{macro}/macro.value", value)
        log(derived.format_line(macro, value, why))  # type: ignore[operator]
    return {m: v for m, (v, _) in out.items()}


def is_unset_macro(error: BaseException) -> bool:
    """Whether `error` is gin refusing to call a configurable whose argument is still
    `gin.REQUIRED` (a macro such as MODEL_DIR = %gin.REQUIRED left unset), or another error
    gin raises while binding arguments: the user's config, not a bug."""
    text = str(error)
    return (isinstance(error, ValueError | RuntimeError)
            and ("gin.REQUIRED" in text or "Required bindings" in text
                 or "gin" in type(error).__module__))


@contextlib.contextmanager
def refusing_unset_macros() -> Iterator[None]:
    """Run a gin job's body; an unset macro (`is_unset_macro`) becomes a ConfigError, the
    one-line exit-2 refusal, the same way in every job."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        if is_unset_macro(e):
            raise ConfigError(str(e)) from e
        raise
