"""Output directories: who owns one (the ownership marker) and how a whole one is published.

Ownership (issue 13, "nothing a user owns is ever deleted"): a job writes into a directory
only if it does not exist, is empty, or carries the marker of the same job (``claim_dir``
for jobs that add files, ``check_replaceable`` for jobs that replace the whole directory).
Anything else is refused with one line naming the directory, before any work. Outputs of an
older flanrec (no marker yet) are adopted when they hold nothing but what that job writes.
Nothing outside a scratch directory created by this very run is ever removed.

A directory (``staged_dir``) is assembled in a scratch directory this run created and
published with its marker written last: locally with one ``rename``; on object stores,
which have no atomic directory rename, file by file and the marker last, so a remote
directory without the marker is incomplete and readers (``require_complete``) refuse it.

Split from `flanrec.files.storage` (the file-system layer these rules are written on, which
still exposes every name here, so callers keep one import: ``storage.claim_dir``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flanrec.files import storage
from flanrec.files.storage import (
    MARKER,
    MARKER_FORMAT,
    NotOwnedError,
    StorageError,
    basename,
    exists,
    is_url,
    is_within,
    isdir,
    join,
    listdir,
    makedirs,
    normalize,
    parent,
    read_json,
    remove,
    rmtree,
    walk_files,
    write_json_atomic,
)
from flanrec.version import __version__


def read_marker(directory: str) -> dict[str, Any] | None:
    """The ownership marker of `directory`, or None when it has none."""
    path = join(directory, MARKER)
    if not exists(path):
        return None
    try:
        doc = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):  # an unreachable store still raises
        return {"format": "malformed"}
    return doc if isinstance(doc, dict) else {"format": "malformed"}


def marker_document(job: str, **fields: Any) -> dict[str, Any]:

    return {**fields, "format": MARKER_FORMAT, "version": 1, "job": job,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(), "pid": os.getpid(), "flanrec_version": __version__}


def write_marker(directory: str, job: str, **fields: Any) -> None:
    write_json_atomic(join(directory, MARKER), marker_document(job, **fields), sort_keys=True)


Adopt = Callable[[str, Sequence[str]], bool]
"""(directory, entry names) -> True when an unmarked directory is an older flanrec output
of the job (only names that job writes), which the job may then take over."""


def names_matching(pattern: str) -> Adopt:
    """An `Adopt` accepting a directory whose every entry fully matches `pattern` (plus the
    hidden temp files `write_atomic` leaves when killed)."""
    own = re.compile(rf"(?:{pattern})|\..+\.tmp-.*")

    def adopt(directory: str, names: Sequence[str]) -> bool:
        del directory
        return all(own.fullmatch(n) for n in names)

    return adopt


# What each job writes into its output directory. An unmarked directory holding only these
# names is the output of a flanrec from before the ownership marker, and that job adopts it.
# (convert has no entry: it replaces whole directories, so only a marked one is replaced.)
_OLDER_OUTPUT_NAMES = {
    "infer": (r"\.?.+-(predict|score|rating)\.jsonl-\d{5}-of-\d{5}(\.chunks)?"
              r"|.+-(predict|score|rating)-manifest-\d{5}-of-\d{5}\.json"),
    "eval": r"metrics\.json|metrics\.md|hr_ndcg_at_k\.png",
    "baselines": (r".+-(predict|score|rating)\.jsonl-\d{5}-of-\d{5}"
                  r"|sasrec-train\.json|families\.json"),
    "ensemble": r".+-predict\.jsonl-\d{5}-of-\d{5}",
}
_PREPARE_NAMES = frozenset({"prepare.json", "split", "index", "tasks", "vocab"})


def _older_prepare_output(directory: str, names: Sequence[str]) -> bool:
    """Nothing but what prepare writes, and a prepare.json saying it is prepare's."""
    if "prepare.json" not in names or not set(names) <= _PREPARE_NAMES:
        return False
    try:
        doc = read_json(join(directory, "prepare.json"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "flanrec.prepared"


def _older_train_output(directory: str, names: Sequence[str]) -> bool:
    del directory
    return "config.gin" in names  # the first file every training run writes


def older_output(job: str) -> Adopt | None:
    """How `job` recognises its own output written by a flanrec without markers."""
    if job in _OLDER_OUTPUT_NAMES:
        return names_matching(_OLDER_OUTPUT_NAMES[job])
    return {"prepare": _older_prepare_output, "train": _older_train_output}.get(job)


def ownership_problem(path: str, job: str, adopt: Adopt | None = None) -> str | None:
    """None when `job` may write into `path`; else why not (the reason, as one phrase).

    `adopt` defaults to `older_output(job)`."""
    adopt = adopt or older_output(job)
    if not exists(path):
        return None
    if not isdir(path):
        return "exists and is a file, not a directory"
    marker = read_marker(path)
    if marker is not None:
        if marker.get("format") != MARKER_FORMAT:
            return f"has a {MARKER} that is not flanrec's (unreadable)"
        if marker.get("job") == job:
            return None
        return f"holds the output of flanrec.{marker.get('job')}, not of flanrec.{job}"
    names = listdir(path)
    if not names or (adopt is not None and adopt(path, names)):
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"exists and was not written by flanrec (no {MARKER}; it holds {shown})"


def _refuse(what: str, path: str, problem: str, action: str) -> NotOwnedError:
    return NotOwnedError(f"{what} {path} {problem}; {action}: choose a new or empty directory")


def check_claimable(path: str | os.PathLike[str], job: str, *, what: str = "--out",
                    adopt: Adopt | None = None) -> str:
    """Raise unless `claim_dir` would accept `path` (call it before any work); returns the
    normalized path. Creates nothing."""
    p = normalize(path)
    problem = ownership_problem(p, job, adopt)
    if problem:
        raise _refuse(what, p, problem, "refusing to write into it")
    return p


def claim_dir(path: str | os.PathLike[str], job: str, *, what: str = "--out",
              adopt: Adopt | None = None) -> str:
    """Make `path` this job's output directory (created, marker written); returns it.

    For jobs that add files to a directory (infer, eval, baselines, ensemble, train). A
    directory of user files, or of another job, is refused.
    """
    p = check_claimable(path, job, what=what, adopt=adopt)
    makedirs(p)
    if read_marker(p) is None:
        write_marker(p, job)
    return p


def check_replaceable(path: str | os.PathLike[str], job: str, *, what: str = "--out",
                      replace: bool = True, replace_hint: str = "",
                      adopt: Adopt | None = None) -> str:
    """Before any work: may `job` replace the whole directory `path`? Returns it normalized.

    A missing or empty directory may always be written. An existing output of the same job
    only when `replace` (else `replace_hint` says which flag allows it); anything else never.
    """
    p = normalize(path)
    problem = ownership_problem(p, job, adopt)
    if problem:
        raise _refuse(what, p, problem, "refusing to replace it")
    if exists(p) and listdir(p) and not replace:
        raise NotOwnedError(f"{what} {p}: exists and is not empty{replace_hint}")
    return p


def check_apart(out: str | os.PathLike[str], inputs: Mapping[str, str | None], *,
                what: str = "--out") -> None:
    """Refuse an output directory that is an input, holds one, or lies inside an input dir.

    `inputs`: flag name -> path (a file counts by its directory: the output may not be that
    directory or contain it; a directory input may not contain the output either).
    """
    o = normalize(out)
    for flag, given in inputs.items():
        if not given:
            continue
        src = normalize(given)
        folder = src if isdir(src) else parent(src)
        if is_within(folder, o):
            raise StorageError(f"{what} {o} is or contains the folder holding {flag} "
                               f"{given}; writing it would replace the input: choose "
                               "another directory")
        if isdir(src) and is_within(o, src):
            raise StorageError(f"{what} {o} lies inside {flag} {given}; write outputs "
                               "outside the input directory")


def require_complete(directory: str, what: str = "directory") -> None:
    """Refuse a remote directory output whose marker (written last) is missing.

    Local directories appear with one rename, so they are whole even without a marker
    (older flanrec wrote none); on object stores the marker is the only proof.
    """
    d = normalize(directory)
    if is_url(d) and exists(d) and read_marker(d) is None:
        raise StorageError(
            f"{what} {d} is incomplete: it has no {MARKER}, which flanrec writes last when "
            "it publishes to an object store (the upload is still running or was "
            "interrupted; if you copied the directory yourself, copy that file last)")


# ------------------------------------------------------------------------------ directories


def _new_scratch(out: str) -> str:
    """A directory created by this run, for building `out`: next to it when local (same file
    system, so the final rename is atomic), in the local temp dir when `out` is a URL."""
    name = basename(out)
    if is_url(out):
        return tempfile.mkdtemp(prefix=f"flanrec-{name}.tmp-{os.getpid()}-")
    directory = os.path.dirname(out)
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=directory)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike[str], job: str, *, what: str = "--out",
               replace: bool = True, replace_hint: str = "", adopt: Adopt | None = None,
               record: Mapping[str, Any] | None = None) -> Iterator[str]:
    """Build a directory output in scratch and publish it to `out` only when complete.

        with storage.staged_dir(out, "prepare") as build:
            ...write everything under build (a local directory)...

    Ownership is checked on entry (before any work) and again just before publishing. On
    success the marker (with `record`) is written last and the tree published (see the
    module doc); an old output of the same job is replaced only then. On failure, or after
    publishing, only the scratch directory this run created is removed.
    """
    target = check_replaceable(out, job, what=what, replace=replace, replace_hint=replace_hint,
                               adopt=adopt)
    scratch = _new_scratch(target)
    build = os.path.join(scratch, "out")
    os.mkdir(build)
    try:
        yield build
        write_marker(build, job, complete=True, **dict(record or {}))
        check_replaceable(target, job, what=what, replace=replace, replace_hint=replace_hint,
                          adopt=adopt)  # it may have appeared while we worked
        if is_url(target):
            _upload(build, target)
        else:
            old = os.path.join(scratch, "old")
            moved = os.path.lexists(target)
            if moved:
                os.rename(target, old)  # the old output: removed with the scratch dir
            try:
                os.rename(build, target)
            except BaseException:
                if moved:
                    os.rename(old, target)  # never lose the old output without a new one
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _upload(build: str, target: str) -> None:
    """Copy a finished local tree to an object store, marker last (see the module doc).

    An old output of the same job is removed first (its marker before anything else), so
    from then until the new marker lands readers see an incomplete directory, never a mix.
    """
    if exists(target):  # an old output of this job (checked): incomplete from now on
        if exists(join(target, MARKER)):
            remove(join(target, MARKER))
        rmtree(target)
    makedirs(target)
    files = [f for f in walk_files(build) if f != MARKER]
    for rel in files:
        if "/" in rel:
            makedirs(join(target, rel.rsplit("/", 1)[0]))
        storage.copy_file(os.path.join(build, rel), join(target, rel))
    storage.copy_file(os.path.join(build, MARKER), join(target, MARKER))
