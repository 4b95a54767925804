"""Amazon review dumps (McAuley lab): 2014 and 2018 releases, 5-core review files + metadata.

* 2014 (``reviews_<Cat>_5.json.gz``, ``meta_<Cat>.json.gz``): one record per line. The review
  files are JSON; the metadata lines are Python dict literals (single quotes), which the
  publisher suggests reading with ``eval``. We never ``eval``: lines are parsed with
  ``json.loads`` and, failing that, :func:`ast.literal_eval` (literals only, no code).
  Metadata fields: ``title``, ``categories`` (list of category paths), ``brand``,
  ``description`` (a string).
* 2018 (``<Cat>_5.json.gz``, ``meta_<Cat>.json.gz``): JSON lines. Metadata fields ``title``,
  ``category`` (one path), ``brand``, ``description`` (a list of paragraphs).

Reviews: ``reviewerID`` (user), ``asin`` (item), ``overall`` (rating),
``unixReviewTime`` (int seconds). The 2018 5-core files contain exact duplicate reviews;
they are counted in ``Dataset.duplicate_rows`` and kept, as everywhere in flanrec.
Metadata is kept only for items that occur in the reviews (full metadata files are large).
"""

from __future__ import annotations

import ast
import html
import json
import os
from pathlib import Path

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common

STYLES = ("2014", "2018")


def parse_record(text: str, path: str | os.PathLike[str], line: int) -> dict:
    """One line -> dict, via JSON or a Python literal (never ``eval``)."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(path, "a JSON object or Python dict literal", line=line,
                            got=text) from None
    if not isinstance(value, dict):
        raise DataError(path, "a JSON object or Python dict literal", line=line,
                        got=type(value).__name__, has_got=True)
    return value


def _str_field(rec: dict, key: str, path, line: int) -> str:
    if key not in rec:
        raise DataError(path, "a field present on every review", line=line, field=key,
                        got="missing", has_got=True)
    value = rec[key]
    if not isinstance(value, str) or not value:
        raise DataError(path, "a non-empty string", line=line, field=key, got=value,
                        has_got=True)
    return value


def _find(d: Path, patterns: tuple[str, ...], what: str, exclude_prefix: str = "meta_"
          ) -> Path | None:
    found: list[Path] = []
    for pat in patterns:
        found += [p for p in sorted(d.glob(pat))
                  if not p.name.startswith((exclude_prefix, "."))]  # skip fetch markers
    found = list(dict.fromkeys(found))
    if len(found) > 1:
        raise DataError(d, f"exactly one {what} file ({' or '.join(patterns)})",
                        got=", ".join(p.name for p in found), has_got=True)
    return found[0] if found else None


def read_amazon(
    path_or_dir: str | os.PathLike[str],
    *,
    style: str = "2018",
    meta_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> types.Dataset:
    """Read an Amazon 5-core review file (and its ``meta_*`` file when present).

    ``path_or_dir``: the reviews file or a directory holding one reviews file (2014:
    ``reviews_*.json[.gz]``; 2018: ``*.json[.gz]`` not starting with ``meta_``) and optionally
    one ``meta_*.json[.gz]``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    p = Path(path_or_dir)
    if p.is_dir():
        pats = (("reviews_*.json.gz", "reviews_*.json") if style == "2014"
                else ("*.json.gz", "*.json"))
        reviews = _find(p, pats, "reviews")
        if reviews is None:
            raise DataError(p, f"an Amazon {style} reviews file ({' or '.join(pats)})",
                            got="none in this directory", has_got=True)
        if meta_path is None:
            metas = sorted(p.glob("meta_*.json.gz")) + sorted(p.glob("meta_*.json"))
            metas = [m for m in metas if m.is_file()]
            if len(metas) > 1:
                raise DataError(p, "at most one meta_*.json[.gz] file",
                                got=", ".join(m.name for m in metas), has_got=True)
            meta_path = metas[0] if metas else None
    elif p.is_file():
        reviews = p
    else:
        raise DataError(p, "an Amazon reviews file or a directory holding one",
                        got="no such file or directory", has_got=True)

    users, items, stamps, ratings = [], [], [], []
    for line, text in _common.iter_lines(reviews, "utf-8"):
        rec = parse_record(text, reviews, line)
        users.append(_str_field(rec, "reviewerID", reviews, line))
        items.append(_str_field(rec, "asin", reviews, line))
        overall = rec.get("overall")
        if isinstance(overall, bool) or not isinstance(overall, (int, float, str)):
            raise DataError(reviews, "a number", line=line, field="overall", got=overall,
                            has_got=True)
        ratings.append(_common.parse_float(str(overall), reviews, line, "overall"))
        ts = rec.get("unixReviewTime")
        if isinstance(ts, bool) or not isinstance(ts, (int, str)):
            raise DataError(reviews, "an integer Unix time", line=line,
                            field="unixReviewTime", got=ts, has_got=True)
        stamps.append(_common.parse_int(str(ts), reviews, line, "unixReviewTime"))
    inter = _common.make_interactions(users, items, stamps, ratings, reviews)
    meta = types.ItemMeta(title={})
    if meta_path is not None:
        meta = read_amazon_meta(meta_path, keep=set(items))
    stem = reviews.name.split(".json")[0]
    return _common.finish_dataset(name or f"amazon-{style}-{stem}", inter, meta, None)


def _text(value: object) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v)
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(value).split())


def read_amazon_meta(path: str | os.PathLike[str], keep: set[str] | None = None
                     ) -> types.ItemMeta:
    """Read ``meta_*.json[.gz]`` (2014 or 2018 style; detected per record).

    Categories: 2014 ``categories`` is a list of paths, flattened in order without repeats;
    2018 ``category`` is one path. HTML entities in text fields are unescaped and whitespace
    collapsed. ``keep``: only these asins are stored.
    """
    path = Path(path)
    meta = types.ItemMeta(title={})
    for line, text in _common.iter_lines(path, "utf-8"):
        rec = parse_record(text, path, line)
        asin = _str_field(rec, "asin", path, line)
        if keep is not None and asin not in keep:
            continue
        title = _text(rec.get("title"))
        if title:
            meta.title[asin] = title
        cats: list[str] = []
        raw = rec.get("categories", rec.get("category"))
        if isinstance(raw, list):
            paths = raw if raw and all(isinstance(c, list) for c in raw) else [raw]
            for cpath in paths:
                for c in cpath:
                    c = _text(c)
                    if c and c not in cats:
                        cats.append(c)
        if cats:
            meta.categories[asin] = cats
        brand = _text(rec.get("brand"))
        if brand:
            meta.brand[asin] = brand
        desc = _text(rec.get("description"))
        if desc:
            meta.description[asin] = desc
    return meta
