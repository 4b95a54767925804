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
checkpoint, mode, beam count, ... would mix two runs in one file, so it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from flanrec.errors import UserError

MANIFEST = "manifest.json"


class ResumeMismatchError(UserError, ValueError):
    """The chunk directory was written by a run with different settings."""


def shard_name(task: str, mode: str, host: int, hosts: int) -> str:
    return f"{task}-{mode}.jsonl-{host:05d}-of-{hosts:05d}"


def _write_atomic(path: str, lines: Iterable[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ChunkWriter:
    """Chunk files of one (task, mode) on one host; see the module docstring."""

    def __init__(self, out_dir: str, task: str, mode: str, host: int, hosts: int,
                 settings: Mapping[str, Any]):
        self.out_dir = out_dir
        self.final = os.path.join(out_dir, shard_name(task, mode, host, hosts))
        self.chunk_dir = os.path.join(out_dir, "." + shard_name(task, mode, host, hosts)
                                      + ".chunks")
        self.settings = json.loads(json.dumps(dict(settings)))  # plain JSON types

    def complete(self) -> bool:
        """The final shard exists: this (task, mode) is done on this host."""
        return os.path.exists(self.final)

    def open(self) -> None:
        """Create or re-open the chunk dir, checking the manifest; clear stale temp files."""
        os.makedirs(self.chunk_dir, exist_ok=True)
        path = os.path.join(self.chunk_dir, MANIFEST)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if old != self.settings:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {self.settings.get(k)!r}"
                                 for k in sorted(set(old) | set(self.settings))
                                 if old.get(k) != self.settings.get(k))
                raise ResumeMismatchError(
                    f"{self.chunk_dir} holds chunks of a run with other settings ({diff}); "
                    "use another INFER_OUTPUT_DIR or delete that directory")
        else:
            _write_atomic(path, [json.dumps(self.settings, indent=1, sort_keys=True) + "\n"])
        for name in os.listdir(self.chunk_dir):
            if ".tmp-" in name:
                os.remove(os.path.join(self.chunk_dir, name))

    def chunk_path(self, chunk: int) -> str:
        return os.path.join(self.chunk_dir, f"chunk-{chunk:06d}.jsonl")

    def has(self, chunk: int) -> bool:
        return os.path.exists(self.chunk_path(chunk))

    def write(self, chunk: int, records: Iterable[Mapping[str, Any]]) -> None:
        _write_atomic(self.chunk_path(chunk),
                      (json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def finalize(self, num_chunks: int) -> str:
        """Concatenate chunks 0..num_chunks-1 into the final shard; returns its path."""
        missing = [c for c in range(num_chunks) if not self.has(c)]
        if missing:
            raise RuntimeError(f"{self.chunk_dir}: chunks {missing[:5]} missing at finalize")

        def lines() -> Iterable[str]:
            for c in range(num_chunks):
                with open(self.chunk_path(c), encoding="utf-8") as f:
                    yield from f

        _write_atomic(self.final, lines())
        shutil.rmtree(self.chunk_dir, ignore_errors=True)
        return self.final


def read_jsonl(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Every record of the given JSONL files, in order (a helper for readers and tests)."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
