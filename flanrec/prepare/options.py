"""`PrepareOptions`: everything that determines a prepared dir (recorded in its prepare.json).

A module of its own so that the prepare job's parts (index fitting, embeddings, the CLI)
can take the options without importing the job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flanrec.data import families as families_lib
from flanrec.data import locations


def default_cache_dir() -> str:
    return locations.cache_root()


@dataclasses.dataclass
class PrepareOptions:
    """Everything that determines the output (recorded in prepare.json)."""

    dataset: str
    out: str
    raw_dir: str | None = None
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    indexing: tuple[str, ...] = ("sequential",)
    seed: int = 0
    num_shards: int = 2
    train_vocab: bool = False
    vocab_size: int = 4000
    max_history: int = 50
    families: tuple[str, ...] = families_lib.BUILTIN_FAMILIES
    # seqrec: decoder targets per training example, items the encoder reads, window tilings
    seqrec_window: int = 40
    seqrec_encoder_items: int = 10
    seqrec_tilings: int = 2
    # --train_vocab keeps every item ID string whole (one piece each)
    item_pieces: bool = True
    num_candidates: int = 20
    kcore: int | None = None
    min_rating: float | None = None
    task_prefix: str | None = None
    allow_download: bool = True
    unseen_eval: bool = True
    overwrite: bool = True
    # Semantic IDs embed items with, in this order of preference: a T5 encoder checkpoint
    # (HF dir / T5X / flanrec), a user-supplied .npy, else TF-IDF of the item text.
    semantic_encoder: str | None = None
    semantic_encoder_vocab: str | None = None  # default: the HF dir's spiece.model, $FLANREC_VOCAB
    semantic_embeddings: str | None = None  # a .npy file (rows: catalogue order) ("tfidf": None)
    semantic_embedding_items: str | None = None  # .json/.txt naming each .npy row's item
    semantic_batch_size: int = 64
    semantic_max_length: int = 128
    # How to read a --dataset csv|parquet file (flanrec.data.sources.table.read_table
    # keywords: delimiter, header, column_names, user_col, item_col, timestamp_col,
    # rating_col, title_col, encoding, items_path); gin bindings of read_table fill the rest.
    table_options: dict[str, Any] = dataclasses.field(default_factory=dict)
