"""The user + item bias rating model: the simplest baseline a rating predictor must beat.

    r_hat(u, i) = mu + b_u + b_i

fitted on the training ratings (``i_1 .. i_{n-2}``, never the held-out ones) by alternating
closed-form ridge updates (Koren, "Factor in the neighbors", 2008, section 2.1). The two
shrinkage strengths are chosen on the validation ratings from a small grid, so nothing is
tuned on test. It is also the honest reference for the binary family ("will the user rate it
4 or more?"): its predicted rating ranks the held-out items for AUC.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from flanrec.data import types

SHRINKAGE_GRID = (1.0, 3.0, 10.0, 25.0, 50.0)
ITERATIONS = 15


@dataclasses.dataclass(frozen=True)
class BiasModel:
    mu: float
    user_bias: dict[str, float]
    item_bias: dict[str, float]
    reg_user: float
    reg_item: float

    def predict(self, user: str, item: str, clip: tuple[float, float] = (1.0, 5.0)) -> float:
        r = self.mu + self.user_bias.get(user, 0.0) + self.item_bias.get(item, 0.0)
        return float(min(max(r, clip[0]), clip[1]))


def _train_triples(split: types.Split) -> tuple[list[str], list[str], np.ndarray]:
    users, items, ratings = [], [], []
    for s in split.users:
        for item, r in zip(s.train_items, s.train_ratings, strict=False):
            if r is not None and math.isfinite(r):
                users.append(s.user)
                items.append(item)
                ratings.append(float(r))
    if not ratings:
        raise ValueError("the split has no training ratings (a log without a rating column)")
    return users, items, np.asarray(ratings, np.float64)


def fit(split: types.Split, reg_user: float, reg_item: float,
        iterations: int = ITERATIONS) -> BiasModel:
    """Alternating ridge updates of item then user biases around the global mean."""
    users, items, r = _train_triples(split)
    u_names, u_idx = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    i_names, i_idx = np.unique(np.asarray(items, dtype=object), return_inverse=True)
    mu = float(r.mean())
    bu = np.zeros(len(u_names))
    bi = np.zeros(len(i_names))
    n_u = np.bincount(u_idx, minlength=len(u_names))
    n_i = np.bincount(i_idx, minlength=len(i_names))
    for _ in range(iterations):
        bi = np.bincount(i_idx, weights=r - mu - bu[u_idx], minlength=len(i_names)) / (
            reg_item + n_i)
        bu = np.bincount(u_idx, weights=r - mu - bi[i_idx], minlength=len(u_names)) / (
            reg_user + n_u)
    return BiasModel(mu, dict(zip(u_names.tolist(), bu.tolist(), strict=True)),
                     dict(zip(i_names.tolist(), bi.tolist(), strict=True)), reg_user, reg_item)


def held_out(split: types.Split, stage: str) -> list[tuple[str, str, float]]:
    """(user, item, rating) of each user's held-out interaction of ``stage``, in split order
    (users without a finite rating skipped): the rating family's evaluation examples."""
    out = []
    for s in split.users:
        item, r = ((s.valid_item, s.valid_rating) if stage == "validation"
                   else (s.test_item, s.test_rating))
        if item is not None and r is not None and math.isfinite(r):
            out.append((s.user, item, float(r)))
    return out


def rmse(model: BiasModel, rows: Sequence[tuple[str, str, float]]) -> float:
    err = [(model.predict(u, i) - r) ** 2 for u, i, r in rows]
    return float(math.sqrt(sum(err) / max(len(err), 1)))


def fit_on_validation(split: types.Split, grid: Sequence[float] = SHRINKAGE_GRID
                      ) -> tuple[BiasModel, list[dict[str, float]]]:
    """The grid point with the lowest validation RMSE (ties: the first); with the grid."""
    valid = held_out(split, "validation")
    if not valid:
        raise ValueError("no validation ratings to choose the shrinkage on")
    results, best = [], None
    for ru, ri in itertools.product(grid, grid):
        m = fit(split, ru, ri)
        e = rmse(m, valid)
        results.append({"reg_user": ru, "reg_item": ri, "valid_rmse": e})
        if best is None or e < best[0]:
            best = (e, m)
    assert best is not None
    return best[1], results
