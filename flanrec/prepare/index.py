"""The prepare job's item indexing: fit every requested indexing and place its new tokens.

Separate from the job's orchestration (`flanrec.prepare`) because it is the one step that
may need a model: semantic IDs embed item text with TF-IDF, a user's .npy, or a T5 encoder
(`flanrec.prepare.embeddings`). Whatever the source, the indexer in `flanrec.data.indexing`
gets a plain array, so data/ never imports the network or the checkpoint code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flanrec.data import prepared_write
from flanrec.data.indexing import fit_index, item_text, token_slot_map
from flanrec.errors import UserError
from flanrec.prepare.embeddings import t5_encoder_embed_fn

if TYPE_CHECKING:
    import numpy as np

    from flanrec.data.indexing import ItemIndex
    from flanrec.data.types import ItemMeta, Split
    from flanrec.prepare.options import PrepareOptions


def tfidf_embed(texts: Sequence[str], dim: int = 64) -> np.ndarray:
    """Offline content embeddings for semantic IDs: TF-IDF of the item text, reduced by SVD.

    No pretrained encoder is needed (or available offline); titles, years and genres are
    enough for ml-100k's residual k-means to put similar movies under shared prefixes. For
    better IDs use a T5 encoder (`--semantic_encoder CKPT`) or your own embeddings
    (`--semantic_embeddings items.npy`).
    """
    import re

    import numpy as np

    docs = [re.findall(r"[a-z0-9']+", t.lower()) for t in texts]
    vocab = {w: j for j, w in enumerate(sorted({w for d in docs for w in d}))}
    tf_ = np.zeros((len(docs), max(len(vocab), 1)))
    for i, d in enumerate(docs):
        for w in d:
            tf_[i, vocab[w]] += 1.0
    df = (tf_ > 0).sum(0)
    x = tf_ * np.log((1 + len(docs)) / (1 + df))[None, :]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    u, sv, _ = np.linalg.svd(x - x.mean(0, keepdims=True), full_matrices=False)
    k = min(dim, u.shape[1])
    return u[:, :k] * sv[:k]


def semantic_embedding_source(opts: PrepareOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fit_index kwargs, the record for prepare.json) of the semantic IDs' embeddings.

    Encoder > user .npy > TF-IDF: TF-IDF is only the offline fallback when neither is given.
    """
    npy = opts.semantic_embeddings if opts.semantic_embeddings != "tfidf" else None
    if opts.semantic_encoder and npy:
        raise UserError("semantic IDs: give --semantic_encoder or --semantic_embeddings, "
                        "not both")
    if opts.semantic_embedding_items and not npy:
        raise UserError("--semantic_embedding_items names the rows of a "
                        "--semantic_embeddings .npy file; no .npy was given")
    if opts.semantic_encoder:
        import seqio

        from flanrec.data import vocab as vocab_lib  # lazy: TF + seqio (12 s); fast --help

        if not os.path.exists(opts.semantic_encoder):
            raise UserError(f"--semantic_encoder {opts.semantic_encoder}: no such checkpoint")
        spm = vocab_lib.checkpoint_vocab_path(opts.semantic_encoder_vocab, opts.semantic_encoder)
        fn = t5_encoder_embed_fn(opts.semantic_encoder,
                                 seqio.SentencePieceVocabulary(spm, extra_ids=0),
                                 batch_size=opts.semantic_batch_size,
                                 max_length=opts.semantic_max_length)
        return {"embed_fn": fn}, {
            "source": "t5_encoder", "checkpoint": opts.semantic_encoder, "vocabulary": spm,
            "pooling": "mean over non-padding encoder outputs",
            "max_length": opts.semantic_max_length}
    if npy:
        if not os.path.isfile(npy):
            raise UserError(f"--semantic_embeddings {npy}: no such file")
        return {"embeddings": npy, "embedding_items": opts.semantic_embedding_items}, {
            "source": "npy", "path": npy, "items": opts.semantic_embedding_items}
    return {"embed_fn": tfidf_embed}, {"source": "tfidf"}


def _embedded(kwargs: dict[str, Any], catalogue: Sequence[str],
              meta: ItemMeta) -> dict[str, Any]:
    """`embed_fn` applied here, so the indexer gets a plain array (in catalogue order)."""
    import numpy as np

    fn = kwargs.pop("embed_fn", None)
    if fn is not None:
        kwargs["embeddings"] = np.asarray(fn([item_text(i, meta) for i in catalogue]))
    return kwargs


def fit_indexes(split: Split, meta: ItemMeta, opts: PrepareOptions, index_root: str,
                sp_size: int = 32000) -> tuple[dict[str, ItemIndex], dict[str, int]]:
    """Fit every requested indexing on train sequences only; one shared token-slot map.

    All indexings of one dir share one vocabulary, so their new tokens are placed on slots
    together (`token_slot_map` of the union) from id `sp_size` (the SentencePiece model's
    piece count: 32000 for Flan-T5) over the 128 rows above it; too many raises with the
    counts (then prepare the indexings into separate dirs).
    """

    indexes = {}
    for method in opts.indexing:
        kwargs: dict[str, Any] = {}
        if method == "semantic":
            kwargs, source = semantic_embedding_source(opts)
            kwargs = _embedded(kwargs, split.all_items, meta)
        indexes[method] = fit_index(method, split, split.all_items, meta, seed=opts.seed,
                                    **kwargs)
        if method == "semantic":
            source["dim"] = indexes[method].options["embedding_dim"]
            indexes[method].options["embedding_source"] = source
    union = list(dict.fromkeys(t for ix in indexes.values() for t in ix.new_tokens))
    slots = token_slot_map(union, vocab_size=sp_size + 128, sp_size=sp_size) if union else {}
    os.makedirs(index_root, exist_ok=True)
    for method, ix in indexes.items():
        ix.save(os.path.join(index_root, method),
                slot_map={t: slots[t] for t in ix.new_tokens} if ix.new_tokens else None,
                vocab_size=sp_size + 128, sp_size=sp_size)
    if slots:
        prepared_write.write_token_slots(index_root, slots, vocab_size=sp_size + 128,
                                         sp_size=sp_size)
    return indexes, slots
