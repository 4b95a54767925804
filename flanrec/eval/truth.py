"""The held-out truth of a prepared split, and the checks of a predictions file against it.

Why the evaluator must not trust a predictions file: each record carries its own
`target_item` (and `target_rating`, `label`), so a file with the targets copied into the
top of each list, a file with one user repeated 943 times, or a file covering the 256 users
a model got right would all score HR@10 = 1.0 and exit 0. The split `flanrec.prepare` wrote
(checked against its recorded sha256) says, for every evaluated user, what the held-out item
and its rating are; `check_records` takes every target from there, and refuses a file whose
own targets disagree, that names a user twice or a user the split does not evaluate, or
that covers fewer users than the split has (unless the caller allows a partial file, and
then the coverage is reported).

The candidates a score record ranks are checked too, because they decide the metric as
much as the scores do: the target 20 times, or the target beside items the user has seen
(which the protocol masks), ranks the target first whatever the model said. So every list
must hold distinct catalogue items and the target, and be what its task ranks: a candidate
task (the direct family) only items the user has not seen, exactly as many as prepare
gave each query; a full-ranking task every catalogue item the user has not seen
(`score_layout` tells the two apart).

Pure Python: no TensorFlow or JAX, so the eval job stays light.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.data import families, layout, splits
from flanrec.data.types import Split
from flanrec.errors import UserError

RATING_TOLERANCE = 1e-6
_SHOWN = 3
FULL = "full"
"""A full-ranking query: every catalogue item the user has not seen is ranked."""
CANDIDATES = "candidates"
"""A candidate query (the direct family): a few given items, the target among them."""


class TruthError(UserError, ValueError):
    """A predictions file disagrees with the split (the message names file:line and user)."""


def stage_of(split: str) -> str | None:
    """The held-out item a split name asks for: validation, test (also test_unseen), else
    None (train has no single held-out item per user)."""
    if split.startswith("validation"):
        return "validation"
    if split.startswith("test"):
        return "test"
    return None


@dataclasses.dataclass(frozen=True)
class StageTruth:
    """One stage: user -> held-out item, and user -> its rating where the split has one."""

    stage: str
    item: dict[str, str]
    rating: dict[str, float]


@dataclasses.dataclass
class Coverage:
    """How much of the split one (task, mode) of a predictions file covers."""

    scored: int
    expected: int
    missing_examples: list[str]  # a few missing user ids (empty when only a count is known)
    layout: str = ""  # score ranking: FULL (the catalogue) or CANDIDATES (a few per query)

    @property
    def partial(self) -> bool:
        return self.scored < self.expected


class SplitTruth:
    """What a prepared dir says each evaluated user's targets are, plus its task table."""

    def __init__(self, split: Split, data_dir: str, prepare_info: Mapping[str, Any] | None,
                 like_threshold: float = 4.0):

        self.data_dir = data_dir
        self.info = dict(prepare_info or {})
        self.like_threshold = like_threshold
        self.users = [u.user for u in split.users]
        self.catalogue = frozenset(split.all_items)
        # stage -> user -> the items the protocol masks (the split's history)
        self.seen: dict[str, dict[str, frozenset[str]]] = {
            stage: {u.user: frozenset(splits.seen_items(u, stage)) for u in split.users
                    if u.valid_item is not None and u.test_item is not None}
            for stage in ("validation", "test")}
        self.stages: dict[str, StageTruth] = {}
        for stage in ("validation", "test"):
            item, rating = {}, {}
            for u in split.users:
                if u.valid_item is None or u.test_item is None:
                    continue  # a user with < 3 interactions is not evaluated
                target = u.valid_item if stage == "validation" else u.test_item
                r = u.valid_rating if stage == "validation" else u.test_rating
                item[u.user] = target
                if r is not None and math.isfinite(float(r)):
                    rating[u.user] = float(r)
            self.stages[stage] = StageTruth(stage, item, rating)

    @classmethod
    def from_split(cls, split: Split, data_dir: str) -> SplitTruth:
        from flanrec.data.examples import LIKE_THRESHOLD  # lazy: scipy, 0.9 s; eval is light

        info = None
        path = os.path.join(data_dir, layout.PREPARE_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        return cls(split, data_dir, info, LIKE_THRESHOLD)

    def task_dir(self, task: str) -> str | None:
        """`tasks/<dir>` name of a task of this prepared dir (None: a baseline, an
        ensemble output or another dir's task)."""
        prefix = self.info.get("task_prefix")
        if not isinstance(prefix, str) or not task.startswith(prefix + "_"):
            return None
        name = task[len(prefix) + 1:]
        return name if name in (self.info.get("counts", {}).get("tasks") or {}) else None

    def expected_count(self, task: str, split: str) -> int | None:
        """Examples prepare wrote for (task, split): one per user it evaluates."""
        name = self.task_dir(task)
        if name is None:
            return None
        value = self.info["counts"]["tasks"][name].get(split)
        return int(value) if isinstance(value, int) else None

    def task_info(self, task: str) -> dict[str, Any] | None:
        """tasks/<dir>/info.json of a task of this prepared dir (None: not one of its)."""
        name = self.task_dir(task)
        if name is None:
            return None
        path = os.path.join(self.data_dir, layout.task_dir(name), "info.json")
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def family(self, task: str) -> str | None:
        info = self.task_info(task)
        return str(info.get("family") or "") or None if info is not None else None

    def num_candidates(self) -> int | None:
        """Candidates per direct-family query: prepare's --num_candidates, capped by the
        catalogue as prepare caps it."""
        value = (self.info.get("options") or {}).get("num_candidates")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        return min(value, len(self.catalogue)) if self.catalogue else value


def record_kind(mode: str, data: Mapping[str, Any]) -> str:
    """ranking | binary | rating: what a record is scored as (as flanrec.eval does)."""
    if mode == "rating":
        return "rating"
    if mode == "score" and ("label" in data or "p_yes" in data):
        return "binary"
    return "ranking"


def _targets(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    return None


_KIND_OF_TARGET = {"item": "ranking", "binary": "binary", "rating": "rating"}
"""What the records of a task with these targets (tasks/<dir>/info.json) are scored as."""


def score_layout(records: Sequence[Any], task: str, truth: SplitTruth, stage: str
                 ) -> tuple[str, int | None]:
    """(FULL or CANDIDATES, the candidate count every query must have) of a score task.

    A task of the prepared dir says it itself: a task with a `candidates` feature ranks
    its candidates (the direct family: prepare's --num_candidates of them; another family:
    any count, the same for every query), any other ranks the catalogue. A task the
    prepared dir does not know (a baseline, an ensemble, a renamed file) is a full ranking
    when every list covers each user's unseen catalogue items, else a candidate task held
    to prepare's candidate count, so a forged list cannot choose its own size.
    """
    info = truth.task_info(task)
    if info is not None:
        if "candidates" in (info.get("features") or {}):
            family = truth.family(task)
            fixed = family in families.names() and \
                families.get(family).num_candidates is not None
            return CANDIDATES, truth.num_candidates() if fixed else None
        return FULL, None
    seen = truth.seen.get(stage, {})
    for r in records:
        user = r.data.get("user")
        cands = r.data.get("candidates") or ()
        if user in seen and not (truth.catalogue - seen[user]) <= set(cands):
            return CANDIDATES, truth.num_candidates()
    return FULL, None


def _candidate_problem(cands: Sequence[str], item: str, seen: frozenset[str],
                       truth: SplitTruth, stage: str, layout: str, want: int | None,
                       known: bool, task: str) -> str | None:
    """Why one score record's candidate list cannot be ranked fairly (None: it can)."""
    given = set(cands)  # set algebra throughout: a full ranking lists the whole catalogue
    if len(given) != len(cands):
        counts: dict[str, int] = {}
        for c in cands:
            counts[c] = counts.get(c, 0) + 1
        repeated = next(c for c, n in counts.items() if n > 1)
        return (f"candidate {repeated!r} appears {counts[repeated]} times (candidates must be "
                "distinct)")
    unknown = given - truth.catalogue
    if unknown:
        first = next(c for c in cands if c in unknown)
        return f"candidate {first!r} is not an item of the split's catalogue"
    if item not in given:
        return f"the split's {stage} item {item!r} is not among the record's candidates"
    if layout == FULL:
        missing = truth.catalogue - seen - given
        if missing:
            unseen = len(truth.catalogue - seen)
            return (f"ranks {unseen - len(missing)} of the {unseen} catalogue items the user "
                    f"has not seen (a full-ranking task ranks them all; missing e.g. "
                    f"{min(missing)!r})")
        return None
    # The target itself may be in the history (a repeat interaction): it is the item asked
    # for, not a shown one.
    shown = next((c for c in cands if c in seen and c != item), None) if given & seen \
        else None
    if shown is not None:
        return (f"candidate {shown!r} is an item the user already has in the split's history "
                f"(candidates are items the user has not seen)")
    if want is not None and len(cands) != want:
        unseen = len(truth.catalogue - seen)
        if known:
            return f"has {len(cands)} candidates, but prepare gave every {task} query {want}"
        return (f"has {len(cands)} candidates: neither prepare's {want} per candidate query "
                f"nor the {unseen} unseen catalogue items of a full ranking")
    if len(cands) < 2:
        return f"has {len(cands)} candidate: a ranking needs at least 2"
    return None


def _summary(problems: list[str], what: str) -> str:
    shown = "; ".join(problems[:_SHOWN])
    more = f"; … ({len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    return f"{what}: {len(problems)} record(s) disagree with the split: {shown}{more}"


def check_records(records: Sequence[Any], task: str, mode: str, truth: SplitTruth,
                  allow_partial: bool = False, source: str = "") -> Coverage:
    """Check one (task, mode)'s records against the split and put the split's targets in.

    `records` have `.data` (the JSON object) and `.where` (file:line). Each record's user
    must be an evaluated user of the split (with a rating, for rating and binary records),
    appear once, and agree with the split on whatever target the record carries; then its
    `target_item` (and `target_rating` / `label`) are replaced by the split's. Raises
    TruthError listing what disagrees; a file that covers fewer users than the split has is
    an error too unless `allow_partial`. Returns the coverage.
    """
    what = f"{source or task}: {task}-{mode}"

    def at(record: Any) -> str:  # file:line, the directory is in `what` already
        return os.path.basename(record.where)

    split_name = records[0].data["split"]
    stage = stage_of(split_name)
    if stage is None:
        raise TruthError(f"{what}: split {split_name!r} has no held-out target per user; "
                         "flanrec.eval scores the validation, test and test_unseen splits")
    kind = record_kind(mode, records[0].data)
    info = truth.task_info(task)
    target_kind = str(info.get("target_kind") or "") if info is not None else ""
    fits = _KIND_OF_TARGET.get(target_kind)
    if fits is not None and kind != fits:  # e.g. an item task's records dressed as binary
        raise TruthError(f"{what}: {task}'s targets are {target_kind}s (its info.json in "
                         f"{truth.data_dir}), but {os.path.basename(records[0].where)} holds "
                         f"{kind} records; {task} is scored as {fits} records"
                         + (" (MODE=rating)" if fits == "rating" else ""))
    st = truth.stages[stage]
    eligible = st.item if kind == "ranking" else st.rating
    layout, want = "", None
    if kind == "ranking" and mode == "score":
        layout, want = score_layout(records, task, truth, stage)
    known = info is not None
    counts_seen: dict[int, str] = {}  # candidate count -> first record (no fixed count)
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for r in records:
        d, user = r.data, r.data["user"]
        own = record_kind(mode, d)
        if own != kind:  # e.g. a binary file where one record lost its label and p_yes
            why = ("has neither 'label' nor 'p_yes', which the task's first record has"
                   if kind == "binary" else
                   "has 'label'/'p_yes', which the task's first record has not")
            problems.append(f"{at(r)}: user {user!r}: a {own} record among {kind} records "
                            f"(it {why})")
            continue
        if user in first_seen:
            problems.append(f"user {user!r} appears again at {at(r)} (first at "
                            f"{first_seen[user]})")
            continue
        first_seen[user] = at(r)
        if user not in eligible:
            if user in st.item:
                why = f"has no {stage} rating in the split"
            elif user in truth.users:
                why = "is not evaluated (fewer than 3 interactions)"
            else:
                why = "does not exist in the split"
            problems.append(f"{at(r)}: user {user!r} {why}")
            continue
        item = st.item[user]
        given = _targets(d.get("target_item"))
        if given is not None and given != [item]:
            problems.append(f"{at(r)}: user {user!r} has target_item {d['target_item']!r}, "
                            f"but the split's {stage} item is {item!r}")
            continue
        d["target_item"] = item
        if kind == "ranking" and mode == "score":
            cands = d.get("candidates") or []
            problem = _candidate_problem(cands, item, truth.seen[stage].get(user, frozenset()),
                                         truth, stage, layout, want, known, task)
            if problem is None and layout == CANDIDATES and want is None:
                counts_seen.setdefault(len(cands), at(r))
                if len(counts_seen) > 1:
                    other = next(n for n in counts_seen if n != len(cands))
                    problem = (f"has {len(cands)} candidates, but the query at "
                               f"{counts_seen[other]} has {other} (every query of a "
                               "candidate task has the same count)")
            if problem is not None:
                problems.append(f"{at(r)}: user {user!r}: {problem}")
                continue
        elif kind == "rating":
            rating = st.rating[user]
            got = d.get("target_rating")
            if got is not None and abs(float(got) - rating) > RATING_TOLERANCE:
                problems.append(f"{at(r)}: user {user!r} has target_rating {got!r}, but the "
                                f"split's {stage} rating is {rating:g}")
                continue
            d["target_rating"] = rating
        elif kind == "binary":
            label = int(st.rating[user] >= truth.like_threshold)
            if "label" in d and d["label"] != label:
                problems.append(f"{at(r)}: user {user!r} has label {d['label']!r}, but the "
                                f"split's {stage} rating {st.rating[user]:g} makes it {label} "
                                f"(like = rating >= {truth.like_threshold:g})")
                continue
            d["label"] = label
    if problems:
        raise TruthError(_summary(problems, what))
    expected = truth.expected_count(task, split_name) or len(eligible)
    scored = len(first_seen)
    if scored > expected:
        raise TruthError(f"{what}: {scored} users, but prepare wrote {expected} {split_name} "
                         f"examples for {task} in {truth.data_dir}: is this file from another "
                         "prepared dir?")
    missing: list[str] = []
    if expected == len(eligible):
        missing = [u for u in eligible if u not in first_seen]
    coverage = Coverage(scored, expected, missing[:_SHOWN], layout)
    if coverage.partial and not allow_partial:
        shown = (f" (missing e.g. {', '.join(repr(u) for u in missing[:_SHOWN])})"
                 if missing else "")
        raise TruthError(f"{what}: covers {scored} of the {expected} users of the "
                         f"{split_name} split{shown}; metrics over part of the users are "
                         "not comparable. Finish the inference run, or pass --allow_partial "
                         "to score these users (the table then says how many)")
    return coverage


__all__ = ["CANDIDATES", "FULL", "Coverage", "SplitTruth", "StageTruth", "TruthError",
           "check_records", "record_kind", "score_layout", "stage_of"]
