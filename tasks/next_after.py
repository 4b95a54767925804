"""A task family from user code whose answer is an item: which movie came right after one.

Not imported by `import tasks`; a run asks for it with
`MIXTURE_OR_TASK_MODULE = 'tasks.next_after'` and trains on `ml100k_next_after_seqidx`.
It shows the conventions of an item-target family beside `tasks/next_genre.py` (text
targets): items are written as their ID strings of the task's indexing (`item_list`,
`data.index.id_of`), the answer item is the example's `target_item`, and since the answer is
an item of the user's history rather than the split's held-out item, the family says so
(`held_out_target=False`): inference masks no seen items for it and evaluation ranks each
example against its own `target_item`.
"""

from __future__ import annotations

from collections.abc import Iterator

import tasks
from flanrec.data import families, templates
from flanrec.data.choice import choose_template, example_rng, shard
from flanrec.data.examples import Example, item_list, render_example
from flanrec.data.prepared_tasks import register_family_task

templates.register_templates("next_after", fields={"user", "history", "anchor", "next"},
                             patterns=[
    ("User {user} watched {history}. Which movie did they watch right after {anchor}?",
     "{next}"),
    ("Viewing history of user {user}: {history}. The movie after {anchor} was:", "{next}"),
    ("In {history}, what did user {user} watch next after {anchor}?", "{next}"),
    ("User {user}'s movies in order: {history}. Name the one that follows {anchor}.",
     "{next}"),
    ("Given that user {user} watched {history}, which film came after {anchor}?", "{next}"),
], replace=True)


def next_after_examples(data: families.FamilyData, split_name: str,
                        template_types: tuple[str, ...] = ("seen",), shard_index: int = 0,
                        num_shards: int = 1) -> Iterator[Example]:
    """One example per user and split over the user's last 10 items the split may read
    (train: train items; validation: train items; test: train items + the validation
    item): an anchor item chosen by a hash of (seed, split, user) and, as the answer, the
    item the user watched right after it. Users with fewer than 2 such items are left out."""
    pool = templates.template_indices("next_after", template_types)

    def specs() -> Iterator[tuple[str, list[str]]]:
        for s in data.split.users:
            if split_name != "train" and (s.valid_item is None or s.test_item is None):
                continue  # not an evaluated user
            seen = s.train_items + ([s.valid_item] if split_name == "test" else [])
            if len(seen) >= 2:
                yield s.user, seen[-10:]

    for user, history in shard(specs(), shard_index, num_shards):
        pos = int(example_rng(data.seed, "next_after", split_name, user)
                  .integers(0, len(history) - 1))
        target = history[pos + 1]
        idx = choose_template(data.seed, "next_after", split_name, user, pool)
        fields = {"user": user, "history": item_list(data.index, history),
                  "anchor": data.index.id_of(history[pos]), "next": data.index.id_of(target)}
        yield render_example("next_after", f"{data.task_prefix}_next_after", idx, fields,
                             key=user, user=user, target_item=target)


families.register(families.Family(
    name="next_after", target_kind="item", examples=next_after_examples,
    template_families=("next_after",), held_out_target=False), replace=True)

NAMES = [register_family_task(data_dir, "next_after") for data_dir in tasks.REGISTERED.values()]
"""The tasks registered: one per prepared dir that `import tasks` found."""
