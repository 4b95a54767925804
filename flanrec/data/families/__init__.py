"""Task families: the `Family` type, the registry, and the built-in families.

Each built-in family is one module of this package (its builder, its counter, its
templates and its `register(Family(...))` call); importing this package imports every one
of them, so adding a built-in family is adding a file here. A user's family registers the
same way from its own module (`tasks/next_genre.py`). The type and the registry live in
`flanrec.data.families.core`; see its docstring for what a family says.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from flanrec.data.families.core import (
    EVAL_SPLITS,
    TARGET_KINDS,
    TARGET_LAYOUTS,
    UNSEEN_SPLIT,
    ExamplesFn,
    Family,
    FamilyData,
    get,
    names,
    register,
    unregister,
)


def discover(package: str, path: Iterable[str]) -> tuple[str, ...]:
    """Import every module of `package` (found in `path`) but `core` and private ones;
    returns the names of the families they registered, in `Family.order`.

    Modules are found on disk rather than listed, so that a new built-in family is one new
    file; their `Family.order` fields, not the file names, decide the order."""
    before = set(names())
    for module in sorted(m.name for m in pkgutil.iter_modules(list(path))):
        if module != "core" and not module.startswith("_"):
            importlib.import_module(f"{package}.{module}")
    return tuple(n for n in names() if n not in before)


BUILTIN_FAMILIES: tuple[str, ...] = discover(__name__, __path__)
"""The built-in families' names, in `Family.order`."""

__all__ = ["BUILTIN_FAMILIES", "EVAL_SPLITS", "TARGET_KINDS", "TARGET_LAYOUTS", "UNSEEN_SPLIT",
           "ExamplesFn", "Family", "FamilyData", "discover", "get", "names", "register",
           "unregister"]
