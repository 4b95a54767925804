"""Fuse several rankings of the same user into one: the ensemble rules of the method.

An instruction-tuned model gives a different ranking under each phrasing of the instruction
(and each checkpoint or run gives another); combining them is a cheap, known way to gain
accuracy. Four rules, each a pure function of its members so it can be checked by hand:

* ``mean``: the (weighted) mean of each item's log-probability over members. Exact only when
  every member scored every fused item, so it takes complete score tables and refuses gaps
  (the template-ensemble job re-scores the union of the members' lists to make them complete).
* ``weighted``: ``mean`` with weights, e.g. from each member's validation NDCG@10.
* ``vote``: (weighted) number of members whose top-K list holds the item — majority voting over
  lists; ties go to the better reciprocal-rank-fusion score, then to the earlier first
  appearance, so the result never depends on dict order.
* ``rrf``: reciprocal-rank fusion, ``sum_m w_m / (c + rank_m(item))`` over the lists holding
  the item (Cormack et al. 2009, c = 60), which needs only ranks, not comparable scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

METHODS = ("mean", "weighted", "vote", "rrf")
RRF_C = 60.0


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} ensemble members")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0; got {w}")
    return w


def _first_seen(lists: Sequence[Sequence[str]]) -> dict[str, tuple[int, int]]:
    """item -> (best rank over lists, member of that rank): a deterministic last tie-break."""
    first: dict[str, tuple[int, int]] = {}
    for m, items in enumerate(lists):
        for r, item in enumerate(items):
            key = (r, m)
            if item not in first or key < first[item]:
                first[item] = key
    return first


def rrf_scores(lists: Sequence[Sequence[str]], weights: Sequence[float] | None = None,
               c: float = RRF_C) -> dict[str, float]:
    """item -> sum over members of ``w / (c + rank)`` (rank 1-based; absent lists add 0)."""
    w = _weights(len(lists), weights)
    out: dict[str, float] = {}
    for wm, items in zip(w, lists, strict=True):
        if len(set(items)) != len(items):
            raise ValueError("a member's list repeats an item; de-duplicate before fusing")
        for r, item in enumerate(items, start=1):
            out[item] = out.get(item, 0.0) + wm / (c + r)
    return out


def reciprocal_rank_fusion(lists: Sequence[Sequence[str]], weights: Sequence[float] | None = None,
                           top_k: int | None = None, c: float = RRF_C
                           ) -> list[tuple[str, float]]:
    """(item, fused score) best first, by reciprocal-rank fusion."""
    scores = rrf_scores(lists, weights, c)
    first = _first_seen(lists)
    ranked = sorted(scores, key=lambda i: (-scores[i], first[i]))
    return [(i, scores[i]) for i in ranked[:top_k]]


def vote(lists: Sequence[Sequence[str]], weights: Sequence[float] | None = None,
         top_k: int | None = None) -> list[tuple[str, float]]:
    """(item, weighted vote count) best first; ties by RRF score, then first appearance."""
    w = _weights(len(lists), weights)
    votes: dict[str, float] = {}
    for wm, items in zip(w, lists, strict=True):
        for item in set(items):
            votes[item] = votes.get(item, 0.0) + wm
    rrf = rrf_scores(lists, w)
    first = _first_seen(lists)
    ranked = sorted(votes, key=lambda i: (-votes[i], -rrf[i], first[i]))
    return [(i, votes[i]) for i in ranked[:top_k]]


def mean_log_prob(tables: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None,
                  top_k: int | None = None) -> list[tuple[str, float]]:
    """(item, weighted mean log-probability) best first over items every member scored.

    Raises ValueError naming an item one member lacks: averaging a log-probability with a
    missing one would silently favour items that happen to be in more lists.
    """
    if not tables:
        raise ValueError("no ensemble members")
    w = _weights(len(tables), weights)
    keys = list(tables[0])
    for m, t in enumerate(tables[1:], start=1):
        if set(t) != set(keys):
            missing = sorted(set(keys) ^ set(t))[:3]
            raise ValueError(
                f"member {m} scored a different item set than member 0 (e.g. {missing}); "
                "mean fusion needs every item scored by every member: re-score the union "
                "(template ensembles do) or use rrf / vote")
    total = sum(w)
    fused = {k: sum(wm * float(t[k]) for wm, t in zip(w, tables, strict=True)) / total
             for k in keys}
    order = {k: n for n, k in enumerate(keys)}
    ranked = sorted(keys, key=lambda k: (-fused[k], order[k]))
    return [(k, fused[k]) for k in ranked[:top_k]]


def fuse(method: str, *, lists: Sequence[Sequence[str]] | None = None,
         tables: Sequence[Mapping[str, float]] | None = None,
         weights: Sequence[float] | None = None, top_k: int | None = None
         ) -> list[tuple[str, float]]:
    """Dispatch by name; ``weighted`` requires weights, ``mean`` ignores none given."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {METHODS}")
    if method in ("mean", "weighted"):
        if tables is None:
            raise ValueError(f"fusion {method!r} needs per-member score tables")
        if method == "weighted" and weights is None:
            raise ValueError("fusion 'weighted' needs weights (e.g. validation NDCG@10)")
        return mean_log_prob(tables, weights if method == "weighted" else None, top_k)
    if lists is None:
        raise ValueError(f"fusion {method!r} needs per-member ranked lists")
    if method == "vote":
        return vote(lists, weights, top_k)
    return reciprocal_rank_fusion(lists, weights, top_k)


def weights_from_metric(values: Sequence[float], temperature: float | None = None
                        ) -> list[float]:
    """Member weights from a validation metric (e.g. NDCG@10): proportional, or a softmax of
    ``value / temperature`` when a temperature is given (sharper preference for the best)."""
    v = [float(x) for x in values]
    if not v or any(not math.isfinite(x) or x < 0 for x in v):
        raise ValueError(f"validation metrics must be finite and >= 0; got {v}")
    if temperature is None:
        s = sum(v)
        return [x / s for x in v] if s > 0 else [1.0 / len(v)] * len(v)
    top = max(v)
    e = [math.exp((x - top) / temperature) for x in v]
    return [x / sum(e) for x in e]
