"""Any interaction log in CSV/TSV or Parquet, mapped to flanrec columns by name (gin-settable).

For datasets without a dedicated reader: say which columns hold user, item, timestamp (and
optionally rating), e.g. in gin::

    read_table.user_col = "customer"
    read_table.item_col = "product"
    read_table.timestamp_col = "ts"
    read_table.delimiter = ";"

Timestamps must be integers (or integral floats: refused if they have a fraction, since the
chronological split needs exact ordering); Parquet timestamp columns are converted to whole
seconds and refused if that would lose precision.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import gin

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common

FORMATS = ("csv", "parquet")


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
    fmt = _format_of(p, format)
    wanted = {"user": user_col, "item": item_col, "timestamp": timestamp_col}
    if rating_col:
        wanted["rating"] = rating_col
    if fmt == "parquet":
        cols = _read_parquet(p, list(wanted.values()))
    else:
        cols = _read_csv(p, list(wanted.values()), delimiter, header, column_names, encoding)
    users = [_id(v, p, r, user_col, fmt) for r, v in enumerate(cols[user_col], 1)]
    items = [_id(v, p, r, item_col, fmt) for r, v in enumerate(cols[item_col], 1)]
    unit = "row" if fmt == "parquet" else "line"
    offset = 1 if (fmt == "csv" and header) else 0
    stamps = [_stamp(v, p, r + offset, timestamp_col, unit)
              for r, v in enumerate(cols[timestamp_col], 1)]
    ratings = None
    if rating_col:
        ratings = [_rating(v, p, r + offset, rating_col, unit)
                   for r, v in enumerate(cols[rating_col], 1)]
    inter = _common.make_interactions(users, items, stamps, ratings, p)
    meta = types.ItemMeta(title={})
    if items_path is not None:
        ip = Path(items_path)
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
        return value
    return _common.parse_integral(str(value), path, row, field, unit=unit)


def _rating(value: object, path: Path, row: int, field: str, unit: str) -> float:
    if isinstance(value, bool) or value is None:
        raise DataError(path, "a number", line=row, field=field, got=value, has_got=True,
                        unit=unit)
    return _common.parse_float(str(value), path, row, field, unit=unit)


def _read_csv(path: Path, wanted: list[str], delimiter: str, header: bool,
              column_names: Sequence[str] | None, encoding: str) -> dict[str, list[str]]:
    lines = _common.iter_lines(path, encoding)

    def parse(line: int, text: str) -> list[str]:
        if '"' not in text:
            return text.split(delimiter)
        try:
            return next(csv.reader([text], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            raise DataError(path, "a well-formed CSV row", line=line, got=text,
                            hint=str(exc)) from None

    if header:
        line, text = next(lines)
        names = [c.strip() for c in parse(line, text)]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise DataError(path, f"a header with columns {wanted} (delimiter {delimiter!r})",
                            line=line, field=missing[0], got=text)
    else:
        if not column_names:
            raise ValueError(f"{path}: header=False needs column_names=[...]")
        names = list(column_names)
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ValueError(f"column_names {names} lack mapped column(s) {missing}")
    idx = {w: names.index(w) for w in wanted}
    cols: dict[str, list[str]] = {w: [] for w in wanted}
    for line, text in lines:
        parts = parse(line, text)
        if len(parts) != len(names):
            raise DataError(path, f"{len(names)} {delimiter!r}-separated columns "
                            f"({delimiter.join(names)})", line=line,
                            got=f"{len(parts)} columns: {text}", has_got=True)
        for w, j in idx.items():
            cols[w].append(parts[j])
    return cols


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
