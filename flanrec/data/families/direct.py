"""The `direct` family: pick the next item among candidates the example shows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from flanrec.data import templates
from flanrec.data.choice import choose_template, example_rng, shard
from flanrec.data.examples import (
    Example,
    check_split_name,
    item_list,
    queries,
    render_example,
    template_pool,
)
from flanrec.data.families.core import (
    Family,
    FamilyData,
    builder_kwargs,
    option,
    register,
)
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split, UserSequence

DIRECT_TEMPLATES: list[tuple[str, str]] = [
    ("User {user} has watched {history}. Which of the following movies should we "
     "recommend to them? Options: {candidates}", "{target}"),
    ("Pick the one movie from {candidates} that user {user} is most likely to watch, "
     "given their history: {history}.", "{target}"),
    ("Candidates: {candidates}\nHistory of user {user}: {history}\nWhich candidate will "
     "the user choose?", "{target}"),
    ("From these {num_candidates} movies: {candidates}, choose the best recommendation "
     "for user {user}, who has seen {history}.", "{target}"),
    ("User {user} watched {history}. Exactly one of {candidates} is the movie they "
     "watched next. Which one?", "{target}"),
    ("Choose a movie for user {user} from the list {candidates}. Their past movies: "
     "{history}.", "{target}"),
    ("Which of these movies would user {user} enjoy next: {candidates}? For reference, "
     "they have already seen {history}.", "{target}"),
    ("Recommend one item out of {candidates} to user {user}. Previously watched: "
     "{history}.", "{target}"),
    # unseen
    ("A viewer (user {user}) with the history {history} is browsing {candidates}. "
     "Which will they click?", "{target}"),
    ("Select from {candidates} the next movie for user {user} (seen before: "
     "{history}).", "{target}"),
]
templates.register_templates(
    "direct", {"candidates", "history", "num_candidates", "target", "user"}, DIRECT_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


def _interacted(seq: UserSequence) -> set[str]:
    """Items never offered as negatives: everything the user interacted with, held-out
    items included, so a user's validation/test item never appears in their training
    examples (not even as a wrong option) and is never a wrong option at evaluation."""
    return set(seq.train_items) | {i for i in (seq.valid_item, seq.test_item) if i is not None}


def sample_negatives(catalogue: Sequence[str], exclude: set[str], n: int,
                     rng: np.random.Generator, available: int | None = None) -> list[str]:
    """``n`` distinct catalogue items outside ``exclude``, by rejection sampling.

    ``available`` (items outside ``exclude``) may be passed when already known."""
    if available is None:
        available = len(catalogue) - len(exclude & set(catalogue))
    if available < n:
        raise ValueError(f"need {n} negatives but only {available} catalogue items are "
                         "outside the user's interactions; lower num_candidates")
    chosen: list[str] = []
    taken: set[str] = set()
    while len(chosen) < n:
        for j in rng.integers(0, len(catalogue), size=2 * (n - len(chosen)) + 8).tolist():
            item = catalogue[j]
            if item not in exclude and item not in taken:
                taken.add(item)
                chosen.append(item)
                if len(chosen) == n:
                    break
    return chosen


def direct_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    num_candidates: int = 20, max_history: int | None = None,
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                    ) -> Iterator[Example]:
    """Pick the target among ``num_candidates``: the target plus negatives the user never
    interacted with (in any split, see ``_interacted``), in a seeded order."""
    check_split_name(split_name)
    family = "direct"
    pool = template_pool(family, template_types, template_idx)
    by_user = {s.user: s for s in split.users}
    catalogue = split.all_items
    catalogue_set = set(catalogue)
    exclude: dict[str, tuple[set[str], int]] = {}
    for key, user, history, target in shard(queries(split, split_name, max_history),
                                            shard_index, num_shards):
        rng = example_rng(seed, "direct", split_name, key)
        if user not in exclude:
            exclude.clear()  # queries come user by user: keep one set alive
            seen = _interacted(by_user[user])
            exclude[user] = (seen, len(catalogue_set - seen))
        negs = sample_negatives(catalogue, exclude[user][0], num_candidates - 1, rng,
                                exclude[user][1])
        cands = [target] + negs
        cands = [cands[j] for j in rng.permutation(len(cands)).tolist()]
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "history": item_list(index, history),
                  "candidates": item_list(index, cands), "target": index.id_of(target),
                  "num_candidates": str(len(cands))}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                      target_item=target, candidates=cands)


def num_candidates(data: FamilyData) -> int:
    """Candidates per example: prepare's `num_candidates`, at most the catalogue."""
    return min(int(option(data, "num_candidates", 20)), len(data.split.all_items))


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return direct_examples(data.split, data.index, data.meta,
                           max_history=data.options.get("max_history"),
                           num_candidates=num_candidates(data),
                           **builder_kwargs(data, split_name, template_types, shard_index,
                                            num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """One example per query: counted from the queries, none rendered (the negatives are
    what rendering costs)."""
    check_split_name(split_name)
    return sum(1 for _ in queries(data.split, split_name, data.options.get("max_history")))


FAMILY = register(Family(name="direct", target_kind="item", examples=examples, count=count,
                         template_families=("direct",), num_candidates=num_candidates,
                         extra_features={"user": "string", "target_item": "string",
                                         "candidates": "string_list"}, order=30))
