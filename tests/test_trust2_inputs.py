"""Input data and option values end in a clear one-line error or a correct result.

Real runs of `python -m flanrec.prepare`'s `main` (in-process) on small CSV/Parquet logs
written here: duplicate (user, item, timestamp) rows are collapsed by an explicit, printed
policy (or refused) so that one interaction never becomes both validation and test item;
option values that cannot work are refused at parse time with the flag and the range; a
`--min_rating`, `--kcore` or `--num_candidates` that no split can honour is refused with the
numbers; a rating beyond float32 is refused with file, line and field. The item trie of a
million single-token items is built sparsely in seconds, and its padded decoding tables are
refused with their size instead of being allocated. The other jobs' numeric flags are
checked at parse time too (convert --step, ensemble fuse --top_k, baselines --k, eval --ks).
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from flanrec.data import splits as splits_lib
from flanrec.data import trie as trie_lib
from flanrec.data.errors import DataError
from flanrec.data.sources import read_dataset
from flanrec.prepare import cli as prepare


def rows(n_users: int = 12, per_user: int = 6) -> list[tuple[str, str, int, int]]:
    """(user, item, timestamp, rating): every user with `per_user` distinct items."""
    return [(f"u{u}", f"i{(u * 3 + t * 5) % 17}", 1000 + 10 * t + u, 1 + (u + t) % 5)
            for u in range(n_users) for t in range(per_user)]


def write_csv(path: Path, data, header: str = "user_id,item_id,timestamp,rating") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in data))
    return path


def main(argv: list[str], job=prepare.main) -> int:
    """The job's exit code, argparse's usage errors (SystemExit) included."""
    try:
        return job(argv)
    except SystemExit as e:
        return int(e.code)


def run(tmp_path: Path, raw: Path | str, *flags: str, out: str = "out",
        families: str = "seq,rating") -> int:
    return main(["--dataset", "csv", "--raw_dir", str(raw), "--out", str(tmp_path / out),
                 "--offline", "--families", families, *flags])


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [WI] ")


def error_line(capsys) -> str:
    """The job's error, which must be exactly one line; logged warnings (stderr too, each
    one line of the log format) may precede it."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not _LOG_LINE.match(x)]
    assert len(lines) == 1, err
    return lines[0]


def split_users(tmp_path: Path, out: str = "out") -> dict[str, dict]:
    doc = json.loads((tmp_path / out / "split" / "split.json").read_text())
    return {u["user"]: u for u in doc["users"]}


# --------------------------------------------------------------------------- duplicates


def _with_duplicate_last_rows(tmp_path: Path) -> Path:
    """Each user's last interaction written twice, the second time with another rating:
    without a policy the two rows became that user's validation and test item."""
    data = []
    for u, i, t, r in rows():
        data.append((u, i, t, r))
        if t == 1050 + int(u[1:]):
            data.append((u, i, t, r % 5 + 1))
    return write_csv(tmp_path / "dup.csv", data)


def test_duplicates_collapse_to_the_last_row_by_default_and_say_so(tmp_path, capsys):
    raw = _with_duplicate_last_rows(tmp_path)
    assert run(tmp_path, raw) == 0
    err = capsys.readouterr().err
    assert ("dup.csv: 12 row(s) repeat the user, item and timestamp of another (12 group(s), "
            "12 with different ratings; the first: user 'u0', item 'i8', timestamp 1050, data "
            "rows 6, 7); kept the last row of each (--duplicates last), 72 rows remain") in err
    users = split_users(tmp_path)
    assert len(users) == 12
    for u, i, t, r in rows():
        seq = users[u]
        assert seq["valid_item"] != seq["test_item"]
        if t == 1050 + int(u[1:]):  # the duplicated one is the test item, with the last rating
            assert seq["test_item"] == i and seq["test_rating"] == r % 5 + 1
    doc = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert doc["options"]["duplicates"] == "last" and doc["counts"]["users"] == 12


def test_duplicates_first_keeps_the_first_rating(tmp_path, capsys):
    raw = _with_duplicate_last_rows(tmp_path)
    assert run(tmp_path, raw, "--duplicates", "first") == 0
    assert "kept the first row of each (--duplicates first)" in capsys.readouterr().err
    users = split_users(tmp_path)
    for u, i, t, r in rows():
        if t == 1050 + int(u[1:]):
            assert users[u]["test_item"] == i and users[u]["test_rating"] == r


def test_duplicates_refuse_names_the_rows(tmp_path, capsys):
    raw = _with_duplicate_last_rows(tmp_path)
    assert run(tmp_path, raw, "--duplicates", "refuse") == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: {raw}: expected one row per (user, item, timestamp), got "
        "'12 repeated row(s) in 12 group(s)' (the first: user 'u0', item 'i8', timestamp "
        "1050 at data rows 6, 7; pass --duplicates last or first to keep one row of each)")
    assert not (tmp_path / "out").exists()


def test_reinteractions_at_later_times_are_kept_and_reported(tmp_path, capsys):
    data = rows() + [("u0", "i8", 5000, 4), ("u1", "i1", 5000, 4)]  # u0's test == its valid
    raw = write_csv(tmp_path / "again.csv", data)
    assert run(tmp_path, raw) == 0
    err = capsys.readouterr().err
    assert "re-interactions: 2 user(s)' test item and 0 user(s)' validation item" in err
    assert "row(s) repeat" not in err  # different timestamps: nothing collapsed
    users = split_users(tmp_path)
    assert users["u0"]["test_item"] == "i8" and users["u0"]["valid_item"] == "i8"


def test_drop_duplicates_keeps_the_kept_rows_place():
    from flanrec.data.sources._common import make_interactions

    inter = make_interactions(["a", "a", "a", "a"], ["x", "y", "x", "z"], [1, 1, 1, 2],
                              [1.0, 2.0, 3.0, 4.0], "t.csv")
    last, info = splits_lib.drop_duplicates(inter, "last")
    assert last.item.tolist() == ["y", "x", "z"] and last.rating.tolist() == [2.0, 3.0, 4.0]
    assert info.removed == 1 and info.example == ("a", "x", 1, [1, 3])
    first, _ = splits_lib.drop_duplicates(inter, "first")
    assert first.item.tolist() == ["x", "y", "z"] and first.rating.tolist() == [1.0, 2.0, 4.0]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("flags, message", [
    (["--max_history", "0"], "argument --max_history: expected an integer >= 1, got '0'"),
    (["--max_history", "-3"], "argument --max_history: expected an integer >= 1, got '-3'"),
    (["--seqrec_window", "0"], "argument --seqrec_window: expected an integer >= 1, got '0'"),
    (["--seqrec_tilings", "0"], "argument --seqrec_tilings: expected an integer >= 1"),
    (["--seqrec_encoder_items", "-1"], "argument --seqrec_encoder_items: expected an "
                                       "integer >= 0"),
    (["--num_candidates", "0"], "argument --num_candidates: expected an integer >= 2, "
                                "got '0'"),
    (["--num_candidates", "1"], "argument --num_candidates: expected an integer >= 2"),
    (["--kcore", "0"], "argument --kcore: expected an integer >= 1, got '0'"),
    (["--max_history", str(2**31)], "argument --max_history: expected an integer <= "
                                    "2147483647, got '2147483648'"),
    (["--num_shards", "0"], "argument --num_shards: expected an integer >= 1"),
    (["--vocab_size", "-5"], "argument --vocab_size: expected an integer >= 1"),
    (["--min_rating", "nan"], "argument --min_rating: expected a finite number in"),
    (["--min_rating", "1e39"], "argument --min_rating: expected a finite number in"),
    (["--duplicates", "keep"], "argument --duplicates: invalid choice: 'keep'"),
    (["--semantic_batch_size", "0"], "argument --semantic_batch_size: expected an integer"),
])
def test_option_values_refused_at_parse_time(tmp_path, capsys, flags, message):
    assert run(tmp_path, tmp_path / "never-read.csv", *flags) == 2
    line = error_line(capsys)
    assert line.startswith("flanrec.prepare: error: " + message), line
    assert not (tmp_path / "out").exists()


def test_options_checked_for_callers_without_the_parser(tmp_path):
    from flanrec.errors import ConfigError
    from flanrec.prepare import prepare as run_prepare
    from flanrec.prepare.options import PrepareOptions

    for field, value in (("max_history", 0), ("num_candidates", 0), ("seqrec_window", 0),
                         ("seqrec_tilings", 2**40),
                         ("kcore", 0), ("min_rating", float("inf")), ("duplicates", "keep")):
        opts = PrepareOptions(dataset="csv", out=str(tmp_path / "o"), raw_dir="x.csv",
                              **{field: value})
        with pytest.raises(ConfigError, match=f"--{field}: expected"):
            run_prepare(opts)
    for field in ("families", "indexing"):
        opts = PrepareOptions(dataset="csv", out=str(tmp_path / "o"), raw_dir="x.csv",
                              **{field: ()})
        with pytest.raises(Exception, match=f"--{field}: expected at least one"):
            run_prepare(opts)


def test_min_rating_on_a_log_without_ratings(tmp_path, capsys):
    raw = write_csv(tmp_path / "plain.csv", [r[:3] for r in rows()],
                    header="user_id,item_id,timestamp")
    assert run(tmp_path, raw, "--min_rating", "3", families="seq") == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: {raw}: min_rating=3.0 needs ratings, but the log has none: "
        "leave out --min_rating, or name the rating column (CSV: --rating_col)")


def test_min_rating_above_every_rating(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())
    assert run(tmp_path, raw, "--min_rating", "6") == 2
    assert error_line(capsys) == (f"flanrec.prepare: error: --min_rating 6: no interaction of "
                                  f"{raw} is rated that high (72 rows, highest rating 5)")


def test_kcore_that_empties_the_log_names_the_largest_that_works(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())
    assert run(tmp_path, raw, "--kcore", "100") == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: --kcore 100: the 100-core of {raw} is empty (all 72 "
        "interactions are filtered out); the largest k that keeps any is 4")
    assert run(tmp_path, raw, "--kcore", "4") == 0  # ... and it does keep some


def test_num_candidates_beyond_what_every_user_can_be_offered(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())  # 17 items, 6 per user: 11 unseen
    assert run(tmp_path, raw, "--num_candidates", "13", families="seq,direct") == 2
    assert error_line(capsys) == (
        "flanrec.prepare: error: --num_candidates 13: user 'u0' has interacted with all but "
        "11 of the 17 catalogue items, so a direct question can offer at most 12 options (the "
        "target and 11 unseen items); pass --num_candidates 12 or fewer, or leave out the "
        "direct family (--families)")
    assert run(tmp_path, raw, "--num_candidates", "12", families="seq,direct") == 0
    from flanrec.data import prepared
    from flanrec.data.families.direct import direct_examples

    out = str(tmp_path / "out")
    for stage in ("train", "test"):  # every user's examples render, with 12 distinct options
        examples = list(direct_examples(prepared.load_split(out), prepared.load_index(out),
                                        split_name=stage, num_candidates=12))
        assert examples and all(len(set(ex["candidates"])) == 12 for ex in examples)


def test_default_num_candidates_on_a_small_catalogue_leaves_direct_out(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())
    assert main(["--dataset", "csv", "--raw_dir", str(raw), "--out", str(tmp_path / "out"),
                 "--offline"]) == 0
    assert "family 'direct' not written: --num_candidates 20: user 'u0'" in \
        capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert "direct" in doc["skipped_families"] and "direct" not in doc["counts"]["tasks"]


# --------------------------------------------------------------------------- files


def test_rating_beyond_float32_is_refused_with_file_line_field(tmp_path, capsys):
    data = rows()
    data[5] = data[5][:3] + ("1e39",)
    raw = write_csv(tmp_path / "big.csv", data)
    assert run(tmp_path, raw) == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: {raw} line 7, field 'rating': expected a finite number "
        "within float32 range (|x| <= 3.403e+38), got '1e39'")


def test_raw_dir_folder_with_one_csv_is_read(tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_csv(folder / "log.csv", rows())
    (folder / "README").write_text("not data")
    assert run(tmp_path, folder) == 0
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["counts"][
        "interactions"] == 72


@pytest.mark.parametrize("files, got", [((), "got 'none'"),
                                         (("a.csv", "b.tsv"), "got '2 of them: a.csv, b.tsv'")])
def test_raw_dir_folder_without_exactly_one_csv(tmp_path, capsys, files, got):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in files:
        write_csv(folder / name, rows())
    assert run(tmp_path, folder) == 2
    line = error_line(capsys)
    assert line.startswith(f"flanrec.prepare: error: {folder}: expected a csv file, or a "
                           "directory holding exactly one file named *.csv|*.tsv|")
    assert got in line and line.endswith("(pass the file itself as --raw_dir)")


@pytest.mark.parametrize("text, message", [
    ("", "expected at least one data line, got 'an empty file'"),
    ("user_id,item_id,timestamp\n", "expected at least one interaction, got 'no data rows'"),
    ("user_id,item_id,timestamp\nu1,i1,nan\n",
     "line 2, field 'timestamp': expected an integral number"),
    ("user_id,item_id,timestamp,rating\nu1,i1,5,inf\n",
     "line 2, field 'rating': expected a finite number, got 'inf'"),
])
def test_degenerate_csv_files(tmp_path, capsys, text, message):
    raw = tmp_path / "log.csv"
    raw.write_text(text)
    assert run(tmp_path, raw) == 2
    line = error_line(capsys)
    assert line.startswith(f"flanrec.prepare: error: {raw}") and message in line
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_dataset("csv", raw)


def test_parquet_with_the_wrong_columns(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": ["a"], "i": ["x"], "t": [1]}), raw)
    assert main(["--dataset", "parquet", "--raw_dir", str(raw), "--out",
                         str(tmp_path / "out"), "--offline"]) == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: {raw}, field 'user_id': expected columns ['user_id', "
        "'item_id', 'timestamp'], got \"columns ['u', 'i', 't']\"")


def test_task_prefix_must_make_a_task_name(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())
    assert run(tmp_path, raw, "--task_prefix", "my data") == 2
    assert "--task_prefix: expected letters, digits" in error_line(capsys)


# --------------------------------------------------------------------------- the trie


def test_a_million_single_token_items_build_a_sparse_trie():
    n = 1_000_000
    t0 = time.perf_counter()
    trie = trie_lib.build_trie([[i + 2] for i in range(n)], eos_id=1, vocab_size=n + 2,
                               dense_limit=0)
    assert time.perf_counter() - t0 < 30
    assert trie.num_nodes == 2 * n + 1 and trie.num_items == n and trie.max_fanout == n
    assert trie.child_tokens.nbytes == 4 * 2 * n  # one entry per edge, not nodes x fan-out
    assert trie_lib.lookup(trie, [123_458, 1]) == 123_456
    assert trie_lib.step(trie, 0, 0) == -1 and not trie_lib.accepts(trie, [5])
    with pytest.raises(trie_lib.TrieTooLarge) as err:
        trie.children_tokens  # noqa: B018 - the padded table is what would not fit
    assert str(err.value).startswith(
        "item trie of 1,000,000 items: 2,000,001 nodes x 1,000,000 children at its widest "
        "node need 14.55 TiB as padded tables, over the 4.00 GiB limit "
        "($FLANREC_TRIE_TABLE_LIMIT); read its sparse rows instead")
    bare = trie_lib.build_trie([[i + 2] for i in range(n)], eos_id=1, vocab_size=n + 2,
                               dense_limit=0, end_with_eos=False)
    assert bare.num_nodes == n + 1 and trie_lib.lookup(bare, [7]) == 5


def test_padded_tables_within_the_budget_and_old_trie_files(tmp_path, monkeypatch):
    from flanrec.data.prepared import load_trie
    from flanrec.data.prepared_write import save_trie

    items = [[5, 3], [5], [7, 3, 2], [2]]
    trie = trie_lib.build_trie(items, eos_id=1, vocab_size=9)
    assert trie.children_tokens.shape == (trie.num_nodes, trie.max_fanout)
    for node in range(trie.num_nodes):
        k = trie.num_children[node]
        assert trie.children_tokens[node, :k].tolist() == \
            trie_lib.allowed_tokens(trie, node).tolist()
        assert (trie.children_tokens[node, k:] == -1).all()
    monkeypatch.setenv(trie_lib.TABLE_LIMIT_ENV, "16")
    fresh = trie_lib.build_trie(items, eos_id=1, vocab_size=9)
    with pytest.raises(trie_lib.TrieTooLarge, match="over the 16 B limit"):
        fresh.children_next  # noqa: B018
    monkeypatch.delenv(trie_lib.TABLE_LIMIT_ENV)
    # A trie file that stores the padded tables instead of the sparse rows loads too.
    path = tmp_path / "trie.npz"
    save_trie(str(path), trie, ["a", "b", "c", "d"])
    with np.load(path) as z:
        old = {k: z[k] for k in z.files if k not in ("child_start", "child_tokens",
                                                     "child_next")}
    old.update(children_tokens=trie.children_tokens, children_next=trie.children_next,
               num_children=trie.num_children)
    buf = io.BytesIO()
    np.savez(buf, **old)
    path.write_bytes(buf.getvalue())
    loaded, names = load_trie(str(path))
    assert names == ["a", "b", "c", "d"]
    for i, seq in enumerate(items):
        assert trie_lib.lookup(loaded, seq + [1]) == i
    assert (loaded.child_start == trie.child_start).all()


# --------------------------------------------------------------------------- other jobs


@pytest.mark.parametrize("module, argv, message", [
    ("flanrec.convert.__main__", ["--from", "flanrec", "--src", "x", "--to", "t5x", "--out",
                                  "y", "--step", "-5"],
     "flanrec.convert: error: argument --step: expected an integer >= 0, got "
     "'-5'"),
    ("flanrec.ensemble.__main__", ["fuse", "--predictions", "a", "b", "--out", "o",
                                   "--top_k", "0"],
     "flanrec.ensemble fuse: error: argument --top_k: expected an integer >= 1, got '0'"),
    ("flanrec.ensemble.__main__", ["fuse", "--predictions", "a", "b", "--out", "o",
                                   "--weights", "1,nan"],
     "flanrec.ensemble fuse: error: argument --weights: expected comma-separated finite "
     "numbers >= 0"),
    ("flanrec.baselines.__main__", ["--out", "o", "--k", "0"],
     "flanrec.baselines: error: argument --k: expected an integer >= 1, got '0'"),
    ("flanrec.baselines.__main__", ["--out", "o", "--dropout", "1.5"],
     "flanrec.baselines: error: argument --dropout: expected a finite number in [0, 0.99]"),
    ("flanrec.quickstart.job", ["--num_beams", "0"],
     "flanrec.quickstart: error: argument --num_beams: expected an integer >= 1, got '0'"),
    ("flanrec.eval.cli", ["--predictions", "a", "--out", "b", "--ks", "0,10"],
     "flanrec.eval: error: --ks: expected comma-separated integers >= 1"),
])
def test_other_jobs_refuse_numbers_out_of_range(capsys, module, argv, message):
    import importlib

    assert main(argv, importlib.import_module(module).main) == 2
    assert error_line(capsys).startswith(message)


def test_fuse_runs_top_k_is_exact():
    from flanrec.ensemble.files import fuse_runs

    with pytest.raises(ValueError, match="top_k: expected an integer >= 1"):
        fuse_runs([{}, {}], "rrf", top_k=0)


def test_one_column_for_two_roles_is_refused(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", rows())
    assert run(tmp_path, raw, "--item_col", "user_id") == 2
    assert error_line(capsys) == ("flanrec.prepare: error: --user_col and --item_col both name "
                                  "column 'user_id': each must be a column of its own")


def test_a_header_naming_a_mapped_column_twice_is_refused(tmp_path, capsys):
    raw = write_csv(tmp_path / "log.csv", [(u, u + "x", i, t) for u, i, t, _ in rows()],
                    header="user_id,user_id,item_id,timestamp")
    assert run(tmp_path, raw) == 2
    assert error_line(capsys) == (
        f"flanrec.prepare: error: {raw} line 1, field 'user_id': expected each column name "
        "once in the header, got 'user_id,user_id,item_id,timestamp' (which of the columns "
        "is meant cannot be told; rename one)")


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p, np.zeros((3, 4))),
     "expected a 2-D array with one row per item (17), got 'shape (3, 4)'"),
    (lambda p: np.save(p, np.full((17, 4), "a")), "expected numbers (a float array), got "
                                                  "'dtype <U1'"),
    (lambda p: np.save(p, np.array([None] * 17, dtype=object), allow_pickle=True),
     "expected a .npy file of numbers (numpy.save of an [items, dim] float array), got "
     "'Object arrays cannot be loaded when allow_pickle=False'"),
    (lambda p: np.save(p, np.where(np.arange(68).reshape(17, 4) == 21, np.nan, 1.0)),
     ": expected finite numbers, but row 5 (item 'i13'; rows count from 0) is not finite"),
])
def test_bad_semantic_embeddings_are_refused_in_one_line(tmp_path, capsys, make, message):
    raw = write_csv(tmp_path / "log.csv", rows())
    npy = tmp_path / "emb.npy"
    make(npy)
    assert run(tmp_path, raw, "--indexing", "semantic", "--semantic_embeddings", str(npy),
               families="seq") == 2
    line = error_line(capsys)
    assert line.startswith(f"flanrec.prepare: error: {npy}") and line.endswith(message), line


@pytest.mark.parametrize("policy", ["last", "first"])
def test_drop_duplicates_matches_a_brute_force_reference(policy):
    from flanrec.data.sources._common import make_interactions

    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        data = [(f"u{rng.integers(3)}", f"i{rng.integers(4)}", int(rng.integers(3)),
                 float(rng.integers(1, 6))) for _ in range(n)]
        inter = make_interactions(*zip(*data, strict=True), "r.csv")
        kept, info = splits_lib.drop_duplicates(inter, policy)
        chosen: dict[tuple, int] = {}
        for j, (u, i, t, _) in enumerate(data):
            if policy == "last" or (u, i, t) not in chosen:
                chosen[(u, i, t)] = j
        want = [data[j] for j in sorted(chosen.values())]
        got = list(zip(kept.user.tolist(), kept.item.tolist(), kept.timestamp.tolist(),
                       kept.rating.tolist(), strict=True))
        assert got == want and info.removed == n - len(want)


def test_constraint_on_sparse_rows_matches_the_padded_tables(monkeypatch):
    """A trie too wide for padded tables decodes from its sparse rows, with the same masks,
    steps and finished items as the padded layout gives."""
    import jax
    import jax.numpy as jnp

    from flanrec.infer.constraints import (
        JaxTrie,
        SparseJaxTrie,
        TrieConstraint,
        advance,
        allowed_mask,
        to_jax,
    )

    rng = np.random.default_rng(3)
    vocab = 40
    items = list({tuple(rng.integers(2, vocab, size=int(rng.integers(1, 4))).tolist())
                  for _ in range(60)})
    trie = trie_lib.build_trie(items, eos_id=1, vocab_size=vocab)
    padded = to_jax(trie)
    monkeypatch.setenv(trie_lib.TABLE_LIMIT_ENV, "0")
    sparse = to_jax(trie)
    assert isinstance(padded, JaxTrie) and isinstance(sparse, SparseJaxTrie)
    nodes = jnp.asarray(np.concatenate([np.arange(trie.num_nodes), [-1]]), jnp.int32)
    allowed = rng.random((1, trie.num_items)) < 0.6
    cums = jnp.asarray(trie_lib.allowed_items_in_rank_order(trie, allowed))
    rows = jnp.zeros(nodes.shape[0], jnp.int32)
    for with_cums in (None, cums):
        a = allowed_mask(padded, nodes, vocab, with_cums, rows if with_cums is not None
                         else None)
        b = allowed_mask(sparse, nodes, vocab, with_cums, rows if with_cums is not None
                         else None)
        assert (np.asarray(a) == np.asarray(b)).all()
    for tok in range(vocab):
        tokens = jnp.full(nodes.shape, tok, jnp.int32)
        assert (np.asarray(advance(padded, nodes, tokens)) ==
                np.asarray(advance(sparse, nodes, tokens))).all()
    # A jitted walk along every item's tokens ends on that item.
    c = TrieConstraint.create(trie, device_trie=sparse)
    width = max(len(s) for s in items) + 1
    toks = np.zeros((len(items), width), np.int32)
    for r, s in enumerate(items):
        toks[r, :len(s) + 1] = list(s) + [1]

    @jax.jit
    def walk(constraint, tokens):
        state = constraint.init(tokens.shape[0])
        for k in range(tokens.shape[1]):
            state = constraint.advance(state, tokens[:, k])
        return constraint.item(state)

    assert np.asarray(walk(c, jnp.asarray(toks))).tolist() == list(range(len(items)))
