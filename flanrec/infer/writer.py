"""Resumable JSONL output: fixed chunks written atomically, one final shard per host.

Why chunks: an inference pass over a large split takes hours on one host; a preemption
must cost at most one chunk. Each host's examples are cut into chunks of ``chunk_size``
(by the host's own example order, which is deterministic: no shuffle). A finished chunk
is written to a temporary name and renamed, so a chunk file either exists whole or not at
all; on restart, existing chunks are skipped and their examples never recomputed. When
every chunk is there, they are concatenated into
``{out}/{task}-{mode}.jsonl-{host:05d}-of-{hosts:05d}`` (again temp + rename) and the chunk
directory is removed.

A manifest with the run's settings guards the chunk directory: resuming with another
checkpoint (its resolved step and a hash of its parameters are part of the settings), mode,
beam count, ... would mix two runs in one file, so it is refused; `reset` (OVERWRITE=True)
removes this shard, its chunks and its record so that everything is recomputed. Before the
shard is published, its record ``{task}-{mode}-manifest-{host:05d}-of-{hosts:05d}.json`` is
written next to it: the settings, the checkpoint, the gin config and the shard's sha256, so
the output keeps saying what produced it (and a rerun with another checkpoint is refused
even once the shard is complete). A rerun keeps a finished shard only while it still hashes
to that sha256 (a truncated or edited shard is recomputed), and every reader
(`flanrec.files.predictions.check_shards`) verifies it the same way.

A write the file system refuses (a full disk, a file size limit) is one line naming the
file; the chunks written so far stay, the previous shard and record are left as they were.

Every file goes through ``flanrec.files.storage`` (temp name + rename), so INFER_OUTPUT_DIR may be
on gs:// (or ram:// in tests) as well as on a local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flanrec.errors import UserError
from flanrec.files import predictions, storage
from flanrec.files.predictions import manifest_name, shard_name

MANIFEST = "manifest.json"
STAGED = "shard.staged"
"""The whole shard, written inside the chunk dir before its record and its rename."""
_KEPT = "finished chunks are kept and a rerun resumes from them"
CHECKPOINT_KEYS = ("checkpoint_step", "params_sha256")


class ResumeMismatchError(UserError, ValueError):
    """The chunk directory (or finished shard) was written by a run with other settings."""


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists etc., as stored


def _describe(settings: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    step = settings.get("checkpoint_step")
    where = record.get("checkpoint_resolved")
    text = f"step {step}" if step is not None else "a checkpoint"
    details = [str(where)] if where else []
    details.append(f"params sha256 {str(settings.get('params_sha256'))[:12]}")
    return f"{text} ({', '.join(details)})"


def _mismatch(where: str, old: Mapping[str, Any], new: Mapping[str, Any],
              old_record: Mapping[str, Any], new_record: Mapping[str, Any],
              finished: bool) -> str:
    """One line: what differs, and the two ways on (OVERWRITE, or the old checkpoint)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    what = "was written" if finished else "holds chunks computed"
    if keys and set(keys) <= set(CHECKPOINT_KEYS):
        pin = old_record.get("checkpoint_resolved")
        pin_hint = (f", or set CHECKPOINT_PATH={pin} to {'keep' if finished else 'finish'} "
                    "that run") if pin else ""
        return (f"{where} {what} from {_describe(old, old_record)}, but CHECKPOINT_PATH now "
                f"resolves to {_describe(new, new_record)}: one output would mix two "
                "models; rerun with --gin.OVERWRITE=True to recompute everything from the "
                f"new checkpoint{pin_hint}")
    diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return (f"{where} {what} by a run with other settings ({diff}); rerun with "
            "--gin.OVERWRITE=True to recompute everything, or use another INFER_OUTPUT_DIR")


class ChunkWriter:
    """Chunk files of one (task, mode) on one host; see the module docstring.

    `settings` must match for a resume; `record` (e.g. the checkpoint paths) is stored
    beside them but not compared.
    """

    def __init__(self, out_dir: str, task: str, mode: str, host: int, hosts: int,
                 settings: Mapping[str, Any], record: Mapping[str, Any] | None = None):
        self.out_dir = out_dir
        self.final = storage.join(out_dir, shard_name(task, mode, host, hosts))
        self.manifest = storage.join(out_dir, manifest_name(task, mode, host, hosts))
        self.chunk_dir = storage.join(out_dir, "." + shard_name(task, mode, host, hosts)
                                      + ".chunks")
        self.settings = _plain(dict(settings))
        self.record = _plain(dict(record or {}))

    def complete(self) -> bool:
        """The final shard exists: this (task, mode) is done on this host (if it is still
        the file its record describes: `check_complete`)."""
        return storage.exists(self.final)

    def check_complete(self) -> str | None:
        """Whether a finished shard can be kept: refuse one that another checkpoint or other
        settings produced; return why it must be recomputed (it no longer hashes to the
        sha256 its record holds: truncated or edited; the record is unreadable or gone,
        since `finalize` always writes it before the shard), or None when it is intact."""
        if not storage.exists(self.manifest):
            return (f"it has no record {storage.basename(self.manifest)} to verify it "
                    "against")
        try:
            doc = predictions.read_manifest(self.final)
        except predictions.PredictionsError as e:
            return str(e).removeprefix(f"{self.final}: ")
        assert doc is not None
        old = doc.get("settings", {})
        if old != self.settings:
            raise ResumeMismatchError(_mismatch(self.final, old, self.settings,
                                                doc.get("checkpoint", {}), self.record,
                                                finished=True))
        return predictions.shard_problem(self.final, doc)

    def reset(self) -> None:
        """Remove this shard, its record and its chunks (all written by this job)."""
        for path in (self.manifest, self.final):
            if storage.exists(path):
                storage.remove(path)
        if storage.exists(self.chunk_dir):
            storage.rmtree(self.chunk_dir)

    def open(self) -> None:
        """Create or re-open the chunk dir, checking the manifest; clear stale temp files."""
        with predictions.reporting_write_errors(self.chunk_dir):
            storage.makedirs(self.chunk_dir)
        path = storage.join(self.chunk_dir, MANIFEST)
        if storage.exists(path):
            try:
                doc = storage.read_json(path)
            except ValueError:  # a damaged record of the chunks: they cannot be trusted
                raise ResumeMismatchError(
                    f"{path}: unreadable record of the chunks in {self.chunk_dir}; rerun "
                    "with --gin.OVERWRITE=True to recompute them") from None
            if isinstance(doc, dict) and isinstance(doc.get("settings"), dict):
                old, old_record = doc["settings"], doc.get("record", {})
            else:  # written by an older flanrec: the settings themselves
                old, old_record = doc, {}
            if old != self.settings:
                raise ResumeMismatchError(_mismatch(self.chunk_dir, old, self.settings,
                                                    old_record, self.record, finished=False))
        else:
            with predictions.reporting_write_errors(path, _KEPT):
                storage.write_json_atomic(path, {"settings": self.settings,
                                                 "record": self.record}, sort_keys=True)
        for name in storage.listdir(self.chunk_dir):
            if ".tmp-" in name or name == STAGED:
                storage.remove(storage.join(self.chunk_dir, name))

    def chunk_path(self, chunk: int) -> str:
        return storage.join(self.chunk_dir, f"chunk-{chunk:06d}.jsonl")

    def has(self, chunk: int) -> bool:
        return storage.exists(self.chunk_path(chunk))

    def write(self, chunk: int, records: Iterable[Mapping[str, Any]]) -> None:
        predictions.write_shard(self.chunk_path(chunk), records, _KEPT)

    def finalize(self, num_chunks: int, provenance: Mapping[str, Any] | None = None) -> str:
        """Concatenate chunks 0..num_chunks-1 into the final shard; returns its path.

        The shard is first written whole inside the chunk dir, then its record is written,
        then the shard is renamed into place: its existence means done, and a write that
        fails (a full disk, a size limit) leaves the previous shard and record as they were
        and the chunks for a rerun.
        """
        missing = [c for c in range(num_chunks) if not self.has(c)]
        if missing:
            raise RuntimeError(f"{self.chunk_dir}: chunks {missing[:5]} missing at finalize")
        digest, count = hashlib.sha256(), 0
        for line in self._lines(num_chunks):
            digest.update(line.encode("utf-8"))
            count += bool(line.strip())
        staged = storage.join(self.chunk_dir, STAGED)
        with predictions.reporting_write_errors(self.final, _KEPT):
            storage.write_atomic(staged, self._lines(num_chunks))
        try:
            with predictions.reporting_write_errors(self.manifest, _KEPT):
                storage.write_json_atomic(self.manifest, {
                    "shard": storage.basename(self.final), "records": count,
                    "sha256": digest.hexdigest(), "settings": self.settings,
                    "checkpoint": self.record, **_plain(dict(provenance or {})),
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    sort_keys=True)
            with predictions.reporting_write_errors(self.final, _KEPT):
                storage.rename(staged, self.final, overwrite=True)
        except BaseException:
            with contextlib.suppress(Exception):
                storage.remove(staged)
            raise
        storage.rmtree(self.chunk_dir)
        return self.final

    def _lines(self, num_chunks: int) -> Iterator[str]:
        for c in range(num_chunks):
            with storage.open(self.chunk_path(c)) as f:
                yield from f


def read_jsonl(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Every record of the given JSONL files, in order (a helper for readers and tests)."""
    out = []
    for p in paths:
        with storage.open(str(p)) as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
