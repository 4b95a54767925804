"""A plain-text progress line (users/s and ETA) on stderr; no tqdm dependency.

Printed at most every ``every`` seconds and once at the end, one line each (not a
carriage-return bar), so it reads the same in a terminal, a log file and a TPU worker's
redirected output.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


def format_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf
        return "?"
    return f"{seconds:.0f}s" if seconds < 60 else str(datetime.timedelta(seconds=int(seconds)))


class Progress:
    """Counts examples done; the rate excludes skipped (already finished) chunks and the
    first batch (compilation), so the ETA reflects steady-state speed."""

    def __init__(self, label: str, total: int | None, every: float = 5.0,
                 stream: TextIO | None = None, clock=time.monotonic):  # noqa: ANN001
        self.label = label
        self.total = total
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self.skipped = 0
        self.timed = 0
        self.t_start: float | None = None
        self.t_last = clock()
        self.last_line = ""

    def skip(self, n: int) -> None:
        self.done += n
        self.skipped += n

    def update(self, n: int) -> None:
        """`n` more examples computed."""
        now = self.clock()
        self.done += n
        if self.t_start is None:  # first computed batch: includes compilation, not timed
            self.t_start = now
        else:
            self.timed += n
        if now - self.t_last >= self.every:
            self.print()

    def rate(self) -> float:
        if self.t_start is None or self.timed == 0:
            return float("nan")
        elapsed = self.clock() - self.t_start
        return self.timed / elapsed if elapsed > 0 else float("nan")

    def line(self) -> str:
        rate = self.rate()
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (format_eta((self.total - self.done) / rate)
               if self.total and rate == rate and rate > 0 else "?")
        skipped = f", {self.skipped} resumed" if self.skipped else ""
        return (f"{self.label}: {self.done}{total} users{pct}{skipped} | {rate:.1f} users/s | "
                f"ETA {eta}")

    def print(self) -> None:
        """Print the line now (skipped when it would repeat the previous one)."""
        self.t_last = self.clock()
        line = self.line()
        if line != self.last_line:
            print(line, file=self.stream, flush=True)
            self.last_line = line
