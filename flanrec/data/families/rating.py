"""The `rating` family: predict the star rating a user gives an item.

`rated` and `rated_examples` are shared with the `binary` family (the same interactions,
another answer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from flanrec.data import templates
from flanrec.data.choice import choose_template, shard
from flanrec.data.examples import (
    Example,
    check_split_name,
    format_rating,
    item_list,
    render_example,
    template_pool,
    title_of,
)
from flanrec.data.families.core import (
    Family,
    FamilyData,
    builder_kwargs,
    needs_ratings,
    register,
)
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split

RATING_TEMPLATES: list[tuple[str, str]] = [
    ("How many stars (1 to 5) would user {user} give the movie {item}?", "{rating}"),
    ("Predict user {user}'s rating of {item} ({title}) on a scale from 1 to 5.",
     "{rating}"),
    ("User {user} recently watched {history}. What rating, from 1 to 5, will they give "
     "{item}?", "{rating}"),
    ("On a 1-5 scale, how would user {user} rate \"{title}\" (movie {item})?",
     "{rating}"),
    ("Guess the star rating user {user} gave to movie {item}.", "{rating}"),
    ("User {user} has just finished {title} ({item}). How many stars out of 5 did they "
     "give it?", "{rating}"),
    ("Rate movie {item} as user {user} would, with a whole number between 1 and 5.",
     "{rating}"),
    ("What score from 1 (hated it) to 5 (loved it) did user {user} give {item}?",
     "{rating}"),
    # unseen
    ("Estimate the 1-5 rating that user {user}, who also watched {history}, assigns "
     "to {item}.", "{rating}"),
    ("User {user} reviewed \"{title}\" ({item}). Predict the number of stars.",
     "{rating}"),
]
templates.register_templates(
    "rating", {"history", "item", "rating", "title", "user"}, RATING_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def rated(split: Split, split_name: str, history_len: int
           ) -> Iterator[tuple[str, str, str, float, list[str]]]:
    """(key, user, item, rating, preceding items) for rated interactions of one split."""
    for s in split.users:
        if split_name == "train":
            for j, (item, r) in enumerate(zip(s.train_items, s.train_ratings, strict=False)):
                if r is not None and math.isfinite(r):
                    yield f"{s.user}:{j}", s.user, item, float(r), \
                        s.train_items[max(0, j - history_len):j]
        elif split_name == "validation":
            r = s.valid_rating
            if s.valid_item is not None and r is not None and math.isfinite(r):
                yield s.user, s.user, s.valid_item, float(r), s.train_items[-history_len:]
        else:
            r = s.test_rating
            if s.test_item is not None and r is not None and math.isfinite(r):
                prev = s.train_items + ([s.valid_item] if s.valid_item is not None else [])
                yield s.user, s.user, s.test_item, float(r), prev[-history_len:]


def rated_examples(family: str, split: Split, index: ItemIndex, meta: ItemMeta | None,
                   split_name: str, seed: int, template_types: Sequence[str],
                   template_idx: int | None, history_len: int, shard_index: int,
                   num_shards: int, task_prefix: str,
                   target_fields: Callable[[float], dict[str, str]]) -> Iterator[Example]:
    check_split_name(split_name)
    pool = template_pool(family, template_types, template_idx)
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    for key, user, item, r, prev in shard(rated(split, split_name, history_len),
                                          shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "item": index.id_of(item), "title": title_of(meta, item),
                  "history": item_list(index, prev) if prev else "nothing yet",
                  **target_fields(r)}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                             target_item=item)


def rating_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    history_len: int = 10, shard_index: int = 0, num_shards: int = 1,
                    task_prefix: str = "") -> Iterator[Example]:
    """Predict the rating ("4"); train from train interactions, eval from the held-out one.
    Interactions without a rating (NaN) are skipped."""
    return rated_examples("rating", split, index, meta, split_name, seed, template_types,
                          template_idx, history_len, shard_index, num_shards, task_prefix,
                          lambda r: {"rating": format_rating(r)})


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return rating_examples(data.split, data.index, data.meta,
                           **builder_kwargs(data, split_name, template_types, shard_index,
                                            num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """One example per rated interaction: counted, none rendered."""
    check_split_name(split_name)
    return sum(1 for _ in rated(data.split, split_name, 10))


FAMILY = register(Family(name="rating", target_kind="rating", examples=examples, count=count,
                         template_families=("rating",), indexed=False,
                         unavailable=needs_ratings, order=40))
