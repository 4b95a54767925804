"""Fusion rules against hand-computed cases."""

import math

import pytest

from flanrec.ensemble import fusion


def test_rrf_hand_computed():
    lists = [["a", "b", "c"], ["b", "a"], ["c"]]
    got = dict(fusion.reciprocal_rank_fusion(lists, c=60))
    assert got["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert got["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert got["c"] == pytest.approx(1 / 63 + 1 / 61)
    order = [i for i, _ in fusion.reciprocal_rank_fusion(lists, c=60)]
    # a = b = 1/61 + 1/62 > c = 1/61 + 1/63; a before b: a's rank 1 comes in member 0.
    assert order == ["a", "b", "c"]


def test_rrf_weights_and_top_k():
    lists = [["a", "b"], ["b", "a"]]
    got = fusion.reciprocal_rank_fusion(lists, weights=[3.0, 1.0], top_k=1, c=1)
    assert got == [("a", pytest.approx(3 / 2 + 1 / 3))]


def test_vote_majority_then_rrf_tiebreak():
    lists = [["x", "y", "z"], ["y", "x"], ["y", "w"]]
    got = fusion.vote(lists)
    assert got[0] == ("y", 3.0)
    assert got[1] == ("x", 2.0)
    # z and w both have one vote: w (rank 2 in member 2) and z (rank 3 in member 0): w first.
    assert [i for i, _ in got[2:]] == ["w", "z"]
    weighted = fusion.vote(lists, weights=[5, 1, 1])
    assert weighted[:2] == [("y", 7.0), ("x", 6.0)]


def test_vote_weighted_counts():
    got = dict(fusion.vote([["a"], ["b"], ["b"]], weights=[3, 1, 1]))
    assert got == {"a": 3.0, "b": 2.0}


def test_mean_log_prob_and_weighted():
    t1 = {"a": -1.0, "b": -2.0}
    t2 = {"a": -3.0, "b": -1.0}
    assert fusion.mean_log_prob([t1, t2]) == [("b", -1.5), ("a", -2.0)]
    got = fusion.fuse("weighted", tables=[t1, t2], weights=[3, 1])
    assert got == [("a", pytest.approx(-1.5)), ("b", pytest.approx(-1.75))]


def test_mean_refuses_incomplete_tables():
    with pytest.raises(ValueError, match="re-score the union"):
        fusion.mean_log_prob([{"a": -1.0}, {"b": -1.0}])


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 weights for 3"):
        fusion.vote([["a"], ["b"], ["c"]], weights=[1, 2])
    with pytest.raises(ValueError, match="repeats an item"):
        fusion.rrf_scores([["a", "a"]])
    with pytest.raises(ValueError, match="unknown fusion"):
        fusion.fuse("median", lists=[["a"]])
    with pytest.raises(ValueError, match="needs weights"):
        fusion.fuse("weighted", tables=[{"a": 0.0}])
    with pytest.raises(ValueError, match=">= 0"):
        fusion.weights_from_metric([0.1, -0.2])


def test_weights_from_metric():
    assert fusion.weights_from_metric([0.1, 0.3]) == pytest.approx([0.25, 0.75])
    soft = fusion.weights_from_metric([0.1, 0.3], temperature=0.1)
    assert soft[1] / soft[0] == pytest.approx(math.exp(2.0))
    assert fusion.weights_from_metric([0.0, 0.0]) == [0.5, 0.5]
