"""flanrec.metrics against values computed by hand (and a brute-force AUC)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flanrec import metrics as M

L2 = math.log2


def test_single_target_ranks_hand_computed():
    # user 0: target at rank 1; user 1: rank 3; user 2: rank 7; user 3: absent.
    preds = [["a", "b"], ["x", "y", "t", "z"], ["1", "2", "3", "4", "5", "6", "q"], ["a"]]
    targets = ["a", "t", "q", "zz"]
    m = M.ranking_metrics(preds, targets, ks=(1, 5, 10))
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(2 / 4)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(4)) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / L2(4) + 1 / L2(8)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    # one target: recall == HR, precision == HR / K, F1 = 2PR/(P+R) per user
    assert m["recall@10"] == pytest.approx(m["hr@10"])
    assert m["precision@10"] == pytest.approx(3 / 4 / 10)
    f1_hit = 2 * (1 / 10) * 1 / (1 / 10 + 1)
    assert m["f1@10"] == pytest.approx(3 * f1_hit / 4)
    assert m["num_users"] == 4
    assert m["distinct@1"] == 3  # a, x, 1


def test_k_longer_than_list_and_empty_predictions_count_zero():
    m = M.ranking_metrics([["t"], [], ["u", "v"]], ["t", "s", "w"], ks=(20,))
    assert m["hr@20"] == pytest.approx(1 / 3)
    assert m["ndcg@20"] == pytest.approx(1 / 3)
    assert m["precision@20"] == pytest.approx(1 / 20 / 3)  # divides by K, not list length
    assert m["empty_lists"] == 1
    assert m["num_users"] == 3


def test_duplicates_and_invalid_counted_not_double_hits():
    cat = {"a", "b", "c", "t"}
    m = M.ranking_metrics([["t", "t", "", "nope", "a"]], [["t", "a"]], ks=(1, 2, 5),
                          catalogue=cat, extra_invalid=2, extra_duplicates=1)
    assert m["invalid"] == 2 + 2  # "" and "nope", plus the producer's own count
    assert m["duplicates"] == 1 + 1
    # cleaned list = [t, a]: both targets at ranks 1 and 2
    assert m["precision@2"] == pytest.approx(1.0)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx(1.0)
    assert m["coverage@5"] == pytest.approx(2 / 4)


def test_masking_removes_seen_before_cut():
    # seen item s occupies rank 1 in the raw list; masked, the target moves to rank 1.
    m = M.ranking_metrics([["s", "t"]], ["t"], ks=(1,), exclude=[{"s"}])
    assert m["hr@1"] == 1.0 and m["masked"] == 1
    assert M.ranking_metrics([["s", "t"]], ["t"], ks=(1,))["hr@1"] == 0.0


def test_multi_target_precision_recall_f1_ndcg_hand_computed():
    # targets {a, b, c}; list [a, x, b, y, z]: hits at 1 and 3.
    m = M.ranking_metrics([["a", "x", "b", "y", "z"]], [["a", "b", "c"]], ks=(2, 5))
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["f1@5"] == pytest.approx(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["recall@2"] == pytest.approx(1 / 3)
    idcg5 = 1 + 1 / L2(3) + 1 / L2(4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(4)) / idcg5)
    idcg2 = 1 + 1 / L2(3)  # only min(|T|, K) = 2 ideal positions
    assert m["ndcg@2"] == pytest.approx(1 / idcg2)
    assert m["mrr@5"] == 1.0 and m["hr@2"] == 1.0


def test_missing_target_is_an_error():
    with pytest.raises(ValueError, match="user 1"):
        M.ranking_metrics([["a"], ["b"]], ["a", ""])


def test_scores_ties_policies():
    cands, scores = ["a", "t", "b", "c"], [0.5, 0.9, 0.9, 0.1]
    assert M.ranking_from_scores(cands, scores, {"t"}) == ["b", "t", "a", "c"]
    assert M.ranking_from_scores(cands, scores, {"t"}, ties="optimistic") == [
        "t", "b", "a", "c"]
    assert M.ranking_from_scores(cands, scores, {"t"}, ties="first") == ["t", "b", "a", "c"]
    # all equal scores: pessimistic puts the target last, whatever the listed order
    assert M.ranking_from_scores(["t", "a", "b"], [1.0, 1.0, 1.0], {"t"})[-1] == "t"


def test_auc_with_ties_hand_computed():
    # pos scores 0.8, 0.5; neg scores 0.5, 0.2, 0.8
    # pairs: (0.8 vs .5)=1, (0.8 vs .2)=1, (0.8 vs .8)=.5, (.5 vs .5)=.5, (.5 vs .2)=1,
    #        (.5 vs .8)=0  -> 4 / 6
    assert M.auc([1, 1, 0, 0, 0], [0.8, 0.5, 0.5, 0.2, 0.8]) == pytest.approx(4 / 6)
    assert M.auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert math.isnan(M.auc([1, 1], [0.1, 0.2]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), min_size=2, max_size=30))
def test_auc_equals_brute_force_pairs(rows):
    labels = [r[0] for r in rows]
    scores = [float(r[1]) for r in rows]
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not pos or not neg:
        assert math.isnan(M.auc(labels, scores))
        return
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert M.auc(labels, scores) == pytest.approx(sum(pairs) / len(pairs))


def test_binary_precision_recall_f1_hand_computed():
    labels = [1, 1, 1, 0, 0, 0, 1]
    preds = [1, 0, 1, 1, 0, -1, -1]  # 4 positives: tp=2, fn=2 (a -1 on one); fp=1
    m = M.binary_metrics(labels, preds, scores=[0.9, 0.4, 0.8, 0.7, 0.1, 0.5, 0.5])
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["invalid"] == 2
    assert 0.0 <= m["auc"] <= 1.0
    none = M.binary_metrics([0, 1], [0, 0])
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and none["f1"] == 0.0


def test_rating_metrics_nan_counts_as_worst():
    m = M.rating_metrics([4, 2, 5], [3.5, float("nan"), 5.0])
    assert m["mae"] == pytest.approx((0.5 + 4.0 + 0.0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 16.0) / 3))
    assert m["parse_rate"] == pytest.approx(2 / 3)


def test_average_ranks_match_definition():
    r = M.average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))
    assert r.tolist() == [3.5, 1.0, 3.5, 2.0]


def test_seqio_metric_fns_accept_strings_lists_and_bytes():
    fn = M.make_ranking_metric_fn(ks=(1, 2))
    m = fn([b"7", "3", "9"], ["7", ["1", "3"], ""])
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["invalid"] == 1  # "" = text naming no item
    assert M.seqio_ranking_metrics(["a"], ["a"])["ndcg@20"] == 1.0
    b = M.seqio_binary_metrics([1, 0, 1], [1, 1, -1])
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == pytest.approx(0.5)
    r = M.seqio_rating_metrics([4.0, 3.0], [4.0, 1.0])
    assert r["mae"] == pytest.approx(1.0)
