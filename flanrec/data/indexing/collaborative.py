"""Collaborative IDs: recursive spectral clustering of the training co-occurrence graph.

Items that the same users consume end up sharing ID prefixes, so the decoder's first tokens
pick a "neighbourhood" and later tokens refine it (OpenP5's CID). The graph is built from the
training sequences only; items absent from training are isolated nodes and land wherever
the regularisation puts them, never next to their test-time neighbours.

ID = one ``<cK>`` token per level of clusters, then a within-leaf index token ``<cJ>``; a
cluster is split into ``n_clusters`` parts until it holds at most ``max_leaf`` items. All
levels share one token namespace ``<c0>`` … ``<c{max(n_clusters, max_leaf)-1}>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg

from flanrec.data.indexing.core import ItemIndex
from flanrec.data.indexing.kmeans import kmeans

DENSE_EIGH_MAX = 200  # above this many items per cluster, use Lanczos on a sparse operator


def cooccurrence(sequences: list[list[str]], pos: dict[str, int]) -> sp.csr_matrix:
    """Symmetric item x item counts of users who consumed both (diagonal zero)."""
    rows, cols = [], []
    for u, seq in enumerate(sequences):
        for item in set(seq):
            rows.append(u)
            cols.append(pos[item])
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                      shape=(max(len(sequences), 1), len(pos)))
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    return c


def _spectral_embedding(w: sp.csr_matrix, k: int, rng: np.random.Generator) -> np.ndarray:
    """Top-k eigenvectors of the regularised normalised affinity, rows L2-normalised.

    Regularisation (Amini et al. 2013: add tau/n to every entry, tau = mean degree) keeps the
    graph connected, so isolated items (e.g. never in training) do not each grab their own
    eigenvector and the split stays balanced enough to recurse.
    """
    n = w.shape[0]
    deg = np.asarray(w.sum(1)).ravel()
    tau = max(float(deg.mean()), 1e-3)
    d = deg + tau  # degrees of W + tau/n * 11^T
    inv_sqrt = 1.0 / np.sqrt(d)
    if n <= DENSE_EIGH_MAX:  # small: exact dense solver
        m = w.toarray() + tau / n
        m = inv_sqrt[:, None] * m * inv_sqrt[None, :]
        _, vecs = np.linalg.eigh(m)  # ascending; full solve is cheap at this size
        vecs = vecs[:, n - k:]
    else:  # large: Lanczos on the never-materialised regularised matrix
        def matvec(v: np.ndarray) -> np.ndarray:
            v = v.ravel() * inv_sqrt
            return inv_sqrt * (w @ v + tau / n * v.sum())

        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = rng.standard_normal(n)  # seeded start vector: eigsh is otherwise random
        vals, vecs = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=v0, tol=1e-8)
        vecs = vecs[:, np.argsort(vals)]
    vecs = vecs[:, ::-1]
    # An eigenvector's sign is arbitrary; fix it so the largest entry is positive.
    flip = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(flip == 0, 1.0, flip)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def _split(w: sp.csr_matrix, k: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 0..k'-1 (k' >= 2) for one cluster; falls back to equal chunks if degenerate."""
    n = w.shape[0]
    labels = None
    if n > k + 1:
        emb = _spectral_embedding(w, k, rng)
        labels, _ = kmeans(emb, k, rng, n_init=2)
    if labels is None or labels.max() < 1:
        # Spectral clustering found no structure (e.g. all items isolated): split evenly by
        # catalogue order so recursion still terminates.
        labels = (np.arange(n) * k) // n
    return labels


def collaborative_index(sequences: list[list[str]], catalogue: Sequence[str],
                        pos: dict[str, int], seed: int, n_clusters: int = 20,
                        max_leaf: int = 20, token_prefix: str = "c") -> ItemIndex:
    if n_clusters < 2 or max_leaf < 1:
        raise ValueError(f"need n_clusters >= 2 and max_leaf >= 1, got {n_clusters}, {max_leaf}")
    rng = np.random.default_rng(seed)
    w_all = cooccurrence(sequences, pos)
    codes: dict[int, list[int]] = {}
    collisions = 0
    max_depth = 0
    # Depth-first, children in label order: the result depends only on (data, seed).
    stack: list[tuple[np.ndarray, list[int]]] = [(np.arange(len(catalogue)), [])]
    while stack:
        members, prefix = stack.pop()
        if len(members) <= max_leaf:
            for j, m in enumerate(members.tolist()):
                codes[m] = prefix + [j]
            collisions += len(members) - 1
            max_depth = max(max_depth, len(prefix) + 1)
            continue
        w = w_all[members][:, members].tocsr()
        labels = _split(w, min(n_clusters, len(members)), rng)
        children = [(members[labels == c], prefix + [c]) for c in range(labels.max() + 1)]
        stack.extend(reversed(children))
    tok = [f"<{token_prefix}{i}>" for i in range(max(n_clusters, max_leaf))]
    item_to_id = {item: "".join(tok[c] for c in codes[n]) for n, item in enumerate(catalogue)}
    used = sorted({c for code in codes.values() for c in code})
    return ItemIndex(
        "collaborative", item_to_id, new_tokens=[tok[i] for i in range(used[-1] + 1)],
        collisions_resolved=collisions, seed=seed,
        options={"n_clusters": n_clusters, "max_leaf": max_leaf, "max_depth": max_depth,
                 "token_prefix": token_prefix},
    )
