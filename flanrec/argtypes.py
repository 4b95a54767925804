"""argparse ``type=`` callables that check a number's range where the flag is parsed.

Why: a value like ``--max_history 0`` or ``--top_k 0`` otherwise travels into the job and
either fails deep inside it with a traceback or, worse, is taken at face value
(``checkpoint_-5``, a top-0 list that returns 20 items). A ``type=`` that raises
``argparse.ArgumentTypeError`` makes argparse report ``argument --max_history: expected an
integer >= 1, got '0'`` through the job's one-line usage error (exit 2), before any work.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(float32).max, without importing numpy


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer ``lo <= n <= hi`` (either bound may be None: unbounded)."""
    what = _bounds("an integer", lo, hi)

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value" messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, float32: bool = False) -> Callable[[str], float]:
    """A finite float in [lo, hi] (``lo_open``: lo excluded); ``float32``: also storable as
    float32 without becoming infinity (ratings are kept as float32)."""
    if float32:
        lo = -FLOAT32_MAX if lo is None else lo
        hi = FLOAT32_MAX if hi is None else hi
    what = _bounds("a finite number", lo, hi, lo_open=lo_open)

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or (lo is not None and (value <= lo if lo_open
                                                               else value < lo))
                or (hi is not None and value > hi)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


def _bounds(noun: str, lo: float | None, hi: float | None, *, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{noun} <= {hi:g}"
    return noun


positive_int = int_range(1)
nonnegative_int = int_range(0)
