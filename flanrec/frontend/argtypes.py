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
    # Name the bound that was broken: "an integer >= 1" reads better than a range whose
    # upper end (int32) no one asks about.
    what = _bounds("an integer", lo, None) if lo is not None else _bounds("an integer", lo, hi)

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"expected {_bounds('an integer', None, hi)}, "
                                             f"got {text!r}")
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


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _bounds(noun: str, lo: float | None, hi: float | None, *, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}]"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{noun} <= {_num(hi)}"
    return noun


INT32_MAX = 2**31 - 1
"""The bound of every count flag: sizes become int32 tensor shapes and features downstream."""

positive_int = int_range(1, INT32_MAX)
nonnegative_int = int_range(0, INT32_MAX)
