"""The `binary` family: will the user like the item (rating >= 4), yes or no."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flanrec.data import templates
from flanrec.data.examples import (
    LIKE_THRESHOLD,
    Example,
    check_split_name,
)
from flanrec.data.families.core import (
    Family,
    FamilyData,
    builder_kwargs,
    needs_ratings,
    register,
)
from flanrec.data.families.rating import rated, rated_examples
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split

BINARY_TEMPLATES: list[tuple[str, str]] = [
    ("Will user {user} like the movie {item}? Answer yes or no.", "{answer}"),
    ("User {user} has watched {history}. Would they enjoy {item} ({title})? yes or no",
     "{answer}"),
    ("Does user {user} like {title} (movie {item})? Reply with yes or no.", "{answer}"),
    ("Is movie {item} a good recommendation for user {user}? yes/no", "{answer}"),
    ("Predict whether user {user} gives {item} four stars or more. Answer yes or no.",
     "{answer}"),
    ("User {user} is about to watch \"{title}\". Will they like it? Answer yes or no.",
     "{answer}"),
    ("Would user {user} rate {item} highly? Say yes or no.", "{answer}"),
    ("Given that user {user} watched {history}, will they like {item}? yes or no",
     "{answer}"),
    # unseen
    ("Answer with yes or no: did user {user} enjoy watching {title} ({item})?",
     "{answer}"),
    ("Is user {user} going to be a fan of movie {item}? Respond yes or no.",
     "{answer}"),
]
templates.register_templates(
    "binary", {"answer", "history", "item", "title", "user"}, BINARY_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def binary_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    history_len: int = 10, threshold: float = LIKE_THRESHOLD,
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                    ) -> Iterator[Example]:
    """Will the user like the item: "yes" iff rating >= threshold (default 4)."""
    return rated_examples("binary", split, index, meta, split_name, seed, template_types,
                          template_idx, history_len, shard_index, num_shards, task_prefix,
                          lambda r: {"answer": "yes" if r >= threshold else "no"})


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return binary_examples(data.split, data.index, data.meta,
                           **builder_kwargs(data, split_name, template_types, shard_index,
                                            num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """One example per rated interaction: counted, none rendered."""
    check_split_name(split_name)
    return sum(1 for _ in rated(data.split, split_name, 10))


FAMILY = register(Family(name="binary", target_kind="binary", examples=examples, count=count,
                         template_families=("binary",), indexed=False,
                         unavailable=needs_ratings, order=50))
