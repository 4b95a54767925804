"""The `grounding` family: tie item IDs to titles and genres (catalogue facts, train only)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flanrec.data import templates
from flanrec.data.choice import choose_template, shard
from flanrec.data.examples import (
    Example,
    check_split_name,
    render_example,
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

TEMPLATE_FAMILIES = ("id2title", "title2id", "id2genres")


def grounding_examples(split: Split, index: ItemIndex, meta: ItemMeta,
                       split_name: str = "train", seed: int = 0,
                       template_types: Sequence[str] = ("seen",),
                       families: Sequence[str] = TEMPLATE_FAMILIES,
                       shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                       ) -> Iterator[Example]:
    """Tie new ID strings to what the LM knows: ID->title, title->ID, ID->genres, over the
    catalogue (no interactions involved). Title indexing skips ID<->title (trivial)."""
    check_split_name(split_name)
    if meta is None:
        raise ValueError("grounding examples need ItemMeta (titles, categories)")

    for family, item in shard(_grounding_specs(split, index, meta, families), shard_index,
                              num_shards):
        pool = templates.template_indices(family, tuple(template_types))
        idx = choose_template(seed, family, split_name, item, pool)
        fields = {"item": index.id_of(item), "title": title_of(meta, item),
                  "genres": ", ".join(meta.categories.get(item, []))}
        yield render_example(family, task_prefix + family, idx, fields, item, user="",
                             target_item=item)


def _grounding_specs(split: Split, index: ItemIndex, meta: ItemMeta, families: Sequence[str]
                     ) -> Iterator[tuple[str, str]]:
    """(grounding family, item) of every grounding example, family by family."""
    for family in families:
        if family not in TEMPLATE_FAMILIES:
            raise ValueError(f"unknown grounding family {family!r}")
        if index.method == "title" and family != "id2genres":
            continue
        for item in split.all_items:
            if family == "id2genres" and not meta.categories.get(item):
                continue
            if family != "id2genres" and not meta.title.get(item):
                continue
            yield family, item


def examples(data: FamilyData, split_name: str, template_types: Sequence[str] = ("seen",),
             shard_index: int = 0, num_shards: int = 1) -> Iterator[Example]:
    return grounding_examples(data.split, data.index, data.meta,
                              **builder_kwargs(data, split_name, template_types, shard_index,
                                               num_shards))


def count(data: FamilyData, split_name: str) -> int:
    """Counted from the (template family, item) specs, none rendered."""
    check_split_name(split_name)
    if data.meta is None:
        return 0
    return sum(1 for _ in _grounding_specs(data.split, data.index, data.meta, TEMPLATE_FAMILIES))


def needs_titles(data: FamilyData) -> str | None:
    return None if data.meta.title else "no item has a title (CSV: --title_col, or --items_file)"


FAMILY = register(Family(name="grounding", target_kind="text", examples=examples, count=count,
                         template_families=TEMPLATE_FAMILIES, splits=("train",),
                         unseen_eval=False, unavailable=needs_titles, order=60))
