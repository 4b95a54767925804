"""The building blocks of every family's builder: deterministic instruction examples.

Each family's builder lives in its own module of `flanrec.data.families`; what they share
(ID lists, titles, the protocol's queries, rendering one example) is here.

Every choice (template, negatives, candidate order) is a pure function of
``(seed, family, split name, example key)`` via sha256, never of a shared RNG's position.
So every host builds the same dataset on its own, shard ``i`` of ``n`` is exactly every n-th
example (``islice(all, i, None, n)``) and skipping other shards costs no rendering.

Each example is a dict::

    inputs, targets                 strings for the model
    _task_name                      family, e.g. "seq" (prefix with task_prefix=)
    _template_idx, _template_type   which pattern of templates.PATTERNS, "seen"/"unseen"
    user, target_item               raw ids ("" where a family has none)
    candidates                      families that show candidates: raw ids in the order shown
    _template_family, _key, _fields the template family, example key and filled fields
                                    (RENDER_KEYS: what re-phrasing in a later epoch needs)

Leakage rule: training examples read only ``train_items`` (and their ratings); validation
inputs read train items; test inputs read train + the validation item, exactly as the
ml100k-loo protocol says.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from flanrec.data import splits as splits_lib
from flanrec.data import templates
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split

SPLIT_NAMES = ("train", "validation", "test")
LIKE_THRESHOLD = 4.0

Example = dict[str, Any]
RENDER_KEYS = ("_template_family", "_key", "_fields")
"""What each example also carries so a reader can phrase it again with another template
(flanrec.data.family_source): the template family, the example key and the filled fields."""


# ---------------------------------------------------------------------- formatting helpers


def item_list(index: ItemIndex, items: Iterable[str]) -> str:
    """Items as their ID strings, comma separated ("; " for titles, which contain commas)."""
    sep = "; " if index.method == "title" else ", "
    if not isinstance(items, list | tuple):
        items = list(items)  # the fallback below iterates again
    try:  # the hot path of prepare (~16M lookups on ml-100k): plain dict lookups
        return sep.join(map(index.item_to_id.__getitem__, items))
    except KeyError:
        return sep.join(index.id_of(i) for i in items)  # raises naming the item and index


def format_rating(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else f"{r:g}"


def template_pool(family: str, template_types: Sequence[str], template_idx: int | None
                  ) -> list[int]:
    """Template indices to choose from: just `template_idx` when given, else the types'."""
    if template_idx is not None:
        templates.template_type(family, template_idx)  # validates the index
        return [template_idx]
    return templates.template_indices(family, tuple(template_types))


def check_split_name(split_name: str, allowed: Sequence[str] = SPLIT_NAMES) -> None:
    """A ValueError naming the allowed splits, for a builder asked for another one."""
    if split_name not in allowed:
        raise ValueError(f"split_name must be one of {tuple(allowed)}, got {split_name!r}")


def render_example(family: str, task_name: str, idx: int, fields: dict[str, str], key: str,
                   **extra: Any) -> Example:
    """Pattern ``idx`` of template family ``family`` filled with ``fields``, as an example.

    The building block of every family's builder, ours and users'. ``key`` names the
    example uniquely within its split; with ``_fields`` it lets a reader phrase the example
    with another template later (a new epoch, flanrec.data.family_source) without
    rebuilding it. ``extra`` (user, target_item, ...) is copied in."""
    inputs, targets = templates.render(family, idx, **fields)
    ex: Example = {"inputs": inputs, "targets": targets, "_task_name": task_name,
                   "_template_idx": idx, "_template_type": templates.template_type(family, idx),
                   "_template_family": family, "_key": key, "_fields": fields}
    ex.update(extra)
    return ex


def title_of(meta: ItemMeta | None, item: str) -> str:
    """The item's title with its year ("Heat (1995)"), else "item <id>"."""
    t = meta.title.get(item, "") if meta is not None else ""
    if meta is not None and meta.year.get(item) and t:
        t = f"{t} ({meta.year[item]})"
    return t or f"item {item}"


# ---------------------------------------------------------------------- queries (cheap specs)


def queries(split: Split, split_name: str, max_history: int | None
            ) -> Iterator[tuple[str, str, list[str], str]]:
    """(key, user, history, target) in a fixed order: train windows or LOO eval queries.

    An evaluation query with an empty history (a user with only two interactions) has
    nothing to condition on and is left out."""
    if split_name == "train":
        counter: dict[str, int] = {}
        for w in splits_lib.train_windows(split, max_history):
            t = counter.get(w.user, 1)
            counter[w.user] = t + 1
            yield f"{w.user}:{t}", w.user, w.history, w.target
    else:
        for q in splits_lib.eval_examples(split, split_name, max_history):
            if q.history:
                yield q.user, q.user, q.history, q.target
