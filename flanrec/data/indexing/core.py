"""The fitted item index: raw item id -> the ID string the language model reads and writes.

One dataclass for every indexing method, so everything downstream (templates, the trie, the
vocabulary) sees one shape: a bijection ``item_to_id`` plus the list of brand-new tokens the
ID strings are built from (``<c3>``, ``<a12>``; empty for numeric and title IDs). Saved as one
JSON file written atomically, because a half-written index silently renumbers every item.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flanrec.data import layout
from flanrec.data.errors import DataError
from flanrec.data.indexing.slots import slot_map_json, token_slot_map
from flanrec.data.types import Split
from flanrec.files import storage

# The prepared dir's file-name table owns these names; kept here under their old names.
INDEX_FILE = layout.INDEX_FILE
SLOTS_FILE = layout.TOKEN_SLOTS_FILE
FORMAT = "flanrec.item_index"
VERSION = 1

# Every new token an indexer invents matches this: "<", lowercase letters, digits, ">".
NEW_TOKEN_RE = re.compile(r"<[a-z]+[0-9]+>")

TrainSequences = Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | Split


@dataclasses.dataclass
class ItemIndex:
    """A bijection between raw item ids and ID strings, plus how it was made.

    ``new_tokens`` lists, in a fixed order, the tokens that are not in the base vocabulary and
    must be mapped onto embedding rows (see ``token_slot_map``). ``collisions_resolved`` counts
    items whose natural ID clashed with an earlier item's and was made unique (a title suffix,
    a within-leaf or collision-level token): the number the Hua et al. and TIGER papers report.
    """

    method: str
    item_to_id: dict[str, str]
    new_tokens: list[str] = dataclasses.field(default_factory=list)
    collisions_resolved: int = 0
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    id_to_item: dict[str, str] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.id_to_item = {}
        for item, id_str in self.item_to_id.items():
            if not isinstance(id_str, str) or not id_str:
                raise ValueError(f"item {item!r}: ID must be a non-empty string, got {id_str!r}")
            if id_str in self.id_to_item:
                raise ValueError(
                    f"ID {id_str!r} is given to two items: {self.id_to_item[id_str]!r} and "
                    f"{item!r}; every item needs a unique ID string"
                )
            self.id_to_item[id_str] = item
        if len(set(self.new_tokens)) != len(self.new_tokens):
            raise ValueError("new_tokens contains duplicates")

    def __len__(self) -> int:
        return len(self.item_to_id)

    def id_of(self, item: str) -> str:
        try:
            return self.item_to_id[item]
        except KeyError:
            raise KeyError(f"item {item!r} is not in the {self.method} index") from None

    def item_of(self, id_str: str) -> str | None:
        """The raw item an ID string names, or None (e.g. a decoded string that is no item)."""
        return self.id_to_item.get(id_str)

    def ids(self, items: Iterable[str]) -> list[str]:
        return [self.id_of(i) for i in items]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "seed": self.seed,
            "options": self.options,
            "collisions_resolved": self.collisions_resolved,
            "new_tokens": list(self.new_tokens),
            "items": [[item, id_str] for item, id_str in self.item_to_id.items()],
        }

    def save(self, directory: str | os.PathLike[str],
             slot_map: Mapping[str, int] | None = None, **slot_opts: Any) -> None:
        """Write ``item_index.json`` and, if there are new tokens, ``token_slots.json``.

        ``slot_map`` defaults to ``token_slot_map(self.new_tokens, **slot_opts)`` (Flan-T5
        layout), so the mapping the model trains with is always stored beside the index.
        """

        storage.makedirs(directory)
        if "reserved_extra_ids" in slot_opts:  # used twice below: no one-shot iterators
            slot_opts["reserved_extra_ids"] = tuple(slot_opts["reserved_extra_ids"])
        write_json_atomic(os.path.join(directory, INDEX_FILE), self.to_json())
        slots_path = os.path.join(directory, SLOTS_FILE)
        if self.new_tokens:

            if slot_map is None:
                slot_map = token_slot_map(self.new_tokens, **slot_opts)
            missing = [t for t in self.new_tokens if t not in slot_map]
            if missing:
                raise ValueError(f"slot_map lacks {len(missing)} new tokens, e.g. {missing[:3]}")
            write_json_atomic(slots_path, slot_map_json(slot_map, **slot_opts))
        elif storage.exists(slots_path):
            storage.remove(slots_path)  # a stale map from an earlier index would mislead

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ItemIndex:

        path = storage.join(os.fspath(directory), INDEX_FILE)
        try:
            data = storage.read_json(path)
        except FileNotFoundError:
            raise DataError(path, "an item index written by ItemIndex.save",
                            hint="file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(path, "valid JSON", line=e.lineno, hint=e.msg) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(path, f"a JSON object with format {FORMAT!r}", field="format",
                            got=data.get("format") if isinstance(data, dict) else data)
        if data.get("version") != VERSION:
            raise DataError(path, f"version {VERSION}", field="version", got=data.get("version"))
        for key, typ in (("method", str), ("items", list), ("new_tokens", list),
                         ("collisions_resolved", int), ("seed", int), ("options", dict)):
            if not isinstance(data.get(key), typ):
                raise DataError(path, f"a {typ.__name__}", field=key, got=data.get(key))
        item_to_id: dict[str, str] = {}
        for n, pair in enumerate(data["items"]):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)):
                raise DataError(path, "[item, id] string pairs", field=f"items[{n}]", got=pair)
            if pair[0] in item_to_id:
                raise DataError(path, "each item once", field=f"items[{n}]", got=pair[0])
            item_to_id[pair[0]] = pair[1]
        try:
            return cls(method=data["method"], item_to_id=item_to_id,
                       new_tokens=list(data["new_tokens"]),
                       collisions_resolved=data["collisions_resolved"], seed=data["seed"],
                       options=data["options"])
        except ValueError as e:
            raise DataError(path, "a valid item index", hint=str(e)) from None


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """JSON through `flanrec.files.storage.write_atomic` (temp name, then rename: never half a
    file; the mode a plain open() gives, so indexes in shared data dirs stay readable)."""

    storage.write_json_atomic(path, obj)


def _user_sort_key(user: str) -> tuple[int, int, str]:
    """Ascending user order: numerically for integer ids (ml-100k), else as strings."""
    try:
        return (0, int(user), "")
    except ValueError:
        return (1, 0, user)


def train_sequence_list(train: TrainSequences) -> list[list[str]]:
    """Normalise the accepted training inputs to a list of per-user item lists, users ascending.

    A ``Split`` contributes only ``train_items`` (never validation or test items): indexers see
    what the model may train on and nothing else.
    """
    if isinstance(train, Split):
        return [list(u.train_items) for u in train.users]
    if isinstance(train, Mapping):
        return [list(train[u]) for u in sorted(train, key=_user_sort_key)]
    if isinstance(train, (str, bytes)):
        raise TypeError("train sequences must be a Split, a dict user -> items or a list of lists")
    return [list(s) for s in train]


def check_catalogue(catalogue: Sequence[str], sequences: list[list[str]]) -> dict[str, int]:
    """Position of each catalogue item; raises if the catalogue repeats or misses an item."""
    pos: dict[str, int] = {}
    for n, item in enumerate(catalogue):
        if not isinstance(item, str):
            raise TypeError(f"catalogue[{n}]: item ids are strings, got {item!r}")
        if item in pos:
            raise ValueError(f"catalogue lists item {item!r} twice (positions {pos[item]}, {n})")
        pos[item] = n
    for u, seq in enumerate(sequences):
        for item in seq:
            if item not in pos:
                raise ValueError(
                    f"training sequence {u} has item {item!r}, which is not in the catalogue")
    return pos
