"""Readers for recommendation datasets, one module per family, behind ``read_dataset``.

``read_dataset(kind, path_or_dir, **options)`` dispatches on ``kind``; :func:`kinds` lists
them. Readers are imported lazily so that ``import flanrec.data.sources`` stays cheap (the
generic table reader pulls in gin; Parquet pulls in pyarrow only when used).

Every reader returns :class:`flanrec.data.types.Dataset` with rows in file order, int64
timestamps, exact duplicate rows counted (``duplicate_rows``, plus a logged warning) but kept,
and a title for every interacted item (``"item <id>"`` when the source has none); bad input
raises :class:`flanrec.data.errors.DataError` naming file, line and field.
"""

from __future__ import annotations

import importlib
import os

from flanrec.data import types

# kind -> (module, function, fixed keyword options)
_REGISTRY: dict[str, tuple[str, str, dict]] = {
    "recbole": ("recbole", "read_recbole", {}),
    "ml-100k": ("movielens", "read_ml100k", {}),
    "ml-1m": ("movielens", "read_ml1m", {}),
    "ml-10m": ("movielens", "read_ml10m", {}),
    "ml-csv": ("movielens", "read_movielens_csv", {}),
    "ml-20m": ("movielens", "read_movielens_csv", {"name": "ml-20m"}),
    "ml-25m": ("movielens", "read_movielens_csv", {"name": "ml-25m"}),
    "ml-latest": ("movielens", "read_movielens_csv", {"name": "ml-latest"}),
    "ml-latest-small": ("movielens", "read_movielens_csv", {"name": "ml-latest-small"}),
    "amazon-2014": ("amazon", "read_amazon", {"style": "2014"}),
    "amazon-2018": ("amazon", "read_amazon", {"style": "2018"}),
    "csv": ("table", "read_table", {"format": "csv"}),
    "parquet": ("table", "read_table", {"format": "parquet"}),
    "sequences": ("sequences", "read_sequences", {}),
}


def kinds() -> list[str]:
    """The ``kind`` values :func:`read_dataset` accepts."""
    return sorted(_REGISTRY)


def get_reader(kind: str):
    """The reader function for ``kind`` (with the kind's fixed options bound)."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(kinds())}")
    module, func, fixed = _REGISTRY[kind]
    fn = getattr(importlib.import_module(f"{__name__}.{module}"), func)
    if not fixed:
        return fn

    def bound(path_or_dir, **options):
        clash = set(options) & set(fixed) - {"name"}
        if clash:
            raise ValueError(f"kind {kind!r} fixes {sorted(clash)}; do not pass them")
        return fn(path_or_dir, **{**fixed, **options})

    bound.__name__ = f"{func}[{kind}]"
    bound.__doc__ = fn.__doc__
    return bound


def read_dataset(kind: str, path_or_dir: str | os.PathLike[str], **options) -> types.Dataset:
    """Read a dataset of ``kind`` from a file or directory (``options`` go to the reader).

    Pairs with :func:`flanrec.data.fetch.fetch`, which returns ``(path, kind)``::

        path, kind = fetch("ml-100k", cache_dir)
        dataset = read_dataset(kind, path)
    """
    return get_reader(kind)(path_or_dir, **options)


__all__ = ["get_reader", "kinds", "read_dataset"]
