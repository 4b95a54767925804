"""Write the files of a prepared directory that ``flanrec.data.prepared`` reads back.

The prepare job decides *what* to write; this module owns *how* each file is laid out: the
split (``split/``), the shared token-slot map (``index/token_slots.json``) and the item
tries (``index/{method}/trie*.npz``). Reader and writer sit side by side in ``flanrec.data``
and take their names from ``flanrec.data.layout``, so a format change is made once, and
readers (inference, ensembles, eval) never import the prepare job to find a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flanrec.data import layout
from flanrec.data import splits as splits_lib
from flanrec.data.indexing.slots import slot_map_json
from flanrec.data.trie import build_trie
from flanrec.files import storage

if TYPE_CHECKING:
    import seqio

    from flanrec.data.indexing import ItemIndex
    from flanrec.data.trie import TrieArrays
    from flanrec.data.types import ItemMeta, Split, UserFeatures


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_split(split: Split, meta: ItemMeta, out_dir: str,
                users: UserFeatures | None = None) -> dict[str, str]:
    """split/split.json, split/sequences.tsv, split/items.tsv and, when the data has user
    attributes (the profile family renders from them), split/users.json; returns their
    sha256.

    `out_dir` is the prepared dir's ``split/``. The hashes go into prepare.json, where
    ``prepared.load_split`` checks them, so an edited split fails instead of shifting metrics.
    """

    os.makedirs(out_dir, exist_ok=True)
    doc = {
        "max_history": split.max_history,
        "all_items": list(split.all_items),
        "users": [dataclasses.asdict(u) for u in split.users],
    }
    text = json.dumps(doc, ensure_ascii=False)
    with open(os.path.join(out_dir, os.path.basename(layout.SPLIT_FILE)), "w",
              encoding="utf-8") as f:
        f.write(text)
    seqs = splits_lib.fingerprint_texts(split)["sequences"]
    with open(os.path.join(out_dir, os.path.basename(layout.SEQUENCES_FILE)), "w",
              encoding="utf-8") as f:
        f.write(seqs)
    rows = []
    for item in split.all_items:
        cats = " | ".join(meta.categories.get(item, []))
        row = [item, meta.title.get(item, ""), meta.year.get(item, ""), cats]
        rows.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row) + "\n")
    with open(os.path.join(out_dir, os.path.basename(layout.ITEMS_FILE)), "w",
              encoding="utf-8") as f:
        f.write("item\ttitle\tyear\tcategories\n" + "".join(rows))
    hashes = {os.path.basename(layout.SPLIT_FILE): _sha256(text),
              os.path.basename(layout.SEQUENCES_FILE): _sha256(seqs)}
    if users is not None and users.features:
        users_text = json.dumps({"users": users.features}, ensure_ascii=False, sort_keys=True)
        with open(os.path.join(out_dir, os.path.basename(layout.USERS_FILE)), "w",
                  encoding="utf-8") as f:
            f.write(users_text)
        hashes[os.path.basename(layout.USERS_FILE)] = _sha256(users_text)
    return hashes


def write_token_slots(index_root: str, slots: Mapping[str, int], vocab_size: int,
                      sp_size: int) -> None:
    """``index/token_slots.json``: the slot map of every indexing of the dir together.

    All indexings of one dir share one vocabulary, so the union of their new tokens is one
    map (`flanrec.data.vocab.load_token_slots` reads it).
    """

    storage.write_json_atomic(os.path.join(index_root, layout.TOKEN_SLOTS_FILE),
                              slot_map_json(slots, vocab_size=vocab_size, sp_size=sp_size))


def save_trie(path: str, trie: TrieArrays, items: Sequence[str], vocab_id: str = "") -> None:
    """npz with the TrieArrays fields (no dense table), `items` (item number -> raw id) and
    `vocab_id` (vocabulary_fingerprint of the vocabulary the token ids come from)."""
    import numpy as np

    arrays = {f.name: getattr(trie, f.name) for f in dataclasses.fields(trie)
              if f.name != "dense_next"}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["items"] = np.asarray(list(items), dtype=object).astype(str)
    arrays["vocab_id"] = np.asarray(vocab_id)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_atomic(path, buf.getvalue())


def build_tries(indexes: Mapping[str, ItemIndex], vocabulary: seqio.Vocabulary,
                catalogue: Sequence[str], index_root: str,
                without_eos: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """index/{method}/trie.npz for every indexing (+ trie_noeos.npz for the methods in
    `without_eos`); returns per-method sizes. A method whose IDs cannot form a trie without
    EOS (unequal token counts) gets the reason under "noeos_error" instead."""
    from flanrec.data.vocab import vocabulary_fingerprint

    out: dict[str, dict[str, Any]] = {}
    for method, ix in indexes.items():
        seqs = [vocabulary.encode(ix.id_of(item)) for item in catalogue]
        trie = build_trie(seqs, eos_id=vocabulary.eos_id, vocab_size=vocabulary.vocab_size,
                          pad_id=0, dense_limit=0)
        save_trie(os.path.join(index_root, method, layout.trie_file()), trie, catalogue,
                  vocabulary_fingerprint(vocabulary))
        out[method] = {"nodes": trie.num_nodes, "max_length": trie.max_length}
        if method in without_eos:
            try:
                bare = build_trie(seqs, eos_id=vocabulary.eos_id,
                                  vocab_size=vocabulary.vocab_size, pad_id=0, dense_limit=0,
                                  end_with_eos=False)
            except ValueError as e:
                out[method]["noeos_error"] = str(e)
                continue
            save_trie(os.path.join(index_root, method, layout.trie_file(False)), bare,
                      catalogue, vocabulary_fingerprint(vocabulary))
            out[method]["noeos_max_length"] = bare.max_length
    return out
