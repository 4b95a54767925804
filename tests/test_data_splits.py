"""Leave-one-out splits: exactness on the real ml-100k, semantics on hand-made logs.

The ml-100k checks compare against the digests published in PROTOCOL-ml100k-loo.md, so an
implementation that sorts on floats, sorts unstably or orders users as strings fails here.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from flanrec.data import splits, types
from flanrec.data.sources._common import make_interactions


def _inter(rows, source="mem"):
    users, items, ts, ratings = zip(*rows, strict=True) if rows else ((), (), (), ())
    return make_interactions(users, items, ts, ratings, source)


# --------------------------------------------------------------------------- semantics


def test_ties_keep_file_order_and_users_sorted_numerically():
    rows = [("10", "a", 5, 1.0), ("9", "x", 7, 1.0), ("10", "b", 5, 1.0), ("10", "c", 3, 1.0),
            ("9", "y", 7, 1.0), ("9", "z", 7, 1.0), ("10", "d", 5, 1.0)]
    split = splits.leave_one_out(_inter(rows))
    assert [s.user for s in split.users] == ["9", "10"]  # numeric, not "10" < "9"
    s10 = split.users[1]
    assert s10.train_items == ["c", "a"] and (s10.valid_item, s10.test_item) == ("b", "d")
    assert s10.train_timestamps == [3, 5]
    s9 = split.users[0]
    assert (s9.train_items, s9.valid_item, s9.test_item) == (["x"], "y", "z")
    assert split.all_items == ["a", "b", "c", "d", "x", "y", "z"]


def test_user_order_lexicographic_when_ids_are_not_all_integers():
    rows = [(u, "i", t, 1.0) for u in ("b", "10", "9", "a") for t in (1, 2, 3)]
    assert [s.user for s in splits.leave_one_out(_inter(rows)).users] == ["10", "9", "a", "b"]
    assert splits.sorted_ids(["10", "9", "007", "7"]) == ["007", "7", "9", "10"]


def test_float_timestamps_are_refused():
    inter = _inter([("1", "a", 1, 1.0)] * 3)
    inter.timestamp = inter.timestamp.astype(np.float64)
    with pytest.raises(TypeError, match="timestamps must be integers"):
        splits.leave_one_out(inter)


def test_matches_a_brute_force_reference_on_random_logs_with_many_ties():
    rng = random.Random(0)
    for trial in range(20):
        rows = [(str(rng.randrange(12)), str(rng.randrange(30)), rng.randrange(4), 1.0)
                for _ in range(rng.randrange(1, 200))]
        split = splits.leave_one_out(_inter(rows), short_users="train_only")
        ref: dict[str, list[str]] = {}
        for _pos, (u, i, _t, _r) in sorted(enumerate(rows), key=lambda r: (r[1][2], r[0])):
            ref.setdefault(u, []).append(i)
        assert [s.user for s in split.users] == sorted(ref, key=int), trial
        for s in split.users:
            full = s.train_items + [x for x in (s.valid_item, s.test_item) if x is not None]
            assert full == ref[s.user], (trial, s.user)
            if len(ref[s.user]) >= 3:
                assert (s.valid_item, s.test_item) == tuple(ref[s.user][-2:])
            else:
                assert s.valid_item is None and s.test_item is None


def test_short_user_policies():
    rows = [("1", "a", 1, 1.0), ("1", "b", 2, 1.0), ("2", "a", 1, 1.0), ("2", "b", 2, 1.0),
            ("2", "c", 3, 1.0)]
    keep = splits.leave_one_out(_inter(rows))
    assert keep.users[0].train_items == ["a", "b"] and keep.users[0].test_item is None
    assert [w.target for w in splits.train_windows(keep)] == ["b"]  # user 1 trains, u2: none
    assert [e.user for e in splits.eval_examples(keep, "test")] == ["2"]
    assert [s.user for s in splits.leave_one_out(_inter(rows), short_users="drop").users] == ["2"]
    with pytest.raises(ValueError, match="user '1' has 2 interaction"):
        splits.leave_one_out(_inter(rows), short_users="error")
    with pytest.raises(ValueError, match="short_users must be one of"):
        splits.leave_one_out(_inter(rows), short_users="skip")


def test_windows_eval_inputs_and_masks_with_a_small_cap():
    items = [f"i{k}" for k in range(1, 9)]  # n = 8
    rows = [("u", it, t, 1.0) for t, it in enumerate(items)] + [("v", "i1", 0, 1.0)] * 3
    split = splits.leave_one_out(_inter(rows), max_history=3)
    windows = [w for w in splits.train_windows(split) if w.user == "u"]
    # t = 2 .. n-2 (1-based) -> targets i2..i6, history at most 3 preceding items
    assert [w.target for w in windows] == ["i2", "i3", "i4", "i5", "i6"]
    assert windows[0].history == ["i1"] and windows[-1].history == ["i3", "i4", "i5"]
    assert splits.count_train_windows(split) == sum(1 for _ in splits.train_windows(split))
    val = {e.user: e for e in splits.eval_examples(split, "validation")}
    test = {e.user: e for e in splits.eval_examples(split, "test")}
    # validation input i_{max(1,n-3-1)}..i_{n-2}; test input i_{max(1,n-3)}..i_{n-1}
    assert val["u"].history == ["i4", "i5", "i6"] and val["u"].target == "i7"
    assert test["u"].history == ["i5", "i6", "i7"] and test["u"].target == "i8"
    assert val["u"].seen == items[:6] and test["u"].seen == items[:7]  # all, not the window
    # repeated items (user v saw i1 three times): seen lists it once; its test target is i1
    assert test["v"].seen == ["i1"] and test["v"].target == "i1"
    users, mask = splits.seen_mask(split, "test")
    assert users == ["u", "v"] and mask.shape == (2, len(split.all_items))
    assert mask[0].sum() == 7 and mask[1].sum() == 1
    # the split-level cap can be overridden per call
    assert len(splits.eval_examples(split, "test", max_history=50)[0].history) == 7


def test_kcore_and_implicit_threshold():
    rows = [("1", "a", 1, 5.0), ("1", "b", 2, 4.0), ("2", "a", 1, 1.0), ("2", "b", 2, 5.0),
            ("3", "a", 1, 5.0), ("3", "c", 2, 5.0)]
    core = splits.kcore_filter(_inter(rows), 2)
    # item c has 1 interaction -> dropped -> user 3 has 1 -> dropped -> a and b keep 2 each
    assert core.user.tolist() == ["1", "1", "2", "2"]
    assert core.item.tolist() == ["a", "b", "a", "b"]
    thr = splits.implicit_threshold(_inter(rows), 4.0)
    assert thr.item.tolist() == ["a", "b", "b", "a", "c"]
    assert splits.kcore_filter(_inter(rows), (2, 1)).user.tolist() == ["1", "1", "2", "2",
                                                                         "3", "3"]
    no_ratings = make_interactions(["1"], ["a"], [1], None, "x.csv")
    with pytest.raises(ValueError, match="x.csv: min_rating=4.0 needs ratings"):
        splits.implicit_threshold(no_ratings, 4.0)


def test_fingerprint_text_format():
    rows = [("2", "b", 1, 1.0), ("2", "c", 2, 1.0), ("2", "d", 3, 1.0), ("1", "a", 1, 1.0)]
    split = splits.leave_one_out(_inter(rows))
    texts = splits.fingerprint_texts(split)
    assert texts == {"sequences": "1\ta\n2\tb c d\n", "targets": "2\tc\td\n"}
    assert splits.fingerprints(split)["targets"] == hashlib.sha256(b"2\tc\td\n").hexdigest()


# --------------------------------------------------------------------------- real ml-100k


def test_ml100k_protocol_exact(ml100k_split):
    split = ml100k_split
    assert len(split.users) == 943 and len(split.all_items) == 1682
    assert split.max_history == 50
    assert [int(s.user) for s in split.users] == list(range(1, 944))
    assert splits.fingerprints(split) == splits.ML100K_FINGERPRINTS
    val = splits.eval_examples(split, "validation")
    test = splits.eval_examples(split, "test")
    assert len(val) == 943 and len(test) == 943
    assert splits.count_train_windows(split) == 97_171
    windows = list(splits.train_windows(split))
    assert len(windows) == 97_171
    assert max(len(w.history) for w in windows) == 50
    targets: dict[str, set[str]] = {}
    for w in windows:
        targets.setdefault(w.user, set()).add(w.target)
    by_user = {s.user: s for s in split.users}
    for v, t in zip(val, test, strict=True):
        s = by_user[v.user]
        assert v.target not in targets[v.user] and t.target not in targets[t.user]
        assert v.history == s.train_items[-50:]
        assert t.history == (s.train_items + [s.valid_item])[-50:]
        assert len(set(v.seen)) == len(s.train_items)  # no repeats in ml-100k
    _, vmask = splits.seen_mask(split, "validation")
    _, tmask = splits.seen_mask(split, "test")
    assert int(vmask.sum()) == 100_000 - 2 * 943 and int(tmask.sum()) == 100_000 - 943


def test_ml100k_protocol_facts_that_make_the_details_matter(ml100k_dataset, ml100k_split):
    inter = ml100k_dataset.interactions
    # 75,772 rows share a timestamp with another row of the same user
    pairs = np.stack([inter.user.astype(np.int64), inter.timestamp])
    _, inv, counts = np.unique(pairs, axis=1, return_inverse=True, return_counts=True)
    assert int((counts[inv] > 1).sum()) == 75_772
    # 415 users have test and validation items with the same timestamp
    ts = {(u, i): t for u, i, t in zip(inter.user, inter.item, inter.timestamp.tolist(),
                                       strict=True)}
    same = sum(ts[(s.user, s.valid_item)] == ts[(s.user, s.test_item)]
               for s in ml100k_split.users)
    assert same == 415
    # sorting on a float32 copy (64 s steps at 8.9e8) changes 149 users' test item
    f32 = types.Interactions(user=inter.user, item=inter.item,
                             timestamp=inter.timestamp.astype(np.float32).astype(np.int64),
                             rating=inter.rating)
    bad = splits.leave_one_out(f32)
    changed = sum(a.test_item != b.test_item
                  for a, b in zip(bad.users, ml100k_split.users, strict=True))
    assert changed == 149
    assert splits.fingerprints(bad)["targets"] != splits.ML100K_FINGERPRINTS["targets"]


def test_ml100k_grouplens_format_gives_the_same_split(ml100k_dir, tmp_path):
    from flanrec.data.sources import read_dataset

    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    (tmp_path / "u.data").write_text("".join(line + "\n" for line in lines))
    split = splits.leave_one_out(read_dataset("ml-100k", tmp_path))
    assert splits.fingerprints(split) == splits.ML100K_FINGERPRINTS
