"""Deterministic instruction examples from a leave-one-out split, one generator per family.

Every choice (template, negatives, candidate order) is a pure function of
``(seed, family, split name, example key)`` via sha256, never of a shared RNG's position.
So every host builds the same dataset on its own, shard ``i`` of ``n`` is exactly every n-th
example (``islice(all, i, None, n)``) and skipping other shards costs no rendering.

Each example is a dict::

    inputs, targets                 strings for the model
    _task_name                      family, e.g. "seq" (prefix with task_prefix=)
    _template_idx, _template_type   which pattern of templates.PATTERNS, "seen"/"unseen"
    user, target_item               raw ids ("" where a family has none)
    candidates                      direct only: raw ids in the order shown
    _template_family, _key, _fields the template family, example key and filled fields
                                    (RENDER_KEYS: what re-phrasing in a later epoch needs)

Leakage rule: training examples read only ``train_items`` (and their ratings); validation
inputs read train items; test inputs read train + the validation item, exactly as the
ml100k-loo protocol says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from flanrec.data import splits as splits_lib
from flanrec.data import templates
from flanrec.data.choice import choose_template, example_rng, shard
from flanrec.data.indexing import ItemIndex
from flanrec.data.types import ItemMeta, Split, UserFeatures, UserSequence

SPLIT_NAMES = ("train", "validation", "test")
LIKE_THRESHOLD = 4.0
AGE_GROUPS = ((17, "under 18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (49, "45-49"),
              (55, "50-55"), (10**9, "56 or older"))
GENDERS = {"M": "male", "F": "female"}
PROFILE_ATTRIBUTES = ("gender", "age", "occupation")
ATTRIBUTE_NAMES = {"gender": "gender", "age": "age group", "occupation": "occupation"}

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


def age_group(age: str) -> str:
    """ml-100k gives ages in years; ml-1m already gives a group ("18-24"): keep those."""
    try:
        years = int(age)
    except ValueError:
        return age.strip()
    return next(name for upper, name in AGE_GROUPS if years <= upper)


def profile_values(features: dict[str, str]) -> dict[str, str]:
    """The predictable attributes of one user, normalised to the words templates use."""
    out = {}
    if features.get("gender", "").strip():
        g = features["gender"].strip()
        out["gender"] = GENDERS.get(g.upper(), g.lower())
    if features.get("age", "").strip():
        out["age"] = age_group(features["age"])
    if features.get("occupation", "").strip():
        out["occupation"] = features["occupation"].strip()
    return out


def describe_profile(values: dict[str, str]) -> str:
    """E.g. "a male user aged 25-34 who works as (a) technician"."""
    parts = ["a"]
    if "gender" in values:
        parts.append(values["gender"])
    parts.append("user")
    if "age" in values:
        parts.append(f"aged {values['age']}")
    if "occupation" in values:
        parts.append(f"whose occupation is {values['occupation']}")
    return " ".join(parts)


def _pool(family: str, template_types: Sequence[str], template_idx: int | None) -> list[int]:
    if template_idx is not None:
        templates.template_type(family, template_idx)  # validates the index
        return [template_idx]
    return templates.template_indices(family, tuple(template_types))


def _check_split_name(split_name: str, allowed: Sequence[str] = SPLIT_NAMES) -> None:
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


def _title(meta: ItemMeta | None, item: str) -> str:
    t = meta.title.get(item, "") if meta is not None else ""
    if meta is not None and meta.year.get(item) and t:
        t = f"{t} ({meta.year[item]})"
    return t or f"item {item}"


# ---------------------------------------------------------------------- queries (cheap specs)


def _queries(split: Split, split_name: str, max_history: int | None
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


# ---------------------------------------------------------------------- families


def seq_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                 split_name: str = "train", seed: int = 0,
                 template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                 max_history: int | None = None, shard_index: int = 0, num_shards: int = 1,
                 task_prefix: str = "") -> Iterator[Example]:
    """Next-item prediction. train: every window t = 2..n-2 (history <= max_history, default
    split.max_history); validation/test: the protocol's LOO query per user."""
    _check_split_name(split_name)
    family = "seq"
    pool = _pool(family, template_types, template_idx)
    for key, user, history, target in shard(_queries(split, split_name, max_history),
                                            shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "history": item_list(index, history),
                  "target": index.id_of(target), "last_item": index.id_of(history[-1]),
                  "last_title": _title(meta, history[-1])}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                      target_item=target)


SEQREC_WINDOW = 40
SEQREC_ENCODER_ITEMS = 10
SEQREC_TILINGS = 2


def seqrec_windows(n_items: int, window: int, tilings: int) -> list[tuple[int, int, int]]:
    """(tiling, start, end) target ranges ``[start, end)`` covering positions 1..n_items-1.

    Each tiling cuts the positions into consecutive windows of ``window`` targets, counted
    from the most recent item backwards (as SASRec does), tiling ``t`` shifted by
    ``t * window // tilings``; so every training item but the first is a target exactly once
    per tiling, and different tilings give it different contexts. Position 0 is never a
    target: nothing precedes it.
    """
    if window < 1 or tilings < 1:
        raise ValueError(f"window and tilings must be >= 1, got {window}, {tilings}")
    out = []
    for t in range(tilings):
        ends = [n_items]
        shift = (t * window) // tilings
        if shift and n_items - shift > 1:
            ends.append(n_items - shift)
        while ends[-1] - window > 1:
            ends.append(ends[-1] - window)
        bounds = [1] + sorted(set(ends))
        out += [(t, a, e) for a, e in zip(bounds, bounds[1:], strict=False) if e > a]
    return out


def seqrec_eval_split(history: Sequence[str], window: int, encoder_items: int
                      ) -> tuple[list[str], list[str]]:
    """(encoder items, decoder prefix) of an evaluation query's history.

    The prefix is the most recent ``window - 1`` items (at most: training never puts more
    items before a target inside one window), always leaving at least one item to the
    encoder, which holds up to ``encoder_items`` items before the prefix: the same two
    contexts a training target sees.
    """
    n_prefix = max(0, min(window - 1, len(history) - 1))
    cut = len(history) - n_prefix
    return list(history[max(0, cut - encoder_items):cut]), list(history[cut:])


def seqrec_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    window: int = SEQREC_WINDOW, encoder_items: int = SEQREC_ENCODER_ITEMS,
                    tilings: int = SEQREC_TILINGS, max_history: int | None = None,
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                    ) -> Iterator[Example]:
    """Next-item prediction trained the way SASRec-class models are: many targets per pass.

    The encoder reads the instruction and up to ``encoder_items`` items; the targets are the
    ``window`` items that follow, space separated, one per decoder position, with no EOS.
    Teacher forcing then trains every position at once: position j predicts the next item
    from the encoder's items plus the j items before it in the decoder (causal attention),
    so one example carries up to ``window`` item predictions instead of one.

    validation/test: the protocol's query per user. The query's history (at most
    ``max_history`` items) is split as a training target would see it
    (:func:`seqrec_eval_split`): older items in the encoder, the most recent ones as the
    decoder prefix; ``targets`` is the prefix followed by the target item, so inference
    feeds all but the last item to the decoder and ranks the item that comes next.
    """
    _check_split_name(split_name)
    family = "seqrec"
    pool = _pool(family, template_types, template_idx)
    ids = index.item_to_id

    def render(key: str, user: str, enc: Sequence[str], dec: Sequence[str],
               target_item: str) -> Example:
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "history": item_list(index, enc),
                  "target": " ".join(ids[i] if i in ids else index.id_of(i) for i in dec)}
        return render_example(family, task_prefix + family, idx, fields, key, user=user,
                       target_item=target_item)

    specs = _seqrec_specs(split, split_name, window, encoder_items, tilings, max_history)
    for spec in shard(specs, shard_index, num_shards):
        yield render(*spec)


def _seqrec_specs(split: Split, split_name: str, window: int, encoder_items: int, tilings: int,
                  max_history: int | None
                  ) -> Iterator[tuple[str, str, list[str], list[str], str]]:
    """(key, user, encoder items, decoder items, target item) of every seqrec example."""
    if split_name == "train":
        for s in split.users:
            items = s.train_items
            for t, a, e in seqrec_windows(len(items), window, tilings):
                yield (f"{s.user}:{t}:{a}", s.user, items[max(0, a - encoder_items):a],
                       items[a:e], "")
    else:
        for key, user, history, target in _queries(split, split_name, max_history):
            enc, prefix = seqrec_eval_split(history, window, encoder_items)
            yield key, user, enc, prefix + [target], target


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
    _check_split_name(split_name)
    family = "direct"
    pool = _pool(family, template_types, template_idx)
    by_user = {s.user: s for s in split.users}
    catalogue = split.all_items
    catalogue_set = set(catalogue)
    exclude: dict[str, tuple[set[str], int]] = {}
    for key, user, history, target in shard(_queries(split, split_name, max_history),
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


def _rated(split: Split, split_name: str, history_len: int
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


def _rating_family(family: str, split: Split, index: ItemIndex, meta: ItemMeta | None,
                   split_name: str, seed: int, template_types: Sequence[str],
                   template_idx: int | None, history_len: int, shard_index: int,
                   num_shards: int, task_prefix: str,
                   target_fields: Callable[[float], dict[str, str]]) -> Iterator[Example]:
    _check_split_name(split_name)
    pool = _pool(family, template_types, template_idx)
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    for key, user, item, r, prev in shard(_rated(split, split_name, history_len),
                                          shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "item": index.id_of(item), "title": _title(meta, item),
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
    return _rating_family("rating", split, index, meta, split_name, seed, template_types,
                          template_idx, history_len, shard_index, num_shards, task_prefix,
                          lambda r: {"rating": format_rating(r)})


def binary_examples(split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                    split_name: str = "train", seed: int = 0,
                    template_types: Sequence[str] = ("seen",), template_idx: int | None = None,
                    history_len: int = 10, threshold: float = LIKE_THRESHOLD,
                    shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                    ) -> Iterator[Example]:
    """Will the user like the item: "yes" iff rating >= threshold (default 4)."""
    return _rating_family("binary", split, index, meta, split_name, seed, template_types,
                          template_idx, history_len, shard_index, num_shards, task_prefix,
                          lambda r: {"answer": "yes" if r >= threshold else "no"})


def grounding_examples(split: Split, index: ItemIndex, meta: ItemMeta,
                       split_name: str = "train", seed: int = 0,
                       template_types: Sequence[str] = ("seen",),
                       families: Sequence[str] = ("id2title", "title2id", "id2genres"),
                       shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                       ) -> Iterator[Example]:
    """Tie new ID strings to what the LM knows: ID->title, title->ID, ID->genres, over the
    catalogue (no interactions involved). Title indexing skips ID<->title (trivial)."""
    _check_split_name(split_name)
    if meta is None:
        raise ValueError("grounding examples need ItemMeta (titles, categories)")

    for family, item in shard(_grounding_specs(split, index, meta, families), shard_index,
                              num_shards):
        pool = templates.template_indices(family, tuple(template_types))
        idx = choose_template(seed, family, split_name, item, pool)
        fields = {"item": index.id_of(item), "title": _title(meta, item),
                  "genres": ", ".join(meta.categories.get(item, []))}
        yield render_example(family, task_prefix + family, idx, fields, item, user="",
                             target_item=item)


def _grounding_specs(split: Split, index: ItemIndex, meta: ItemMeta, families: Sequence[str]
                     ) -> Iterator[tuple[str, str]]:
    """(grounding family, item) of every grounding example, family by family."""
    for family in families:
        if family not in ("id2title", "title2id", "id2genres"):
            raise ValueError(f"unknown grounding family {family!r}")
        if index.method == "title" and family != "id2genres":
            continue
        for item in split.all_items:
            if family == "id2genres" and not meta.categories.get(item):
                continue
            if family != "id2genres" and not meta.title.get(item):
                continue
            yield family, item


def profile_attr_examples(split: Split, index: ItemIndex, users: UserFeatures,
                          meta: ItemMeta | None = None, split_name: str = "train",
                          seed: int = 0, template_types: Sequence[str] = ("seen",),
                          template_idx: int | None = None,
                          attributes: Sequence[str] = PROFILE_ATTRIBUTES,
                          max_history: int | None = None, shard_index: int = 0,
                          num_shards: int = 1, task_prefix: str = "") -> Iterator[Example]:
    """Predict a user attribute (gender, age group, occupation) from the training history,
    with the attribute's observed values as options. Training only: one example per
    (user, attribute), so there is nothing to hold out."""
    _check_split_name(split_name, ("train",))
    family = "profile_attr"
    pool = _pool(family, template_types, template_idx)
    cap = split.max_history if max_history is None else max_history
    values = {u: profile_values(f) for u, f in users.features.items()}
    options = {a: sorted({v[a] for v in values.values() if a in v}) for a in attributes}
    for s, a in shard(_profile_attr_specs(split, values, attributes), shard_index, num_shards):
        key = f"{s.user}:{a}"
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": s.user, "history": item_list(index, s.train_items[-cap:]),
                  "attribute": ATTRIBUTE_NAMES.get(a, a), "options": ", ".join(options[a]),
                  "answer": values[s.user][a]}
        yield render_example(family, task_prefix + family, idx, fields, key, user=s.user,
                             target_item="")


def _profile_attr_specs(split: Split, values: dict[str, dict[str, str]],
                        attributes: Sequence[str]) -> Iterator[tuple[UserSequence, str]]:
    """(user sequence, attribute) of every profile_attr example."""
    for s in split.users:
        for a in attributes:
            if a in values.get(s.user, {}) and s.train_items:
                yield s, a


def profile_rec_examples(split: Split, index: ItemIndex, users: UserFeatures,
                         meta: ItemMeta | None = None, split_name: str = "train",
                         seed: int = 0, template_types: Sequence[str] = ("seen",),
                         template_idx: int | None = None, max_history: int | None = None,
                         shard_index: int = 0, num_shards: int = 1, task_prefix: str = ""
                         ) -> Iterator[Example]:
    """Next-item prediction with the user's profile in the prompt (same queries as seq);
    users without profile features are skipped."""
    _check_split_name(split_name)
    family = "profile_rec"
    pool = _pool(family, template_types, template_idx)
    profiles = {u: describe_profile(profile_values(f)) for u, f in users.features.items()
                if profile_values(f)}
    queries = (q for q in _queries(split, split_name, max_history) if q[1] in profiles)
    for key, user, history, target in shard(queries, shard_index, num_shards):
        idx = choose_template(seed, family, split_name, key, pool)
        fields = {"user": user, "profile": profiles[user], "history": item_list(index, history),
                  "target": index.id_of(target)}
        yield render_example(family, task_prefix + family, idx, fields, key, user=user,
                      target_item=target)


def profile_examples(split: Split, index: ItemIndex, users: UserFeatures,
                     meta: ItemMeta | None = None, split_name: str = "train", seed: int = 0,
                     template_types: Sequence[str] = ("seen",), shard_index: int = 0,
                     num_shards: int = 1, task_prefix: str = "") -> Iterator[Example]:
    """Both profile families (attributes on train only, then profile-aware recommendation)."""
    def all_examples() -> Iterator[Example]:
        if split_name == "train":
            yield from profile_attr_examples(split, index, users, meta, split_name, seed,
                                             template_types, task_prefix=task_prefix)
        yield from profile_rec_examples(split, index, users, meta, split_name, seed,
                                        template_types, task_prefix=task_prefix)
    return shard(all_examples(), shard_index, num_shards)


FAMILY_FUNCTIONS: dict[str, Callable[..., Iterator[Example]]] = {
    "seq": seq_examples,
    "seqrec": seqrec_examples,
    "direct": direct_examples,
    "rating": rating_examples,
    "binary": binary_examples,
    "grounding": grounding_examples,
    "profile_attr": profile_attr_examples,
    "profile_rec": profile_rec_examples,
}


def build_examples(family: str, split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                   users: UserFeatures | None = None, split_name: str = "train",
                   seed: int = 0, **kwargs: Any) -> Iterator[Example]:
    """One entry point for every family (what ``prepare`` and task registrations call).

    ``kwargs`` go to the family function (template_types, template_idx, shard_index,
    num_shards, task_prefix, num_candidates, max_history, ...).
    """
    if family not in FAMILY_FUNCTIONS:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILY_FUNCTIONS)}")
    fn = FAMILY_FUNCTIONS[family]
    if family in ("profile_attr", "profile_rec"):
        if users is None:
            raise ValueError(f"{family} examples need UserFeatures (users=)")
        return fn(split, index, users, meta, split_name=split_name, seed=seed, **kwargs)
    if family == "grounding" and meta is None:
        raise ValueError("grounding examples need ItemMeta (meta=)")
    return fn(split, index, meta, split_name=split_name, seed=seed, **kwargs)


def count_examples(family: str, split: Split, index: ItemIndex, meta: ItemMeta | None = None,
                   users: UserFeatures | None = None, split_name: str = "train",
                   **kwargs: Any) -> int:
    """How many examples ``build_examples`` would yield, without rendering any.

    What ``prepare`` records per split (seqio's ``num_input_examples``, mixture rates) now
    that examples are rendered when read: walking the cheap specs is ~10x faster than
    rendering them (the direct family's negatives dominate rendering).
    """
    _check_split_name(split_name, SPLIT_NAMES)
    max_history = kwargs.get("max_history")
    if family in ("seq", "direct"):
        return sum(1 for _ in _queries(split, split_name, max_history))
    if family == "seqrec":
        return sum(1 for _ in _seqrec_specs(
            split, split_name, kwargs.get("window", SEQREC_WINDOW),
            kwargs.get("encoder_items", SEQREC_ENCODER_ITEMS),
            kwargs.get("tilings", SEQREC_TILINGS), max_history))
    if family in ("rating", "binary"):
        return sum(1 for _ in _rated(split, split_name, kwargs.get("history_len", 10)))
    if family == "grounding":
        if meta is None:
            return 0
        fams = kwargs.get("families", ("id2title", "title2id", "id2genres"))
        return sum(1 for _ in _grounding_specs(split, index, meta, fams))
    if family in ("profile", "profile_attr", "profile_rec"):
        if users is None:
            return 0
        values = {u: profile_values(f) for u, f in users.features.items()}
        n = 0
        if split_name == "train" and family != "profile_rec":
            n += sum(1 for _ in _profile_attr_specs(split, values, PROFILE_ATTRIBUTES))
        if family != "profile_attr":
            n += sum(1 for q in _queries(split, split_name, max_history)
                     if values.get(q[1]))
        return n
    raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILY_FUNCTIONS)}")
