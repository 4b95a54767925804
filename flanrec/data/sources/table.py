"""Any interaction log in CSV/TSV or Parquet, mapped to flanrec columns by name (gin-settable).

For datasets without a dedicated reader: say which columns hold user, item, timestamp (and
optionally rating), e.g. in gin::

    read_table.user_col = "customer"
    read_table.item_col = "product"
    read_table.timestamp_col = "ts"
    read_table.delimiter = ";"

Timestamps must be integers (or integral floats: refused if they have a fraction, since the
chronological split needs exact ordering) that fit in int64; Parquet timestamp columns are
converted to whole seconds and refused if that would lose precision.

Ratings: without ``rating_col``, a column named rating, score or stars (any case) is used and
logged, so a log's ratings are never dropped silently (the rating and binary task families
need them); ``rating_col=""`` reads none. Titles: a ``title_col`` column in the interaction
table itself (default "title", when present) names the items, as ``items_path`` does.
Line numbers in errors are the file's own (the header is line 1).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common
from flanrec.errors import ConfigError

FORMATS = ("csv", "parquet")
RATING_COLUMN_NAMES = ("rating", "score", "stars")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    return "parquet" if path.suffix in (".parquet", ".pq") else "csv"


@gin.configurable(denylist=["path"])
def read_table(
    path: str | os.PathLike[str],
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str = "timestamp",
    rating_col: str | None = None,
    delimiter: str = ",",
    header: bool = True,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    format: str | None = None,  # noqa: A002 - mirrors the user-facing option name
    items_path: str | os.PathLike[str] | None = None,
    item_id_col: str | None = None,
    title_col: str = "title",
    name: str | None = None,
) -> types.Dataset:
    """Read an interaction table with a column mapping.

    CSV: ``header=True`` takes column names from the first line (it must contain the mapped
    columns); ``header=False`` needs ``column_names``. Fields may be quoted. Parquet
    (``format="parquet"`` or a ``.parquet`` suffix) reads the mapped columns by name.
    ``items_path``: an optional CSV/Parquet of item metadata (``item_id_col`` defaults to
    ``item_col``; ``title_col`` gives titles, with "(YEAR)" split off).
    """
    p = Path(path)
    if p.is_dir():
        p = _single_file(p, format)
    fmt = _format_of(p, format)
    wanted = {"user": user_col, "item": item_col, "timestamp": timestamp_col}
    if rating_col:
        wanted["rating"] = rating_col
    _check_distinct(wanted)
    names = (_parquet_names(p) if fmt == "parquet" else
             _csv_names(p, delimiter, header, column_names, encoding))
    if rating_col is None:
        rating_col = _detect_rating_column(names, p, set(wanted.values()))
        if rating_col:
            wanted["rating"] = rating_col
    optional = [title_col] if title_col and title_col in names and \
        title_col not in wanted.values() else []
    if fmt == "parquet":
        cols = _read_parquet(p, list(wanted.values()) + optional)
        rows = list(range(1, len(cols[user_col]) + 1))
    else:
        cols, rows = _read_csv(p, list(wanted.values()) + optional, delimiter, header,
                               column_names, encoding, with_lines=True)
    unit = "row" if fmt == "parquet" else "line"
    users = [_id(v, p, r, user_col, fmt) for r, v in zip(rows, cols[user_col], strict=True)]
    items = [_id(v, p, r, item_col, fmt) for r, v in zip(rows, cols[item_col], strict=True)]
    stamps = [_stamp(v, p, r, timestamp_col, unit)
              for r, v in zip(rows, cols[timestamp_col], strict=True)]
    ratings = None
    if rating_col:
        ratings = [_rating(v, p, r, rating_col, unit)
                   for r, v in zip(rows, cols[rating_col], strict=True)]
    inter = _common.make_interactions(users, items, stamps, ratings, p)
    meta = types.ItemMeta(title={})
    for item, title in zip(items, cols[optional[0]] if optional else [], strict=False):
        if title is not None and str(title).strip() and item not in meta.title:
            name, year = _common.split_title_year(str(title))
            meta.title[item] = name
            if year:
                meta.year[item] = year
    if items_path is not None:
        ip = Path(items_path)
        if ip.is_dir():
            ip = _single_file(ip, None)
        id_col = item_id_col or item_col
        ifmt = _format_of(ip, None)
        icols = (_read_parquet(ip, [id_col, title_col]) if ifmt == "parquet" else
                 _read_csv(ip, [id_col, title_col], delimiter, True, None, encoding))
        for item, title in zip(icols[id_col], icols[title_col], strict=True):
            title, year = _common.split_title_year(str(title) if title is not None else "")
            key = _id(item, ip, 0, id_col, ifmt)
            if title:
                meta.title[key] = title
            if year:
                meta.year[key] = year
    return _common.finish_dataset(name or p.stem, inter, meta, None)


_SUFFIXES = {"csv": (".csv", ".tsv", ".txt", ".dat", ".csv.gz", ".tsv.gz", ".txt.gz"),
             "parquet": (".parquet", ".pq")}


def _single_file(directory: Path, fmt: str | None) -> Path:
    """The one interaction file in ``directory`` (a --raw_dir given as a folder): used when
    exactly one file has the format's suffix, else refused naming what was found."""
    suffixes = _SUFFIXES[fmt] if fmt in _SUFFIXES else sum(_SUFFIXES.values(), ())
    found = sorted(f for f in directory.iterdir()
                   if f.is_file() and f.name.lower().endswith(suffixes))
    if len(found) == 1:
        _common.log.warning("%s is a directory: reading its one %s file, %s", directory,
                            fmt or "table", found[0].name)
        return found[0]
    got = ("none" if not found else
           f"{len(found)} of them: {', '.join(f.name for f in found[:5])}")
    raise DataError(directory, f"a {fmt or 'CSV/Parquet'} file, or a directory holding exactly "
                    f"one file named *{'|*'.join(suffixes)}", got=got, has_got=True,
                    hint="pass the file itself as --raw_dir")


_FLAGS = {"user": "--user_col", "item": "--item_col", "timestamp": "--time_col",
          "rating": "--rating_col"}


def _check_distinct(wanted: dict[str, str]) -> None:
    """Two roles read from one column (``--item_col user_id``) would make, say, every item
    its user: refused, naming both options."""

    seen: dict[str, str] = {}
    for role, col in wanted.items():
        if col in seen:
            raise ConfigError(f"{_FLAGS[seen[col]]} and {_FLAGS[role]} both name column "
                              f"{col!r}: each must be a column of its own")
        seen[col] = role


def _detect_rating_column(names: Sequence[str], path: Path, mapped: set[str]) -> str | None:
    """The column to read ratings from when none was named: one called rating/score/stars
    (any case). Logged, so the choice is visible; pass rating_col="" to read no ratings."""
    found = [n for n in names if n.strip().lower() in RATING_COLUMN_NAMES and n not in mapped]
    if not found:
        return None
    _common.log.warning("%s: reading ratings from column %r (found by name; pass "
                        "--rating_col none to ignore it, or --rating_col NAME)", path, found[0])
    return found[0]


def _csv_names(path: Path, delimiter: str, header: bool, column_names: Sequence[str] | None,
               encoding: str) -> list[str]:
    """The column names of a CSV: its header line, or `column_names` without one."""
    if not header:
        return list(column_names or [])
    for line, text in _common.iter_lines(path, encoding):
        return [c.strip() for c in _parse_row(path, line, text, delimiter)]
    return []


def _parquet_names(path: Path) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency here
        raise ImportError("reading Parquet needs pyarrow (pip install pyarrow)") from exc
    if not path.exists():
        raise DataError(path, "an existing file", got="no such file", has_got=True)
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, "a Parquet file", got=str(exc), has_got=True) from None


def _parse_row(path: Path, line: int, text: str, delimiter: str) -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise DataError(path, "a well-formed CSV row", line=line, got=text,
                        hint=str(exc)) from None


def _delimiter_hint(text: str, delimiter: str) -> str:
    others = [d for d in ("\t", ";", ",", "|") if d != delimiter and d in text]
    if not others:
        return ""
    return f"the line contains {others[0]!r}: pass --delimiter {others[0]!r}?"


def _id(value: object, path: Path, row: int, field: str, fmt: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(path, "a non-empty id", line=row or None, field=field, got=value,
                        has_got=True, unit="row" if fmt == "parquet" else "line")
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(path, "an id (string or integer)", line=row, field=field,
                            got=value, unit="row" if fmt == "parquet" else "line")
        value = int(value)
    return str(value).strip()


def _stamp(value: object, path: Path, row: int, field: str, unit: str) -> int:
    if isinstance(value, bool) or value is None:
        raise DataError(path, "an integer timestamp", line=row, field=field, got=value,
                        has_got=True, unit=unit)
    if isinstance(value, int):
        return _common.check_int64(value, str(value), path, row, field, unit)
    return _common.parse_integral(str(value), path, row, field, unit=unit)


def _rating(value: object, path: Path, row: int, field: str, unit: str) -> float:
    if isinstance(value, bool) or value is None:
        raise DataError(path, "a number", line=row, field=field, got=value, has_got=True,
                        unit=unit)
    return _common.parse_float(str(value), path, row, field, unit=unit)


def _read_csv(path: Path, wanted: list[str], delimiter: str, header: bool,
              column_names: Sequence[str] | None, encoding: str, with_lines: bool = False
              ) -> Any:
    """{column: values} of the `wanted` columns (and, `with_lines`, each row's line number
    in the file: blank lines and the header are counted, so errors point at the real line)."""
    lines = _common.iter_lines(path, encoding)
    if header:
        line, text = next(lines)
        names = [c.strip() for c in _parse_row(path, line, text, delimiter)]
        twice = [w for w in dict.fromkeys(wanted) if names.count(w) > 1]
        if twice:
            raise DataError(path, "each column name once in the header", line=line,
                            field=twice[0], got=text, hint="which of the columns is meant "
                            "cannot be told; rename one")
        missing = [w for w in wanted if w not in names]
        if missing:
            hint = _delimiter_hint(text, delimiter) or (
                "name the columns with --user_col/--item_col/--time_col (prepare) or gin "
                "read_table.user_col=...")
            raise DataError(path, f"a header with columns {wanted} (delimiter {delimiter!r})",
                            line=line, field=missing[0], got=text, hint=hint)
    else:
        if not column_names:
            raise DataError(path, "column names for a file without a header",
                            got="none (pass --columns NAME,NAME,... or column_names=[...])",
                            has_got=True)
        names = list(column_names)
        missing = [w for w in wanted if w not in names]
        if missing:
            raise DataError(path, f"mapped column(s) {missing} among the column names",
                            got=names, has_got=True)
    idx = {w: names.index(w) for w in wanted}
    cols: dict[str, list[str]] = {w: [] for w in wanted}
    numbers: list[int] = []
    for line, text in lines:
        parts = _parse_row(path, line, text, delimiter)
        if len(parts) != len(names):
            raise DataError(path, f"{len(names)} {delimiter!r}-separated columns "
                            f"({delimiter.join(names)})", line=line,
                            got=f"{len(parts)} columns: {text}", has_got=True,
                            hint=_delimiter_hint(text, delimiter) if len(parts) == 1 else "")
        for w, j in idx.items():
            cols[w].append(parts[j])
        numbers.append(line)
    return (cols, numbers) if with_lines else cols


def _read_parquet(path: Path, wanted: list[str]) -> dict[str, list]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency here
        raise ImportError("reading Parquet needs pyarrow (pip install pyarrow)") from exc
    if not path.exists():
        raise DataError(path, "an existing file", got="no such file", has_got=True)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, "a Parquet file", got=str(exc), has_got=True) from None
    missing = [w for w in wanted if w not in schema.names]
    if missing:
        raise DataError(path, f"columns {wanted}", field=missing[0],
                        got=f"columns {schema.names}", has_got=True)
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
    if table.num_rows == 0:
        raise DataError(path, "at least one row", got="an empty table", has_got=True)
    out = {}
    for w in wanted:
        col = table.column(w)
        if pa.types.is_timestamp(col.type):
            try:
                col = col.cast(pa.timestamp("s"), safe=True).cast(pa.int64())
            except pa.ArrowInvalid as exc:
                raise DataError(path, "timestamps in whole seconds", field=w,
                                got=str(exc), has_got=True) from None
        out[w] = col.to_pylist()
    return out
