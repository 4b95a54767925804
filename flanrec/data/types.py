"""The tables every data module passes along: interactions, item metadata, user features, splits.

Plain numpy/dataclasses on purpose: these modules must import in milliseconds, without
TensorFlow or JAX, so parsing, splitting and indexing test fast and run anywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Interactions:
    """One validated interaction log, rows in file order.

    user and item are the raw ids as strings (datasets disagree on id types: ml-100k uses
    integers, Amazon uses ASINs); timestamp is int64 seconds (never float: see the ml100k-loo
    protocol); rating is float32 (NaN where a source has no ratings).
    """

    user: np.ndarray  # dtype object (str), shape [n]
    item: np.ndarray  # dtype object (str), shape [n]
    timestamp: np.ndarray  # int64, shape [n]
    rating: np.ndarray  # float32, shape [n]
    source: str = ""  # file the rows came from, for error messages and provenance

    def __len__(self) -> int:
        return int(self.user.shape[0])


@dataclasses.dataclass
class ItemMeta:
    """Per-item text the templates and the semantic indexer use. Keyed by raw item id."""

    title: dict[str, str]
    year: dict[str, str] = dataclasses.field(default_factory=dict)
    categories: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    brand: dict[str, str] = dataclasses.field(default_factory=dict)
    description: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class UserFeatures:
    """Optional per-user attributes (ml-100k: age, gender, occupation). Keyed by raw user id."""

    features: dict[str, dict[str, str]]


@dataclasses.dataclass
class Dataset:
    """What a source reader returns."""

    name: str
    interactions: Interactions
    items: ItemMeta
    users: UserFeatures | None = None
    duplicate_rows: int = 0  # exact duplicate rows found (reported, kept)


@dataclasses.dataclass
class UserSequence:
    """One user's chronologically ordered interactions after the leave-one-out split."""

    user: str
    train_items: list[str]  # i_1 … i_{n-2}
    valid_item: str | None  # i_{n-1}
    test_item: str | None  # i_n
    train_ratings: list[float] = dataclasses.field(default_factory=list)
    valid_rating: float | None = None
    test_rating: float | None = None
    train_timestamps: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Split:
    """A leave-one-out split: one UserSequence per user, in ascending user order."""

    users: list[UserSequence]
    all_items: list[str]  # every item of the catalogue (the full-ranking candidate set)
    max_history: int = 50
