"""Semantic IDs: residual k-means codes of item content embeddings (TIGER-style).

Level 1 clusters the embeddings, level 2 clusters what level 1 left unexplained, and so on;
items with similar content share prefixes. TIGER learns the codebooks with an RQ-VAE; plain
residual k-means (RQ-KMeans) is the training-free variant and needs no accelerator. Items
whose three codes coincide get a fourth collision token ``<d0>``, ``<d1>``, … (always present,
so every ID has the same length). Uses item content only: it cannot see any interaction.

Embeddings come either from a ``.npy`` file (rows aligned with an item order the caller
saved, default the catalogue order) or from ``embed_fn(texts) -> array`` applied to
``item_text`` of every catalogue item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from flanrec.data.errors import DataError
from flanrec.data.indexing.core import ItemIndex
from flanrec.data.indexing.kmeans import kmeans
from flanrec.data.types import ItemMeta

LEVEL_PREFIXES = "abcdefgh"


def item_text(item: str, meta: ItemMeta | None) -> str:
    """The text an encoder embeds for an item: title, year, categories, brand, description."""
    if meta is None:
        return f"item {item}"
    parts = [meta.title.get(item, "") or f"item {item}"]
    if meta.year.get(item):
        parts.append(f"year: {meta.year[item]}")
    if meta.categories.get(item):
        parts.append("categories: " + ", ".join(meta.categories[item]))
    if meta.brand.get(item):
        parts.append(f"brand: {meta.brand[item]}")
    if meta.description.get(item):
        parts.append(meta.description[item])
    return "; ".join(parts)


def _read_items_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            items = json.load(f)
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{path}: expected a JSON list of item id strings")
            return items
        return [line.rstrip("\n") for line in f if line.strip()]


def load_embeddings(catalogue: Sequence[str], meta: ItemMeta | None,
                    embeddings: np.ndarray | str | os.PathLike[str] | None = None,
                    embedding_items: Sequence[str] | str | None = None,
                    embed_fn: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
    """Embeddings as float64 [len(catalogue), dim], rows in catalogue order."""
    if (embeddings is None) == (embed_fn is None):
        raise ValueError("semantic indexing needs exactly one of embeddings= (array or .npy "
                         "path) and embed_fn= (texts -> array)")
    source = "embed_fn"
    if embed_fn is not None:
        emb = np.asarray(embed_fn([item_text(i, meta) for i in catalogue]))
        rows = list(catalogue)
    else:
        if isinstance(embeddings, (str, os.PathLike)):
            source = os.fspath(embeddings)
            try:
                emb = np.load(source, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:  # not .npy, object arrays, truncated
                raise DataError(source, "a .npy file of numbers (numpy.save of an [items, "
                                "dim] float array)", got=" ".join(str(e).split()),
                                has_got=True) from None
            if not isinstance(emb, np.ndarray):  # an .npz archive
                emb.close()
                raise DataError(source, "a .npy file of numbers, not an .npz archive",
                                got="an archive of " + ", ".join(emb.files), has_got=True)
        else:
            source = "embeddings array"
            emb = np.asarray(embeddings)
        if embedding_items is None:
            rows = list(catalogue)
        elif isinstance(embedding_items, str):
            rows = _read_items_file(embedding_items)
        else:
            rows = list(embedding_items)
    if emb.ndim != 2 or emb.shape[0] != len(rows):
        raise DataError(source, f"a 2-D array with one row per item ({len(rows)})",
                        got=f"shape {emb.shape}", has_got=True)
    if emb.dtype == bool or not np.issubdtype(emb.dtype, np.number):
        raise DataError(source, "numbers (a float array)", got=f"dtype {emb.dtype}",
                        has_got=True)
    if np.iscomplexobj(emb):
        raise DataError(source, "real numbers", got=f"dtype {emb.dtype}", has_got=True)
    if not np.all(np.isfinite(emb)):
        bad = int(np.argwhere(~np.isfinite(emb))[0, 0])
        raise DataError(source, f"finite numbers, but row {bad} (item {rows[bad]!r}; rows "
                        "count from 0) is not finite")
    row_of = {item: r for r, item in enumerate(rows)}
    missing = [i for i in catalogue if i not in row_of]
    if missing:
        raise DataError(source, "a row for every catalogue item",
                        got=f"no embedding for {len(missing)} catalogue items", has_got=True,
                        hint=f"e.g. {missing[:3]}")
    return emb[[row_of[i] for i in catalogue]].astype(np.float64)


def semantic_index(catalogue: Sequence[str], meta: ItemMeta | None, seed: int,
                   levels: int = 3, codebook_size: int = 32, normalize: bool = True,
                   embeddings: np.ndarray | str | os.PathLike[str] | None = None,
                   embedding_items: Sequence[str] | str | None = None,
                   embed_fn: Callable[[list[str]], np.ndarray] | None = None) -> ItemIndex:
    """Residual k-means codes: ``levels`` levels of ``codebook_size`` plus a collision level.

    The default codebook (32) keeps 3*32 + collision tokens within Flan-T5's 128 free rows.
    """
    if not 1 <= levels < len(LEVEL_PREFIXES):
        raise ValueError(f"levels must be in 1..{len(LEVEL_PREFIXES) - 1}, got {levels}")
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
    x = load_embeddings(catalogue, meta, embeddings, embedding_items, embed_fn)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    residual = x - x.mean(0, keepdims=True)
    codes = np.zeros((len(catalogue), levels), dtype=np.int64)
    used_per_level = []
    for lvl in range(levels):
        labels, centers = kmeans(residual, codebook_size, rng)
        codes[:, lvl] = labels
        used_per_level.append(int(labels.max()) + 1 if len(labels) else 0)
        residual = residual - centers[labels]
    groups: dict[tuple[int, ...], int] = {}
    collision = np.zeros(len(catalogue), dtype=np.int64)
    for n, code in enumerate(map(tuple, codes.tolist())):
        collision[n] = groups.get(code, 0)
        groups[code] = collision[n] + 1
    last = LEVEL_PREFIXES[levels]
    item_to_id = {}
    for n, item in enumerate(catalogue):
        parts = [f"<{LEVEL_PREFIXES[lvl]}{codes[n, lvl]}>" for lvl in range(levels)]
        item_to_id[item] = "".join(parts) + f"<{last}{collision[n]}>"
    new_tokens = [f"<{LEVEL_PREFIXES[lvl]}{c}>" for lvl in range(levels)
                  for c in range(used_per_level[lvl])]
    new_tokens += [f"<{last}{c}>" for c in range(int(collision.max()) + 1 if len(catalogue)
                                                   else 0)]
    return ItemIndex(
        "semantic", item_to_id, new_tokens=new_tokens,
        collisions_resolved=int((collision > 0).sum()), seed=seed,
        options={"levels": levels, "codebook_size": codebook_size, "normalize": normalize,
                 "embedding_dim": int(x.shape[1]),
                 "max_collision_group": int(collision.max()) + 1 if len(catalogue) else 0,
                 "embeddings": (os.fspath(embeddings)
                                if isinstance(embeddings, (str, os.PathLike)) else None)},
    )
