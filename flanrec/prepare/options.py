"""`PrepareOptions`: everything that determines a prepared dir (recorded in its prepare.json).

A module of its own so that the prepare job's parts (index fitting, embeddings, the CLI)
can take the options without importing the job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flanrec.data import families as families_lib
from flanrec.data import locations
from flanrec.data.splits import DUPLICATE_POLICIES
from flanrec.errors import ConfigError
from flanrec.frontend.argtypes import FLOAT32_MAX, INT32_MAX

__all__ = ["DUPLICATE_POLICIES", "PrepareOptions", "check_options", "default_cache_dir"]


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
    # seqrec: characters of title, year and genres per encoder item (0: IDs only), and the
    # user's profile (age, gender, occupation) in the instruction
    seqrec_item_text: int = 0
    seqrec_profile: bool = False
    # --train_vocab keeps every item ID string whole (one piece each)
    item_pieces: bool = True
    num_candidates: int = 20
    kcore: int | None = None
    min_rating: float | None = None
    # Rows with the same (user, item, timestamp): keep the last / first one, or refuse.
    duplicates: str = "last"
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


# (field, smallest allowed value): what `python -m flanrec.prepare` checks at parse time,
# checked again for callers that build PrepareOptions themselves (notebooks, the quickstart).
_MINIMUM = {"num_shards": 1, "vocab_size": 1, "max_history": 1, "seqrec_window": 1,
            "seqrec_encoder_items": 0, "seqrec_tilings": 1, "seqrec_item_text": 0,
            "num_candidates": 2, "kcore": 1,
            "semantic_batch_size": 1, "semantic_max_length": 2}


def check_options(opts: PrepareOptions) -> None:
    """Refuse (ConfigError, named by its flag) an option value no prepare can honour.

    Why here as well as in the argument parser: a value that slips through would end in a
    traceback deep in the split or the family builders, or in a silently different data set
    (a threshold that keeps every row because it is NaN).
    """
    import math


    for name, low in _MINIMUM.items():
        value = getattr(opts, name)
        if value is None and name == "kcore":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not \
                low <= value <= INT32_MAX:
            raise ConfigError(f"--{name}: expected an integer in [{low}, {INT32_MAX}], got "
                              f"{value!r}")
    if not isinstance(opts.seqrec_profile, bool):
        raise ConfigError(f"--seqrec_profile: expected true or false, got "
                          f"{opts.seqrec_profile!r}")
    if opts.min_rating is not None and not (isinstance(opts.min_rating, int | float)
                                            and math.isfinite(opts.min_rating)
                                            and abs(opts.min_rating) <= FLOAT32_MAX):
        raise ConfigError(f"--min_rating: expected a finite number within float32 range, "
                          f"got {opts.min_rating!r}")
    if opts.duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(f"--duplicates: expected one of {', '.join(DUPLICATE_POLICIES)}, "
                          f"got {opts.duplicates!r}")
