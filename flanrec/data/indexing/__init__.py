"""Item indexing: give every catalogue item a unique ID string, fitted on training data only.

    index = fit_index("collaborative", split, split.all_items, meta, seed=0)
    index.save(out_dir)                # item_index.json (+ token_slots.json if new tokens)
    index = ItemIndex.load(out_dir)

Methods: ``sequential`` (OpenP5 numbering by first appearance in training), ``random``
(seeded permutation), ``title`` (unique titles), ``collaborative`` (recursive spectral
clustering of training co-occurrence, ``<c3><c17><c2>``) and ``semantic`` (residual k-means
over content embeddings, ``<a12><b3><c4><d0>``). Pure numpy/scipy: no TF or JAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flanrec.data.indexing.collaborative import collaborative_index
from flanrec.data.indexing.core import (
    INDEX_FILE,
    NEW_TOKEN_RE,
    SLOTS_FILE,
    ItemIndex,
    TrainSequences,
    check_catalogue,
    train_sequence_list,
)
from flanrec.data.indexing.semantic import item_text, semantic_index
from flanrec.data.indexing.simple import random_index, sequential_index, title_index
from flanrec.data.indexing.slots import extra_id, free_slots, load_slot_map, token_slot_map
from flanrec.data.types import ItemMeta

METHODS = ("sequential", "random", "title", "collaborative", "semantic")

__all__ = [
    "INDEX_FILE", "METHODS", "NEW_TOKEN_RE", "SLOTS_FILE", "ItemIndex", "extra_id",
    "fit_index", "free_slots", "item_text", "load_slot_map", "token_slot_map",
]


def fit_index(method: str, train_sequences: TrainSequences, catalogue: Sequence[str],
              meta: ItemMeta | None = None, seed: int = 0, **opts: Any) -> ItemIndex:
    """Fit one indexing method. Only ``train_sequences`` (a Split's train_items, a dict
    user -> items, or a list of per-user lists in chronological order) is read for
    interactions; held-out items can therefore never shape anyone's ID.

    Options by method:
      sequential/random: start=1.
      title: with_year=True.
      collaborative: n_clusters=20, max_leaf=20, token_prefix="c".
      semantic: embeddings= (array or .npy path) | embed_fn=, embedding_items= (list or a
        .json/.txt path naming each row's item; default catalogue order), levels=3,
        codebook_size=32, normalize=True.
    """
    sequences = train_sequence_list(train_sequences)
    pos = check_catalogue(catalogue, sequences)
    if method == "sequential":
        index = sequential_index(sequences, catalogue, **opts)
    elif method == "random":
        index = random_index(catalogue, seed, **opts)
    elif method == "title":
        index = title_index(catalogue, meta, **opts)
    elif method == "collaborative":
        index = collaborative_index(sequences, catalogue, pos, seed, **opts)
    elif method == "semantic":
        index = semantic_index(catalogue, meta, seed, **opts)
    else:
        raise ValueError(f"unknown indexing method {method!r}; choose one of {METHODS}")
    index.seed = seed
    return index
