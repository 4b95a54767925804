"""Where flanrec keeps data by default: one answer for every job and for `import tasks`.

Why one module: the quickstart, `prepare`'s default `--out`, `import tasks`, `prepare
--list_tasks`, `eval`/`baselines` and the README must agree, or a user prepares data in one
place and every later step looks in another. The rule:

* the prepared MovieLens data (what `tasks.movielens` registers) is `$FLANREC_DATA_DIR` when
  set (several dirs separated by ``os.pathsep``), else ``$FLANREC_CACHE/prepared/ml-100k``;
* `prepare --dataset NAME` without `--out` writes `$FLANREC_DATA_DIR` when it names one dir,
  else ``$FLANREC_CACHE/prepared/NAME``;
* ``$FLANREC_CACHE`` defaults to ``~/.cache/flanrec`` (also the download cache).

Pure Python: no TF or seqio, so the light jobs can call it.
"""

from __future__ import annotations

import os

from flanrec.files import storage

CACHE_ENV = "FLANREC_CACHE"
DATA_DIR_ENV = "FLANREC_DATA_DIR"
DEFAULT_DATASET = "ml-100k"


def cache_root() -> str:
    """`$FLANREC_CACHE`, default `~/.cache/flanrec` (expanded)."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/flanrec")


def default_prepared_dir(dataset: str = DEFAULT_DATASET) -> str:
    """Where `prepare --dataset DATASET` puts its output when nothing else is configured."""
    name = os.path.basename(os.path.normpath(dataset)) or DEFAULT_DATASET
    return os.path.join(cache_root(), "prepared", name)


def env_data_dirs() -> list[str]:
    """The dirs `$FLANREC_DATA_DIR` names (``os.pathsep``-separated, expanded); [] when
    unset. The one place flanrec reads the variable."""

    return [p if storage.is_url(p) else os.path.expanduser(p)
            for p in storage.split_path_list(os.environ.get(DATA_DIR_ENV) or "")]


def env_data_dir() -> str | None:
    """The one dir `$FLANREC_DATA_DIR` names, else None (unset, or several dirs)."""
    dirs = env_data_dirs()
    return dirs[0] if len(dirs) == 1 else None


def configured_data_dirs(value: str | None = None) -> list[str]:
    """The prepared dirs `import tasks` registers: `value` (e.g. a gin macro), else
    `$FLANREC_DATA_DIR`, else the default ml-100k dir; expanded, in order."""

    if not value:
        return env_data_dirs() or [default_prepared_dir()]
    return [p if storage.is_url(p) else os.path.expanduser(p)
            for p in storage.split_path_list(value)]


def default_data_dir(dataset: str = DEFAULT_DATASET) -> str:
    """The one directory a job reads or writes when the user names none.

    `$FLANREC_DATA_DIR` when it names exactly one dir, else the dataset's default dir.
    """
    return env_data_dir() or default_prepared_dir(dataset)
