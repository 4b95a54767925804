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
* **a directory** (``staged_dir``) is built in scratch and published with its ownership
  marker written last; that, and who may write into which directory, is
  `flanrec.files.outputs`, which builds on this module.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
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


def resolve(path: str | os.PathLike[str]) -> str:
    """`normalize`, with every symlink of a local path followed (``os.path.realpath``).

    Every decision about where a job writes (is this inside an input? whose directory is
    this? which lock guards it?) is taken on the resolved path: two spellings of one
    directory, one through a link, must never look like two directories. URLs have no links.
    """
    p = normalize(path)
    return p if is_url(p) else os.path.realpath(p)


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
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if isinstance(e, OSError) and e.errno and not e.filename:
                # a write refused mid-file (full disk, EFBIG) names no file: name ours
                raise OSError(e.errno, e.strerror or os.strerror(e.errno), p) from e
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


__all__ = ["MARKER", "NotOwnedError", "StorageError", "StorageNotFoundError", "copy_file",
           "exists", "glob", "is_url", "isdir", "isfile", "join", "listdir", "local_copy",
           "makedirs", "normalize", "open", "orbax_path", "parent", "read_bytes", "read_json",
           "resolve",
           "read_text", "remove", "rename", "rmtree", "scheme", "split_path_list", "walk_files",
           "write_atomic", "write_json_atomic"]
