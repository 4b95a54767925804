"""The one progress reporter of every flanrec job: done/total, rate and ETA, one line at a time.

Why one helper: prepare, validation inside training, inference, the baselines and the
ensembles all run stages of tens of seconds to hours; a user should see the same kind of line
everywhere (``label: 1200/4000 users (30%) | 95.2 users/s | ETA 29s``) and never a silent
minute. Plain lines, printed at most every ``every`` seconds and once at the end (never a
carriage-return bar), read the same in a terminal, a log file and a TPU worker's redirected
output. No tqdm dependency, no TF/JAX import: the pure-numpy stages use it too.

`Progress` counts items with a known or unknown total; `stage` times a step that has no
natural count (reading a file, fitting an index) and says when it starts and how long it took.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def format_eta(seconds: float) -> str:
    """`42s` under a minute, `0:03:12` above; `?` when unknown (NaN or inf)."""
    if seconds != seconds or seconds == float("inf"):  # NaN or inf
        return "?"
    return f"{seconds:.0f}s" if seconds < 60 else str(datetime.timedelta(seconds=int(seconds)))


def _format_count(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


class Progress:
    """Counts units done; prints `label: done/total unit (pct) | rate unit/s | ETA` lines.

    The rate excludes skipped (already finished, e.g. resumed) units and, with
    ``untimed_first=True`` (the default), the first update, whose batch usually includes
    compilation; so the ETA reflects steady-state speed. ``total=None`` drops the percentage
    and the ETA but keeps count and rate. Lines go to ``log`` (e.g. a logger's ``info``) when
    given, else to ``stream`` (default stdout: progress is a job's normal output; stderr is
    kept for errors and warnings, so a failing job's stderr is its one error line).
    """

    def __init__(self, label: str, total: int | None = None, every: float = 5.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 unit: str = "users", log: Callable[[str], None] | None = None,
                 untimed_first: bool = True):
        self.label = label
        self.total = total
        self.every = every
        self.stream = stream
        self.clock = clock
        self.unit = unit
        self.log = log
        self.untimed_first = untimed_first
        self.done = 0
        self.skipped = 0
        self.timed = 0
        self.t_created = clock()
        self.t_start: float | None = None if untimed_first else self.t_created
        self.t_last = self.t_created
        self.last_line = ""

    # ----------------------------------------------------------------- counting
    def skip(self, n: int) -> None:
        """`n` units that need no work (finished by an earlier run)."""
        self.done += n
        self.skipped += n

    def update(self, n: int = 1) -> None:
        """`n` more units done; prints a line if `every` seconds passed since the last."""
        now = self.clock()
        self.done += n
        if self.t_start is None:  # the first computed batch includes compilation: not timed
            self.t_start = now
        else:
            self.timed += n
        if now - self.t_last >= self.every:
            self.print()

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting one unit per item (for streams consumed elsewhere)."""
        for item in items:
            yield item
            self.update(1)

    # ----------------------------------------------------------------- reporting
    def rate(self) -> float:
        """Units per second over the timed units; NaN before any was timed."""
        if self.t_start is None or self.timed == 0:
            return float("nan")
        elapsed = self.clock() - self.t_start
        return self.timed / elapsed if elapsed > 0 else float("nan")

    def elapsed(self) -> float:
        return self.clock() - self.t_created

    def line(self) -> str:
        rate = self.rate()
        total = f"/{_format_count(self.total)}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        skipped = f", {_format_count(self.skipped)} resumed" if self.skipped else ""
        text = (f"{self.label}: {_format_count(self.done)}{total} {self.unit}{pct}{skipped} | "
                f"{rate:,.1f} {self.unit}/s")
        if self.total:
            eta = (format_eta((self.total - self.done) / rate) if rate == rate and rate > 0
                   else "?")
            text += f" | ETA {eta}"
        return text

    def _emit(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        else:
            print(text, file=self.stream if self.stream is not None else sys.stdout,
                  flush=True)

    def print(self) -> None:
        """Print the line now (skipped when it would repeat the previous one)."""
        self.t_last = self.clock()
        line = self.line()
        if line != self.last_line:
            self._emit(line)
            self.last_line = line

    def finish(self, extra: str = "") -> str:
        """The closing line: `label: N unit in T (R unit/s)[, extra]`; returns it."""
        seconds = self.elapsed()
        rate = self.done / seconds if seconds > 0 else float("nan")
        text = (f"{self.label}: {_format_count(self.done)} {self.unit} in "
                f"{_format_seconds(seconds)} ({rate:,.1f} {self.unit}/s)")
        if extra:
            text += f", {extra}"
        self._emit(text)
        self.last_line = text
        return text


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_eta(seconds)


@contextlib.contextmanager
def stage(label: str, stream: TextIO | None = None,
          log: Callable[[str], None] | None = None,
          clock: Callable[[], float] = time.monotonic) -> Iterator[dict[str, str]]:
    """Announce a step without a natural count, then say how long it took.

    Prints `label ...` on entry and `label: done in 2.1 s[, note]` on a normal exit, where
    `note` is what the block put into the yielded dict under "note" (e.g. a count it
    learned). On an exception only the exception speaks.
    """
    def emit(text: str) -> None:
        if log is not None:
            log(text)
        else:
            print(text, file=stream if stream is not None else sys.stdout, flush=True)

    info: dict[str, str] = {}
    emit(f"{label} ...")
    t0 = clock()
    yield info
    note = info.get("note")
    emit(f"{label}: done in {_format_seconds(clock() - t0)}" + (f", {note}" if note else ""))
