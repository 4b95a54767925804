"""The predictions contract: what `flanrec.infer` writes and every reader relies on.

One module, because five producers and consumers used to spell it out themselves: the
inference writer, the baselines and the ensembles write prediction shards; eval, the
ensembles and the rank validation read them. Here are

* the file names: ``{task}-{mode}.jsonl-{shard:05d}-of-{num_shards:05d}`` (one shard per
  host) and, next to each, ``{task}-{mode}-manifest-{shard:05d}-of-{num_shards:05d}.json``
  (what produced it);
* the modes (``MODES``) and the fields every record of a mode carries (``COMMON_FIELDS``,
  ``MODE_FIELDS``);
* one line's encoding (``record_line``) and the validation of a file (``read_records``,
  ``validate_record``, ``find_prediction_files``), whose errors name ``file:line``.

It lives at the top of the package, not in `flanrec.infer`, since the light jobs (eval,
baselines) read and write the format without importing JAX, and `flanrec.infer`'s
package imports the decoding code.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.errors import UserError
from flanrec.files import storage

MODES = ("predict", "score", "rating")
"""predict: ranked items; score: log-likelihoods of candidates (or p_yes); rating: the
expected rating."""

COMMON_FIELDS = ("task", "split", "mode", "index", "user")
MODE_FIELDS = {
    "predict": ("items",),
    "score": ("candidates", "scores"),
    "rating": ("expected_rating",),  # target_rating: from the split (or the record)
}

SHARD_RE = re.compile(
    r"^(?P<task>.+)-(?P<mode>predict|score|rating)\.jsonl-(?P<shard>\d{5})-of-(?P<num>\d{5})$")
SHARD_GLOB = "*.jsonl-*"
"""Matches every shard in a directory (and the hidden temp files, which SHARD_RE drops)."""


def shard_name(task: str, mode: str = "predict", shard: int = 0, num_shards: int = 1) -> str:
    """The file name of one shard (`shard` of `num_shards`, one per host)."""
    return f"{task}-{mode}.jsonl-{shard:05d}-of-{num_shards:05d}"


def shard_prefix(task: str, mode: str) -> str:
    """What every shard name of (task, mode) starts with, whatever the shard count."""
    return f"{task}-{mode}.jsonl-"


def mode_glob(mode: str) -> str:
    """A glob for the shards of every task in one mode (e.g. an ensemble's `predict`)."""
    return f"*-{mode}.jsonl-*"


def manifest_name(task: str, mode: str, shard: int, num_shards: int) -> str:
    """The record of what produced a shard (settings, checkpoint, sha256), next to it."""
    return f"{task}-{mode}-manifest-{shard:05d}-of-{num_shards:05d}.json"


def record_line(record: Mapping[str, Any]) -> str:
    """One record as its JSONL line (UTF-8 text kept as is, newline-terminated)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def record_lines(records: Any) -> Any:
    """`record_line` of each record, lazily (for `storage.write_atomic`'s streaming)."""
    return (record_line(r) for r in records)


class PredictionsError(UserError, ValueError):
    """A predictions file is missing, incomplete or malformed (the message names file:line)."""


# ------------------------------------------------------------------------------ reading


@dataclasses.dataclass
class Record:
    """One parsed JSONL line and where it came from (for error messages)."""

    data: dict[str, Any]
    where: str


def find_prediction_files(spec: str) -> dict[tuple[str, str], list[str]]:
    """(task, mode) -> its shard files, in shard order, from a directory or a glob.

    Temp files and anything not named like a shard are ignored; a (task, mode) whose shards
    are not all present (an unfinished inference run) is an error, since scoring a part of
    the users would give numbers that look complete but are not.
    """
    if storage.isdir(spec):
        paths = storage.glob(storage.join(spec, SHARD_GLOB))
    else:
        paths = storage.glob(spec)
    groups: dict[tuple[str, str], dict[int, str]] = {}
    totals: dict[tuple[str, str], set[int]] = {}
    for path in sorted(paths):
        m = SHARD_RE.match(storage.basename(path))
        if not m or not storage.isfile(path):
            continue
        key = (m["task"], m["mode"])
        groups.setdefault(key, {})[int(m["shard"])] = path
        totals.setdefault(key, set()).add(int(m["num"]))
    if not groups:
        raise PredictionsError(f"{spec}: no prediction files named "
                             "'{task}-{predict|score|rating}.jsonl-NNNNN-of-NNNNN'")
    out = {}
    for key, shards in sorted(groups.items()):
        nums = totals[key]
        if len(nums) != 1:
            raise PredictionsError(f"{spec}: {key[0]}-{key[1]} shards disagree on the shard "
                                 f"count ({sorted(nums)})")
        (num,) = nums
        missing = sorted(set(range(num)) - set(shards))
        if missing or max(shards) >= num:
            raise PredictionsError(
                f"{spec}: {key[0]}-{key[1]} has shards {sorted(shards)} of {num}; missing "
                f"{missing} (is inference still running or was it interrupted?)")
        out[key] = [shards[i] for i in range(num)]
    return out


def _check_type(obj: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str,
                where: str) -> Any:
    if field not in obj:
        raise PredictionsError(f"{where}: field {field!r} missing (expected {what})")
    value = obj[field]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise PredictionsError(f"{where}: field {field!r} should be {what}, "
                             f"got {type(value).__name__}: {str(value)[:60]!r}")
    return value


def _check_str_list(obj: Mapping[str, Any], field: str, where: str) -> list[str]:
    value = _check_type(obj, field, (list,), "a list of strings", where)
    if not all(isinstance(v, str) for v in value):
        raise PredictionsError(f"{where}: field {field!r} should hold only strings")
    return value


def _check_num_list(obj: Mapping[str, Any], field: str, where: str) -> list[float]:
    value = _check_type(obj, field, (list,), "a list of numbers", where)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise PredictionsError(f"{where}: field {field!r} should hold only numbers")
    return value


def validate_record(obj: Any, mode: str, task: str, where: str,
                    targets_required: bool = True) -> None:
    """Raise PredictionsError naming ``where`` (file:line) if ``obj`` breaks the contract.

    ``targets_required=False`` (the targets come from the split) accepts records without
    ``target_item`` / ``target_rating`` / ``label``; present ones are still type-checked."""
    if not isinstance(obj, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for field in COMMON_FIELDS + MODE_FIELDS[mode]:
        if field not in obj:
            raise PredictionsError(f"{where}: field {field!r} missing (mode {mode!r} needs "
                                 f"{', '.join(COMMON_FIELDS + MODE_FIELDS[mode])})")
    if obj["task"] != task or obj["mode"] != mode:
        raise PredictionsError(f"{where}: task/mode {obj['task']!r}/{obj['mode']!r} do not "
                             f"match the file name ({task!r}/{mode!r})")
    _check_type(obj, "index", (int,), "an integer", where)
    _check_type(obj, "split", (str,), "a string", where)
    _check_type(obj, "user", (str,), "a string", where)
    if mode == "predict":
        _check_str_list(obj, "items", where)
        for field in ("invalid", "duplicates"):
            if field in obj:
                _check_type(obj, field, (int,), "an integer", where)
        if targets_required or obj.get("target_item") not in (None, ""):
            _check_target(obj, where)
    elif mode == "score":
        cands = _check_str_list(obj, "candidates", where)
        scores = _check_num_list(obj, "scores", where)
        if len(cands) != len(scores):
            raise PredictionsError(f"{where}: {len(cands)} candidates but {len(scores)} scores")
        if "label" in obj or "p_yes" in obj:
            if targets_required or "label" in obj:
                label = _check_type(obj, "label", (int,), "0 or 1", where)
                if label not in (0, 1):
                    raise PredictionsError(f"{where}: field 'label' should be 0 or 1, got "
                                         f"{label}")
            p = _check_type(obj, "p_yes", (int, float), "a probability", where)
            if not 0.0 <= p <= 1.0:
                raise PredictionsError(f"{where}: field 'p_yes' should be in [0, 1], got {p}")
        elif targets_required or obj.get("target_item") not in (None, ""):
            _check_target(obj, where)
    else:
        _check_type(obj, "expected_rating", (int, float), "a number", where)
        if targets_required or obj.get("target_rating") is not None:
            _check_type(obj, "target_rating", (int, float, str), "a number", where)
            try:
                float(obj["target_rating"])
            except ValueError:
                raise PredictionsError(f"{where}: field 'target_rating' is not a number: "
                                     f"{obj['target_rating']!r}") from None


def _check_target(obj: Mapping[str, Any], where: str) -> None:
    target = obj.get("target_item")
    ok = (isinstance(target, str) and target != "") or (
        isinstance(target, list) and target and all(isinstance(t, str) and t for t in target))
    if not ok:
        raise PredictionsError(f"{where}: field 'target_item' should be a non-empty item id "
                             f"(or list of ids) to rank, got {target!r}")


def read_records(paths: Sequence[str], task: str, mode: str,
                 targets_required: bool = True) -> list[Record]:
    """Every line of a (task, mode)'s shards, validated; blank lines are skipped.

    The same example index twice (e.g. a chunk written twice by a resumed run) is an error
    naming both places.
    """
    records: list[Record] = []
    seen: dict[tuple[str, int], str] = {}
    for path in paths:
        with storage.open(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PredictionsError(f"{where}: not valid JSON ({e.msg} at column "
                                         f"{e.colno})") from None
                validate_record(obj, mode, task, where, targets_required)
                key = (obj["split"], obj["index"])
                if key in seen:
                    raise PredictionsError(f"{where}: example {key[1]} of split {key[0]!r} "
                                         f"already appeared at {seen[key]}")
                seen[key] = where
                records.append(Record(obj, where))
    if not records:
        raise PredictionsError(f"{task}-{mode}: the files {list(paths)} hold no records")
    splits = sorted({r.data["split"] for r in records})
    if len(splits) != 1:
        raise PredictionsError(f"{task}-{mode}: records from several splits {splits}; "
                             "evaluate one split at a time")
    return records


