"""Chronological leave-one-out splits that reproduce the ``ml100k-loo`` protocol exactly.

Why this module is fussy: published sequential-recommendation numbers are only comparable on
the same split, and the split depends on details that are easy to get subtly wrong:

* order is by the **integer** timestamp with a **stable** sort, ties keeping file order
  (``np.lexsort((timestamp, user))`` on rows in file order). A float32 copy of the
  timestamp reorders 149 ml-100k users' tails; an unstable sort shuffles the 75,772 tied rows.
* users come out in ascending order: numerically when every user id is an integer, else
  lexicographically.
* targets: test ``i_n``, validation ``i_{n-1}``, train ``i_1 .. i_{n-2}``; model inputs are
  the ``max_history`` (default 50) most recent preceding items.

:func:`fingerprints` hashes the result exactly as ``PROTOCOL-ml100k-loo.md`` defines, so any
implementation can be checked against the published digests (:data:`ML100K_FINGERPRINTS`).

Pure numpy: no TensorFlow/JAX import, so splitting tests run in well under a second.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.errors import ConfigError, UserError

ML100K_FINGERPRINTS = {
    "sequences": "148274ebc6f53f91a884ee9c1e87db45ffc42d4e1bbc53ad9a21242ba6c524e7",
    "targets": "c39a254605c780114ee02675c0b7e8754142a3e1773419fd4ece121566df9600",
}
"""The two published sha256 digests of the ml100k-loo split (see :func:`fingerprints`)."""

SHORT_USER_POLICIES = ("train_only", "drop", "error")
DUPLICATE_POLICIES = ("last", "first", "refuse")
"""What to do with rows that share (user, item, timestamp): keep the last / first row of each
group (file order; its rating is the one kept), or refuse the log (:func:`drop_duplicates`)."""

_INT_RE = re.compile(r"[+-]?\d+")


class Window(NamedTuple):
    """One model input: predict ``target`` for ``user`` from ``history`` (oldest first)."""

    user: str
    history: list[str]
    target: str


class EvalExample(NamedTuple):
    """A validation or test query: the input window, the target and the items to mask.

    ``seen`` lists every item the user interacted with before the target (train items for
    validation; train + validation items for test), in chronological order without repeats;
    it is *not* limited to the window, as the protocol requires.
    """

    user: str
    history: list[str]
    target: str
    seen: list[str]


# --------------------------------------------------------------------------- id ordering


def id_sort_key(ids: Iterable[str]):
    """Sort key for ids: numeric when every id is an integer literal, else lexicographic.

    Numeric ties between distinct strings ("7" and "007") fall back to the string so the
    order is total and deterministic.
    """
    ids = list(ids)
    if ids and all(_INT_RE.fullmatch(s) for s in ids):
        return lambda s: (int(s), s)
    return lambda s: s


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Unique ids in ascending order (see :func:`id_sort_key`)."""
    unique = list(dict.fromkeys(ids))
    return sorted(unique, key=id_sort_key(unique))


# --------------------------------------------------------------------------- filters


def _take(inter: types.Interactions, keep: np.ndarray) -> types.Interactions:
    return types.Interactions(
        user=inter.user[keep], item=inter.item[keep], timestamp=inter.timestamp[keep],
        rating=inter.rating[keep], source=inter.source,
    )


def implicit_threshold(inter: types.Interactions, min_rating: float) -> types.Interactions:
    """Keep only rows with ``rating >= min_rating`` (explicit -> implicit feedback).

    Raises ValueError when the source has no ratings (NaN), since a threshold on missing
    ratings would silently drop everything.
    """

    missing = int(np.isnan(inter.rating).sum())
    if missing:
        what = ("the log has none" if missing == len(inter) else
                f"{missing} of its {len(inter)} rows have none (NaN)")
        raise ConfigError(
            f"{inter.source or 'interactions'}: min_rating={min_rating} needs ratings, but "
            f"{what}: leave out --min_rating, or name the rating column (CSV: --rating_col)"
        )
    return _take(inter, inter.rating >= np.float32(min_rating))


def kcore_filter(
    inter: types.Interactions, k: int | tuple[int, int]
) -> types.Interactions:
    """Iteratively drop users and items with fewer than k interactions until none remain.

    ``k`` is one int for both sides or ``(k_user, k_item)``. Rows are counted as they are
    (a repeated user-item pair counts twice). Row order is preserved.
    """
    k_user, k_item = (k, k) if isinstance(k, int) else k
    keep = np.ones(len(inter), dtype=bool)
    _, u_codes = np.unique(inter.user.astype(str), return_inverse=True)
    _, i_codes = np.unique(inter.item.astype(str), return_inverse=True)
    while True:
        u_counts = np.bincount(u_codes[keep], minlength=u_codes.max(initial=-1) + 1)
        i_counts = np.bincount(i_codes[keep], minlength=i_codes.max(initial=-1) + 1)
        new_keep = keep & (u_counts[u_codes] >= k_user) & (i_counts[i_codes] >= k_item)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
    return _take(inter, keep)


class Duplicates(NamedTuple):
    """What :func:`drop_duplicates` found: rows removed, groups they formed, groups whose
    rows disagree on the rating, and the first group's (user, item, timestamp, row numbers;
    1-based, data rows in file order)."""

    removed: int
    groups: int
    rating_differs: int
    example: tuple[str, str, int, list[int]] | None


def drop_duplicates(inter: types.Interactions, policy: str = "last"
                    ) -> tuple[types.Interactions, Duplicates]:
    """Keep one row per (user, item, timestamp): the last or first of each group in file
    order, or raise DataError naming the first group (``policy="refuse"``).

    Why: two rows of one interaction that differ only in rating would otherwise become the
    user's validation *and* test item (same timestamp, adjacent after the stable sort); the
    test target is then masked as already seen and can never be hit. Rows with the same item
    at *different* timestamps are re-interactions and are kept. The kept row stays where it
    was, so the order of other rows with the same timestamp is unchanged.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates policy must be one of {DUPLICATE_POLICIES}, got "
                         f"{policy!r}")
    n = len(inter)
    if n < 2:
        return inter, Duplicates(0, 0, 0, None)
    items = _codes(inter.item)
    pair = _codes(inter.user) * (int(items.max()) + 1) + items  # (user, item) as one int64
    keys = (np.asarray(inter.timestamp, dtype=np.int64), pair)
    order = np.lexsort(keys)  # groups contiguous; stable, so rows stay in file order
    same_as_prev = np.ones(n - 1, dtype=bool)
    for k in keys:
        sk = k[order]
        same_as_prev &= sk[1:] == sk[:-1]
    removed = int(same_as_prev.sum())
    if not removed:
        return inter, Duplicates(0, 0, 0, None)
    starts = np.flatnonzero(np.concatenate([[True], ~same_as_prev]))
    sizes = np.diff(np.concatenate([starts, [n]]))
    dup_starts, dup_sizes = starts[sizes > 1], sizes[sizes > 1]
    rating = inter.rating[order].astype(np.float64)
    r_min = np.fmin.reduceat(rating, starts)
    r_max = np.fmax.reduceat(rating, starts)
    differs = int(((r_min != r_max) & ~np.isnan(r_min) & (sizes > 1)).sum())
    first = int(np.argmin(order[dup_starts]))  # the group whose first row comes first
    rows = sorted(int(r) + 1 for r in order[dup_starts[first]:dup_starts[first]
                                            + dup_sizes[first]])
    j = order[dup_starts[first]]
    info = Duplicates(removed, len(dup_starts), differs,
                      (str(inter.user[j]), str(inter.item[j]), int(inter.timestamp[j]), rows))
    if policy == "refuse":

        user, item, stamp, at = info.example
        raise DataError(inter.source or None,
                        "one row per (user, item, timestamp)",
                        got=f"{removed} repeated row(s) in {len(dup_starts)} group(s)",
                        has_got=True,
                        hint=f"the first: user {user!r}, item {item!r}, timestamp {stamp} at "
                        f"data rows {', '.join(map(str, at[:5]))}; pass --duplicates last "
                        "or first to keep one row of each")
    pick = starts + (sizes - 1 if policy == "last" else 0)
    keep = np.zeros(n, dtype=bool)
    keep[order[pick]] = True
    return _take(inter, keep), info


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense int64 codes for an object array (one dict pass, first appearance order)."""
    table: dict[object, int] = {}
    return np.fromiter((table.setdefault(v, len(table)) for v in values.tolist()),
                       dtype=np.int64, count=len(values))


def repeated_targets(split: types.Split) -> tuple[int, int]:
    """(users whose validation item is one of their training items, users whose test item
    is their validation or a training item): re-interactions with an item at a later time.

    Such targets are masked as already seen when ranking, so no model can hit them; the split
    keeps them (they are real events) and prepare reports how many there are.
    """
    valid = test = 0
    for s in split.users:
        if s.valid_item is None or s.test_item is None:
            continue
        train = set(s.train_items)
        valid += s.valid_item in train
        test += s.test_item in train or s.test_item == s.valid_item
    return valid, test


def largest_kcore(inter: types.Interactions) -> int:
    """The largest k whose k-core of ``inter`` is not empty (0 for an empty log): what a
    refused ``--kcore`` names as the value that would work."""
    if len(inter) == 0:
        return 0
    _, counts = np.unique(inter.user.astype(str), return_counts=True)
    lo, hi = 1, int(counts.max())  # the 1-core is the whole log
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(kcore_filter(inter, mid)):
            lo = mid
        else:
            hi = mid - 1
    return lo


# --------------------------------------------------------------------------- ordering


def chronological_order(inter: types.Interactions) -> tuple[list[str], list[np.ndarray]]:
    """Users in ascending order and, per user, the row indices of their interactions in time.

    The sort is ``np.lexsort((timestamp, user_rank))`` over rows in file order: stable, so
    rows with equal integer timestamps keep their file order.
    """
    ts = np.asarray(inter.timestamp)
    if ts.dtype.kind not in "iu":
        raise TypeError(
            f"timestamps must be integers (got dtype {ts.dtype}); sorting on floats "
            "reorders ties and loses precision"
        )
    users = sorted_ids(inter.user.tolist())
    rank = {u: r for r, u in enumerate(users)}
    user_rank = np.fromiter((rank[u] for u in inter.user.tolist()), dtype=np.int64,
                            count=len(inter))
    order = np.lexsort((ts.astype(np.int64), user_rank))
    bounds = np.searchsorted(user_rank[order], np.arange(len(users) + 1))
    return users, [order[bounds[j] : bounds[j + 1]] for j in range(len(users))]


# --------------------------------------------------------------------------- the split


def leave_one_out(
    data: types.Dataset | types.Interactions,
    *,
    max_history: int = 50,
    kcore: int | tuple[int, int] | None = None,
    min_rating: float | None = None,
    short_users: str = "train_only",
    all_items: Sequence[str] | None = None,
    duplicates: str | None = None,
) -> types.Split:
    """Chronological leave-one-out split (the ml100k-loo protocol when called with defaults).

    Steps: optional implicit threshold (``rating >= min_rating``), then optional k-core
    filter, then per-user stable chronological order (see :func:`chronological_order`).
    For a user with n interactions: test ``i_n``, validation ``i_{n-1}``, train
    ``i_1..i_{n-2}`` (all of them: ``max_history`` only caps model *inputs*).

    Users with fewer than 3 interactions cannot have train, validation and test items.
    ``short_users`` decides what happens to them:

    * ``"train_only"`` (default): kept with all their items as training items and
      ``valid_item = test_item = None``; they contribute training windows but are not
      evaluated. (ml-100k has none: every user has >= 20 ratings.)
    * ``"drop"``: removed from the split entirely (not in ``Split.users``).
    * ``"error"``: raise ValueError naming the first such user.

    ``all_items`` is the full-ranking candidate set; by default every item that remains in
    the (filtered) interactions, in :func:`sorted_ids` order.

    ``duplicates``: rows sharing (user, item, timestamp) are first reduced to one by
    :func:`drop_duplicates` with this policy (before the rating threshold, so the kept
    row's rating is the one compared). ``None`` (the default: the protocol as published
    splits every row) leaves them; prepare applies its ``--duplicates`` policy (default
    "last") itself, so that it can say what it collapsed.
    """
    if short_users not in SHORT_USER_POLICIES:
        raise ValueError(f"short_users must be one of {SHORT_USER_POLICIES}, got {short_users!r}")
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    inter = data.interactions if isinstance(data, types.Dataset) else data
    if duplicates is not None:
        inter, _ = drop_duplicates(inter, duplicates)
    source = inter.source or "interactions"
    if min_rating is not None:
        rated = inter
        inter = implicit_threshold(inter, min_rating)
        if len(inter) == 0:

            raise ConfigError(f"--min_rating {min_rating:g}: no interaction of {source} is "
                              f"rated that high ({len(rated)} rows, highest rating "
                              f"{float(rated.rating.max()):g})")
    if kcore is not None:
        unfiltered = inter
        inter = kcore_filter(inter, kcore)
        if len(inter) == 0:

            raise ConfigError(f"--kcore {kcore}: the {kcore}-core of {source} is empty (all "
                              f"{len(unfiltered)} interactions are filtered out); the largest "
                              f"k that keeps any is {largest_kcore(unfiltered)}")
    if len(inter) == 0:
        raise ValueError("no interactions left to split (after threshold / k-core filters)")
    users, rows = chronological_order(inter)
    items_arr = inter.item
    ratings = inter.rating
    ts = inter.timestamp
    out: list[types.UserSequence] = []
    for user, idx in zip(users, rows, strict=True):
        seq = items_arr[idx].tolist()
        rat = ratings[idx].tolist()
        stamps = ts[idx].tolist()
        n = len(seq)
        if n < 3:
            if short_users == "drop":
                continue
            if short_users == "error":
                raise ValueError(
                    f"user {user!r} has {n} interaction(s); leave-one-out needs >= 3 "
                    "(use short_users='train_only' or 'drop', or a k-core filter)"
                )
            out.append(types.UserSequence(user=user, train_items=seq, valid_item=None,
                                          test_item=None, train_ratings=rat,
                                          train_timestamps=stamps))
            continue
        out.append(types.UserSequence(
            user=user, train_items=seq[:-2], valid_item=seq[-2], test_item=seq[-1],
            train_ratings=rat[:-2], valid_rating=rat[-2], test_rating=rat[-1],
            train_timestamps=stamps[:-2],
        ))
    catalogue = list(all_items) if all_items is not None else sorted_ids(inter.item.tolist())
    return types.Split(users=out, all_items=catalogue, max_history=max_history)


# --------------------------------------------------------------------------- model inputs


def _cap(split: types.Split, max_history: int | None) -> int:
    cap = split.max_history if max_history is None else max_history
    if cap < 1:
        raise ValueError(f"max_history must be >= 1, got {cap}")
    return cap


def train_windows(split: types.Split, max_history: int | None = None) -> Iterator[Window]:
    """Every training example: position t = 2 .. len(train) predicts ``train[t]``.

    For an evaluated user that is t = 2 .. n-2 (validation and test items are never
    targets); the history is the up-to-``max_history`` items before t, oldest first.
    ml-100k gives 97,171 windows. Users in split order, positions ascending.
    """
    cap = _cap(split, max_history)
    for seq in split.users:
        items = seq.train_items
        for t in range(1, len(items)):
            yield Window(seq.user, items[max(0, t - cap) : t], items[t])


def count_train_windows(split: types.Split) -> int:
    """Number of windows :func:`train_windows` yields, without building them."""
    return sum(max(0, len(s.train_items) - 1) for s in split.users)


def check_usable(split: types.Split, source: str = "interactions") -> None:
    """Refuse (UserError) a split with no evaluated user or no training window, with counts.

    Why: a log where no user reaches 3 interactions splits "successfully" into zero
    validation/test queries and, with 1-2 items per user, (almost) zero training windows;
    every later job would then run on nothing and report nothing wrong.
    """
    from collections import Counter

    sizes = Counter(len(s.train_items) + (s.valid_item is not None) + (s.test_item is not None)
                    for s in split.users)
    evaluated = sum(1 for s in split.users if s.valid_item is not None and s.test_item is not None)
    windows = count_train_windows(split)
    shown = ", ".join(f"{sizes[k]} with {k}" for k in sorted(sizes)[:4])
    if evaluated == 0:
        raise UserError(f"{source}: no user has the 3 interactions leave-one-out needs "
                        f"(train, validation, test item): {len(split.users)} users ({shown}); "
                        "nothing could be evaluated. Use a longer log (or lower --kcore / "
                        "--min_rating)")
    if windows == 0:
        raise UserError(f"{source}: 0 training windows: a window needs 2 training items, so "
                        f"users need at least 4 interactions; {len(split.users)} users "
                        f"({shown})")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def seen_items(seq: types.UserSequence, stage: str) -> list[str]:
    """Items to mask when ranking for ``stage`` ("validation" or "test"), no repeats.

    validation: the n-2 training items; test: all n-1 training and validation items.
    """
    if stage == "validation":
        return _unique(seq.train_items)
    if stage == "test":
        extra = [seq.valid_item] if seq.valid_item is not None else []
        return _unique(seq.train_items + extra)
    raise ValueError(f"stage must be 'validation' or 'test', got {stage!r}")


def eval_examples(
    split: types.Split, stage: str, max_history: int | None = None
) -> list[EvalExample]:
    """Validation or test queries, one per evaluated user, in split order.

    validation input ``i_{max(1,n-51)} .. i_{n-2}``, target ``i_{n-1}``;
    test input ``i_{max(1,n-50)} .. i_{n-1}`` (includes the validation item), target ``i_n``.
    Users without targets (``short_users="train_only"``) are skipped.
    """
    cap = _cap(split, max_history)
    out = []
    for seq in split.users:
        if seq.valid_item is None or seq.test_item is None:
            continue
        if stage == "validation":
            history, target = seq.train_items[-cap:], seq.valid_item
        elif stage == "test":
            history, target = (seq.train_items + [seq.valid_item])[-cap:], seq.test_item
        else:
            raise ValueError(f"stage must be 'validation' or 'test', got {stage!r}")
        out.append(EvalExample(seq.user, list(history), target, seen_items(seq, stage)))
    return out


def seen_mask(split: types.Split, stage: str) -> tuple[list[str], np.ndarray]:
    """Boolean mask [evaluated users, len(all_items)], True where the item must be masked.

    Returns ``(users, mask)``; rows follow :func:`eval_examples` order, columns
    ``split.all_items``. Items outside the catalogue raise KeyError (a catalogue bug).
    """
    col = {item: j for j, item in enumerate(split.all_items)}
    examples = eval_examples(split, stage)
    mask = np.zeros((len(examples), len(split.all_items)), dtype=bool)
    for r, ex in enumerate(examples):
        mask[r, [col[i] for i in ex.seen]] = True
    return [ex.user for ex in examples], mask


# --------------------------------------------------------------------------- fingerprints


def fingerprint_texts(split: types.Split) -> dict[str, str]:
    """The texts :func:`fingerprints` hashes (useful to diff against another implementation).

    ``sequences``: ``"{user}\\t{i_1} ... {i_n}\\n"`` for every user in split order (ascending);
    ``targets``: ``"{user}\\t{valid}\\t{test}\\n"`` for every user that has both targets.
    """
    seqs, targets = [], []
    for s in split.users:
        full = s.train_items + [i for i in (s.valid_item, s.test_item) if i is not None]
        seqs.append(f"{s.user}\t{' '.join(full)}\n")
        if s.valid_item is not None and s.test_item is not None:
            targets.append(f"{s.user}\t{s.valid_item}\t{s.test_item}\n")
    return {"sequences": "".join(seqs), "targets": "".join(targets)}


def fingerprints(split: types.Split) -> dict[str, str]:
    """sha256 (hex) of the UTF-8 fingerprint texts, as ``PROTOCOL-ml100k-loo.md`` defines.

    For ml-100k they must equal :data:`ML100K_FINGERPRINTS`.
    """
    return {k: hashlib.sha256(v.encode("utf-8")).hexdigest()
            for k, v in fingerprint_texts(split).items()}
