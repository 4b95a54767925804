"""Item content embeddings from a T5 encoder, for semantic IDs (the prepare job's side).

TIGER-style semantic IDs are only as good as the embeddings the residual k-means clusters.
TF-IDF of titles and genres works offline with no model, but a pretrained encoder puts
"Toy Story" near "A Bug's Life" even when no word is shared. This module turns any checkpoint
`flanrec.api.load` understands (an HF directory, a T5X checkpoint, a flanrec checkpoint) into
``embed_fn(texts) -> float32 [n, d_model]``: mean of the final encoder states over the real
(non-padding) tokens. The prepare job calls it and hands the indexer the plain array
(``fit_index('semantic', ..., embeddings=array)``).

It lives outside ``flanrec.data`` on purpose: data preparation's indexers stay numpy-only and
never import the network or the checkpoint code; this module needs both (JAX only when
called).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class TextEncoder(Protocol):
    """What we need of a vocabulary: a seqio.Vocabulary (or SentencePieceProcessor) fits."""

    def encode(self, s: str) -> Sequence[int]: ...


def tokenize_texts(texts: Sequence[str], vocabulary: TextEncoder, max_length: int = 128,
                   vocab_size: int | None = None, eos_id: int | None = None,
                   pad_to_multiple: int = 8) -> np.ndarray:
    """int32 [len(texts), L]: token ids + EOS, right-padded with 0 and cut to ``max_length``.

    EOS is appended (and kept when cutting) because that is how every flanrec and Flan task
    feeds the encoder. L is the longest row rounded up to ``pad_to_multiple`` (at most
    ``max_length``), so one call compiles the encoder once. Ids outside ``vocab_size``
    mean the vocabulary is not the checkpoint's: raise rather than embed garbage.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a token and EOS), got {max_length}")
    if eos_id is None:
        eos_id = int(getattr(vocabulary, "eos_id", 1))
    rows = []
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{n}]: expected a string, got {type(text).__name__}")
        ids = [int(i) for i in vocabulary.encode(text)][: max_length - 1] + [eos_id]
        if vocab_size is not None and max(ids) >= vocab_size:
            raise ValueError(
                f"texts[{n}] ({text[:40]!r}) encodes to id {max(ids)}, but the encoder has only "
                f"{vocab_size} embedding rows: the vocabulary ({vocabulary}) is not the one the "
                "checkpoint was trained with")
        if min(ids) <= 0:
            raise ValueError(f"texts[{n}] ({text[:40]!r}) encodes to padding id 0; the "
                             "vocabulary must keep 0 for padding (T5 layout)")
        rows.append(ids)
    longest = max((len(r) for r in rows), default=1)
    length = min(max_length, -(-longest // pad_to_multiple) * pad_to_multiple)
    out = np.zeros((len(rows), length), np.int32)
    for n, ids in enumerate(rows):
        out[n, : len(ids)] = ids
    return out


@functools.cache
def _pooled_encoder(config: Any) -> Callable[[Any, Any], Any]:
    """Jitted ``(params, tokens) -> float32 [batch, d_model]`` mean over non-padding tokens.

    Cached per config (a frozen, hashable dataclass) so every batch shape compiles once.
    """
    import jax
    import jax.numpy as jnp

    from flanrec.model.network import Transformer  # lazy: JAX/Flax (2.8 s), for --semantic only

    model = Transformer(config)

    @jax.jit
    def pooled(params: Any, tokens: jax.Array) -> jax.Array:
        encoded = model.apply({"params": params}, tokens, method=Transformer.encode)
        mask = (tokens > 0).astype(jnp.float32)[..., None]
        total = jnp.sum(encoded.astype(jnp.float32) * mask, axis=1)
        return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    return pooled


def encode_mean_pooled(config: Any, params: Any, tokens: np.ndarray,
                       batch_size: int = 64) -> np.ndarray:
    """Mean-pooled encoder states of ``tokens`` [n, L] in fixed-shape batches (float32).

    The last batch is padded with one-EOS rows (never all-padding rows, which some attention
    implementations turn into NaN) and the padding rows are dropped, so all batches share
    one compiled shape.
    """
    import jax.numpy as jnp

    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n, length], got shape {tokens.shape}")
    n = tokens.shape[0]
    if n == 0:
        return np.zeros((0, config.d_model), np.float32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = min(batch_size, n)
    pooled = _pooled_encoder(config)
    out = np.empty((n, config.d_model), np.float32)
    for start in range(0, n, batch):
        chunk = tokens[start:start + batch]
        real = chunk.shape[0]
        if real < batch:
            filler = np.zeros((batch - real, tokens.shape[1]), np.int32)
            filler[:, 0] = 1
            chunk = np.concatenate([chunk, filler])
        out[start:start + real] = np.asarray(pooled(params, jnp.asarray(chunk)))[:real]
    return out


def t5_encoder_embed_fn(checkpoint_path: str | os.PathLike[str], vocabulary: TextEncoder,
                        batch_size: int = 64, max_length: int = 128,
                        dtype: str | None = None) -> Callable[[list[str]], np.ndarray]:
    """``embed_fn(texts) -> float32 [len(texts), d_model]`` from a T5 checkpoint's encoder.

    Loads the checkpoint once (``flanrec.api.load``: HF dir, T5X or flanrec checkpoint);
    ``vocabulary`` must be the one it was trained with (checked against its embedding rows).
    Use with ``fit_index('semantic', split, catalogue, meta, embed_fn=...)``, which feeds it
    ``item_text`` of every catalogue item.
    """
    from flanrec import api  # lazy: JAX/Flax/Orbax (3.3 s), for --semantic_encoder only

    # The caller's vocabulary, not the one the checkpoint may carry (an HF dir's spiece.model
    # read with HF's 100 extra ids can outnumber a small model's embedding rows).
    model = api.load(checkpoint_path, dtype=dtype, vocabulary=vocabulary)
    config, params = model.config, model.params

    def embed(texts: list[str]) -> np.ndarray:
        tokens = tokenize_texts(texts, vocabulary, max_length, vocab_size=config.vocab_size)
        return encode_mean_pooled(config, params, tokens, batch_size)

    embed.config = config  # type: ignore[attr-defined] - for callers that record the source
    return embed
