"""The `Family` type and the registry: a kind of recommendation instruction is one object.

A family says everything the rest of flanrec needs to know about one kind of instruction:
how to build its examples from a user's sequence (`examples`, over a `FamilyData`), how many
there are per split (`count`), which template families phrase it, what its targets are
(item IDs, a rating, yes/no, free text), which splits it has, whether there is one task per
item indexing, and its cap in the default mixture. `flanrec.prepare` reads the registry to
decide what to record, `flanrec.data.family_source` renders the examples when seqio reads
them, and the inference job takes the target kind and layout from it (through
`flanrec.data.task_meta`).

Built-in and user families take the same route: one `register(Family(...))` call next to
the family's builder and templates (`flanrec.data.templates.register_templates`). The
built-ins are the modules of this package (one file each, found by `flanrec.data.families`
when it is imported); a user's family is a module in `tasks/` or a notebook cell.
`flanrec.data.prepared_tasks.register_family_task` then makes a seqio task of it over any
prepared dir, without preparing again, since prepared dirs store the sequences, not text.

Nothing outside a family's own module compares a family's name: whatever the rest of
flanrec must know about a family is a field here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flanrec.data import examples as ex_lib
from flanrec.data import templates
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split, UserFeatures

TARGET_KINDS = ("item", "rating", "binary", "text")
TARGET_LAYOUTS = ("single", "item_sequence")
EVAL_SPLITS = ("validation", "test")
"""The splits a family is evaluated on (each user's held-out validation and test item)."""
UNSEEN_SPLIT = "test_unseen"
"""The test queries phrased with held-out templates (FLAN's unseen-template evaluation)."""


@dataclasses.dataclass(frozen=True)
class FamilyData:
    """What a family builds examples from: one prepared dir read with one item indexing."""

    split: Split
    index: ItemIndex
    meta: ItemMeta
    users: UserFeatures | None
    options: Mapping[str, Any]  # prepare's options (max_history, num_candidates, ...)
    seed: int = 0
    task_prefix: str = ""


ExamplesFn = Callable[..., Iterator[ex_lib.Example]]
"""(data, split_name, template_types, shard_index, num_shards) -> examples, in a fixed order.
Examples are dicts as `flanrec.data.examples` documents; `shard_index`/`num_shards` select
every n-th (a multi-host reader's share), and should cost no rendering for the others."""


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of instruction; see the module docstring."""

    name: str
    target_kind: str
    examples: ExamplesFn
    template_families: tuple[str, ...]
    count: Callable[[FamilyData, str], int] | None = None  # default: render and count
    splits: tuple[str, ...] = ("train", "validation", "test")
    unseen_eval: bool = True  # add test_unseen (test queries, held-out templates)
    indexed: bool = True  # one task per item indexing (its targets or inputs hold item IDs)
    targets_eos: bool = True
    target_layout: str = "single"
    mixture_cap: int | None = 30_000
    unavailable: Callable[[FamilyData], str | None] = lambda data: None
    # Item predictions that carry loss in the train split, when one example holds several.
    train_targets: Callable[[FamilyData], int] | None = None
    extra_features: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"user": "string", "target_item": "string"})
    # Candidates each example shows (the options the model picks among), when it shows a
    # fixed number; evaluation checks score records against it.
    num_candidates: Callable[[FamilyData], int] | None = None
    # Whether an evaluation example's answer (`target_item`) is the user's held-out item of
    # the split, as the protocol's queries are. False: the family asks for another item (or
    # none), so inference masks no seen items for it and evaluation takes each example's
    # target from the task's own examples instead of the split's held-out item.
    held_out_target: bool = True
    # What the family says about the data without stopping: options the data cannot honour
    # (text asked for on a log that has none), one line each; prepare prints them once.
    notes: Callable[[FamilyData], list[str]] = lambda data: []
    # Where the family sorts in `names()` (prepare's default family list and its task
    # order); user families sort after the built-ins.
    order: int = 100

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"family name {self.name!r}: use letters, digits and _")
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"family {self.name}: target_kind must be one of {TARGET_KINDS}, "
                             f"got {self.target_kind!r}")
        if self.target_layout not in TARGET_LAYOUTS:
            raise ValueError(f"family {self.name}: target_layout must be one of "
                             f"{TARGET_LAYOUTS}, got {self.target_layout!r}")
        if not self.template_families:
            raise ValueError(f"family {self.name}: name the template families it renders with")

    def output_splits(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(output split, examples split name, template types) of this family's tasks."""
        out = [(s, s, ("seen",)) for s in self.splits]
        if self.unseen_eval and "test" in self.splits:
            out.append((UNSEEN_SPLIT, "test", ("unseen",)))
        return out

    def num_examples(self, data: FamilyData, split_name: str) -> int:
        if self.count is not None:
            return self.count(data, split_name)
        return sum(1 for _ in self.examples(data, split_name, ("seen",), 0, 1))

    @property
    def shows_candidates(self) -> bool:
        """Whether examples carry the candidate list they were phrased with."""
        return "candidates" in self.extra_features

    def task_dirname(self, index_suffix: str | None) -> str:
        """`seq_seqidx` for an indexed family, `rating` otherwise (the task name's tail)."""
        return f"{self.name}_{index_suffix}" if self.indexed and index_suffix else self.name


_REGISTRY: dict[str, Family] = {}


def register(family: Family, replace: bool = False) -> Family:
    """Add `family` to the registry (an existing name needs `replace=True`)."""

    if family.name in _REGISTRY and not replace:
        raise ValueError(f"family {family.name!r} is registered already (replace=True "
                         "replaces it)")
    for t in family.template_families:
        if t not in templates.PATTERNS:
            raise ValueError(f"family {family.name}: no templates named {t!r}; register them "
                             "with flanrec.data.templates.register_templates first")
    _REGISTRY[family.name] = family
    ordered = sorted(_REGISTRY.values(), key=lambda f: f.order)  # stable: ties keep arrival
    _REGISTRY.clear()
    _REGISTRY.update((f.name, f) for f in ordered)
    return family


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Family:
    if name not in _REGISTRY:
        raise KeyError(f"unknown family {name!r}; registered: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered family names by `Family.order` (built-ins first), then registration."""
    return list(_REGISTRY)


def option(data: FamilyData, name: str, default: Any) -> Any:
    """Prepare's option `name` as recorded for the dir, `default` where it is unset."""
    value = data.options.get(name)
    return default if value is None else value


def builder_kwargs(data: FamilyData, split_name: str, template_types: Sequence[str],
                   shard_index: int, num_shards: int) -> dict[str, Any]:
    """The keyword arguments every built-in builder takes, from the family's data."""
    return dict(split_name=split_name, seed=data.seed, template_types=tuple(template_types),
                shard_index=shard_index, num_shards=num_shards,
                task_prefix=data.task_prefix + "_" if data.task_prefix else "")


def needs_ratings(data: FamilyData) -> str | None:
    """Why a family built on ratings has nothing to learn from `data` (None: it has)."""
    for s in data.split.users:
        if any(r is not None and math.isfinite(r) for r in s.train_ratings):
            return None
    return ("the log has no ratings (CSV: name the column with --rating_col; a column called "
            "rating/score/stars is used automatically)")
