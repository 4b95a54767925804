"""`flanrec.prepare` reads the CSV a user has, and refuses logs it cannot use (issue 13).

Real runs of the prepare job (its `main`, in-process) on CSVs written here in the shapes
users bring: tab-separated without a header, semicolon-separated with other column names and
a title column, latin-1. A rating column is used (not silently dropped with the rating and
binary families), a log where no user has 3 interactions is refused with the counts, a
timestamp beyond int64 and an empty id are reported with the file's own line number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gin
import pytest

from flanrec.data.errors import DataError
from flanrec.data.sources import read_dataset
from flanrec.errors import UserError
from flanrec.prepare import cli as prepare


def rows(n_users: int = 12, per_user: int = 6) -> list[tuple[str, str, int, int]]:
    """(user, item, timestamp, rating), every user with `per_user` interactions."""
    out = []
    for u in range(n_users):
        for t in range(per_user):
            out.append((f"u{u}", f"i{(u * 3 + t * 5) % 17}", 1000 + 10 * t + u, 1 + (u + t) % 5))
    return out


def run(tmp_path: Path, raw: Path, *flags: str, out: str = "out") -> dict:
    try:
        assert prepare.cli(["--dataset", "csv", "--raw_dir", str(raw), "--out",
                             str(tmp_path / out), "--offline", "--families",
                             "seq,rating,binary,grounding", "--num_shards", "2", *flags]) == 0
    finally:
        gin.clear_config()  # --gin bindings of one run must not leak into the next
    return json.loads((tmp_path / out / "prepare.json").read_text())


def tasks_of(doc: dict) -> dict[str, dict[str, int]]:
    return doc["counts"]["tasks"]


def test_tab_separated_without_header(tmp_path):
    raw = tmp_path / "log.tsv"
    raw.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in rows()))
    doc = run(tmp_path, raw, "--delimiter", "\\t", "--no_header", "--columns",
              "user_id,item_id,rating,timestamp")
    assert doc["counts"]["interactions"] == 72 and doc["counts"]["users"] == 12
    assert tasks_of(doc)["rating"]["test"] == 12 and tasks_of(doc)["binary"]["test"] == 12
    assert doc["options"]["table_options"] == {
        "delimiter": "\t", "column_names": ["user_id", "item_id", "rating", "timestamp"],
        "header": False}


def test_semicolon_with_other_column_names_and_titles(tmp_path, caplog):
    raw = tmp_path / "export.csv"
    raw.write_text("Kunde;Artikel;Zeit;Stars;Titel\n" + "".join(
        f"{u};{i};{t};{r};Film {i} (1994)\n" for u, i, t, r in rows()))
    with caplog.at_level(logging.WARNING):
        doc = run(tmp_path, raw, "--delimiter", ";", "--user_col", "Kunde", "--item_col",
                  "Artikel", "--time_col", "Zeit", "--title_col", "Titel")
    assert "reading ratings from column 'Stars'" in caplog.text  # found by name, and said
    assert tasks_of(doc)["rating"]["validation"] == 12
    items = (tmp_path / "out" / "split" / "items.tsv").read_text().splitlines()
    assert "i0\tFilm i0\t1994\t" in items
    # Without --delimiter the error says which delimiter the header line uses.
    with pytest.raises(DataError, match=r"export.csv line 1, field 'user_id': expected a "
                                        r"header .*pass --delimiter ';'"):
        run(tmp_path, raw, out="out2")


def test_latin1_file_with_encoding_flag(tmp_path):
    raw = tmp_path / "latin.csv"
    raw.write_bytes(("user_id,item_id,timestamp,title\n" + "".join(
        f"{u},{i},{t},Café Crème {i}\n" for u, i, t, _ in rows())).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv line 2: expected utf-8-encoded text.*"
                                        r"prepare --encoding latin-1"):
        run(tmp_path, raw, out="utf8")
    doc = run(tmp_path, raw, "--encoding", "latin-1")
    assert doc["skipped_families"]["rating"].startswith("the log has no ratings")
    items = (tmp_path / "out" / "split" / "items.tsv").read_text(encoding="utf-8")
    assert "Café Crème i0" in items


def test_gin_bindings_map_columns_like_the_other_jobs(tmp_path):
    raw = tmp_path / "log.csv"
    raw.write_text("who|what|when\n" + "".join(f"{u}|{i}|{t}\n" for u, i, t, _ in rows()))
    doc = run(tmp_path, raw, "--gin.read_table.delimiter='|'",
              "--gin_bindings", "read_table.user_col = 'who'",
              "--gin.read_table.item_col=what", "--gin.read_table.timestamp_col=when")
    assert doc["counts"]["interactions"] == 72


def test_a_rating_column_is_used_not_dropped():
    # Read directly: a column called "Rating" (any case) is the rating unless told otherwise.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "r.csv"
        raw.write_text("user_id,item_id,timestamp,Rating\nu1,a,1,4.5\nu1,b,2,2\n")
        ds = read_dataset("csv", raw)
        assert ds.interactions.rating.tolist() == [4.5, 2.0]
        ds = read_dataset("csv", raw, rating_col="")  # explicitly none
        assert all(r != r for r in ds.interactions.rating.tolist())


def test_no_user_with_three_interactions_is_refused_with_counts(tmp_path):
    raw = tmp_path / "short.csv"
    raw.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{u + t},{t}\n" for u in range(5) for t in range(1 + u % 2)))
    with pytest.raises(UserError, match=r"short.csv: no user has the 3 interactions "
                                        r"leave-one-out needs .*5 users \(3 with 1, 2 with 2\)"):
        run(tmp_path, raw)
    assert not (tmp_path / "out").exists()
    raw.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{u + t},{t}\n" for u in range(5) for t in range(3)))
    with pytest.raises(UserError, match=r"0 training windows.*at least 4 interactions; "
                                        r"5 users \(5 with 3\)"):
        run(tmp_path, raw)


def test_timestamp_beyond_int64_names_file_line_and_field(tmp_path):
    raw = tmp_path / "big.csv"
    raw.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,99999999999999999999\n")
    with pytest.raises(DataError, match=r"big.csv line 3, field 'timestamp': expected an "
                                        r"integer within the 64-bit range"):
        read_dataset("csv", raw)
    raw.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,-1e30\n")
    with pytest.raises(DataError, match=r"big.csv line 3, field 'timestamp'"):
        read_dataset("csv", raw)


def test_id_errors_name_the_file_line(tmp_path):
    raw = tmp_path / "ids.csv"
    raw.write_text("user_id,item_id,timestamp\nu1,a,1\n\nu2,,5\n")  # line 4 (after a blank)
    with pytest.raises(DataError, match=r"ids.csv line 4, field 'item_id': expected a "
                                        "non-empty id"):
        read_dataset("csv", raw)
    raw.write_text("user_id,item_id,timestamp\n ,a,1\n")
    with pytest.raises(DataError, match=r"ids.csv line 2, field 'user_id'"):
        read_dataset("csv", raw)


@pytest.mark.parametrize("flags,expect", [
    (["--no_header"], "--no_header needs --columns"),
    (["--delimiter", "::"], "--delimiter must be one character"),
    (["--encoding", "klingon-8"], "unknown encoding"),
    (["--columns", "a,a,b"], "--columns must be distinct"),
])
def test_mapping_flags_that_cannot_work_are_refused(tmp_path, flags, expect):
    raw = tmp_path / "log.csv"
    raw.write_text("user_id,item_id,timestamp\nu1,a,1\n")
    with pytest.raises(UserError, match=expect):
        run(tmp_path, raw, *flags)


def test_mapping_flags_on_a_dataset_with_its_own_reader_are_refused(tmp_path):
    with pytest.raises(UserError, match="apply to --dataset csv or parquet only"):
        prepare.cli(["--dataset", "ml-100k", "--raw_dir", str(tmp_path / "raw"), "--out",
                     str(tmp_path / "out"), "--offline", "--user_col", "uid"])
