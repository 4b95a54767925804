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
  ``validate_record``, ``find_prediction_files``), whose errors name ``file:line``;
* the check of a shard against its manifest (``check_shards``): every reader verifies the
  sha256 the inference job recorded, so an edited or truncated shard, or a shard of another
  run dropped in beside the others, is refused instead of scored;
* writing a shard (``write_shard``), where a full disk or a file size limit is one line
  (``PredictionsWriteError``) and no half-written file is left.

It lives at the top of the package, not in `flanrec.infer`, since the light jobs (eval,
baselines) read and write the format without importing JAX, and `flanrec.infer`'s
package imports the decoding code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from flanrec.errors import DISK_ERRNOS, UserError, disk_error
from flanrec.files import storage

MODES = ("predict", "score", "rating", "decode")
"""predict: ranked items; score: log-likelihoods of candidates (or p_yes); rating: the
expected rating; decode: free text decoded over the whole vocabulary (T5X's predict), scored
by the task's own seqio metric fns."""

COMMON_FIELDS = ("task", "split", "mode", "index", "user")
MODE_FIELDS = {
    "predict": ("items",),
    "score": ("candidates", "scores"),
    "rating": ("expected_rating",),  # target_rating: from the split (or the record)
    "decode": ("prediction",),  # the top beam's text; targets: from the task's own examples
}

SHARD_RE = re.compile(
    r"^(?P<task>.+)-(?P<mode>predict|score|rating|decode)\.jsonl-(?P<shard>\d{5})-of-(?P<num>\d{5})$")
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


class PredictionsWriteError(UserError, OSError):
    """The file system refused a write (disk full, file size limit, permissions): one line
    naming the file, since a traceback would tell the user nothing more."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_failed(path: str, error: OSError, kept: str = "") -> OSError:
    """The one-line error for an OSError raised while writing `path`; `kept` says what is
    still intact (e.g. "finished chunks are kept; a rerun resumes"). A refusing disk (full,
    over quota, file too large, read-only) gets the jobs' one wording (`disk_error`)."""
    kept_text = "no half-written file was left" + (f"; {kept}" if kept else "")
    if error.errno in DISK_ERRNOS:
        return disk_error(error, f"{path}: cannot write it", kept_text)
    why = error.strerror or str(error) or type(error).__name__
    return PredictionsWriteError(error.errno or 0, f"{path}: cannot write it ({why}); "
                                 f"{kept_text}")


@contextlib.contextmanager
def reporting_write_errors(path: str, kept: str = "") -> Iterator[None]:
    """Turn an OSError raised inside the block (a write to `path`) into `write_failed`.

    `storage.write_atomic` has already removed its temp file by then; errors flanrec
    diagnosed itself (a UserError) pass through unchanged."""
    try:
        yield
    except OSError as e:
        if isinstance(e, UserError):
            raise
        raise write_failed(path, e, kept) from None


def write_shard(path: str, records: Iterable[Mapping[str, Any]], kept: str = "") -> None:
    """Write one predictions file atomically (`storage.write_atomic`), a full disk or a
    size limit reported in one line (`write_failed`)."""
    with reporting_write_errors(path, kept):
        storage.write_atomic(path, record_lines(records))


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
    totals: dict[tuple[str, str], dict[int, str]] = {}
    for path in sorted(paths):
        m = SHARD_RE.match(storage.basename(path))
        if not m or not storage.isfile(path):
            continue
        key = (m["task"], m["mode"])
        shards = groups.setdefault(key, {})
        shard = int(m["shard"])
        if shard in shards:  # a glob over several runs: one of them would be dropped
            raise PredictionsError(
                f"{spec}: matches two shards named {storage.basename(path)} ({shards[shard]} "
                f"and {path}); each run's predictions must be named on their own (separate "
                "several runs of one system with commas to average them)")
        shards[shard] = path
        totals.setdefault(key, {}).setdefault(int(m["num"]), path)
    if not groups:
        raise PredictionsError(f"{spec}: no prediction files named "
                             "'{task}-{predict|score|rating|decode}.jsonl-NNNNN-of-NNNNN'")
    out = {}
    for key, shards in sorted(groups.items()):
        nums = totals[key]
        if len(nums) != 1:
            examples = ", ".join(nums[n] for n in sorted(nums))
            raise PredictionsError(f"{spec}: {key[0]}-{key[1]} shards disagree on the shard "
                                 f"count ({sorted(nums)}: {examples}); are two runs mixed?")
        (num,) = nums
        missing = sorted(set(range(num)) - set(shards))
        if missing or max(shards) >= num:
            raise PredictionsError(
                f"{spec}: {key[0]}-{key[1]} has shards {sorted(shards)} of {num}; missing "
                f"{missing} (is inference still running or was it interrupted?)")
        out[key] = [shards[i] for i in range(num)]
    return out


# ------------------------------------------------------------------------------ manifests


def manifest_of(path: str) -> str | None:
    """The manifest `flanrec.infer` writes next to the shard `path` (None: not a shard)."""
    m = SHARD_RE.match(storage.basename(path))
    if not m:
        return None
    return storage.join(storage.parent(path), manifest_name(m["task"], m["mode"],
                                                            int(m["shard"]), int(m["num"])))


def shard_digest(path: str) -> tuple[str, int]:
    """(sha256 hex of the file's bytes, its non-blank lines): what a manifest records."""
    digest, count = hashlib.sha256(), 0
    with _reading(path), storage.open(path, "rb") as f:
        for line in f:
            digest.update(line)
            count += bool(line.strip())
    return digest.hexdigest(), count


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """An unreadable shard (permissions, an I/O error) is one line naming it."""
    try:
        yield
    except OSError as e:
        if isinstance(e, UserError):
            raise
        raise PredictionsError(f"{path}: cannot read it ({e.strerror or e})") from None


def read_manifest(path: str) -> dict[str, Any] | None:
    """The manifest of shard `path`; None when there is none (a baseline's or an
    ensemble's file, or one a user wrote by hand); PredictionsError when it is unreadable
    or holds no sha256, since then the shard cannot be trusted either."""
    mpath = manifest_of(path)
    if mpath is None or not storage.exists(mpath):
        return None
    try:
        doc = storage.read_json(mpath)
    except (ValueError, UnicodeDecodeError) as e:
        raise PredictionsError(f"{path}: its manifest {storage.basename(mpath)} is not valid "
                               f"JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str):
        raise PredictionsError(f"{path}: its manifest {storage.basename(mpath)} records no "
                               "sha256 of the shard")
    if doc.get("shard") not in (None, storage.basename(path)):
        raise PredictionsError(f"{path}: its manifest {storage.basename(mpath)} describes "
                               f"another file ({doc.get('shard')!r})")
    return doc


def shard_problem(path: str, manifest: Mapping[str, Any]) -> str | None:
    """Why shard `path` is not the file its manifest describes (None: it is)."""
    digest, count = shard_digest(path)
    if digest == manifest["sha256"]:
        return None
    want = manifest.get("records")
    if isinstance(want, int) and want != count:
        detail = f"{count} records, the manifest says {want}: truncated or edited"
    else:
        detail = "same record count: edited"
    return (f"sha256 {digest[:12]}… differs from the {manifest['sha256'][:12]}… its manifest "
            f"recorded ({detail} after inference wrote it)")


def check_shards(paths: Sequence[str]) -> None:
    """Verify a (task, mode)'s shards against their manifests before anything reads them.

    Each shard with a manifest must hash to the recorded sha256 (an edited or truncated
    file is refused); the shards of one (task, mode) must all have a manifest or none, and
    their manifests must agree on the settings (checkpoint, mode, beams ...), so a shard of
    another run or checkpoint copied in beside the others is refused, naming both files.
    """
    docs = [(p, read_manifest(p)) for p in paths]
    with_manifest = [p for p, d in docs if d is not None]
    if with_manifest and len(with_manifest) != len(docs):
        bare = next(p for p, d in docs if d is None)
        raise PredictionsError(f"{bare}: has no manifest, but {with_manifest[0]} of the same "
                               "predictions has one: is it a shard of another run?")
    first: tuple[str, Mapping[str, Any]] | None = None
    for path, doc in docs:
        if doc is None:
            continue
        problem = shard_problem(path, doc)
        if problem:
            raise PredictionsError(f"{path}: {problem}; rerun the inference (it recomputes "
                                   "a shard that does not match its manifest)")
        settings = doc.get("settings")
        if first is None:
            first = (path, settings if isinstance(settings, dict) else {})
        elif settings != first[1]:
            other = settings if isinstance(settings, dict) else {}
            keys = sorted(k for k in set(first[1]) | set(other)
                          if first[1].get(k) != other.get(k))
            diff = ", ".join(f"{k}: {first[1].get(k)!r} vs {other.get(k)!r}" for k in keys[:3])
            raise PredictionsError(f"{path}: written by another run than {first[0]} ({diff}); "
                                   "the shards of one prediction must come from one run")


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
    bad = next((j for j, v in enumerate(value) if not math.isfinite(v)), None)
    if bad is not None:  # NaN compares false with everything: the ranking would be arbitrary
        raise PredictionsError(f"{where}: field {field!r} holds {value[bad]} at position "
                               f"{bad} (expected finite numbers)")
    return value


def _check_number(obj: Mapping[str, Any], field: str, what: str, where: str) -> float:
    value = _check_type(obj, field, (int, float), what, where)
    if not math.isfinite(value):
        raise PredictionsError(f"{where}: field {field!r} is {value} (expected {what}, "
                               "finite)")
    return float(value)


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
        items = _check_str_list(obj, "items", where)
        if "scores" in obj:  # optional; the ensembles' mean fusion reads them
            scores = _check_num_list(obj, "scores", where)
            if len(scores) != len(items):
                raise PredictionsError(f"{where}: {len(items)} items but {len(scores)} "
                                       "scores")
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
            if "p_yes" not in obj:
                raise PredictionsError(f"{where}: field 'p_yes' missing (a binary record, "
                                       "with 'label', needs p_yes: the probability of yes)")
            p = _check_number(obj, "p_yes", "a probability", where)
            if not 0.0 <= p <= 1.0:
                raise PredictionsError(f"{where}: field 'p_yes' should be in [0, 1], got {p}")
        elif targets_required or obj.get("target_item") not in (None, ""):
            _check_target(obj, where)
    elif mode == "decode":
        _check_type(obj, "prediction", (str,), "the decoded text", where)
        if "targets" in obj:
            _check_type(obj, "targets", (str,), "the target text", where)
        if "beams" in obj or "scores" in obj:
            beams = _check_str_list(obj, "beams", where)
            scores = _check_num_list(obj, "scores", where)
            if len(beams) != len(scores):
                raise PredictionsError(f"{where}: {len(beams)} beams but {len(scores)} "
                                       "scores")
    else:
        value = _check_type(obj, "expected_rating", (int, float), "a number", where)
        if math.isinf(value):  # NaN is allowed: an unparsable answer, counted as the worst
            raise PredictionsError(f"{where}: field 'expected_rating' is {value} (expected "
                                   "a rating, or NaN for an answer that was not a number)")
        if targets_required or obj.get("target_rating") is not None:
            _check_type(obj, "target_rating", (int, float, str), "a number", where)
            try:
                rating = float(obj["target_rating"])
            except ValueError:
                raise PredictionsError(f"{where}: field 'target_rating' is not a number: "
                                     f"{obj['target_rating']!r}") from None
            if not math.isfinite(rating):
                raise PredictionsError(f"{where}: field 'target_rating' is {rating} "
                                       "(expected a finite number)")


def _check_target(obj: Mapping[str, Any], where: str) -> None:
    target = obj.get("target_item")
    ok = (isinstance(target, str) and target != "") or (
        isinstance(target, list) and target and all(isinstance(t, str) and t for t in target))
    if not ok:
        raise PredictionsError(f"{where}: field 'target_item' should be a non-empty item id "
                             f"(or list of ids) to rank, got {target!r}")


def read_records(paths: Sequence[str], task: str, mode: str,
                 targets_required: bool = True, verify: bool = True) -> list[Record]:
    """Every line of a (task, mode)'s shards, validated; blank lines are skipped.

    `verify`: the shards are checked against their manifests first (`check_shards`). The
    same example index twice (e.g. a chunk written twice by a resumed run) is an error
    naming both places.
    """
    if verify:
        check_shards(paths)
    records: list[Record] = []
    seen: dict[tuple[str, int], str] = {}
    for path in paths:
        with _reading(path), storage.open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise PredictionsError(f"{where}: not UTF-8 text (byte {e.start + 1}); "
                                           "is this a predictions file?") from None
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


