"""Output directories: who owns one (the ownership marker), who writes it now (the run
lock), and how a whole one is published.

Ownership ("nothing a user owns is ever deleted"): a job writes into a directory only if it
does not exist, is empty, or carries the marker of the same job (``claim_dir`` for jobs that
add files, ``check_replaceable`` for jobs that replace the whole directory). Anything else is
refused with one line naming the directory, before any work. A familiar file name proves
nothing (a user's folder may hold a ``config.gin``); unmarked outputs of an older flanrec
are adopted only when their content proves them flanrec's (`older_output`). A directory is
replaced only when it holds no file the job did not write. Nothing outside a scratch
directory created by this very run is ever removed, except the scratch a killed run of the
same output left (recognised by host and pid in its name).

Paths are resolved (symlinks followed, `flanrec.files.storage.resolve`) before any of these
decisions: an output given as a link is written where the link points, and the link stays.

Run lock: one job at a time per output directory (see the "run locks" section).

A directory (``staged_dir``) is assembled in a scratch directory this run created and
published with its marker written last: locally with one ``rename``; on object stores,
which have no atomic directory rename, file by file and the marker last, so a remote
directory without the marker is incomplete and readers (``require_complete``) refuse it.

Split from `flanrec.files.storage` (the file-system layer these rules are written on, which
still exposes every name here, so callers keep one import: ``storage.claim_dir``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from flanrec.data import layout
from flanrec.errors import DISK_ERRNOS, disk_error
from flanrec.files import checksums, storage
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


# ------------------------------------------------------------------------------ run locks
#
# One job at a time per output directory. Why: two trainings started seconds apart into one
# MODEL_DIR would both run and overwrite each other's checkpoints; two prepares into one
# --out would each replace the other's output. The lock is a small JSON file (job, pid, host,
# start time) that names its holder in the refusal.
#
# Local paths: the file is held with flock(2) for as long as the job runs. The kernel drops
# that lock when the process ends however it ends (SIGKILL, OOM, power loss of a local
# disk), so a lock file left behind by a dead run is recognised for sure and taken over with
# a note. A lock file whose host is another machine (a shared file system) is never taken
# over: flanrec cannot see that machine's processes, so it refuses and says which file to
# delete once that run is known to be over.
#
# Object stores (gs://, ram://) have no locks: the same file is written (and read back, so
# of two racing writers one sees the other's), with liveness checked only for a holder on
# this host; a holder elsewhere is refused as above. It guards against the mistakes people
# make (a second launch of the same command), not against two writers in the same second.

LOCK = ".flanrec-lock.json"
LOCK_FORMAT = "flanrec.lock"
_HOST = socket.gethostname()


class OutputInUseError(StorageError):
    """Another run (alive, or on another host) holds the lock of an output directory."""


class _Held:
    def __init__(self, path: str, token: str, fd: int | None) -> None:
        self.path, self.token, self.fd = path, token, fd


_HELD: dict[str, _Held] = {}  # lock file -> the lock this process holds on it


def lock_path(directory: str | os.PathLike[str], *, beside: bool = False) -> str:
    """The lock file of `directory`: inside it for jobs that add files to it; beside it
    (`.{name}.flanrec-lock.json`) for jobs that replace it whole, since a lock inside would
    be replaced with the directory."""
    d = storage.resolve(directory)
    if beside:
        return join(parent(d), f".{basename(d)}{LOCK}")
    return join(d, LOCK)


def _lock_document(job: str, token: str) -> dict[str, Any]:
    return {"format": LOCK_FORMAT, "job": job, "pid": os.getpid(), "host": _HOST,
            "token": token, "started": time.time(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _parse_lock(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"format": "malformed"}
    return doc if isinstance(doc, dict) else {"format": "malformed"}


def _describe(doc: Mapping[str, Any]) -> str:
    job = doc.get("job", "?")
    since = doc.get("started_utc", "?")
    age = ""
    if isinstance(doc.get("started"), int | float):
        age = f", {_age(time.time() - float(doc['started']))} ago"
    return f"flanrec.{job} (pid {doc.get('pid', '?')} on host {doc.get('host', '?')}, " \
           f"since {since}{age})"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _in_use(what: str, directory: str, doc: Mapping[str, Any]) -> OutputInUseError:
    return OutputInUseError(f"{what} {directory} is in use by {_describe(doc)}; refusing to "
                            "run a second job into it: wait for that run to end (or stop it)")


def _other_host(what: str, directory: str, doc: Mapping[str, Any],
                path: str) -> OutputInUseError:
    return OutputInUseError(
        f"{what} {directory} is locked by {_describe(doc)}; flanrec cannot see processes on "
        f"another host: if that run has ended, delete {path} and rerun")


def _take_over_note(what: str, directory: str, doc: Mapping[str, Any]) -> None:
    print(f"note: {what} {directory}: taking over the lock of {_describe(doc)}, which is no "
          "longer running", file=sys.stderr, flush=True)


def _stale_on_this_host(doc: Mapping[str, Any], *, flock_free: bool) -> bool | None:
    """True: the holder is gone; False: it runs; None: it runs elsewhere (cannot tell)."""
    if doc.get("format") != LOCK_FORMAT:
        return True  # empty (a create cut short) or not a lock at all: nobody holds it
    if doc.get("host") != _HOST:
        return None
    return flock_free or not _pid_alive(doc.get("pid"))


def _open_flocked(path: str) -> tuple[int, bool]:
    """(fd, locked) of the lock file, created if missing; `locked` False when another open
    file holds it. A path unlinked by a releasing holder between our open and our flock is
    retried, so two runs never hold two different files of one name."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return fd, True  # no flock on this file system: pid/host checks only
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def acquire_lock(directory: str | os.PathLike[str], job: str, *, what: str = "--out",
                 beside: bool = False) -> str:
    """Take the run lock of `directory` for this process (see the section comment); returns
    the lock file. Re-entrant: a lock this process holds is kept as it is. Released by
    `release_lock`/`release_locks`, and at interpreter exit."""
    d = storage.resolve(directory)
    path = lock_path(d, beside=beside)
    if path in _HELD:
        return path
    token = secrets.token_hex(8)
    mine = _lock_document(job, token)
    if is_url(path):
        if exists(path):
            doc = _parse_lock(storage.read_text(path))
            stale = _stale_on_this_host(doc, flock_free=False)
            if stale is None:
                raise _other_host(what, d, doc, path)
            if not stale:
                raise _in_use(what, d, doc)
            if doc.get("format") == LOCK_FORMAT:
                _take_over_note(what, d, doc)
        write_json_atomic(path, mine, sort_keys=True)
        doc = _parse_lock(storage.read_text(path))
        if doc.get("token") != token:  # another run wrote its lock in the same moment
            raise _in_use(what, d, doc)
        _HELD[path] = _Held(path, token, None)
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, locked = _open_flocked(path)
    try:
        doc = _parse_lock(_read_fd(fd))
        if not locked:
            raise _in_use(what, d, doc)
        stale = _stale_on_this_host(doc, flock_free=True)
        if stale is None:
            raise _other_host(what, d, doc, path)
    except BaseException:
        os.close(fd)  # drops our flock; the file (someone else's) stays
        raise
    # Ours from here: registered before the slow part, so that an exception raised in it
    # (SIGTERM's SystemExit during the fsync) still releases it and removes the file.
    _HELD[path] = _Held(path, token, fd)
    try:
        if doc.get("format") == LOCK_FORMAT:
            _take_over_note(what, d, doc)
        data = (json.dumps(mine, sort_keys=True) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except BaseException:
        release_lock(path)
        raise
    return path


def lock_problem(directory: str | os.PathLike[str], *, what: str = "--out",
                 beside: bool = False) -> str | None:
    """Why `acquire_lock` would refuse now (one line), or None; takes nothing. For checks
    before any work (a stale lock is no problem: it will be taken over)."""
    d = storage.resolve(directory)
    path = lock_path(d, beside=beside)
    if path in _HELD or not exists(path):
        return None
    if is_url(path):
        doc = _parse_lock(storage.read_text(path))
        flock_free = False
    else:
        import fcntl

        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            doc = _parse_lock(_read_fd(fd))
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                flock_free = True
            except BlockingIOError:
                flock_free = False
            except OSError:
                flock_free = False
        finally:
            os.close(fd)
        if not flock_free:
            return str(_in_use(what, d, doc))
    stale = _stale_on_this_host(doc, flock_free=flock_free)
    if stale is None:
        return str(_other_host(what, d, doc, path))
    return None if stale else str(_in_use(what, d, doc))


def release_lock(path: str) -> None:
    """Give up a lock this process holds (`path`: what `acquire_lock` returned)."""
    held = _HELD.pop(path, None)
    if held is None:
        return
    if held.fd is None:  # an object store: remove the file if it is still ours
        with contextlib.suppress(Exception):
            if _parse_lock(storage.read_text(path)).get("token") == held.token:
                remove(path)
        return
    try:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(held.fd).st_ino:
                os.remove(path)  # still flocked: nobody can take this file meanwhile
    finally:
        os.close(held.fd)


def release_locks() -> None:
    """Give up every lock this process holds (job end, interpreter exit)."""
    for path in list(_HELD):
        release_lock(path)


atexit.register(release_locks)

_F = TypeVar("_F", bound=Callable[..., Any])


_SCOPES = [0]  # how many `releases_locks` calls are running (nested)


def releases_locks(fn: _F) -> _F:
    """Decorator for a job's entry points (its cli, and the library functions that claim an
    output, e.g. `run_inference`): locks taken during the outermost such call are released
    when it returns or raises. A job run in-process (tests, notebooks) must not keep its
    output directories locked against the next run; nested calls (a cli calling the library
    function) keep the lock until the outer one ends, so it is held for the whole job."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD)
        _SCOPES[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _SCOPES[0] -= 1
            if _SCOPES[0] == 0:
                for path in list(_HELD):
                    if path not in before:
                        release_lock(path)

    return wrapper  # type: ignore[return-value]


Adopt = Callable[[str, Sequence[str]], bool]
"""(directory, entry names) -> True when an unmarked directory is an older flanrec output
of the job (only names that job writes), which the job may then take over."""


# Ownership is decided by flanrec's marker, never by a familiar file name: a user's folder
# that happens to hold a `config.gin` or a `metrics.json` is theirs. An unmarked directory
# is taken over as the output of a flanrec from before the marker only when its content
# proves it: prepare's own record (`layout.PREPARE_FILE`, format "flanrec.prepared") with
# nothing else beside it, or a MODEL_DIR whose checkpoints carry flanrec's checksum files and
# which holds nothing but what training writes. Every other job refuses (its outputs are
# cheap to redo).
_PREPARE_NAMES = frozenset({layout.PREPARE_FILE, layout.SPLIT_DIR, layout.INDEX_DIR,
                            layout.TASKS_DIR, layout.VOCAB_DIR})
_TRAIN_NAME = re.compile(
    r"config\.gin|train|validation|best_checkpoint\.json|spiece\.model"
    r"|flanrec_vocabulary\.json|checkpoint_\d+(\.(incomplete|damaged)-\d+"
    r"|\.orbax-checkpoint-tmp.*)?|\..+\.tmp-.*")
_CHECKPOINT = re.compile(r"checkpoint_\d+")


def _older_prepare_output(directory: str, names: Sequence[str]) -> bool:
    """Nothing but what prepare writes, and a prepare file saying it is prepare's."""
    if layout.PREPARE_FILE not in names or not set(names) <= _PREPARE_NAMES:
        return False
    try:
        doc = read_json(join(directory, layout.PREPARE_FILE))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "flanrec.prepared"


def _older_train_output(directory: str, names: Sequence[str]) -> bool:
    """Only names training writes, and at least one checkpoint_N with flanrec's checksums."""

    if not names or not all(_TRAIN_NAME.fullmatch(n) for n in names):
        return False
    for n in names:
        if _CHECKPOINT.fullmatch(n):
            try:
                doc = read_json(join(directory, n, checksums.CHECKSUMS_FILE))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("format") == checksums.FORMAT:
                return True
    return False


def older_output(job: str) -> Adopt | None:
    """How `job` recognises its own output written by a flanrec without markers (content,
    not names: see above); None for jobs that adopt nothing unmarked."""
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
    # The marker being written by another process of this job (a multi-host run claims
    # its output on every host) and a lock file are flanrec's, not the user's.
    names = [n for n in listdir(path) if n != LOCK and not n.startswith(f".{MARKER}.tmp-")]
    if not names or (adopt is not None and adopt(path, names)):
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"exists and was not written by flanrec (no {MARKER}; it holds {shown})"


def _refuse(what: str, path: str, problem: str, action: str) -> NotOwnedError:
    return NotOwnedError(f"{what} {path} {problem}; {action}: choose a new or empty directory")


def check_claimable(path: str | os.PathLike[str], job: str, *, what: str = "--out",
                    adopt: Adopt | None = None, lock: bool = True) -> str:
    """Raise unless `claim_dir` would accept `path` now (call it before any work): owned,
    and not locked by another live run. Returns the resolved path. Creates nothing."""
    p = storage.resolve(path)
    problem = ownership_problem(p, job, adopt)
    if problem:
        raise _refuse(what, p, problem, "refusing to write into it")
    if lock and isdir(p):
        busy = lock_problem(p, what=what)
        if busy:
            raise OutputInUseError(busy)
    return p


def claim_dir(path: str | os.PathLike[str], job: str, *, what: str = "--out",
              adopt: Adopt | None = None, lock: bool = True) -> str:
    """Make `path` this job's output directory (created, marker written, run lock taken);
    returns it, resolved (symlinks followed: a link given as the output stays a link).

    For jobs that add files to a directory (infer, eval, baselines, ensemble, train). A
    directory of user files, or of another job, is refused, and so is one another live run
    holds (`acquire_lock`). `lock=False` for the secondary processes of a multi-process
    job: process 0 holds the lock for all of them.
    """
    p = check_claimable(path, job, what=what, adopt=adopt, lock=lock)
    makedirs(p)
    if read_marker(p) is None:
        write_marker(p, job)
    if lock:
        acquire_lock(p, job, what=what)
    return p


def user_files(directory: str, marker: Mapping[str, Any] | None, job: str) -> list[str]:
    """Files under `directory` (relative) that the output recorded in `marker` did not
    contain: a user's files, which replacing the directory would delete.

    A marker written by `staged_dir` lists every file it published; an older one (no list)
    is checked by top-level name against what `job` writes."""
    files = [f for f in walk_files(directory) if f not in (MARKER, LOCK)]
    listed = (marker or {}).get("files")
    if isinstance(listed, list):
        known = set(listed)
        return [f for f in files if f not in known]
    own = _PREPARE_NAMES if job == "prepare" else None
    if own is None:
        return []
    return [f for f in files if f.split("/", 1)[0] not in own]


def check_replaceable(path: str | os.PathLike[str], job: str, *, what: str = "--out",
                      replace: bool = True, replace_hint: str = "",
                      adopt: Adopt | None = None) -> str:
    """Before any work: may `job` replace the whole directory `path`? Returns it resolved.

    A missing or empty directory may always be written. An existing output of the same job
    only when `replace` (else `replace_hint` says which flag allows it), when no other live
    run holds its lock, and when it holds no file the job did not write (a user's file put
    inside it is never deleted: refused, naming the file); anything else never.
    """
    p = storage.resolve(path)
    problem = ownership_problem(p, job, adopt)
    if problem:
        raise _refuse(what, p, problem, "refusing to replace it")
    busy = lock_problem(p, what=what, beside=True)
    if busy:
        raise OutputInUseError(busy)
    if exists(p) and listdir(p):
        if not replace:
            raise NotOwnedError(f"{what} {p}: exists and is not empty{replace_hint}")
        extra = user_files(p, read_marker(p), job)
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more"
                                            if len(extra) > 3 else "")
            raise NotOwnedError(
                f"{what} {p} holds files flanrec.{job} did not write ({shown}); refusing to "
                "replace it, which would delete them: move them out of it, or choose "
                "another directory")
    return p


def check_apart(out: str | os.PathLike[str], inputs: Mapping[str, str | None], *,
                what: str = "--out") -> None:
    """Refuse an output directory that is an input, holds one, or lies inside an input dir.

    `inputs`: flag name -> path (a file counts by its directory: the output may not be that
    directory or contain it; a directory input may not contain the output either). Both
    sides are resolved first, so a symlink (to the output, or from it) hides nothing.
    """
    o = storage.resolve(out)
    for flag, given in inputs.items():
        if not given:
            continue
        src = storage.resolve(given)
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

_SCRATCH = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>[^/]+)-pid(?P<pid>\d+)-[^/]*")
"""A scratch directory of `_new_scratch`: `.{name}.tmp-{host}-pid{pid}-{random}`. Host and
pid in the name make the remains of a killed run recognisable, and removable for sure (its
pid is dead on this host) without ever touching a live run's scratch."""


def _new_scratch(out: str) -> str:
    """A directory created by this run, for building `out`: next to it when local (same file
    system, so the final rename is atomic), in the local temp dir when `out` is a URL."""
    name = basename(out)
    tag = f"tmp-{_HOST}-pid{os.getpid()}-"
    if is_url(out):
        return tempfile.mkdtemp(prefix=f"flanrec-{name}.{tag}")
    directory = os.path.dirname(out)
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}.{tag}", dir=directory)


def _remove_stale_scratch(out: str) -> None:
    """Remove the scratch directories a killed run of this output left beside it: named
    for `out`, made on this host, by a pid that no longer runs. Called with the output's
    lock held, so no other flanrec run of this output is building one now."""
    if is_url(out):
        return  # its scratch lives in the local temp dir, which the system cleans
    directory, name = os.path.dirname(out), basename(out)
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            m = _SCRATCH.fullmatch(entry)
            if not m or m["name"] != name or m["host"] != _HOST or _pid_alive(int(m["pid"])):
                continue
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                print(f"note: removing {path}: the scratch directory of a run that was "
                      f"killed (pid {m['pid']} on this host no longer runs)",
                      file=sys.stderr, flush=True)
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike[str], job: str, *, what: str = "--out",
               replace: bool = True, replace_hint: str = "", adopt: Adopt | None = None,
               record: Mapping[str, Any] | None = None) -> Iterator[str]:
    """Build a directory output in scratch and publish it to `out` only when complete.

        with storage.staged_dir(out, "prepare") as build:
            ...write everything under build (a local directory)...

    `out` is resolved first: a symlink is followed, and the directory it names is the one
    replaced (the link stays). The run lock of `out` (a file beside it) is held throughout.
    Ownership is checked on entry (before any work) and again just before publishing. On
    success the marker (with `record` and the list of published files) is written last and
    the tree published (see the module doc); an old output of the same job is replaced only
    then. On failure, or after publishing, only the scratch directory this run created is
    removed.
    """
    target = check_replaceable(out, job, what=what, replace=replace, replace_hint=replace_hint,
                               adopt=adopt)
    held_before = lock_path(target, beside=True) in _HELD  # an enclosing staged_dir's
    lock = acquire_lock(target, job, what=what, beside=True)
    try:
        _remove_stale_scratch(target)
        scratch = _new_scratch(target)
        try:
            build = os.path.join(scratch, "out")
            os.mkdir(build)
            try:
                yield build
            except OSError as e:
                if e.errno not in DISK_ERRNOS:
                    raise
                raise disk_error(
                    e, f"{what} {target}: cannot write " + (e.filename or "its files"),
                    "nothing was published: the scratch directory is removed and "
                    + ("the previous output is intact" if exists(target)
                       else "no output was created")) from e
            files = sorted(f for f in walk_files(build) if f != MARKER)
            write_marker(build, job, complete=True, **dict(record or {}), files=files)
            check_replaceable(target, job, what=what, replace=replace,
                              replace_hint=replace_hint, adopt=adopt)  # it may have changed
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
    finally:
        if not held_before:
            release_lock(lock)


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
