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
