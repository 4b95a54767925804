"""The file names of a prepared directory: the one table every reader and writer uses.

`flanrec.prepare` writes these files, `flanrec.data.prepared` reads them, and the indexer,
the vocabulary and the tries sit in between. When each of them spelled a name itself, a
rename in one place produced a directory the others could not find (``token_slots.json``
was spelled in three modules). This module imports nothing from flanrec, so any module, the
lowest ones included (``flanrec.data.indexing``), can take its names without a circle.

Paths are relative to the prepared directory's root and use ``/``, which both ``os.path``
and ``flanrec.files.storage`` (local or gs://) join correctly.
"""

from __future__ import annotations

PREPARE_FILE = "prepare.json"  # dataset, options, counts, fingerprints, timings
SPLIT_DIR = "split"
SPLIT_FILE = "split/split.json"  # per-user sequences, catalogue, max_history
SEQUENCES_FILE = "split/sequences.tsv"  # user \t i_1 ... i_n (the protocol's fingerprint)
ITEMS_FILE = "split/items.tsv"  # item \t title \t year \t categories
USERS_FILE = "split/users.json"  # {"users": {user: {attribute: value}}}, when the data has them
INDEX_DIR = "index"
INDEX_FILE = "item_index.json"  # in index/{method}/: raw item -> ID string
TOKEN_SLOTS_FILE = "token_slots.json"  # in index/ (union of indexings) and index/{method}/
TRIE_FILE = "trie.npz"  # in index/{method}/: item IDs as token ids + EOS
TRIE_NOEOS_FILE = "trie_noeos.npz"  # the same without EOS (item-sequence targets)
VOCAB_DIR = "vocab"
VOCAB_FILE = f"{VOCAB_DIR}/spm.model"  # with `prepare --train_vocab`
TASKS_DIR = "tasks"  # tasks/{task}/info.json (examples are rendered on read)


def index_dir(method: str) -> str:
    """``index/{method}``: one indexing's item index, token slots and tries."""
    return f"{INDEX_DIR}/{method}"


def index_file(method: str) -> str:
    """``index/{method}/item_index.json`` (what each task's info.json names)."""
    return f"{index_dir(method)}/{INDEX_FILE}"


def token_slots_file() -> str:
    """``index/token_slots.json``: the slot map shared by every indexing of the dir."""
    return f"{INDEX_DIR}/{TOKEN_SLOTS_FILE}"


def trie_file(end_with_eos: bool = True) -> str:
    """File name of an indexing's trie: with EOS (most families) or without (seqrec)."""
    return TRIE_FILE if end_with_eos else TRIE_NOEOS_FILE


def trie_path(method: str, end_with_eos: bool = True) -> str:
    """``index/{method}/trie.npz`` (or ``trie_noeos.npz``)."""
    return f"{index_dir(method)}/{trie_file(end_with_eos)}"


def task_dir(task: str) -> str:
    """``tasks/{task}``: a task's info.json (the task name without its prefix)."""
    return f"{TASKS_DIR}/{task}"
