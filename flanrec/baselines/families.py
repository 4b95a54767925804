"""Baselines for the non-ranking families, in the same JSONL contract as `flanrec.infer`.

Each family the quickstart trains gets the simplest baseline a user would try first, scored
on exactly the examples the model answers:

* rating (``MODE=rating``): the user + item bias model (`flanrec.baselines.bias`);
* binary (``MODE=score``, p_yes): popularity (the item's training count) and the bias
  model's predicted rating, each as a score for "rated 4 or more" (AUC is rank-based),
  mapped so that p_yes 0.5 is the score from which the baseline says yes, chosen on the
  validation split: flanrec.eval's precision/recall/F1 (yes when p_yes >= 0.5) are then
  the baseline's own decisions, as they are the model's;
* direct (``MODE=score`` over the shown candidates): the candidates ranked by popularity.

Examples are read from the prepared task files (`flanrec.data.task_records`), so candidate
lists are the ones the model saw; labels and ratings come from the split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from flanrec.baselines import bias, popularity
from flanrec.data import families as families_lib
from flanrec.data import layout, prepared, task_records, types, writer
from flanrec.data.examples import LIKE_THRESHOLD


def _task_dirs(data_dir: str) -> dict[str, str]:
    """What the baselines answer -> a task dir of the prepared data: "rating" (a task whose
    targets are ratings), "binary" (yes/no) and "candidates" (one whose examples show a
    fixed candidate list; the first indexing's), each as its family declares."""
    doc = prepared.read_prepare_json(data_dir)
    suffix = (doc.get("index_suffixes") or ["seqidx"])[0]
    out: dict[str, str] = {}
    for dirname in sorted(doc.get("counts", {}).get("tasks", {})):
        info = writer.read_info(os.path.join(data_dir, layout.task_dir(dirname)))
        if info.get("family") not in families_lib.names():
            continue
        family = families_lib.get(info["family"])
        if family.indexed and info.get("indexing") != suffix:
            continue
        role = "candidates" if family.num_candidates is not None else family.target_kind
        if role in ("rating", "binary", "candidates"):
            out.setdefault(role, dirname)
    return out


def _record(task: str, stage: str, mode: str, index: int, user: str, item: str
            ) -> dict[str, Any]:
    return {"task": task, "split": stage, "mode": mode, "index": index, "user": user,
            "inputs": "", "targets": "", "target_item": item, "template_idx": -1,
            "template_type": ""}


def rating_rows(model: bias.BiasModel, split: types.Split, stage: str) -> list[dict]:
    rows = []
    for index, (user, item, r) in enumerate(bias.held_out(split, stage)):
        rec = _record("bias", stage, "rating", index, user, item)
        rec.update(expected_rating=model.predict(user, item), target_rating=r, targets=str(r))
        rows.append(rec)
    return rows


def yes_threshold(score: Any, split: types.Split) -> float | None:
    """The score from which a baseline answers yes ("rated 4 or more"), chosen on the
    validation split: the threshold with the best validation accuracy (ties: the lowest).
    None without validation ratings. Chosen on validation only, as the bias model's
    shrinkage is, so the test split's precision/recall/F1 are not tuned on it."""
    rows = sorted((float(score(u, i)), int(r >= LIKE_THRESHOLD))
                  for u, i, r in bias.held_out(split, "validation"))
    if not rows:
        return None
    positives = sum(y for _, y in rows)
    # Saying yes from rows[k] on: correct = negatives below k + positives from k on.
    best, best_correct = math.inf, len(rows) - positives  # never yes
    neg_below = pos_below = 0
    for k, (s, y) in enumerate(rows):
        if k == 0 or s != rows[k - 1][0]:
            correct = neg_below + positives - pos_below
            if correct > best_correct or (correct == best_correct and s < best):
                best, best_correct = s, correct
        neg_below += 1 - y
        pos_below += y
    return best


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def p_yes(s: float, low: float, high: float, threshold: float | None = None) -> float:
    """A score as p_yes in [0, 1], non-decreasing in the score (AUC is rank-based): linear
    from [low, high], or with a `threshold` each side of it in its own half, scores from
    the threshold on at 0.5 and above and those below under 0.5, so that flanrec.eval's
    yes (p_yes >= 0.5) is the baseline's own decision."""
    if threshold is None:
        return _unit((s - low) / (high - low)) if high > low else 0.5
    if s >= threshold:
        span = high - threshold
        return 0.5 + 0.5 * _unit((s - threshold) / span) if span > 0 else 1.0
    span = threshold - low if math.isfinite(threshold) and threshold > low else high - low
    return 0.499 * _unit((s - low) / span) if span > 0 else 0.0


def binary_rows(name: str, score: Any, split: types.Split, stage: str, low: float,
                high: float, threshold: float | None = None) -> list[dict]:
    """`score(user, item)` mapped from [low, high] onto p_yes in [0, 1] (`p_yes`):
    linearly, or with `threshold` (`yes_threshold`) at p_yes 0.5."""
    rows = []
    for index, (user, item, r) in enumerate(bias.held_out(split, stage)):
        p = p_yes(float(score(user, item)), low, high, threshold)
        rec = _record(name, stage, "score", index, user, item)
        label = int(r >= LIKE_THRESHOLD)
        rec.update(candidates=["no", "yes"], scores=[1.0 - p, p], p_yes=p, label=label,
                   targets="yes" if label else "no")
        rows.append(rec)
    return rows


def direct_rows(split: types.Split, data_dir: str, task_dir: str, stage: str) -> list[dict]:
    """The prepared direct task's candidates, ranked by training popularity."""
    counts = popularity.train_counts(split)
    rows = []
    for index, ex in enumerate(task_records.read_task_split(data_dir, task_dir, stage)):
        cands: Sequence[str] = ex["candidates"]
        rec = _record("popularity_direct", stage, "score", index, ex["user"],
                      ex["target_item"])
        rec.update(candidates=list(cands), scores=[float(counts.get(c, 0)) for c in cands])
        rows.append(rec)
    return rows


def all_rows(split: types.Split, data_dir: str, stage: str
             ) -> tuple[dict[str, tuple[str, list[dict]]], dict[str, Any]]:
    """{baseline task: (mode, rows)} for every family the prepared dir has, plus info."""
    dirs = _task_dirs(data_dir)
    out: dict[str, tuple[str, list[dict]]] = {}
    info: dict[str, Any] = {}
    if "rating" in dirs or "binary" in dirs:
        model, grid = bias.fit_on_validation(split)
        info["bias"] = {"reg_user": model.reg_user, "reg_item": model.reg_item,
                        "grid": grid, "chosen_on": "validation RMSE"}
        if "rating" in dirs:
            out["bias"] = ("rating", rating_rows(model, split, stage))
        if "binary" in dirs:
            counts = popularity.train_counts(split)

            def count(user: str, item: str) -> float:
                return float(counts.get(item, 0))

            info["binary_yes_thresholds"] = {}
            for name, score, low, high in (
                    ("popularity_binary", count, 0.0, float(max(counts.values()) or 1)),
                    ("bias_binary", model.predict, 1.0, 5.0)):
                threshold = yes_threshold(score, split)
                info["binary_yes_thresholds"][name] = {
                    "score_at_p_yes_0.5": threshold,
                    "chosen_on": "validation accuracy"}
                out[name] = ("score", binary_rows(name, score, split, stage, low, high,
                                                  threshold))
    if "candidates" in dirs:
        out["popularity_direct"] = ("score", direct_rows(split, data_dir, dirs["candidates"],
                                                         stage))
    return out, info
