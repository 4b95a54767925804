"""Seeded k-means (k-means++ start, Lloyd steps) in numpy, shared by the clustering indexers.

Written here rather than taken from scikit-learn to keep the data path free of heavy
dependencies and to pin down determinism: the result depends only on the data and the
numpy Generator passed in. Cluster labels are renumbered by the first point (in input order)
that carries them, so a permutation of k-means' internal labels cannot change any ID.
"""

from __future__ import annotations

import numpy as np


def _sq_dists(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100,
           n_init: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Cluster rows of ``x`` into at most ``k`` groups. Returns (labels [n], centers [k', d]).

    k' = min(k, number of distinct rows); labels are canonical (0 is the first row's cluster,
    1 the next new one in row order, ...), and centers are in that label order.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, x.shape[1]))
    k = int(min(k, len(np.unique(x, axis=0))))
    best_labels, best_centers, best_inertia = None, None, np.inf
    for _ in range(max(1, n_init)):
        centers = _plusplus(x, k, rng)
        labels = np.full(n, -1)
        for _ in range(iters):
            d = _sq_dists(x, centers)
            new = d.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = labels == c
                if members.any():
                    centers[c] = x[members].mean(0)
                else:  # empty cluster: restart it on the point worst served now
                    far = int(d.min(1).argmax())
                    centers[c] = x[far]
                    labels[far] = c
        inertia = float(_sq_dists(x, centers)[np.arange(n), labels].sum())
        if inertia < best_inertia - 1e-12:
            best_labels, best_centers, best_inertia = labels.copy(), centers.copy(), inertia
    return canonical_labels(best_labels, best_centers)


def _plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centers = [x[int(rng.integers(n))]]
    closest = _sq_dists(x, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            # every point coincides with a center; pick a point not yet used as a center
            used = {tuple(c) for c in centers}
            idx = next(i for i in range(n) if tuple(x[i]) not in used)
        else:
            idx = int(rng.choice(n, p=closest / total))
        centers.append(x[idx])
        closest = np.minimum(closest, _sq_dists(x, x[idx][None])[:, 0])
    return np.array(centers, dtype=np.float64)


def canonical_labels(labels: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber labels by first appearance; drop centers no point uses."""
    order: dict[int, int] = {}
    for lab in labels.tolist():
        if lab not in order:
            order[lab] = len(order)
    mapping = np.array([order.get(c, -1) for c in range(centers.shape[0])])
    new_centers = np.zeros((len(order), centers.shape[1]))
    for old, new in order.items():
        new_centers[new] = centers[old]
    return mapping[labels], new_centers
