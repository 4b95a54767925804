"""Shared parsing helpers: line iteration with located decode errors, strict numbers, titles.

Every reader goes through these so that all of them report bad input the same way
(:class:`flanrec.data.errors.DataError` naming file, line and field) and apply the same
rules: integer timestamps parsed exactly (never through float), exact duplicate rows counted
and reported but kept, fallback titles for items without metadata.
"""

from __future__ import annotations

import decimal
import gzip
import logging
import math
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from flanrec.data import types
from flanrec.data.errors import DataError

log = logging.getLogger("flanrec.data.sources")

_INT_RE = re.compile(r"[+-]?\d+")
_TITLE_YEAR_RE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")


def open_binary(path: str | os.PathLike[str]):
    """Open a file for binary reading, transparently un-gzipping ``*.gz``."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "an existing file", got="no such file", has_got=True)
    if p.suffix == ".gz":
        return gzip.open(p, "rb")
    return open(p, "rb")


def _decode_error(path, encoding: str, number: int, raw: bytes,
                  exc: UnicodeDecodeError) -> DataError:
    bad = raw[max(0, exc.start - 10) : exc.end + 10]
    return DataError(
        path,
        f"{encoding}-encoded text",
        line=number,
        got=bad,
        hint=f"undecodable byte at column {exc.start + 1}; if the file uses another "
        "encoding, pass it (prepare --encoding latin-1, or encoding=...)",
    )


def iter_lines(
    path: str | os.PathLike[str], encoding: str = "utf-8", *, allow_empty: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line, newline stripped.

    Decoding happens in blocks of ~16 MB for speed; when a block fails, its lines are decoded
    one by one so an undecodable byte is reported with its line and the encoding that was
    expected (MovieLens 1M titles are latin-1, most other files UTF-8). Entirely blank lines
    (typically a trailing one) are skipped. An empty file is an error unless ``allow_empty``:
    a zero-byte ratings file is almost always a failed download.
    """
    seen = False
    number = 0
    with open_binary(path) as fh:
        try:
            while True:
                block = fh.readlines(1 << 24)
                if not block:
                    break
                try:
                    texts = b"".join(block).decode(encoding).split("\n")
                    if texts and texts[-1] == "":
                        texts.pop()
                    if len(texts) != len(block):  # an encoding where \n is not one byte
                        raise UnicodeError
                except UnicodeDecodeError:
                    texts = []
                    for k, raw in enumerate(block, start=number + 1):
                        try:
                            texts.append(raw.decode(encoding))
                        except UnicodeDecodeError as exc:
                            raise _decode_error(path, encoding, k, raw, exc) from None
                except UnicodeError:
                    texts = [raw.decode(encoding) for raw in block]
                if number == 0 and texts and texts[0].startswith("\ufeff"):
                    texts[0] = texts[0][1:]  # a UTF-8 byte-order mark is not data
                for text in texts:
                    number += 1
                    text = text.rstrip("\r\n")
                    if not text or text.isspace():
                        continue
                    seen = True
                    yield number, text
        except (OSError, EOFError, zlib.error) as exc:  # truncated/corrupt gzip
            raise DataError(path, "a readable (gzip) file", got=str(exc), has_got=True) from None
    if not seen and not allow_empty:
        raise DataError(path, "at least one data line", got="an empty file", has_got=True)


def split_fields(
    text: str, sep: str, names: Sequence[str], path: str | os.PathLike[str], line: int,
    *, at_least: bool = False,
) -> list[str]:
    """Split ``text`` on ``sep`` and check the column count against ``names``."""
    parts = text.split(sep)
    ok = len(parts) >= len(names) if at_least else len(parts) == len(names)
    if not ok:
        shown = "|".join(names) if len(names) <= 8 else f"{names[0]}...{names[-1]}"
        raise DataError(
            path,
            f"{'at least ' if at_least else ''}{len(names)} {sep!r}-separated columns "
            f"({shown})",
            line=line,
            got=f"{len(parts)} columns: {text}",
            has_got=True,
        )
    return parts


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_int64(value: int, text: str, path: str | os.PathLike[str], line: int | None,
              field: str, unit: str) -> int:
    """Timestamps (and every other integer) are stored as int64: refuse, where it is read,
    a value numpy would otherwise reject later with a bare OverflowError."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise DataError(path, "an integer within the 64-bit range (a Unix timestamp in "
                        "seconds is 10 digits)", line=line, field=field, got=text,
                        has_got=True, unit=unit)
    return value


def parse_int(text: str, path: str | os.PathLike[str], line: int | None, field: str,
              unit: str = "line") -> int:
    """Parse a base-10 integer strictly (no floats, no underscores, no blanks; int64)."""
    if text.isdigit() and text.isascii() and len(text) < 19:  # fast path: the common case
        return int(text)
    s = text.strip()
    if not _INT_RE.fullmatch(s):
        raise DataError(path, "an integer", line=line, field=field, got=text, has_got=True,
                        unit=unit)
    return check_int64(int(s), text, path, line, field, unit)


def parse_integral(text: str, path: str | os.PathLike[str], line: int | None, field: str,
                   unit: str = "line") -> int:
    """Parse an integer that may be written as a float ("881250949" or "881250949.0").

    Goes through :class:`decimal.Decimal`, never binary float, so large timestamps are exact;
    a value with a fractional part is refused rather than silently truncated.
    """
    s = text.strip()
    if _INT_RE.fullmatch(s):
        return check_int64(int(s), text, path, line, field, unit)
    try:
        value = decimal.Decimal(s)
    except decimal.InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value != value.to_integral_value():
        raise DataError(path, "an integral number (e.g. a Unix timestamp in seconds)",
                        line=line, field=field, got=text, has_got=True, unit=unit)
    return check_int64(int(value), text, path, line, field, unit)


def parse_float(text: str, path: str | os.PathLike[str], line: int | None, field: str,
                unit: str = "line") -> float:
    """Parse a finite float that float32 can hold (ratings are stored as float32: a larger
    value would become infinity there, and its row would drop out of every comparison)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(path, "a finite number", line=line, field=field, got=text,
                        has_got=True, unit=unit)
    if abs(value) > FLOAT32_MAX:
        raise DataError(path, f"a finite number within float32 range (|x| <= "
                        f"{FLOAT32_MAX:.4g})", line=line, field=field, got=text,
                        has_got=True, unit=unit)
    return value


def split_title_year(title: str) -> tuple[str, str]:
    """"Toy Story (1995)" -> ("Toy Story", "1995"); titles without a year come back whole.

    Also handles series ranges like "Show (2007-)" or "(1999-2001)", keeping the first year.
    Only a trailing parenthesised year is taken, so "Shanghai Triad (Yao a yao) (1995)" keeps
    its inner parentheses.
    """
    match = _TITLE_YEAR_RE.match(title)
    if not match or not match.group("title"):
        return title.strip(), ""
    return match.group("title"), match.group("year")


def fallback_title(item: str) -> str:
    """Title used for an item that has no metadata, so templates never see an empty string."""
    return f"item {item}"


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense int64 codes for an object array of strings, by first appearance (one dict pass)."""
    table: dict[object, int] = {}
    return np.fromiter((table.setdefault(v, len(table)) for v in values.tolist()),
                       dtype=np.int64, count=len(values))


def count_duplicates(inter: types.Interactions) -> int:
    """Number of rows that exactly repeat an earlier row (same user, item, time, rating).

    Vectorised (integer codes + one lexsort) so it stays cheap on 25M-row logs, where a
    Python set of row tuples would need several GB. NaN ratings compare equal to each other.
    """
    n = len(inter)
    if n < 2:
        return 0
    rating = inter.rating.astype(np.float32) + np.float32(0.0)  # -0.0 -> 0.0
    rating = np.where(np.isnan(rating), np.float32(np.nan), rating)  # one NaN bit pattern
    keys = (rating.view(np.int32).astype(np.int64), inter.timestamp.astype(np.int64),
            _codes(inter.item), _codes(inter.user))
    order = np.lexsort(keys)
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        sk = k[order]
        same &= sk[1:] == sk[:-1]
    return int(same.sum())


def make_interactions(
    users: Sequence[str],
    items: Sequence[str],
    timestamps: Sequence[int],
    ratings: Sequence[float] | None,
    source: str | os.PathLike[str],
) -> types.Interactions:
    """Build :class:`types.Interactions` (rows in the given order, int64 timestamps)."""
    n = len(users)
    user = np.empty(n, dtype=object)
    user[:] = list(users)
    item = np.empty(n, dtype=object)
    item[:] = list(items)
    try:
        ts = np.asarray(timestamps, dtype=np.int64).reshape(n)
    except OverflowError:  # a reader that did not parse through parse_int / parse_integral
        row = next(j for j, t in enumerate(timestamps) if not INT64_MIN <= t <= INT64_MAX)
        raise DataError(source, "timestamps within the 64-bit range", line=row + 1,
                        field="timestamp", got=timestamps[row], unit="row") from None
    if ratings is None:
        rating = np.full(n, np.nan, dtype=np.float32)
    else:
        rating = np.asarray(ratings, dtype=np.float32).reshape(n)
    return types.Interactions(user=user, item=item, timestamp=ts, rating=rating,
                              source=os.fspath(source))


def finish_dataset(
    name: str,
    interactions: types.Interactions,
    items: types.ItemMeta | None = None,
    users: types.UserFeatures | None = None,
) -> types.Dataset:
    """Count (and log) exact duplicate rows and give every interacted item a title."""
    if len(interactions) == 0:
        raise DataError(interactions.source, "at least one interaction",
                        got="no data rows", has_got=True)
    dups = count_duplicates(interactions)
    if dups:
        log.warning(
            "%s: %d exact duplicate row(s) (same user, item, timestamp and rating); read "
            "as they are (prepare --duplicates decides what the split keeps)",
            interactions.source, dups,
        )
    meta = items if items is not None else types.ItemMeta(title={})
    for item in dict.fromkeys(interactions.item.tolist()):
        if not meta.title.get(item):
            meta.title[item] = fallback_title(item)
    return types.Dataset(name=name, interactions=interactions, items=meta, users=users,
                         duplicate_rows=dups)


def find_file(directory: str | os.PathLike[str], candidates: Sequence[str],
              what: str) -> Path:
    """Return the first existing ``directory/candidate`` or raise naming what was expected."""
    d = Path(directory)
    for name in candidates:
        p = d / name
        if p.exists():
            return p
    raise DataError(d, f"{what}: one of {', '.join(candidates)} in this directory",
                    got="none of them", has_got=True)
