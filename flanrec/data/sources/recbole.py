"""RecBole atomic files: ``NAME.inter``, ``NAME.item``, ``NAME.user``.

Tab-separated with a typed header (``user_id:token\titem_id:token\trating:float\t...``).
Types: ``token`` (a string id), ``token_seq`` (space-separated tokens), ``float``,
``float_seq``. RecBole types timestamps as ``float``; we parse them to int64 *exactly*
(the ml100k-loo order depends on integer timestamps) and refuse values with a fraction.

This is the format of the MovieLens-100K copy shipped inside the ``recbole`` wheel, which is
how flanrec gets ml-100k offline (see :mod:`flanrec.data.fetch`).
"""

from __future__ import annotations

import os
from pathlib import Path

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common

TYPES = ("token", "token_seq", "float", "float_seq")

# Column names tried, in order, for each role (RecBole's own conventions first).
TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
YEAR_FIELDS = ("release_year", "year")
CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")
BRAND_FIELDS = ("brand",)
DESCRIPTION_FIELDS = ("description",)


def read_header(path: str | os.PathLike[str], line: int, text: str) -> list[tuple[str, str]]:
    """Parse a ``name:type`` header, refusing unknown types with the column that has one."""
    columns = []
    for col in text.split("\t"):
        name, sep, typ = col.rpartition(":")
        if not sep or not name or typ not in TYPES:
            raise DataError(
                path,
                f"a RecBole header of tab-separated name:type columns, type one of {TYPES}",
                line=line, field=col, got=text, has_got=True,
            )
        columns.append((name, typ))
    return columns


def _read_table(path: Path, encoding: str):
    lines = _common.iter_lines(path, encoding)
    line, header_text = next(lines)
    header = read_header(path, line, header_text)
    names = [n for n, _ in header]
    return header, names, lines


def _find_atomic(path_or_dir: str | os.PathLike[str], suffix: str, required: bool) -> Path | None:
    p = Path(path_or_dir)
    if p.is_file():
        cand = p.with_suffix(suffix)
        if cand.exists():
            return cand
        if required:
            raise DataError(cand, f"a RecBole {suffix} file next to {p.name}",
                            got="no such file", has_got=True)
        return None
    if not p.is_dir():
        raise DataError(p, "a RecBole dataset directory or a .inter file",
                        got="no such file or directory", has_got=True)
    found = sorted(p.glob(f"*{suffix}"))
    if len(found) > 1:
        stem = p.name
        exact = [f for f in found if f.stem == stem]
        if len(exact) == 1:
            return exact[0]
        raise DataError(p, f"exactly one *{suffix} file",
                        got=", ".join(f.name for f in found), has_got=True)
    if found:
        return found[0]
    if required:
        raise DataError(p, f"a RecBole *{suffix} file in this directory",
                        got="none", has_got=True)
    return None


def read_recbole(
    path_or_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    timestamp_field: str = "timestamp",
    rating_field: str | None = "rating",
    encoding: str = "utf-8",
) -> types.Dataset:
    """Read a RecBole dataset (a directory holding ``X.inter`` [+ ``X.item``, ``X.user``]).

    ``path_or_dir`` may also be the ``.inter`` file itself. A missing ``rating`` column gives
    NaN ratings (``rating_field=None`` ignores it); the timestamp column is required because
    the leave-one-out order is defined by it.
    """
    inter_path = _find_atomic(path_or_dir, ".inter", required=True)
    assert inter_path is not None
    header, names, lines = _read_table(inter_path, encoding)
    types_by_name = dict(header)
    for needed in (user_field, item_field, timestamp_field):
        if needed not in types_by_name:
            raise DataError(inter_path, f"a header column named {needed!r}", line=1,
                            got="\t".join(f"{n}:{t}" for n, t in header), has_got=True)
    if types_by_name[timestamp_field] not in ("float", "token"):
        raise DataError(inter_path, "timestamp typed float (or token)", line=1,
                        field=timestamp_field, got=types_by_name[timestamp_field])
    ui, ii, ti = names.index(user_field), names.index(item_field), names.index(timestamp_field)
    ri = names.index(rating_field) if rating_field and rating_field in names else None
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    ratings: list[float] | None = [] if ri is not None else None
    for line, text in lines:
        parts = _common.split_fields(text, "\t", names, inter_path, line)
        users.append(parts[ui])
        items.append(parts[ii])
        stamps.append(_common.parse_integral(parts[ti], inter_path, line, timestamp_field))
        if ratings is not None:
            ratings.append(_common.parse_float(parts[ri], inter_path, line, rating_field))
        for idx, what in ((ui, user_field), (ii, item_field)):
            if not parts[idx].strip():
                raise DataError(inter_path, "a non-empty id", line=line, field=what,
                                got=parts[idx], has_got=True)
    inter = _common.make_interactions(users, items, stamps, ratings, inter_path)

    meta = types.ItemMeta(title={})
    item_path = _find_atomic(inter_path, ".item", required=False)
    if item_path is not None:
        meta = read_recbole_items(item_path, item_field=item_field, encoding=encoding)
    user_feats = None
    user_path = _find_atomic(inter_path, ".user", required=False)
    if user_path is not None:
        user_feats = read_recbole_users(user_path, user_field=user_field, encoding=encoding)
    return _common.finish_dataset(name or inter_path.stem, inter, meta, user_feats)


def _first(names: list[str], candidates: tuple[str, ...]) -> int | None:
    for c in candidates:
        if c in names:
            return names.index(c)
    return None


def read_recbole_items(
    path: str | os.PathLike[str], *, item_field: str = "item_id", encoding: str = "utf-8"
) -> types.ItemMeta:
    """Read a ``.item`` file into :class:`types.ItemMeta` (title, year, categories, ...)."""
    path = Path(path)
    header, names, lines = _read_table(path, encoding)
    if item_field not in names:
        raise DataError(path, f"a header column named {item_field!r}", line=1,
                        got="\t".join(f"{n}:{t}" for n, t in header), has_got=True)
    ii = names.index(item_field)
    ti, yi = _first(names, TITLE_FIELDS), _first(names, YEAR_FIELDS)
    ci, bi = _first(names, CATEGORY_FIELDS), _first(names, BRAND_FIELDS)
    di = _first(names, DESCRIPTION_FIELDS)
    meta = types.ItemMeta(title={})
    for line, text in lines:
        parts = _common.split_fields(text, "\t", names, path, line)
        item = parts[ii]
        if item in meta.title:
            raise DataError(path, "each item id once", line=line, field=item_field,
                            got=item)
        title = parts[ti].strip() if ti is not None else ""
        year = parts[yi].strip() if yi is not None else ""
        if title and not year:
            title, year = _common.split_title_year(title)
        if not year.isdigit():  # RecBole's ml-100k item 267 has release_year "unkonwn"
            year = ""
        meta.title[item] = title or _common.fallback_title(item)
        if year:
            meta.year[item] = year
        if ci is not None and parts[ci].strip():
            meta.categories[item] = parts[ci].split()
        if bi is not None and parts[bi].strip():
            meta.brand[item] = parts[bi].strip()
        if di is not None and parts[di].strip():
            meta.description[item] = parts[di].strip()
    return meta


def read_recbole_users(
    path: str | os.PathLike[str], *, user_field: str = "user_id", encoding: str = "utf-8"
) -> types.UserFeatures:
    """Read a ``.user`` file: every column except the id becomes a string feature."""
    path = Path(path)
    header, names, lines = _read_table(path, encoding)
    if user_field not in names:
        raise DataError(path, f"a header column named {user_field!r}", line=1,
                        got="\t".join(f"{n}:{t}" for n, t in header), has_got=True)
    ui = names.index(user_field)
    feats: dict[str, dict[str, str]] = {}
    for line, text in lines:
        parts = _common.split_fields(text, "\t", names, path, line)
        feats[parts[ui]] = {n: v for j, (n, v) in enumerate(zip(names, parts, strict=True))
                            if j != ui}
    return types.UserFeatures(features=feats)
