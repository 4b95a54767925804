"""Deterministic per-example choices: every random decision is a hash, never an RNG's position.

Which template phrases an example, which negatives it offers, which share of a split a host
reads: each is a pure function of (seed, purpose, split name, example key). So every host
builds the same examples on its own, a shard costs no rendering of the others, and a
resumed or re-read pipeline sees the very same examples.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def digest(*parts: object) -> bytes:
    """sha256 of the parts joined by a unit separator (no part can fake another's split)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()


def choose_template(seed: int, family: str, split_name: str, key: str,
                    pool: Sequence[int]) -> int:
    """One template index from ``pool``: a hash of (seed, family, split, key), no state."""
    h = int.from_bytes(digest(seed, "template", family, split_name, key)[:8], "little")
    return pool[h % len(pool)]


def example_rng(seed: int, purpose: str, split_name: str, key: str) -> np.random.Generator:
    """A Generator private to one example (negatives, candidate order).

    The same stream as ``np.random.default_rng(int.from_bytes(digest[:16], "little"))``,
    seeded from the four little-endian uint32 words directly: numpy's int -> words
    conversion costs more than the generator itself (~2x on the per-example path), and
    SeedSequence hashes a missing high word exactly like a zero word (a test pins this).
    """
    return generator_from_digest(digest(seed, purpose, split_name, key)[:16])


def generator_from_digest(digest16: bytes) -> np.random.Generator:
    """``default_rng(int.from_bytes(digest16, "little"))``, without the slow int path."""
    words = np.frombuffer(digest16, dtype="<u4")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def shard(examples: Iterable[T], shard_index: int = 0, num_shards: int = 1
          ) -> Iterator[T]:
    """Every ``num_shards``-th element starting at ``shard_index``."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
    return itertools.islice(examples, shard_index, None, num_shards)
