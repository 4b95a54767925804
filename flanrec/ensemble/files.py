"""Fuse the predictions files of several inference runs (checkpoints, templates, seeds).

Each member is a directory (or glob) of ``{task}-predict.jsonl-*`` shards in the inference
output contract (see ``flanrec.infer``). Examples are matched by ``(task, split, index)``;
members must cover the same examples with the same targets, because fusing a user's list from
one run with another user's from another would produce plausible but meaningless metrics.
The fused file has the same contract, so ``flanrec.eval`` reads it like any run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flanrec.ensemble import fusion
from flanrec.files import outputs, storage
from flanrec.files.predictions import (
    SHARD_RE,
    PredictionsError,
    check_shards,
    find_prediction_files,
    mode_glob,
    shard_name,
    validate_record,
    write_shard,
)

Key = tuple[str, str, int]
def check_output(out_dir: str) -> str:
    """Before any work: refuse an --out holding files flanrec did not write."""
    return outputs.check_claimable(out_dir, "ensemble", what="--out")


def claim_output(out_dir: str) -> str:
    return outputs.claim_dir(out_dir, "ensemble", what="--out")


def _files(spec: str) -> list[str]:
    """The predict shards under `spec`, found and checked as `flanrec.eval` finds them: a
    (task)'s shards all present, no two runs' identically named shards (a glob over several
    runs), each shard still the file its manifest describes."""
    if storage.isdir(spec):
        found = storage.glob(storage.join(spec, mode_glob("predict")))
    else:
        found = storage.glob(spec)
    matches = [SHARD_RE.match(storage.basename(f)) for f in found]
    if not any(m is not None and m["mode"] == "predict" for m in matches):
        raise FileNotFoundError(f"{spec}: no '*-predict.jsonl-*' prediction shards found")
    files = []
    for (_, mode), paths in find_prediction_files(spec).items():
        if mode == "predict":
            check_shards(paths)
            files += paths
    return files


def _check_record(rec: Any, where: str) -> Key:
    """A predict record of the contract (`flanrec.files.predictions.validate_record`: fields,
    types, one finite score per item), under whatever task name it carries, since members
    of a template ensemble name their tasks apart; returns its (task, split, index)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("task"), str):
        raise ValueError("no task name")
    try:
        validate_record(rec, "predict", rec["task"], where, targets_required=False)
    except PredictionsError as e:
        raise ValueError(str(e).removeprefix(f"{where}: ")) from None
    return rec["task"], rec["split"], rec["index"]


def read_predictions(spec: str) -> dict[Key, dict[str, Any]]:
    """(task, split, index) -> record, from every predict shard under ``spec``."""
    out: dict[Key, dict[str, Any]] = {}
    for path in _files(spec):
        with storage.open(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = _check_record(rec, f"{path}:{n}")
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: not a predict record ({e})") from None
                if key in out:
                    raise ValueError(f"{path}:{n}: example {key} appears twice")
                out[key] = rec
    return out


def fuse_runs(members: Sequence[dict[Key, dict[str, Any]]], method: str,
              weights: Sequence[float] | None = None, top_k: int | None = None,
              task_suffix: str = "-ens") -> list[dict[str, Any]]:
    """One fused record per example; ``mean``/``weighted`` use the members' ``scores``."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least 2 members")
    if top_k is not None and (isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k: expected an integer >= 1 (items per fused list), got {top_k!r}")
    keys = set(members[0])
    for m, member in enumerate(members[1:], start=1):
        if set(member) != keys:
            diff = sorted(keys ^ set(member))[:3]
            raise ValueError(f"member {m} covers different examples than member 0 "
                             f"(e.g. {diff}); fuse runs over the same task and split")
    fused = []
    for key in sorted(keys):
        recs = [member[key] for member in members]
        targets = {json.dumps(r.get("target_item")) for r in recs}  # lists: several targets
        if len(targets) != 1:
            raise ValueError(f"example {key}: members disagree on the target {sorted(targets)}")
        lists = [list(r["items"]) for r in recs]
        k = top_k if top_k is not None else max(len(x) for x in lists)
        if method in ("mean", "weighted"):
            if any("scores" not in r for r in recs):
                m = next(j for j, r in enumerate(recs) if "scores" not in r)
                raise ValueError(f"example {key}: member {m} has no 'scores'; {method} fusion "
                                 "averages them (use --method rrf or vote for ranked lists "
                                 "without scores)")
            tables = [dict(zip(r["items"], map(float, r["scores"]), strict=True)) for r in recs]
            ranked = fusion.fuse(method, tables=tables, weights=weights, top_k=k)
        else:
            ranked = fusion.fuse(method, lists=lists, weights=weights, top_k=k)
        base = dict(recs[0])
        base.update(
            task=f"{key[0]}{task_suffix}", items=[i for i, _ in ranked],
            ids=[i for i, _ in ranked], scores=[s for _, s in ranked],
            invalid=sum(int(r.get("invalid", 0)) for r in recs),
            duplicates=sum(int(r.get("duplicates", 0)) for r in recs),
            ensemble={"method": method, "members": len(recs),
                      "weights": list(weights) if weights is not None else None})
        fused.append(base)
    return fused


@outputs.releases_locks
def fuse_prediction_dirs(specs: Sequence[str], out_dir: str, method: str = "rrf",
                         weights: Sequence[float] | None = None, top_k: int | None = None
                         ) -> list[str]:
    """Fuse runs and write ``{task}-ens-predict.jsonl-00000-of-00001`` per task."""
    check_output(out_dir)
    members = [read_predictions(s) for s in specs]
    tasks = [{k[0] for k in m} for m in members]
    if all(len(t) == 1 for t in tasks) and len(set().union(*tasks)) > 1:
        # One task per member under different names (e.g. template members `x-t0`, `x-t1`):
        # match examples by (split, index) under the first member's name; targets are still
        # checked to agree, so members of unrelated tasks cannot be fused by accident.
        name = next(iter(tasks[0]))
        members = [{(name, k[1], k[2]): v for k, v in m.items()} for m in members]
    records = fuse_runs(members, method, weights, top_k)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    paths = []
    out_dir = claim_output(out_dir)
    for task, recs in sorted(by_task.items()):
        path = storage.join(out_dir, shard_name(task, "predict"))
        write_shard(path, recs)
        paths.append(path)
    return paths
