"""seqio's offline cache for flanrec tasks: where caches are found, and a check before training.

The cache itself is seqio's: `python -m seqio.scripts.cache_tasks_main` (Apache Beam; the
DirectRunner on one machine, Dataflow for data that outgrows it) runs every preprocessor up
to the task's `seqio.CacheDatasetPlaceholder` once and writes TFRecords plus `info`/`stats`
JSON under `CACHE_DIR/{task}/`; `USE_CACHED_TASKS = True` then reads those instead of
tokenizing on the fly. flanrec's tasks put the placeholder right after tokenization
(`seqio_tasks.standard_preprocessors`), so the cache holds exactly the examples the
uncached pipeline produces (tests/test_seqio_cache.py runs Beam and compares them). For
tasks rendered on read that is their first epoch's phrasing; `family_source.vary_templates`
comes after the cache point and re-phrases later epochs from the fields the cache keeps.

Where seqio looks: its global cache dirs. flanrec adds, in this order, T5X's flag
`--seqio_additional_cache_dirs`, the gin macro and then the environment variable
`FLANREC_SEQIO_CACHE_DIRS` (comma- or os.pathsep-separated).

Why a check of our own: seqio answers a missing cache with a bare `AssertionError` deep
inside the input pipeline, and a cache built before the data was prepared again with a
stale example count; `check_cached` names the task, the dirs searched and the command that
builds the cache, before anything compiles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from flanrec.errors import ConfigError

log = logging.getLogger("flanrec.cache")

CACHE_DIRS_ENV = "FLANREC_SEQIO_CACHE_DIRS"


def _split(value: str | Sequence[str] | None) -> list[str]:
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).replace(os.pathsep, ",").split(","):
            if part.strip():
                out.append(os.path.expanduser(part.strip()))
    return out


def configured_cache_dirs(extra: Sequence[str] = ()) -> list[str]:
    """`extra` (the command-line flag), then the gin macro, then the environment variable."""
    from flanrec.data.vocab import gin_macro

    dirs = _split(list(extra)) + _split(gin_macro(CACHE_DIRS_ENV))
    dirs += _split(os.environ.get(CACHE_DIRS_ENV))
    return list(dict.fromkeys(dirs))


def add_cache_dirs(extra: Sequence[str] = ()) -> list[str]:
    """Add the configured dirs to seqio's global cache dirs (idempotent); returns them."""
    dirs = configured_cache_dirs(extra)
    if dirs:
        import seqio

        seqio.add_global_cache_dirs(dirs)
    return dirs


def cache_command(task_names: Sequence[str]) -> str:
    """The command that builds the cache of `task_names` (in the Beam venv)."""
    names = ",".join(task_names)
    return (f".venv-cache/bin/python -m seqio.scripts.cache_tasks_main --tasks={names} "
            "--output_cache_dir=CACHE_DIR --module_import=tasks (make the venv with "
            "tpu_scripts/make_cache_venv.sh)")


def check_cached(name: str, split: str) -> None:
    """Refuse, naming the task, a USE_CACHED_TASKS run that seqio would not serve correctly.

    Every sub-task of `name` that has `split` must support caching (else seqio would
    silently preprocess it on the fly), have a cache for `split` in a global cache dir, and
    that cache must hold as many examples as the task's source declares (flanrec's tasks map
    one source example to one cached example, so a difference means a cache of older data).
    """
    import seqio

    add_cache_dirs()
    provider = seqio.get_mixture_or_task(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    searched = list(seqio.utils.get_global_cache_dirs())
    for task in tasks:
        if split not in task.splits:
            continue
        if not task.supports_caching:
            raise ConfigError(f"USE_CACHED_TASKS = True but task {task.name!r} has no "
                              "seqio.CacheDatasetPlaceholder (it cannot be cached); set "
                              "USE_CACHED_TASKS = False or register it with one")
        if not task.cache_dir:
            raise ConfigError(f"USE_CACHED_TASKS = True but task {task.name!r} is not cached "
                              f"in any seqio cache dir (searched {searched or 'none'}); build it "
                              f"with `{cache_command([task.name])}` and pass "
                              f"--seqio_additional_cache_dirs=CACHE_DIR (or set "
                              f"{CACHE_DIRS_ENV})")
        try:
            cached = int(task.get_cached_stats(split)["examples"])
        except ValueError as e:
            raise ConfigError(f"USE_CACHED_TASKS = True but the cache of {task.name!r} at "
                              f"{task.cache_dir} has no split {split!r}: {e}") from e
        declared = task.source.num_input_examples(split)
        if declared is not None and _is_prepared(task.name) and cached != int(declared):
            raise ConfigError(f"the seqio cache of {task.name!r} at {task.cache_dir} holds "
                              f"{cached} {split} examples but the prepared data has "
                              f"{declared}: it was built from older data; rebuild it "
                              "(cache_tasks_main --overwrite)")


def _is_prepared(task_name: str) -> bool:
    """Registered from a `flanrec.prepare` dir (one cached example per source example)."""
    from flanrec.data import prepared_tasks

    return task_name in prepared_tasks.PREPARED_TASKS
