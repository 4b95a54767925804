"""MovieLens as GroupLens distributes it: 100K (``u.*``), 1M/10M (``*.dat``), 20M+ (``*.csv``).

Formats (see each release's README):

* 100K: ``u.data`` ``user\\titem\\trating\\ttimestamp``; ``u.item`` pipe-separated latin-1
  ``id|title|release date|video release date|IMDb URL|19 genre flags``; ``u.user``
  ``id|age|gender|occupation|zip``; ``u.genre`` ``name|index`` (optional).
* 1M: ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp``; ``movies.dat``
  ``MovieID::Title::Genres`` (latin-1, genres ``|``-separated); ``users.dat``
  ``UserID::Gender::Age::Occupation::Zip-code`` (age and occupation are codes).
* 10M: ``ratings.dat`` and ``movies.dat`` as 1M (ratings in half stars), no users.
* 20M / 25M / latest: ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``, titles quoted when they contain commas).

Titles carry the year ("Toy Story (1995)"); it is split into ``ItemMeta.year``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.sources import _common

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
ML100K_ITEM_FIELDS = (
    "movie id", "movie title", "release date", "video release date", "IMDb URL",
) + tuple(f"genre {g}" for g in ML100K_GENRES)

# MovieLens 1M README: users.dat age and occupation codes.
ML1M_AGES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
             "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)


def _dir(path_or_dir: str | os.PathLike[str], main: str) -> Path:
    """Accept either the dataset directory or its main ratings file."""
    p = Path(path_or_dir)
    if p.is_file():
        return p.parent
    if not p.is_dir():
        raise DataError(p, f"a MovieLens directory holding {main}",
                        got="no such file or directory", has_got=True)
    return p


def _read_ratings(path: Path, sep: str, encoding: str, header: tuple[str, ...] | None):
    names = ("user", "item", "rating", "timestamp")
    users, items, stamps, ratings = [], [], [], []
    ids: dict[str, str] = {}  # share one str object per distinct id (25M-row files)
    lines = _common.iter_lines(path, encoding)
    if header is not None:
        line, text = next(lines)
        if tuple(c.strip() for c in text.split(sep)) != header:
            raise DataError(path, f"the header {sep.join(header)!r}", line=line, got=text)
    parse_float, parse_int = _common.parse_float, _common.parse_int
    for line, text in lines:
        parts = text.split(sep)
        if len(parts) != 4:
            _common.split_fields(text, sep, names, path, line)  # raises the located error
        u, i, r, t = parts
        users.append(ids.setdefault(u, u))
        items.append(ids.setdefault("\0" + i, i))
        ratings.append(parse_float(r, path, line, "rating"))
        stamps.append(parse_int(t, path, line, "timestamp"))
    return _common.make_interactions(users, items, stamps, ratings, path)


def _genre_names(directory: Path, encoding: str) -> tuple[str, ...]:
    path = directory / "u.genre"
    if not path.exists():
        return ML100K_GENRES
    names: dict[int, str] = {}
    for line, text in _common.iter_lines(path, encoding):
        name, index = _common.split_fields(text, "|", ("genre", "index"), path, line)
        names[_common.parse_int(index, path, line, "index")] = name
    if sorted(names) != list(range(len(names))):
        raise DataError(path, "genre indices 0..n-1", got=sorted(names))
    return tuple(names[i] for i in range(len(names)))


def read_ml100k(path_or_dir: str | os.PathLike[str], *, encoding: str = "latin-1",
                name: str = "ml-100k") -> types.Dataset:
    """Read GroupLens MovieLens-100K (``u.data`` + optional ``u.item``, ``u.user``)."""
    d = _dir(path_or_dir, "u.data")
    data = d / "u.data"
    if not data.exists():
        raise DataError(d, "u.data in this directory", got="no such file", has_got=True)
    # u.data is ASCII; decoding as latin-1 would accept any garbage byte, so insist on UTF-8
    # (a superset of ASCII) for the numeric file and use `encoding` for the text files.
    inter = _read_ratings(data, "\t", "utf-8", None)
    meta = types.ItemMeta(title={})
    item_path = d / "u.item"
    if item_path.exists():
        genres = _genre_names(d, encoding)
        fields = ML100K_ITEM_FIELDS[:5] + tuple(f"genre {g}" for g in genres)
        for line, text in _common.iter_lines(item_path, encoding):
            parts = _common.split_fields(text, "|", fields, item_path, line)
            item, title = parts[0], parts[1].strip()
            flags = parts[5:]
            for g, flag in zip(genres, flags, strict=True):
                if flag not in ("0", "1"):
                    raise DataError(item_path, "a genre flag 0 or 1", line=line,
                                    field=f"genre {g}", got=flag, has_got=True)
            title, year = _common.split_title_year(title)
            if not year and parts[2].strip():  # release date "01-Jan-1995"
                year = parts[2].strip()[-4:]
            meta.title[item] = title or _common.fallback_title(item)
            if year:
                meta.year[item] = year
            cats = [g for g, flag in zip(genres, flags, strict=True) if flag == "1"]
            if cats:
                meta.categories[item] = cats
    users = None
    user_path = d / "u.user"
    if user_path.exists():
        feats = {}
        names = ("user id", "age", "gender", "occupation", "zip code")
        for line, text in _common.iter_lines(user_path, encoding):
            u, age, gender, occ, zipc = _common.split_fields(text, "|", names, user_path, line)
            _common.parse_int(age, user_path, line, "age")
            feats[u] = {"age": age, "gender": gender, "occupation": occ, "zip_code": zipc}
        users = types.UserFeatures(features=feats)
    return _common.finish_dataset(name, inter, meta, users)


def _read_movies_dat(path: Path, encoding: str) -> types.ItemMeta:
    meta = types.ItemMeta(title={})
    for line, text in _common.iter_lines(path, encoding):
        item, title, genres = _common.split_fields(
            text, "::", ("MovieID", "Title", "Genres"), path, line)
        title, year = _common.split_title_year(title)
        meta.title[item] = title or _common.fallback_title(item)
        if year:
            meta.year[item] = year
        cats = [g for g in genres.split("|") if g and g != "(no genres listed)"]
        if cats:
            meta.categories[item] = cats
    return meta


def _read_dat_ratings_and_movies(d: Path, label: str, movies_encoding: str,
                                 ) -> tuple[types.Interactions, types.ItemMeta]:
    """`ratings.dat` (ASCII digits, so read as UTF-8) and optional `movies.dat`, shared by the
    `::`-separated 1M and 10M releases."""
    ratings = _common.find_file(d, ("ratings.dat",), f"{label} ratings")
    inter = _read_ratings(ratings, "::", "utf-8", None)
    meta = (_read_movies_dat(d / "movies.dat", movies_encoding) if (d / "movies.dat").exists()
            else types.ItemMeta(title={}))
    return inter, meta


def read_ml1m(path_or_dir: str | os.PathLike[str], *, encoding: str = "latin-1",
              name: str = "ml-1m") -> types.Dataset:
    """Read MovieLens 1M (``ratings.dat`` + optional ``movies.dat``, ``users.dat``)."""
    d = _dir(path_or_dir, "ratings.dat")
    inter, meta = _read_dat_ratings_and_movies(d, "MovieLens 1M", encoding)
    users = None
    upath = d / "users.dat"
    if upath.exists():
        feats = {}
        names = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
        for line, text in _common.iter_lines(upath, encoding):
            u, gender, age, occ, zipc = _common.split_fields(text, "::", names, upath, line)
            if age not in ML1M_AGES:
                raise DataError(upath, f"an age code in {sorted(ML1M_AGES, key=int)}",
                                line=line, field="Age", got=age, has_got=True)
            code = _common.parse_int(occ, upath, line, "Occupation")
            if not 0 <= code < len(ML1M_OCCUPATIONS):
                raise DataError(upath, "an occupation code 0..20", line=line,
                                field="Occupation", got=occ, has_got=True)
            feats[u] = {"gender": gender, "age": ML1M_AGES[age],
                        "occupation": ML1M_OCCUPATIONS[code], "zip_code": zipc}
        users = types.UserFeatures(features=feats)
    return _common.finish_dataset(name, inter, meta, users)


def read_ml10m(path_or_dir: str | os.PathLike[str], *, encoding: str = "utf-8",
               name: str = "ml-10m") -> types.Dataset:
    """Read MovieLens 10M (``ratings.dat`` + optional ``movies.dat``; no user file)."""
    d = _dir(path_or_dir, "ratings.dat")
    inter, meta = _read_dat_ratings_and_movies(d, "MovieLens 10M", encoding)
    return _common.finish_dataset(name, inter, meta, None)


RATINGS_CSV_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_CSV_HEADER = ("movieId", "title", "genres")


def read_movielens_csv(path_or_dir: str | os.PathLike[str], *, encoding: str = "utf-8",
                       name: str | None = None) -> types.Dataset:
    """Read MovieLens 20M / 25M / latest(-small): ``ratings.csv`` + optional ``movies.csv``."""
    d = _dir(path_or_dir, "ratings.csv")
    ratings = _common.find_file(d, ("ratings.csv",), "MovieLens ratings")
    inter = _read_ratings(ratings, ",", "utf-8", RATINGS_CSV_HEADER)
    meta = types.ItemMeta(title={})
    mpath = d / "movies.csv"
    if mpath.exists():
        lines = _common.iter_lines(mpath, encoding)
        line, text = next(lines)
        if tuple(next(csv.reader([text]))) != MOVIES_CSV_HEADER:
            raise DataError(mpath, f"the header {','.join(MOVIES_CSV_HEADER)!r}", line=line,
                            got=text)
        for line, text in lines:
            try:
                row = next(csv.reader([text], strict=True))
            except csv.Error as exc:
                raise DataError(mpath, "a CSV row (titles with commas are quoted)", line=line,
                                got=text, hint=str(exc)) from None
            if len(row) != 3:
                raise DataError(mpath, "3 comma-separated columns (movieId,title,genres)",
                                line=line, got=f"{len(row)} columns: {text}", has_got=True)
            item, title, genres = row
            title, year = _common.split_title_year(title)
            meta.title[item] = title or _common.fallback_title(item)
            if year:
                meta.year[item] = year
            cats = [g for g in genres.split("|") if g and g != "(no genres listed)"]
            if cats:
                meta.categories[item] = cats
    return _common.finish_dataset(name or d.name, inter, meta, None)
