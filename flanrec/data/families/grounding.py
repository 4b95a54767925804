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

ID2TITLE_TEMPLATES: list[tuple[str, str]] = [
    ("What is the title of movie {item}?", "{title}"),
    ("Which film has the ID {item}?", "{title}"),
    ("Movie {item} is called", "{title}"),
    ("Give the name of the movie with identifier {item}.", "{title}"),
    ("{item} is the ID of which movie?", "{title}"),
    ("Tell me the title of item {item}.", "{title}"),
    ("Item {item}: what film is this?", "{title}"),
    ("Look up movie {item} and return its title.", "{title}"),
    # unseen
    ("Translate the movie ID {item} into the movie's title.", "{title}"),
    ("Name the film catalogued as {item}.", "{title}"),
]
templates.register_templates(
    "id2title", {"item", "title"}, ID2TITLE_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS | {"title"})


TITLE2ID_TEMPLATES: list[tuple[str, str]] = [
    ("What is the ID of the movie \"{title}\"?", "{item}"),
    ("Which item ID does {title} have?", "{item}"),
    ("Give the identifier of the film {title}.", "{item}"),
    ("The movie {title} has the ID", "{item}"),
    ("Find the movie ID for: {title}", "{item}"),
    ("Return the catalogue ID of \"{title}\".", "{item}"),
    ("Title: {title}\nID:", "{item}"),
    ("How is the movie {title} referred to by ID?", "{item}"),
    # unseen
    ("Convert the title \"{title}\" into its movie ID.", "{item}"),
    ("Which ID would you use to recommend {title}?", "{item}"),
]
templates.register_templates(
    "title2id", {"item", "title"}, TITLE2ID_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS | {"item"})


ID2GENRES_TEMPLATES: list[tuple[str, str]] = [
    ("What genres does movie {item} belong to?", "{genres}"),
    ("List the genres of {item}.", "{genres}"),
    ("Movie {item} ({title}) is which kind of film? Give its genres.", "{genres}"),
    ("Which genres describe the film with ID {item}?", "{genres}"),
    ("Genres of movie {item}:", "{genres}"),
    ("Tell me the genres of item {item}.", "{genres}"),
    ("Classify movie {item} by genre.", "{genres}"),
    ("What type of movie is {item}?", "{genres}"),
    # unseen
    ("Name every genre that applies to movie {item}.", "{genres}"),
    ("In which genres would a video store shelve {item}?", "{genres}"),
]
templates.register_templates(
    "id2genres", {"genres", "item", "title"}, ID2GENRES_TEMPLATES,
    answer_fields=templates.BUILTIN_ANSWER_FIELDS)


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
