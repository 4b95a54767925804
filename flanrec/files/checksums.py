"""Per-file sha256 checksums of a checkpoint directory: recorded after the commit, verified on read.

Why files and not arrays: on a multi-host run every process holds only its own shards, and
Orbax decides how arrays map to files (OCDBT data files, manifests, `_METADATA`), so the one
place where the whole checkpoint can be seen is the committed directory. The primary host
hashes every file of it once the commit marker is there and writes `checksums.json` next to
the items; any reader (resume, inference, convert, `flanrec.load`) re-hashes the files of the
items it is about to read and compares. A truncated, deleted or overwritten file is then
named (with the expected and found size or digest) instead of surfacing as a long Orbax
traceback, or, worse, as a handful of silently changed weights.

Checkpoints written before checksums existed have no `checksums.json`: they load as before,
with a warning that they could not be verified.

Pure Python on `etils.epath`, so `gs://` directories work the same as local ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from etils import epath

from flanrec.files import storage

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
FORMAT = "flanrec.checksums"
_CHUNK = 8 << 20

PathLike = str | os.PathLike


def _path(p: PathLike) -> epath.Path:
    text = os.fspath(p)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def walk(root: epath.Path, rel: str = "") -> Iterable[tuple[str, epath.Path]]:
    """(path relative to `root`, path) of every file below `root`, sorted."""
    for child in sorted(root.iterdir(), key=lambda c: c.name):
        name = f"{rel}{child.name}"
        if child.is_dir():
            yield from walk(child, name + "/")
        else:
            yield name, child


def file_digest(path: epath.Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of one file, read in 8 MB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def compute(ckpt_dir: PathLike) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file inside the items (sub-directories)
    of `ckpt_dir`. Top-level files are Orbax's commit bookkeeping, not data: whether they are
    there is what "complete" means (`flanrec.checkpoints.is_complete`)."""
    root = _path(ckpt_dir)
    out = {}
    for rel, p in walk(root):
        if "/" not in rel:
            continue
        size, digest = file_digest(p)
        out[rel] = {"size": size, "sha256": digest}
    return out


def record(ckpt_dir: PathLike) -> epath.Path:
    """Hash every file of a committed checkpoint and write `checksums.json` atomically."""
    root = _path(ckpt_dir)
    doc = {"format": FORMAT, "version": 1, "algorithm": "sha256", "files": compute(root)}
    target = root / CHECKSUMS_FILE

    storage.write_json_atomic(os.fspath(target), doc, sort_keys=True, ensure_ascii=True)
    return target


def has_checksums(ckpt_dir: PathLike) -> bool:
    return (_path(ckpt_dir) / CHECKSUMS_FILE).exists()


def read(ckpt_dir: PathLike) -> dict[str, dict[str, Any]] | None:
    """The recorded {relative path: {size, sha256}}, or None when none was recorded.

    An unreadable or malformed checksums.json is itself damage: it raises ValueError."""
    p = _path(ckpt_dir) / CHECKSUMS_FILE
    if not p.exists():
        return None
    try:
        doc = json.loads(p.read_text())
        files = doc["files"]
        if doc.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a flanrec checksums file")
        return {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])}
                for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{p}: unreadable checksums file ({e})") from None


def _in_scope(rel: str, items: Sequence[str] | None) -> bool:
    return items is None or rel.split("/", 1)[0] in items


def verify(ckpt_dir: PathLike, items: Sequence[str] | None = None) -> list[str] | None:
    """Problems found in `ckpt_dir` (empty: verified), or None when it has no checksums.

    `items` limits the check to those sub-directories: a reader of params does not need the
    optimizer state to be intact. Each problem names the file and
    what differs: missing, size (truncated or grown) or sha256.
    """
    root = _path(ckpt_dir)
    try:
        files = read(root)
    except ValueError as e:
        return [str(e)]
    if files is None:
        return None
    problems = []
    for rel, want in sorted(files.items()):
        if not _in_scope(rel, items):
            continue
        p = root / rel
        if not p.exists():
            problems.append(f"file {rel} is missing")
            continue
        try:
            size, digest = file_digest(p)
        except OSError as e:
            problems.append(f"file {rel} is unreadable ({e})")
            continue
        if size != want["size"]:
            problems.append(f"file {rel} has {size} bytes, expected {want['size']} "
                            f"({'truncated' if size < want['size'] else 'grown'})")
        elif digest != want["sha256"]:
            problems.append(f"file {rel} has sha256 {digest[:12]}…, expected "
                            f"{want['sha256'][:12]}… (same size: overwritten bytes)")
    if items is not None:
        recorded_items = {rel.split("/", 1)[0] for rel in files if "/" in rel}
        for item in items:
            if item not in recorded_items and (root / item).is_dir():
                problems.append(f"item {item}/ has no recorded checksums")
    return problems


def fingerprint(ckpt_dir: PathLike, item: str = "params") -> str | None:
    """sha256 over the recorded checksums of one item (e.g. to tell two checkpoints' params
    apart without reading the arrays); None when the checkpoint has no checksums."""
    files = read(ckpt_dir)
    if files is None:
        return None
    lines = [f"{rel}\t{v['size']}\t{v['sha256']}\n" for rel, v in sorted(files.items())
             if rel.startswith(item + "/")]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


__all__ = ["CHECKSUMS_FILE", "compute", "file_digest", "fingerprint", "has_checksums", "read",
           "record", "verify"]
