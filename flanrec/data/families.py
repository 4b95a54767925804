"""The registry of task families: a kind of recommendation instruction is one `Family` object.

A family says everything the rest of flanrec needs to know about one kind of instruction:
how to build its examples from a user's sequence (`examples`, over a `FamilyData`), how many
there are per split (`count`), which template families phrase it, what its targets are
(item IDs, a rating, yes/no, free text), which splits it has, whether there is one task per
item indexing, and its cap in the default mixture. `flanrec.prepare` reads the registry to
decide what to record, `flanrec.data.family_source` renders the examples when seqio reads
them, and `flanrec.infer` takes the target kind and layout from it.

Adding a family is therefore one `register(Family(...))` call from user code (a module in
`tasks/`, a notebook), next to its templates (`flanrec.data.templates.register_templates`);
`flanrec.data.prepared_tasks.register_family_task` then makes a seqio task of it over any
prepared dir, without preparing again, since prepared dirs store the sequences, not text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flanrec.data import examples as ex_lib
from flanrec.data import splits as splits_lib
from flanrec.data import templates
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split, UserFeatures

TARGET_KINDS = ("item", "rating", "binary", "text")
TARGET_LAYOUTS = ("single", "item_sequence")
EVAL_SPLITS = ("validation", "test")
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
    return family


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Family:
    if name not in _REGISTRY:
        raise KeyError(f"unknown family {name!r}; registered: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered family names, built-ins first in their historical order."""
    return list(_REGISTRY)


# --------------------------------------------------------------------------- the built-ins


def _opt(data: FamilyData, name: str, default: Any) -> Any:
    value = data.options.get(name)
    return default if value is None else value


def _common(data: FamilyData, split_name: str, template_types: Sequence[str], shard_index: int,
            num_shards: int) -> dict[str, Any]:
    return dict(split_name=split_name, seed=data.seed, template_types=tuple(template_types),
                shard_index=shard_index, num_shards=num_shards,
                task_prefix=data.task_prefix + "_" if data.task_prefix else "")


def _family_kwargs(name: str, data: FamilyData) -> dict[str, Any]:
    """The prepare options a built-in family's builder takes."""
    kwargs: dict[str, Any] = {}
    if name in ("seq", "seqrec", "direct"):
        kwargs["max_history"] = data.options.get("max_history")
    if name == "seqrec":
        kwargs.update(window=_opt(data, "seqrec_window", ex_lib.SEQREC_WINDOW),
                      encoder_items=_opt(data, "seqrec_encoder_items",
                                         ex_lib.SEQREC_ENCODER_ITEMS),
                      tilings=_opt(data, "seqrec_tilings", ex_lib.SEQREC_TILINGS))
    if name == "direct":
        kwargs["num_candidates"] = min(int(_opt(data, "num_candidates", 20)),
                                       len(data.split.all_items))
    return kwargs


def _builtin_examples(name: str) -> ExamplesFn:
    def build(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
              shard_index: int = 0, num_shards: int = 1) -> Iterator[ex_lib.Example]:
        common = _common(data, split_name, template_types, shard_index, num_shards)
        if name == "profile":
            return ex_lib.profile_examples(data.split, data.index, data.users, data.meta,
                                           **common)
        return ex_lib.build_examples(name, data.split, data.index, data.meta, data.users,
                                     **common, **_family_kwargs(name, data))
    build.__name__ = f"{name}_examples"
    return build


def _builtin_count(name: str) -> Callable[[FamilyData, str], int]:
    def count(data: FamilyData, split_name: str) -> int:
        return ex_lib.count_examples(name, data.split, data.index, data.meta, data.users,
                                     split_name, **_family_kwargs(name, data))
    return count


def _needs_ratings(data: FamilyData) -> str | None:
    import math

    for s in data.split.users:
        if any(r is not None and math.isfinite(r) for r in s.train_ratings):
            return None
    return ("the log has no ratings (CSV: name the column with --rating_col; a column called "
            "rating/score/stars is used automatically)")


def _needs_users(data: FamilyData) -> str | None:
    if data.users is None or not data.users.features:
        return "the dataset has no user features (age, gender, occupation)"
    return None


def _needs_titles(data: FamilyData) -> str | None:
    return None if data.meta.title else "no item has a title (CSV: --title_col, or --items_file)"


def _seqrec_train_targets(data: FamilyData) -> int:

    return int(_opt(data, "seqrec_tilings", ex_lib.SEQREC_TILINGS)) * \
        splits_lib.count_train_windows(data.split)


def _register_builtins() -> None:
    def builtin(name: str, target_kind: str, templates: tuple[str, ...], **kw: Any) -> None:
        register(Family(name=name, target_kind=target_kind, examples=_builtin_examples(name),
                        count=_builtin_count(name), template_families=templates, **kw))

    # seq is uncapped in mixtures: it is the task the ml100k-loo numbers are reported on;
    # the auxiliary families are capped so that they support rather than swamp it.
    builtin("seq", "item", ("seq",), mixture_cap=None)
    # Targets: a run of item IDs without EOS (the decoder continues from one item to the
    # next); inference ranks the last item after feeding the others as a prefix.
    builtin("seqrec", "item", ("seqrec",), targets_eos=False, target_layout="item_sequence",
            mixture_cap=None, train_targets=_seqrec_train_targets)
    builtin("direct", "item", ("direct",),
            extra_features={"user": "string", "target_item": "string",
                            "candidates": "string_list"})
    builtin("rating", "rating", ("rating",), indexed=False, unavailable=_needs_ratings)
    builtin("binary", "binary", ("binary",), indexed=False, unavailable=_needs_ratings)
    builtin("grounding", "text", ("id2title", "title2id", "id2genres"), splits=("train",),
            unseen_eval=False, unavailable=_needs_titles)
    builtin("profile", "text", ("profile_attr", "profile_rec"), indexed=False,
            unavailable=_needs_users)


_register_builtins()
BUILTIN_FAMILIES = tuple(names())
