"""Recommendation metrics: top-K ranking, rating error, binary classification. Pure numpy.

Why one module for everyone: the fine-tuned LM, the popularity baseline and SASRec are only
comparable if the very same code turns their outputs into numbers, so `flanrec.eval`, the
baselines' early stopping and the SeqIO metric fns below all call these functions.

Ranking follows the ``ml100k-loo`` protocol (``PROTOCOL-ml100k-loo.md``) exactly:

* a user's ranked list is cleaned first: items in ``exclude`` (the user's seen items) are
  removed, because the protocol ranks the target *among unmasked candidates*; entries that
  are not catalogue items (``invalid``, including ``""`` = "the text named no item") and
  repeats of an item already listed (``duplicates``) are removed too, since neither is a
  candidate. Invalid and duplicate entries are *counted and reported*, never silently
  dropped, and a repeated item can never count twice as a hit;
* ``rank`` is the 1-based position of a target in the cleaned list; positions the list does
  not reach are misses (a list shorter than K simply cannot hit beyond its end);
* every metric is averaged over ALL evaluated users: a user whose list is empty counts 0.

With one target per user: HR@K = Recall@K = 1[rank <= K], NDCG@K = 1/log2(rank+1),
MRR@K = 1/rank (0 beyond K), Precision@K = HR@K / K. The general multi-target form (a set T
of targets per user, hits h = |top-K ∩ T|): HR@K = 1[h > 0], Precision@K = h / K,
Recall@K = h / |T|, F1@K = the per-user harmonic mean of the two (then averaged), NDCG@K =
DCG / IDCG with IDCG summed over the min(|T|, K) ideal positions, MRR@K = 1 / rank of the
first hit. Precision divides by K, not by the list length, so a short list is not rewarded
for being short.

Scores that tie (candidate ranking in ``score`` mode) are broken *pessimistically* by
default: the target ranks after every candidate with the same score, so a model that
gives everything the same score cannot profit from the order candidates were listed in.
AUC uses average ranks (a tied positive/negative pair counts 0.5).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)
TIE_POLICIES = ("pessimistic", "optimistic", "first")


# ------------------------------------------------------------------------------ ranking


@dataclasses.dataclass
class CleanedList:
    """One user's list after masking, with what was removed (for the report)."""

    items: list[str]
    invalid: int = 0
    duplicates: int = 0
    masked: int = 0


def clean_list(items: Iterable[str], exclude: Collection[str] = (),
               catalogue: Collection[str] | None = None) -> CleanedList:
    """Drop masked, invalid ("" or not in ``catalogue``) and repeated entries, counting each.

    Order is kept, so positions in ``.items`` are the protocol's ranks among candidates.
    """
    out = CleanedList(items=[])
    listed: set[str] = set()
    excluded = exclude if isinstance(exclude, set | frozenset | dict) else set(exclude)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"ranked items must be strings, got {type(item).__name__}: {item!r}")
        if item == "" or (catalogue is not None and item not in catalogue):
            out.invalid += 1
        elif item in listed:
            out.duplicates += 1
        elif item in excluded:
            out.masked += 1
        else:
            listed.add(item)
            out.items.append(item)
    return out


def _as_target_set(target: str | Sequence[str], where: str) -> list[str]:
    targets = [target] if isinstance(target, str) else list(target)
    targets = list(dict.fromkeys(t for t in targets))
    if not targets or any(not isinstance(t, str) or t == "" for t in targets):
        raise ValueError(f"{where}: every evaluated user needs at least one non-empty target "
                         f"item, got {target!r}")
    return targets


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def hit_positions(items: Sequence[str], targets: Collection[str]) -> list[int]:
    """1-based positions of ``items`` that are targets (items must already be cleaned)."""
    return [pos for pos, item in enumerate(items, start=1) if item in targets]


def user_ranking_metrics(items: Sequence[str], targets: Sequence[str],
                         ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """All top-K metrics of one user from a cleaned list (see the module docstring)."""
    ks = _validate_ks(ks)
    tset = set(targets)
    positions = np.asarray(hit_positions(items, tset), dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        within = positions[positions <= k]
        h = float(within.size)
        dcg = float(np.sum(1.0 / np.log2(within + 1.0)))
        idcg = float(np.sum(1.0 / np.log2(np.arange(1, min(len(tset), k) + 1) + 1.0)))
        precision = h / k
        recall = h / len(tset)
        out[f"hr@{k}"] = 1.0 if h > 0 else 0.0
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"mrr@{k}"] = float(1.0 / within[0]) if h > 0 else 0.0
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = (2 * precision * recall / (precision + recall)
                          if precision + recall > 0 else 0.0)
    return out


def ranking_metrics(
    predictions: Sequence[Sequence[str]],
    targets: Sequence[str | Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: Sequence[Collection[str]] | None = None,
    catalogue: Collection[str] | None = None,
    extra_invalid: int = 0,
    extra_duplicates: int = 0,
) -> dict[str, float]:
    """Top-K metrics averaged over all users, plus coverage and invalid/duplicate counts.

    ``predictions[u]`` is user u's ranked list (best first), ``targets[u]`` one item or a
    list of items, ``exclude[u]`` the items to mask for u. ``catalogue`` (all rankable
    items) turns unknown items into invalid entries and adds ``coverage@K`` = distinct items
    in any top-K / catalogue size. ``extra_invalid``/``extra_duplicates`` add counts the
    producer already removed (the JSONL fields ``invalid``/``duplicates``).

    Keys: ``hr@K ndcg@K mrr@K precision@K recall@K f1@K`` for each K, ``coverage@K``
    (with a catalogue), ``distinct@K``, ``num_users``, ``invalid``, ``duplicates``,
    ``masked`` (seen items removed), ``empty_lists``.
    """
    ks = _validate_ks(ks)
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction lists but {len(targets)} targets")
    if exclude is not None and len(exclude) != len(targets):
        raise ValueError(f"{len(exclude)} exclude sets but {len(targets)} targets")
    if not targets:
        raise ValueError("no users to evaluate")
    if catalogue is not None and not isinstance(catalogue, set | frozenset | dict):
        catalogue = set(catalogue)
    sums: dict[str, float] = {}
    counts = {"invalid": int(extra_invalid), "duplicates": int(extra_duplicates),
              "masked": 0, "empty_lists": 0}
    topk_items: dict[int, set[str]] = {k: set() for k in ks}
    for u, (items, target) in enumerate(zip(predictions, targets, strict=True)):
        if isinstance(items, str):
            raise TypeError(f"user {u}: predictions must be a list of items, got a string")
        tset = _as_target_set(target, f"user {u}")
        cleaned = clean_list(items, exclude[u] if exclude is not None else (), catalogue)
        counts["invalid"] += cleaned.invalid
        counts["duplicates"] += cleaned.duplicates
        counts["masked"] += cleaned.masked
        counts["empty_lists"] += int(not cleaned.items)
        for key, value in user_ranking_metrics(cleaned.items, tset, ks).items():
            sums[key] = sums.get(key, 0.0) + value
        for k in ks:
            topk_items[k].update(cleaned.items[:k])
    n = len(targets)
    out = {key: value / n for key, value in sums.items()}
    for k in ks:
        out[f"distinct@{k}"] = float(len(topk_items[k]))
        if catalogue is not None:
            out[f"coverage@{k}"] = len(topk_items[k]) / max(len(catalogue), 1)
    out["num_users"] = float(n)
    out.update({key: float(v) for key, v in counts.items()})
    return out


def ranking_from_scores(candidates: Sequence[str], scores: Sequence[float],
                        targets: Collection[str], ties: str = "pessimistic") -> list[str]:
    """Candidates best first, tied groups ordered so the targets come last ("pessimistic"),
    first ("optimistic") or in listed order ("first")."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    is_target = np.array([c in targets for c in candidates], dtype=np.int64)
    tie_key = {"pessimistic": is_target, "optimistic": -is_target,
               "first": np.zeros_like(is_target)}[ties]
    order = np.lexsort((np.arange(len(candidates)), tie_key, -s))
    return [candidates[i] for i in order]


# ------------------------------------------------------------------------------ ratings


def rating_metrics(targets: Sequence[float], predictions: Sequence[float],
                   worst_error: float = 4.0) -> dict[str, float]:
    """RMSE and MAE; an unparsable prediction (NaN) counts as ``worst_error`` (ML: 5 - 1).

    Counting instead of dropping keeps a model that fails to answer from looking accurate;
    ``parse_rate`` reports how often that happened.
    """
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"targets {t.shape} and predictions {p.shape} must be equal 1-D")
    if t.size == 0:
        raise ValueError("no ratings to evaluate")
    if np.isnan(t).any():
        raise ValueError("targets contain NaN")
    err = np.where(np.isnan(p), worst_error, np.abs(t - p))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(err)),
            "parse_rate": float(np.mean(~np.isnan(p))), "num_examples": float(t.size)}


# ------------------------------------------------------------------------------ binary


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions: `scipy.stats.rankdata`
    (method 'average'), imported here so the eval job pays for scipy.stats only when a
    binary task needs an AUC."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(np.asarray(values, dtype=np.float64), method="average"),
                      dtype=np.float64)


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC via the Mann-Whitney U statistic on average ranks (ties count 0.5).

    NaN when only one class is present (AUC is undefined then, not 0.5).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal 1-D")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = average_ranks(s)
    u = float(r[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def binary_metrics(labels: Sequence[int], predictions: Sequence[int],
                   scores: Sequence[float] | None = None) -> dict[str, float]:
    """Accuracy, precision, recall, F1 of the positive class (1), and AUC given scores.

    A prediction outside {0, 1} (e.g. -1: the answer was neither yes nor no) is wrong for
    accuracy and never a positive prediction. Precision with no positive prediction and
    recall with no positive label are 0 (not NaN), so averages over runs stay defined;
    ``invalid`` counts the unusable predictions.
    """
    y = np.asarray(labels)
    p = np.asarray(predictions)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} must be equal 1-D")
    if y.size == 0:
        raise ValueError("no examples to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    tp = int(np.sum((p == 1) & (y == 1)))
    fp = int(np.sum((p == 1) & (y == 0)))
    fn = int(np.sum((p != 1) & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "accuracy": float(np.mean(p == y)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "invalid": float(np.sum(~np.isin(p, (0, 1)))),
        "num_examples": float(y.size),
    }
    if scores is not None:
        out["auc"] = auc(y, scores)
    return out


# ------------------------------------------------------------------------------ SeqIO fns


def _as_list(x: Any) -> list[str]:
    if isinstance(x, bytes):
        x = x.decode("utf-8", errors="replace")
    if isinstance(x, str):
        return [x]
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in x]


def make_ranking_metric_fn(ks: Sequence[int] = DEFAULT_KS,
                           catalogue: Collection[str] | None = None,
                           ) -> Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]:
    """A SeqIO metric fn ``fn(targets, predictions) -> dict`` over postprocessed items.

    A prediction is one item string (greedy decoding: only HR@1 is then meaningful) or a
    ranked list of them (beam search); ``""`` is an invalid generation (what
    ``ItemPostprocessor`` returns for text naming no item). A target is an item or a list
    of items. No masking here: seqio hands over no seen items (use ``flanrec.eval`` for
    the protocol's masked numbers).
    """
    ks = _validate_ks(ks)

    def ranking(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
        return ranking_metrics([_as_list(p) for p in predictions],
                               [_as_list(t) for t in targets], ks=ks, catalogue=catalogue)

    ranking.__name__ = "ranking_metrics"
    return ranking


seqio_ranking_metrics = make_ranking_metric_fn()
"""SeqIO metric fn with K in (1, 5, 10, 20) and no catalogue (see make_ranking_metric_fn)."""


def seqio_rating_metrics(targets: Sequence[Any], predictions: Sequence[Any]
                         ) -> dict[str, float]:
    """SeqIO metric fn: RMSE/MAE of float ratings (``rating_postprocessor`` outputs)."""
    return rating_metrics([float(t) for t in targets], [float(p) for p in predictions])


def seqio_binary_metrics(targets: Sequence[Any], predictions: Sequence[Any]
                         ) -> dict[str, float]:
    """SeqIO metric fn: accuracy/precision/recall/F1 of 0/1 labels (-1 = unparsable)."""
    return binary_metrics([int(t) for t in targets], [int(p) for p in predictions])


def prefix_keys(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{"hr@10": x}`` -> ``{"prefix/hr@10": x}`` (empty prefix: unchanged)."""
    return {f"{prefix}/{k}" if prefix else k: v for k, v in metrics.items()}
