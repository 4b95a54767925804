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

Pure Python: no TensorFlow or JAX, so the eval job stays light.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.data import layout
from flanrec.data.types import Split
from flanrec.errors import UserError

RATING_TOLERANCE = 1e-6
_SHOWN = 3


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

    def family(self, task: str) -> str | None:
        name = self.task_dir(task)
        if name is None:
            return None
        path = os.path.join(self.data_dir, layout.task_dir(name), "info.json")
        try:
            with open(path, encoding="utf-8") as f:
                return str(json.load(f).get("family") or "") or None
        except (OSError, ValueError):
            return None

    def num_candidates(self) -> int | None:
        value = (self.info.get("options") or {}).get("num_candidates")
        return int(value) if isinstance(value, int) else None


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
    st = truth.stages[stage]
    eligible = st.item if kind == "ranking" else st.rating
    family = truth.family(task)
    problems: list[str] = []
    first_seen: dict[str, str] = {}
    for r in records:
        d, user = r.data, r.data["user"]
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
            if item not in cands:
                problems.append(f"{at(r)}: user {user!r}: the split's {stage} item {item!r} "
                                "is not among the record's candidates")
                continue
            want = truth.num_candidates()
            if family == "direct" and want and len(cands) != want:
                problems.append(f"{at(r)}: user {user!r} has {len(cands)} candidates, but "
                                f"prepare gave every {task} query {want}")
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
    coverage = Coverage(scored, expected, missing[:_SHOWN])
    if coverage.partial and not allow_partial:
        shown = (f" (missing e.g. {', '.join(repr(u) for u in missing[:_SHOWN])})"
                 if missing else "")
        raise TruthError(f"{what}: covers {scored} of the {expected} users of the "
                         f"{split_name} split{shown}; metrics over part of the users are "
                         "not comparable. Finish the inference run, or pass --allow_partial "
                         "to score these users (the table then says how many)")
    return coverage


__all__ = ["Coverage", "SplitTruth", "StageTruth", "TruthError", "check_records",
           "record_kind", "stage_of"]
