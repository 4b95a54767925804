"""The one exception type for mistakes in what a user gave a job.

Why a type of its own: a job must tell a user's mistake (a missing file, a bad CSV line, a
flag out of range) from a bug in flanrec. The first is reported as one line naming the file,
line or field and what was expected, with exit code 2 (``prog: error: ...``, argparse's own
convention); the second keeps its traceback. Raise ``UserError`` (or a subclass) wherever the
code has diagnosed the input; everything else is treated as a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, flags or files: one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A flag, gin binding or setting that cannot work (named, with what was expected).

    Also a ValueError, so code that validated settings with ValueError before keeps catching
    it; the job front end (`flanrec.frontend.jobs`) reports it as one line with exit code 2.
    """


class DiskError(UserError, OSError):
    """The disk refused a write (full, over quota, file too large, read-only): one line
    naming the path, with what was kept. Not a bug in flanrec, and not fixable by a retry
    before space is freed; also an OSError, so callers that handle OSError still do."""

    exit_code = 2


DISK_ERRNOS = frozenset(filter(None, (
    getattr(__import__("errno"), name, None)
    for name in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS"))))
"""errno values that mean "the storage refused the write", not "the program is wrong"."""


def disk_error(error: OSError, doing: str, kept: str = "") -> DiskError:
    """`DiskError` for `error` (an OSError whose errno is in DISK_ERRNOS): `doing` says
    what was being written, `kept` what is still intact."""
    import errno
    import os

    code = error.errno or 0
    name = errno.errorcode.get(code, str(code))
    reason = error.strerror or os.strerror(code)
    tail = f"; {kept}" if kept else ""
    return DiskError(f"{doing}: {reason} [{name}]{tail}; free space on that disk "
                     "(or raise the quota / the file size limit) and rerun")
