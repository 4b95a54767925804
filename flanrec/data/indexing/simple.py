"""Indexers that need no learning: sequential, random and title IDs.

Sequential numbering follows OpenP5 (order of first appearance in the histories) but reads
only the training part of each history. Numbering full histories, as P5 did, gives the
held-out test item of one user a number right after its training neighbours, which leaks the
answer into the ID (Hua et al. 2023, "How to Index Item IDs for Recommendation Foundation
Models").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flanrec.data.indexing.core import ItemIndex
from flanrec.data.types import ItemMeta


def sequential_index(sequences: list[list[str]], catalogue: Sequence[str],
                     start: int = 1) -> ItemIndex:
    """Integers in order of first appearance in training (users as given, items in time
    order); items no training history contains follow, in catalogue order."""
    order: dict[str, int] = {}
    for seq in sequences:
        for item in seq:
            if item not in order:
                order[item] = len(order)
    unseen = 0
    for item in catalogue:
        if item not in order:
            order[item] = len(order)
            unseen += 1
    item_to_id = {item: str(start + order[item]) for item in catalogue}
    return ItemIndex("sequential", item_to_id,
                     options={"start": start, "items_unseen_in_train": unseen})


def random_index(catalogue: Sequence[str], seed: int, start: int = 1) -> ItemIndex:
    """A seeded permutation of start..start+N-1 over the catalogue."""
    perm = np.random.default_rng(seed).permutation(len(catalogue))
    item_to_id = {item: str(start + int(perm[n])) for n, item in enumerate(catalogue)}
    return ItemIndex("random", item_to_id, seed=seed, options={"start": start})


def title_index(catalogue: Sequence[str], meta: ItemMeta | None,
                with_year: bool = True) -> ItemIndex:
    """The item's title, whitespace-normalised, made unique with " (2)", " (3)", ...

    With ``with_year`` the year (``meta.year``, which readers split off the title) is added
    back as "Title (1995)": the form a pretrained LM has seen, and fewer natural clashes.
    Whitespace is collapsed first because SentencePiece collapses it too: "A  B" and "A B"
    would otherwise be two IDs with one token sequence. Items without a title get
    "item <raw id>".
    """
    titles = meta.title if meta is not None else {}
    taken: set[str] = set()
    item_to_id: dict[str, str] = {}
    collisions = 0
    untitled = 0
    for item in catalogue:
        base = " ".join(str(titles.get(item, "")).split())
        year = " ".join(str(meta.year.get(item, "")).split()) if meta is not None else ""
        if base and with_year and year:
            base = f"{base} ({year})"
        if not base:
            base = f"item {item}"
            untitled += 1
        name = base
        k = 1
        while name in taken:
            k += 1
            name = f"{base} ({k})"
        if k > 1:
            collisions += 1
        taken.add(name)
        item_to_id[item] = name
    return ItemIndex("title", item_to_id, collisions_resolved=collisions,
                     options={"untitled_items": untitled, "with_year": with_year})
