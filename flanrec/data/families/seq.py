"""The `seq` family: next-item prediction from the history, the protocol's main task.

Uncapped in mixtures: it is the task the ml100k-loo numbers are reported on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flanrec.data import templates
from flanrec.data.choice import choose_template, shard
from flanrec.data.examples import (
    Example,
    check_split_name,
    item_list,
    queries,
    render_example,
    template_pool,
    title_of,
)
from flanrec.data.families.core import (
    Family,
    FamilyData,
    builder_kwargs,
    register,
)
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split

SEQ_TEMPLATES: list[tuple[str, str]] = [
    ("Here is the viewing history of user {user}: {history}. What will the user watch "
     "next?", "{target}"),
    ("User {user} has watched these movies in this order: {history}. Predict the next "
     "movie they will watch.", "{target}"),
    ("Given the sequence of movies {history}, watched by user {user}, which movie comes "
     "next?", "{target}"),
    ("{history}\n\nThese are the films user {user} saw, oldest first. Recommend the one "
     "film they are most likely to watch next.", "{target}"),
    ("The most recent movie user {user} watched was {last_item} ({last_title}). Their "
     "full history is {history}. What should they watch next?", "{target}"),
    ("Viewing log for user {user}: {history}\nNext movie:", "{target}"),
    ("Based on what user {user} watched before ({history}), guess the movie they "
     "picked next.", "{target}"),
    ("I am user {user}. Lately I have been watching {history}. What should I watch "
     "next? Answer with the movie ID.", "{target}"),
    # unseen
    ("Predict which title user {user} will stream after finishing {history}.",
     "{target}"),
    ("Movies seen so far by user {user}, in chronological order: {history}. Name the "
     "movie that follows in this sequence.", "{target}"),
]
templates.register_templates(
    "seq", {"history", "last_item", "last_title", "target", "user"}, SEQ_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def seq_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                 split_name: str = "train", seed: int = 0,
                 template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                 max_history: int | None = None, shard_index: int = 0, num_shards: int = 1,
                 task_prefix: str = "") -> Iterator[Example]:
    """Next-item prediction. train: every window t = 2..n-2 (history <= max_history, default
    split.max_history); validation/test: the protocol's LOO query per user."""
    check_split_name(split_name)
    family = "seq"
    pool = template_pool(family, template_types, template_idx)
    for key, user, history, target in shard(queries(split, split_name, max_history),
                                            shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "history": item_list(index, history),
                  "target": index.id_of(target), "last_item": index.id_of(history[-1]),
                  "last_title": title_of(meta, history[-1])}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                      target_item=target)


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return seq_examples(data.split, data.index, data.meta,
                        max_history=data.options.get("max_history"),
                        **builder_kwargs(data, split_name, template_types, shard_index,
                                         num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """One example per query: counted from the queries, none rendered."""
    check_split_name(split_name)
    return sum(1 for _ in queries(data.split, split_name, data.options.get("max_history")))


FAMILY = register(Family(name="seq", target_kind="item", examples=examples, count=count,
                         template_families=("seq",), mixture_cap=None, order=10))
