"""Session fixtures with the real MovieLens-100K, for any test module that needs it.

tests/conftest.py makes them visible to every test module: name one as an argument.

The first run fetches the ``recbole==1.2.1`` wheel from PyPI (about a second) and keeps the
three RecBole atomic files under ``$FLANREC_CACHE`` (default ``~/.cache/flanrec``); later
runs are offline. Without network and without a cache the tests that use these fixtures are
skipped with the reason, never silently passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flanrec.data import splits, types
from flanrec.data.fetch import FetchError, fetch


def flanrec_cache_dir() -> Path:
    """The shared test/data cache (``$FLANREC_CACHE`` or ``~/.cache/flanrec``)."""
    return Path(os.environ.get("FLANREC_CACHE", "~/.cache/flanrec")).expanduser()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """Directory with ml-100k.inter/.item/.user (RecBole atomic files, sha256-checked)."""
    try:
        fetched = fetch("ml-100k", flanrec_cache_dir())
    except FetchError as exc:
        pytest.skip(f"ml-100k not available offline and could not be fetched: {exc}")
    assert fetched.kind == "recbole" or fetched.kind == "ml-100k"
    return fetched.path


@pytest.fixture(scope="session")
def ml100k_dataset(ml100k_dir: Path) -> types.Dataset:
    """The parsed dataset (100,000 interactions, 1682 titled items, 943 users' features)."""
    from flanrec.data.sources import read_dataset

    kind = "recbole" if (ml100k_dir / "ml-100k.inter").exists() else "ml-100k"
    return read_dataset(kind, ml100k_dir)


@pytest.fixture(scope="session")
def ml100k_split(ml100k_dataset: types.Dataset) -> types.Split:
    """The ml100k-loo split (943 users, max_history 50). Treat as read-only: it is shared."""
    return splits.leave_one_out(ml100k_dataset)
