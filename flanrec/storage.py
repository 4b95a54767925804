"""One file-system layer for every path a flanrec job reads or writes: local, gs://, ram://.

Why one layer: ``os.path.abspath`` and ``pathlib`` turn ``gs://bucket/x`` into
``gs:/bucket/x``, and ``os.makedirs`` then creates a local ``./gs:/bucket/x`` - a job
"succeeds" writing where its user will never look. So every path goes through here:

* local paths (no scheme, or ``file://``) go to ``os``: no TensorFlow import, so light jobs
  (eval, baselines) stay light;
* URLs (``gs://``, ``ram://``, and any scheme ``tf.io.gfile`` knows) go to ``tf.io.gfile``;
* Orbax checkpoints get an ``etils.epath`` (``orbax_path``): local or ``gs://`` only, because
  Orbax writes arrays with TensorStore, which has drivers for those and not for ``ram://``.

Publishing, one rule everywhere:

* **a file** is written under a temporary name in its own directory and renamed over the
  final name (``write_atomic``). Object stores implement the rename as a copy of the
  finished object, so a reader sees the whole file or none of it. Files get the mode a plain
  ``open()`` gives (0666 minus the umask: 0644 usually), directories 0777 minus the umask;
* **a directory** (``staged_dir``) is assembled in a scratch directory this run created and
  published with its ownership marker ``.flanrec-output.json`` written last. Locally the tree
  appears with one ``rename``. Object stores have no atomic directory rename (``ram://``
  even loses the children of a renamed directory), so there the files are copied one by one
  and the marker last: a remote directory without the marker is incomplete, and readers
  (``require_complete``) refuse it.

Ownership (issue 13, "nothing a user owns is ever deleted"): a job writes into a directory
only if it does not exist, is empty, or carries the marker of the same job (``claim_dir``
for jobs that add files, ``check_replaceable`` for jobs that replace the whole directory).
Anything else is refused with one line naming the directory, before any work. Outputs of an
older flanrec (no marker yet) are adopted when they hold nothing but what that job writes.
Nothing outside a scratch directory created by this very run is ever removed.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from flanrec.errors import UserError

MARKER = ".flanrec-output.json"
MARKER_FORMAT = "flanrec.output"
ORBAX_SCHEMES = ("", "gs")
"""Where Orbax (TensorStore) can read and write checkpoints: local disks and GCS."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(UserError, ValueError):
    """A path cannot be used as asked (unreachable file system, not ours, incomplete ...)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A path that should exist does not (FileNotFoundError for existing handlers)."""


class NotOwnedError(StorageError):
    """An output directory holds files flanrec did not write (or another job's output)."""


# ------------------------------------------------------------------------------ paths


def fspath(path: str | os.PathLike[str]) -> str:
    """`path` as a string; `file://` URLs become plain local paths."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):] or "/"
    return text


def scheme(path: str | os.PathLike[str]) -> str:
    """'gs', 'ram', ... for URLs; '' for local paths."""
    m = _URL.match(fspath(path))
    return m.group(1).lower() if m else ""


def is_url(path: str | os.PathLike[str]) -> bool:
    return bool(scheme(path))


def normalize(path: str | os.PathLike[str]) -> str:
    """Absolute local path (``~`` expanded), or the URL as given without a trailing '/'.

    Never ``os.path.abspath`` a URL: that is what turns ``gs://b/x`` into ``gs:/b/x``.
    """
    text = fspath(path)
    if is_url(text):
        head = _URL.match(text).group(0)  # type: ignore[union-attr]
        rest = text[len(head):].rstrip("/")
        return head + rest
    return os.path.abspath(os.path.expanduser(text))


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """os.path.join for local paths; '/'-joined for URLs (nothing normalized away)."""
    text = fspath(base)
    if not is_url(text):
        return os.path.join(text, *parts)
    for part in parts:
        text = text.rstrip("/") + "/" + part.lstrip("/")
    return text


def parent(path: str | os.PathLike[str]) -> str:
    text = normalize(path)
    if is_url(text):
        head = _URL.match(text).group(0)  # type: ignore[union-attr]
        rest = text[len(head):]
        return head + rest.rsplit("/", 1)[0] if "/" in rest else head + rest
    return os.path.dirname(text)


def basename(path: str | os.PathLike[str]) -> str:
    return normalize(path).rstrip("/").rsplit("/", 1)[-1]


def split_path_list(value: str) -> list[str]:
    """``a:b:gs://c`` -> [a, b, gs://c]: ``os.pathsep`` lists whose entries may be URLs."""
    return [p for p in re.split(r":(?!//)", value) if p]


def is_within(path: str, root: str) -> bool:
    """True when `path` is `root` or inside it (both normalized first)."""
    path, root = normalize(path), normalize(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


# ------------------------------------------------------------------------------ gfile


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def _remote(op: str, path: str, fn: Callable[[], Any]) -> Any:
    """Run a tf.io.gfile call, turning TensorFlow's errors into one-line StorageErrors."""
    import tensorflow as tf

    try:
        return fn()
    except tf.errors.NotFoundError as e:
        raise StorageNotFoundError(f"{path}: not found ({_first_line(e)})") from None
    except tf.errors.OpError as e:
        raise StorageError(f"{path}: cannot {op} ({type(e).__name__}: {_first_line(e)})"
                           ) from None


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def exists(path: str | os.PathLike[str]) -> bool:
    p = fspath(path)
    if not is_url(p):
        return os.path.exists(p)
    return bool(_remote("check", p, lambda: _gfile().exists(p)))


def isdir(path: str | os.PathLike[str]) -> bool:
    p = fspath(path)
    if not is_url(p):
        return os.path.isdir(p)
    return bool(_remote("check", p, lambda: _gfile().isdir(p)))


def isfile(path: str | os.PathLike[str]) -> bool:
    p = fspath(path)
    if not is_url(p):
        return os.path.isfile(p)
    return exists(p) and not isdir(p)


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Entry names (no trailing '/'), sorted."""
    p = fspath(path)
    if not is_url(p):
        return sorted(os.listdir(p))
    return sorted(n.rstrip("/") for n in _remote("list", p, lambda: _gfile().listdir(p)))


def glob(pattern: str) -> list[str]:
    if not is_url(pattern):
        import glob as glob_lib

        return sorted(glob_lib.glob(pattern))
    return sorted(_remote("list", pattern, lambda: _gfile().glob(pattern)))


def makedirs(path: str | os.PathLike[str]) -> None:
    p = fspath(path)
    if not is_url(p):
        os.makedirs(p, exist_ok=True)
        return
    _remote("create the directory", p, lambda: _gfile().makedirs(p))


def remove(path: str | os.PathLike[str]) -> None:
    """Delete one file (never a directory)."""
    p = fspath(path)
    if not is_url(p):
        os.remove(p)
        return
    _remote("delete", p, lambda: _gfile().remove(p))


def rmtree(path: str | os.PathLike[str]) -> None:
    """Delete a directory tree. Callers only pass trees they created or verified as theirs."""
    p = fspath(path)
    if not is_url(p):
        shutil.rmtree(p)
        return
    _remote("delete", p, lambda: _gfile().rmtree(p))


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Rename a file (atomic locally; a copy of the finished object on object stores)."""
    if not is_url(src) and not is_url(dst):
        if overwrite:
            os.replace(src, dst)
        elif os.path.exists(dst):
            raise FileExistsError(f"{dst}: exists")
        else:
            os.rename(src, dst)
        return
    _remote("rename", f"{src} -> {dst}", lambda: _gfile().rename(src, dst, overwrite=overwrite))


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any two file systems (dst is replaced)."""
    if not is_url(src) and not is_url(dst):
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o666 & ~_umask())
        return
    _remote("copy", f"{src} -> {dst}", lambda: _gfile().copy(src, dst, overwrite=True))


class _RemoteFile:
    """A tf.io.gfile.GFile whose TensorFlow errors (raised lazily, at the first read or
    write) become StorageErrors naming the path."""

    def __init__(self, path: str, mode: str) -> None:
        self._path = path
        self._file = _remote("open", path, lambda: _gfile().GFile(path, mode))

    def read(self, n: int = -1) -> Any:
        return _remote("read", self._path, lambda: self._file.read(n))

    def readline(self) -> Any:
        return _remote("read", self._path, self._file.readline)

    def __iter__(self) -> Iterator[Any]:
        while line := self.readline():
            yield line

    def write(self, data: Any) -> None:
        _remote("write", self._path, lambda: self._file.write(data))

    def flush(self) -> None:
        _remote("write", self._path, self._file.flush)

    def close(self) -> None:
        _remote("write", self._path, self._file.close)

    def __enter__(self) -> _RemoteFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | os.PathLike[str], mode: str = "r") -> IO[Any]:  # noqa: A001
    """A file object for `path`: text modes are UTF-8."""
    p = fspath(path)
    if not is_url(p):
        if "b" in mode:
            return builtins.open(p, mode)
        return builtins.open(p, mode, encoding="utf-8")
    return _RemoteFile(p, mode)  # type: ignore[return-value]


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike[str]) -> str:
    with open(path, "r") as f:
        return f.read()


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_text(path))


def walk_files(root: str) -> Iterator[str]:
    """Paths of every file under `root`, relative to it ('/'-separated), sorted."""
    if not is_url(root):
        for d, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(d, root)
            for f in sorted(files):
                yield f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
        return
    for d, _, files in _remote("list", root, lambda: list(_gfile().walk(root))):
        rel = d[len(root):].strip("/")
        for f in sorted(files):
            yield f"{rel}/{f}" if rel else f


# ------------------------------------------------------------------------------ files


def _umask() -> int:
    """The process umask, read from /proc (os.umask can only read it by changing it, which
    races with other threads creating files)."""
    try:
        with builtins.open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: str | bytes | Iterable[str | bytes],
                 *, sync: bool = True) -> None:
    """THE way flanrec writes a file: temp name in the same directory, then rename.

    `data` is text, bytes, or an iterable of text/bytes chunks (streamed, e.g. JSONL lines).
    The parent directory is created. A crash leaves the old file (or none), never half a
    file; the temp file is removed on failure.
    """
    p = fspath(path)
    directory = parent(p) if is_url(p) else os.path.dirname(os.path.abspath(p))
    makedirs(directory)
    chunks: Iterable[str | bytes] = [data] if isinstance(data, str | bytes) else data
    name = basename(p)
    if not is_url(p):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=directory)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
            with os.fdopen(fd, "wb") as f:
                for c in chunks:
                    f.write(c.encode("utf-8") if isinstance(c, str) else c)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return
    tmp = join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c.encode("utf-8") if isinstance(c, str) else c)
        rename(tmp, p, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            if exists(tmp):
                remove(tmp)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1,
                      sort_keys: bool = False, ensure_ascii: bool = False) -> None:
    """`obj` as JSON plus a final newline, through `write_atomic`."""
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys,
                                  ensure_ascii=ensure_ascii) + "\n")


# ------------------------------------------------------------------------------ ownership


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
    from flanrec import __version__

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
        copy_file(os.path.join(build, rel), join(target, rel))
    copy_file(os.path.join(build, MARKER), join(target, MARKER))


@contextlib.contextmanager
def local_copy(path: str | os.PathLike[str], only: str | None = None) -> Iterator[str]:
    """A local path with the content of `path` (itself when local; a temp copy of a URL's
    file or tree, removed afterwards). `only`: copy just that relative subtree (kept at the
    same relative place), e.g. one checkpoint_N of a remote MODEL_DIR."""
    p = fspath(path)
    if not is_url(p):
        yield p
        return
    p = normalize(p)
    tmp = tempfile.mkdtemp(prefix="flanrec-copy-")
    try:
        local = os.path.join(tmp, basename(p) or "root")
        if not isdir(p):
            if not exists(p):
                raise StorageNotFoundError(f"{p}: no such file or directory")
            copy_file(p, local)
        else:
            src = join(p, only) if only else p
            dst = os.path.join(local, only) if only else local
            os.makedirs(dst, exist_ok=True)
            for rel in walk_files(src):
                os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
                copy_file(join(src, rel), os.path.join(dst, rel))
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------ Orbax


def orbax_path(path: str | os.PathLike[str]) -> Any:
    """An etils.epath.Path for Orbax: absolute when local (its OCDBT writer refuses relative
    dirs), the URL unchanged on gs://; other schemes are refused by name."""
    from etils import epath

    p = normalize(path)
    if scheme(p) not in ORBAX_SCHEMES:
        raise StorageError(f"{p}: Orbax checkpoints can be read and written on a local disk "
                           f"or gs:// only, not {scheme(p)}:// (TensorStore has no driver "
                           "for it); use a local directory or a bucket")
    return epath.Path(p)


__all__ = ["MARKER", "NotOwnedError", "StorageError", "StorageNotFoundError", "check_apart",
           "check_claimable", "check_replaceable", "claim_dir", "copy_file", "exists", "glob",
           "is_url", "isdir", "isfile", "join", "listdir", "local_copy", "makedirs",
           "names_matching", "normalize", "older_output", "open", "orbax_path",
           "ownership_problem", "parent", "read_bytes", "read_json", "read_marker", "read_text",
           "remove", "rename", "require_complete", "rmtree", "scheme", "split_path_list",
           "staged_dir", "walk_files", "write_atomic", "write_json_atomic", "write_marker"]
