"""The one-line-per-user sequence reader (the Amazon 5-core files of P5, TIGER, ICLRec).

The split only needs each user's order, so the reader's timestamps are positions within the
line; these tests pin that, the refusals, and (when the shared Amazon files are beside the
checkout) the published counts of Beauty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flanrec.data.errors import DataError
from flanrec.data.sources import kinds, read_dataset

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon5" / "Beauty.txt"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_in_line_order_with_positions_as_time(tmp_path):
    f = _write(tmp_path / "Toy.txt", "1 10 11 12\n2 11 10\n\nüser-β 99 10 11 12 13\n")
    ds = read_dataset("sequences", f)
    it = ds.interactions
    assert "sequences" in kinds()
    assert ds.name == "Toy"
    assert it.user.tolist() == ["1"] * 3 + ["2"] * 2 + ["üser-β"] * 5
    assert it.item.tolist() == ["10", "11", "12", "11", "10", "99", "10", "11", "12", "13"]
    assert it.timestamp.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert np.isnan(it.rating).all()  # no ratings in this format
    assert ds.items.title["99"] == "item 99"


def test_a_folder_with_one_txt_file_is_read(tmp_path):
    _write(tmp_path / "Beauty.txt", "1 5 6\n")
    assert len(read_dataset("sequences", tmp_path).interactions) == 2
    _write(tmp_path / "Sports.txt", "1 5 6\n")
    with pytest.raises(DataError, match=r"exactly one \.txt file, got .2 \.txt files"):
        read_dataset("sequences", tmp_path)


@pytest.mark.parametrize(("text", "pattern"), [
    ("1 5 6\n2\n", r"Bad\.txt line 2: expected a user id followed by at least one item id"),
    ("1 5 6\n2 7\n1 8\n", r"Bad\.txt line 3, field 'user': expected each user on one line.*"
                         r"already on line 1"),
    ("", r"Bad\.txt: expected at least one data line"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        read_dataset("sequences", _write(tmp_path / "Bad.txt", text))


@pytest.mark.skipif(not BEAUTY.exists(), reason="the shared Amazon 5-core files are not here")
def test_amazon_beauty_matches_its_published_counts():
    it = read_dataset("sequences", BEAUTY).interactions
    assert len(it) == 198_502
    assert len(set(it.user.tolist())) == 22_363
    assert len(set(it.item.tolist())) == 12_101


def test_prepare_reads_a_sequence_file_into_the_protocol_split(tmp_path):
    """amazon5-loo: the last item of a line is the test target, the one before validation."""
    import subprocess
    import sys

    from flanrec.data.prepared import load_split

    lines = [f"u{u} " + " ".join(f"i{(u * 7 + k) % 40}" for k in range(5 + u % 4))
             for u in range(30)]
    raw = _write(tmp_path / "Toy.txt", "\n".join(lines) + "\n")
    out = tmp_path / "prepared"
    run = subprocess.run(
        [sys.executable, "-m", "flanrec.prepare", "--dataset", "sequences", "--raw_dir",
         str(raw), "--out", str(out), "--task_prefix", "toy", "--families", "seqrec"],
        capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    by_user = {s.user: s for s in load_split(str(out)).users}
    for line in lines:
        user, *items = line.split()
        got = by_user[user]
        assert (got.train_items, got.valid_item, got.test_item) == \
            (items[:-2], items[-2], items[-1])
