"""Readers on real MovieLens lines and on hand-made malformed files.

Every malformed input must raise DataError whose message names the file, the line and the
field, so a user can fix a 25M-line file without a debugger.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from flanrec.data.errors import DataError
from flanrec.data.sources import get_reader, kinds, read_dataset
from flanrec.data.sources.movielens import read_ml100k
from flanrec.data.sources.recbole import read_recbole

DATA = Path(__file__).parent / "data"
GROUPLENS = DATA / "ml100k_grouplens"
RECBOLE = DATA / "ml100k_recbole"

FIRST_ROWS = [("196", "242", 3.0, 881250949), ("186", "302", 3.0, 891717742),
              ("22", "377", 1.0, 878887116)]


def _rows(ds, n=3):
    it = ds.interactions
    return [(it.user[i], it.item[i], float(it.rating[i]), int(it.timestamp[i]))
            for i in range(n)]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- errors


def test_data_error_message_format_and_pickle():
    err = DataError("u.data", "an integer", line=17, field="timestamp", got="abc")
    assert str(err) == "u.data line 17, field 'timestamp': expected an integer, got 'abc'"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 17 and again.field == "timestamp"
    assert str(DataError("x.csv", "a Parquet file")) == "x.csv: expected a Parquet file"


# --------------------------------------------------------------------------- real lines


def test_recbole_sample_real_lines():
    ds = read_recbole(RECBOLE)
    inter = ds.interactions
    assert len(inter) == 20 and ds.duplicate_rows == 0
    assert inter.timestamp.dtype == np.int64 and inter.rating.dtype == np.float32
    assert _rows(ds) == FIRST_ROWS
    assert ds.items.title["1"] == "Toy Story" and ds.items.year["1"] == "1995"
    assert ds.items.categories["1"] == ["Animation", "Children's", "Comedy"]
    assert ds.items.title["543"] == "Misérables, Les"
    assert ds.items.title["242"] == "Kolya" and ds.items.year["242"] == "1996"
    # items of the interactions without a line in .item get the fallback title
    assert ds.items.title["51"] == "item 51"
    assert ds.users.features["1"] == {"age": "24", "gender": "M", "occupation": "technician",
                                      "zip_code": "85711"}
    assert ds.name == "ml100k_sample"
    # the .inter file itself works too, and read_dataset dispatches the same reader
    same = read_dataset("recbole", RECBOLE / "ml100k_sample.inter")
    assert same.interactions.item.tolist() == inter.item.tolist()


def test_grouplens_ml100k_sample_real_lines():
    ds = read_ml100k(GROUPLENS)
    assert _rows(ds) == FIRST_ROWS and len(ds.interactions) == 20
    assert ds.items.title["1"] == "Toy Story" and ds.items.year["1"] == "1995"
    assert ds.items.categories["2"] == ["Action", "Adventure", "Thriller"]
    assert ds.items.title["543"] == "Misérables, Les"  # latin-1 é decoded
    assert ds.items.categories["543"] == ["Drama", "Musical"]
    assert ds.items.title["267"] == "unknown" and "267" not in ds.items.year
    assert ds.items.title["242"] == "item 242"  # not in the sample u.item
    assert ds.users.features["2"]["occupation"] == "other"


def test_grouplens_and_recbole_agree_on_the_same_rows():
    a, b = read_ml100k(GROUPLENS).interactions, read_recbole(RECBOLE).interactions
    for field in ("user", "item", "timestamp", "rating"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist()


def test_registry_lists_and_rejects():
    for k in ("recbole", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small",
              "amazon-2014", "amazon-2018", "csv", "parquet"):
        assert k in kinds()
        assert callable(get_reader(k))
    with pytest.raises(ValueError, match="unknown dataset kind 'nope'.*recbole"):
        read_dataset("nope", GROUPLENS)


# --------------------------------------------------------------------------- malformed


def _udata(tmp_path: Path, lines: list[str]) -> Path:
    good = (GROUPLENS / "u.data").read_text().splitlines()
    body = good[:16] + lines + good[16:]
    return _write(tmp_path / "ml" / "u.data", "\n".join(body) + "\n").parent


@pytest.mark.parametrize(
    "bad_line, field, expected",
    [
        ("196\t242\t3\tabc", "timestamp", "expected an integer, got 'abc'"),
        ("196\t242\t3\t8812.5", "timestamp", "expected an integer, got '8812.5'"),
        ("196\t242\tfive\t881250949", "rating", "expected a finite number, got 'five'"),
        ("196\t242\tnan\t881250949", "rating", "expected a finite number, got 'nan'"),
    ],
)
def test_udata_bad_values_name_file_line_field(tmp_path, bad_line, field, expected):
    d = _udata(tmp_path, [bad_line])
    with pytest.raises(DataError) as exc:
        read_ml100k(d)
    err = exc.value
    assert err.line == 17 and err.field == field and Path(err.file).name == "u.data"
    assert str(err).endswith(f"u.data line 17, field '{field}': {expected}")


def test_udata_wrong_column_count(tmp_path):
    d = _udata(tmp_path, ["196\t242\t3"])
    with pytest.raises(DataError, match=r"u.data line 17: expected 4 '\\t'-separated columns"):
        read_ml100k(d)


def test_undecodable_bytes_name_the_encoding(tmp_path):
    d = tmp_path / "ml"
    _write(d / "u.data", (GROUPLENS / "u.data").read_bytes())
    _write(d / "u.item", (GROUPLENS / "u.item").read_bytes())
    with pytest.raises(DataError) as exc:
        read_ml100k(d, encoding="utf-8")  # u.item is latin-1: line 4 has a raw 0xE9
    assert exc.value.line == 4 and "u.item line 4" in str(exc.value)
    assert "expected utf-8-encoded text" in str(exc.value)
    # and the same file reads fine with its real encoding
    assert read_ml100k(d).items.title["543"] == "Misérables, Les"


def test_empty_and_missing_files(tmp_path):
    _write(tmp_path / "e" / "u.data", "")
    with pytest.raises(DataError, match=r"u.data: expected at least one data line, got "
                                        r"'an empty file'"):
        read_ml100k(tmp_path / "e")
    (tmp_path / "e2").mkdir()
    with pytest.raises(DataError, match="e2: expected u.data in this directory"):
        read_ml100k(tmp_path / "e2")
    with pytest.raises(DataError, match="expected a MovieLens directory holding u.data"):
        read_ml100k(tmp_path / "absent")


def test_uitem_bad_genre_flag_and_column_count(tmp_path):
    d = tmp_path / "ml"
    _write(d / "u.data", (GROUPLENS / "u.data").read_bytes())
    lines = (GROUPLENS / "u.item").read_bytes().split(b"\n")
    bad = lines[1].replace(b"|0|1|1|", b"|0|x|1|", 1)
    _write(d / "u.item", b"\n".join([lines[0], bad] + lines[2:]))
    with pytest.raises(DataError, match=r"u.item line 2, field 'genre Action': expected a "
                                        r"genre flag 0 or 1, got 'x'"):
        read_ml100k(d)
    _write(d / "u.item", b"\n".join([lines[0], b"2|GoldenEye (1995)|01-Jan-1995"]))
    with pytest.raises(DataError, match=r"u.item line 2: expected 24 '\|'-separated"):
        read_ml100k(d)


def _inter(tmp_path: Path, header: str, rows: list[str], name="x") -> Path:
    return _write(tmp_path / name / f"{name}.inter", header + "\n" + "\n".join(rows) + "\n")


HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def test_recbole_integral_float_timestamps_parse_exactly(tmp_path):
    p = _inter(tmp_path, HEADER, ["1\t10\t4\t881250949.0", "1\t11\t4\t9007199254740993",
                                  "2\t10\t5\t1e3"])
    ds = read_recbole(p.parent)
    assert ds.interactions.timestamp.tolist() == [881250949, 9007199254740993, 1000]
    assert ds.items.title == {"10": "item 10", "11": "item 11"}


@pytest.mark.parametrize(
    "row, field, expected",
    [
        ("1\t10\t4\t881250949.5", "timestamp", "expected an integral number"),
        ("1\t10\t4\tsoon", "timestamp", "expected an integral number"),
        ("1\t10\tgood\t881250949", "rating", "expected a finite number"),
    ],
)
def test_recbole_bad_values(tmp_path, row, field, expected):
    p = _inter(tmp_path, HEADER, ["1\t9\t4\t881250948", row])
    with pytest.raises(DataError, match=rf"x.inter line 3, field '{field}': {expected}"):
        read_recbole(p.parent)


def test_recbole_bad_headers(tmp_path):
    p = _inter(tmp_path, "user_id:token\titem_id:token\ttimestamp:date", ["1\t2\t3"], "a")
    with pytest.raises(DataError, match=r"a.inter line 1, field 'timestamp:date': expected a "
                                        "RecBole header"):
        read_recbole(p.parent)
    p = _inter(tmp_path, "user_id:token\titem_id:token\trating:float", ["1\t2\t3"], "b")
    with pytest.raises(DataError, match=r"b.inter line 1: expected a header column named "
                                        "'timestamp'"):
        read_recbole(p.parent)
    p = _inter(tmp_path, HEADER, ["1\t2\t3\t4\t5"], "c")
    with pytest.raises(DataError, match=r"c.inter line 2: expected 4 '\\t'-separated columns"):
        read_recbole(p.parent)


def test_duplicate_rows_counted_kept_and_logged(tmp_path, caplog):
    p = _inter(tmp_path, HEADER, ["1\t10\t4\t100", "1\t10\t4\t100", "1\t10\t5\t100",
                                  "1\t10\t4\t100"])
    with caplog.at_level(logging.WARNING, logger="flanrec.data.sources"):
        ds = read_recbole(p.parent)
    assert ds.duplicate_rows == 2 and len(ds.interactions) == 4
    assert "2 exact duplicate row(s)" in caplog.text and "x.inter" in caplog.text


# --------------------------------------------------------------------------- ML 1M/10M/CSV


def test_ml1m_dat_files(tmp_path):
    d = tmp_path / "ml-1m"
    _write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    _write(d / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
           "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
           "3::Caf\xe9 au Lait (1993)::Comedy\n".encode("latin-1"))
    _write(d / "users.dat", "1::F::1::10::48067\n")
    ds = read_dataset("ml-1m", d)
    assert _rows(ds, 2) == [("1", "1193", 5.0, 978300760), ("1", "661", 3.0, 978302109)]
    assert ds.items.title["661"] == "James and the Giant Peach"
    assert ds.items.categories["661"] == ["Animation", "Children's", "Musical"]
    assert ds.items.title["3"] == "Café au Lait" and ds.items.year["1193"] == "1975"
    assert ds.users.features["1"] == {"gender": "F", "age": "Under 18",
                                      "occupation": "K-12 student", "zip_code": "48067"}
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::99::10::1\n")
    with pytest.raises(DataError, match=r"users.dat line 2, field 'Age': expected an age code"):
        read_dataset("ml-1m", d)
    _write(d / "ratings.dat", "1::1193::5::978300760\n1:661:3:978302109\n")
    with pytest.raises(DataError, match=r"ratings.dat line 2: expected 4 '::'-separated"):
        read_dataset("ml-1m", d)


def test_ml10m_half_stars(tmp_path):
    d = tmp_path / "ml-10m"
    _write(d / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n")
    _write(d / "movies.dat", "122::Boomerang (1992)::Comedy|Romance\n")
    ds = read_dataset("ml-10m", d)
    assert ds.interactions.rating.tolist() == [5.0, 4.5]
    assert ds.items.title == {"122": "Boomerang", "185": "item 185"}


def test_movielens_csv_quoted_titles_and_header(tmp_path):
    d = tmp_path / "ml-latest-small"
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
           "1,11,3.5,964982224\n")
    _write(d / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
           '11,"American President, The (1995)",Comedy|Drama|Romance\n'
           '12,"Dracula: Dead and Loving It (1995)",(no genres listed)\n'
           '13,Babylon 5 (1994-1998),Sci-Fi\n')
    ds = read_dataset("ml-latest-small", d)
    assert ds.name == "ml-latest-small"
    assert ds.items.title["11"] == "American President, The" and ds.items.year["11"] == "1995"
    assert ds.items.categories["11"] == ["Comedy", "Drama", "Romance"]
    assert "12" not in ds.items.categories and ds.items.year["13"] == "1994"
    _write(d / "ratings.csv", b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,1,4.0,9\r\n")
    assert read_dataset("ml-csv", d).interactions.timestamp.tolist() == [9]  # BOM, CRLF ok
    _write(d / "ratings.csv", "user,movie,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(DataError, match=r"ratings.csv line 1: expected the header "
                                        r"'userId,movieId,rating,timestamp'"):
        read_dataset("ml-csv", d)
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
           "1,2,4.0,2019-01-01\n")
    with pytest.raises(DataError, match=r"ratings.csv line 3, field 'timestamp': expected an "
                                        "integer, got '2019-01-01'"):
        read_dataset("ml-csv", d)


# --------------------------------------------------------------------------- Amazon


def _gz(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
    return path


def test_amazon_2014_python_literal_metadata_never_evaluated(tmp_path):
    d = tmp_path / "beauty"
    review = {"reviewerID": "A1YJEY40YUW4SE", "asin": "7806397051", "reviewerName": "Andrea",
              "helpful": [3, 4], "reviewText": "Very oily and creamy.", "overall": 1.0,
              "summary": "Don't waste your money", "unixReviewTime": 1391040000,
              "reviewTime": "01 30, 2014"}
    _gz(d / "reviews_Beauty_5.json.gz", [json.dumps(review),
                                         json.dumps(dict(review, asin="9759091062"))])
    meta = ("{'asin': '7806397051', 'title': 'Hydra Gel &amp; Cream', 'price': 7.99, "
            "'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Makeup']], "
            "'brand': 'Ecom', 'description': 'A gel.'}")
    _gz(d / "meta_Beauty.json.gz", [meta])
    ds = read_dataset("amazon-2014", d)
    assert ds.name == "amazon-2014-reviews_Beauty_5"
    assert _rows(ds, 2) == [("A1YJEY40YUW4SE", "7806397051", 1.0, 1391040000),
                            ("A1YJEY40YUW4SE", "9759091062", 1.0, 1391040000)]
    assert ds.items.title == {"7806397051": "Hydra Gel & Cream", "9759091062": "item 9759091062"}
    assert ds.items.categories["7806397051"] == ["Beauty", "Skin Care", "Face", "Makeup"]
    assert ds.items.brand["7806397051"] == "Ecom"
    # code in a line is refused, not run
    marker = tmp_path / "pwned"
    _gz(d / "meta_Beauty.json.gz", [meta, f"__import__('pathlib').Path({str(marker)!r}).touch()"])
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz line 2: expected a JSON object "
                                        "or Python dict literal"):
        read_dataset("amazon-2014", d)
    assert not marker.exists()


def test_amazon_2018_json_lines_and_field_errors(tmp_path, caplog):
    d = tmp_path / "games"
    r = {"overall": 5.0, "verified": True, "reviewTime": "10 17, 2015",
         "reviewerID": "A1HP7NVNPFMA4N", "asin": "0700026657", "unixReviewTime": 1445040000}
    _gz(d / "Video_Games_5.json.gz", [json.dumps(r), json.dumps(r),
                                      json.dumps(dict(r, asin="0700026398", overall=3))])
    _gz(d / "meta_Video_Games.json.gz", [json.dumps(
        {"asin": "0700026657", "title": "Anno 2070", "category": ["Video Games", "PC", "Games"],
         "description": ["Build the future.", "Save it."], "brand": "by\n    Ubisoft"})])
    with caplog.at_level(logging.WARNING, logger="flanrec.data.sources"):
        ds = read_dataset("amazon-2018", d)
    assert ds.duplicate_rows == 1 and len(ds.interactions) == 3
    assert "1 exact duplicate row(s)" in caplog.text
    assert ds.items.categories["0700026657"] == ["Video Games", "PC", "Games"]
    assert ds.items.description["0700026657"] == "Build the future. Save it."
    assert ds.items.brand["0700026657"] == "by Ubisoft"
    bad = dict(r)
    del bad["unixReviewTime"]
    _gz(d / "Video_Games_5.json.gz", [json.dumps(r), json.dumps(bad)])
    with pytest.raises(DataError, match=r"Video_Games_5.json.gz line 2, field "
                                        "'unixReviewTime': expected an integer Unix time"):
        read_dataset("amazon-2018", d)
    _gz(d / "Video_Games_5.json.gz", [json.dumps(dict(r, overall="great"))])
    with pytest.raises(DataError, match=r"line 1, field 'overall': expected a finite number"):
        read_dataset("amazon-2018", d)


def test_truncated_gzip_is_a_data_error(tmp_path):
    p = _gz(tmp_path / "a" / "X_5.json.gz", ['{"reviewerID": "u", "asin": "i", "overall": 1,'
                                             ' "unixReviewTime": 5}'] * 2000)
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(DataError, match="X_5.json.gz: expected a readable"):
        read_dataset("amazon-2018", p)


# --------------------------------------------------------------------------- generic tables


def test_csv_mapping_via_gin(tmp_path):
    import gin

    p = _write(tmp_path / "log.csv", 'customer;product;when;stars\nc1;"p;1";10;4.5\n'
               "c2;p2;11;3\n")
    gin.clear_config()
    try:
        gin.parse_config([
            "read_table.user_col = 'customer'", "read_table.item_col = 'product'",
            "read_table.timestamp_col = 'when'", "read_table.rating_col = 'stars'",
            "read_table.delimiter = ';'",
        ])
        ds = read_dataset("csv", p)
    finally:
        gin.clear_config()
    assert _rows(ds, 2) == [("c1", "p;1", 4.5, 10), ("c2", "p2", 3.0, 11)]


def test_csv_errors_and_headerless(tmp_path):
    from flanrec.data.sources.table import read_table

    p = _write(tmp_path / "log.csv", "user,item,ts\n1,2,3\n")
    with pytest.raises(DataError, match=r"log.csv line 1, field 'user_id': expected a header "
                                        r"with columns \['user_id', 'item_id', 'timestamp'\]"):
        read_table(p)
    ds = read_table(p, user_col="user", item_col="item", timestamp_col="ts")
    assert (ds.interactions.user[0], ds.interactions.item[0]) == ("1", "2")
    assert ds.interactions.timestamp.tolist() == [3] and np.isnan(ds.interactions.rating[0])
    p = _write(tmp_path / "h.tsv", "7\t8\t100.0\n7\t9\t100.25\n")
    kw = dict(header=False, column_names=["user_id", "item_id", "timestamp"], delimiter="\t")
    with pytest.raises(DataError, match=r"h.tsv line 2, field 'timestamp': expected an "
                                        "integral number"):
        read_table(p, **kw)
    p = _write(tmp_path / "h.tsv", "7\t8\t100.0\n7\t9\n")
    with pytest.raises(DataError, match=r"h.tsv line 2: expected 3 '\\t'-separated columns"):
        read_table(p, **kw)


def test_parquet_mapping_types_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({
        "u": pa.array([5, 6, 5]), "i": pa.array(["a", "b", "c"]),
        "t": pa.array([1_000_000_000, 1_000_000_001, 1_000_000_002], pa.timestamp("s")),
        "r": pa.array([1.0, 2.0, 3.0]),
    }), p)
    ds = read_dataset("parquet", p, user_col="u", item_col="i", timestamp_col="t",
                      rating_col="r")
    assert _rows(ds) == [("5", "a", 1.0, 1_000_000_000), ("6", "b", 2.0, 1_000_000_001),
                         ("5", "c", 3.0, 1_000_000_002)]
    pq.write_table(pa.table({"u": [1, 2], "i": ["a", None], "t": [1.0, 2.0]}), p)
    with pytest.raises(DataError, match=r"log.parquet row 2, field 'i': expected a non-empty id"):
        read_dataset("parquet", p, user_col="u", item_col="i", timestamp_col="t")
    pq.write_table(pa.table({"u": [1, 2], "i": ["a", "b"], "t": [1.0, 2.5]}), p)
    with pytest.raises(DataError, match=r"log.parquet row 2, field 't': expected an integral"):
        read_dataset("parquet", p, user_col="u", item_col="i", timestamp_col="t")
    with pytest.raises(DataError, match=r"log.parquet, field 'when': expected columns"):
        read_dataset("parquet", p, user_col="u", item_col="i", timestamp_col="when")
