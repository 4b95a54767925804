"""The non-ranking families' baselines: the bias model by hand, and the JSONL they write."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flanrec.baselines import bias, families
from flanrec.data import types


def _split(rng: np.random.Generator, users: int = 60, items: int = 20) -> types.Split:
    """Ratings = 3 + user effect + item effect + noise, clipped to 1..5."""
    ue, ie = rng.normal(0, 0.7, users), rng.normal(0, 0.7, items)
    out = []
    for u in range(users):
        seq = rng.choice(items, size=10, replace=False)
        r = [float(np.clip(round(3 + ue[u] + ie[i] + rng.normal(0, 0.3)), 1, 5)) for i in seq]
        out.append(types.UserSequence(
            user=str(u), train_items=[str(i) for i in seq[:8]], valid_item=str(seq[8]),
            test_item=str(seq[9]), train_ratings=r[:8], valid_rating=r[8], test_rating=r[9]))
    return types.Split(users=out, all_items=[str(i) for i in range(items)])


def test_bias_model_fits_the_closed_form_and_beats_the_global_mean():
    split = _split(np.random.default_rng(0))
    m = bias.fit(split, 5.0, 5.0, iterations=50)
    # At convergence every item bias solves its ridge equation given the user biases.
    by_item: dict[str, list[float]] = {}
    for s in split.users:
        for i, r in zip(s.train_items, s.train_ratings, strict=True):
            by_item.setdefault(i, []).append(r - m.mu - m.user_bias[s.user])
    for i, resid in by_item.items():
        assert m.item_bias[i] == pytest.approx(sum(resid) / (5.0 + len(resid)), abs=1e-6)
    test = bias.held_out(split, "test")
    mean_rmse = math.sqrt(np.mean([(m.mu - r) ** 2 for _, _, r in test]))
    assert bias.rmse(m, test) < mean_rmse


def test_shrinkage_is_chosen_on_validation():
    split = _split(np.random.default_rng(1))
    m, grid = bias.fit_on_validation(split)
    best = min(grid, key=lambda g: g["valid_rmse"])
    assert (m.reg_user, m.reg_item) == (best["reg_user"], best["reg_item"])
    assert len(grid) == len(bias.SHRINKAGE_GRID) ** 2


def test_binary_rows_label_from_the_split_and_rank_by_the_score():
    split = _split(np.random.default_rng(2))
    m = bias.fit(split, 5.0, 5.0)
    rows = families.binary_rows("bias_binary", m.predict, split, "test", 1.0, 5.0)
    assert len(rows) == len(split.users)
    for row, s in zip(rows, split.users, strict=True):
        assert row["label"] == int(s.test_rating >= 4)
        assert row["p_yes"] == pytest.approx((m.predict(s.user, s.test_item) - 1) / 4)
        assert row["mode"] == "score" and row["candidates"] == ["no", "yes"]
