"""A task family from user code: name the genres of the movie a user watches next.

Not imported by `import tasks`; a run asks for it with
`MIXTURE_OR_TASK_MODULE = 'tasks.next_genre'` and trains on `ml100k_next_genre_seqidx`.
It is the README's "Add a task family" example, kept as a module so that it runs as written:
templates, a builder over the stored split, one `families.register`, and one seqio task per
prepared dir; nothing in `flanrec/` changes and nothing is prepared again.
"""

from __future__ import annotations

from collections.abc import Iterator

import tasks
from flanrec.data import families, templates
from flanrec.data.choice import choose_template, shard
from flanrec.data.examples import Example, item_list, render_example
from flanrec.data.prepared_tasks import register_family_task

templates.register_templates("next_genre", fields={"user", "history", "genres"}, patterns=[
    ("User {user} watched {history}. Which genres will their next movie have?", "{genres}"),
    ("After {history}, user {user} picks another movie. Name its genres.", "{genres}"),
    ("Viewing history of user {user}: {history}. Genres of the next movie:", "{genres}"),
    ("Guess the genres of the next film user {user} watches, given {history}.", "{genres}"),
], replace=True)


def next_genre_examples(data: families.FamilyData, split_name: str,
                        template_types: tuple[str, ...] = ("seen",), shard_index: int = 0,
                        num_shards: int = 1) -> Iterator[Example]:
    """One example per user and split: the last 10 items before the held-out one (train:
    before the last train item) and that item's genres; users whose item has none are
    left out. Every choice is a hash of (seed, split, user): hosts agree without talking."""
    pool = templates.template_indices("next_genre", template_types)

    def specs() -> Iterator[tuple[str, list[str], str]]:
        for s in data.split.users:
            seen = s.train_items + ([s.valid_item] if split_name == "test" else [])
            target = {"train": s.train_items[-1] if s.train_items else None,
                      "validation": s.valid_item, "test": s.test_item}[split_name]
            history = seen[:-1] if split_name == "train" else seen
            if target and history and data.meta.categories.get(target):
                yield s.user, history[-10:], target

    for user, history, target in shard(specs(), shard_index, num_shards):
        idx = choose_template(data.seed, "next_genre", split_name, user, pool)
        fields = {"user": user, "history": item_list(data.index, history),
                  "genres": ", ".join(data.meta.categories[target])}
        yield render_example("next_genre", f"{data.task_prefix}_next_genre", idx, fields,
                             key=user, user=user, target_item=target)


families.register(families.Family(
    name="next_genre", target_kind="text", examples=next_genre_examples,
    template_families=("next_genre",)), replace=True)

NAMES = [register_family_task(data_dir, "next_genre") for data_dir in tasks.REGISTERED.values()]
"""The tasks registered: one per prepared dir that `import tasks` found."""
