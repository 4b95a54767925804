"""Notebook-friendly API: load any supported checkpoint and score or generate with numpy.

    model = flanrec.api.load("path/to/flan-t5-small")      # HF dir, T5X or flanrec checkpoint
    logits = model.logits(enc, dec_in)                       # [batch, len, vocab] float32
    ll = model.score(enc, targets)                           # summed log-likelihood [batch]
    out = model.generate(enc, max_length=16, num_beams=4)   # [batch, 4, 16] int32

Inputs are integer token arrays padded with 0; outputs are numpy. Each method is jitted once
per input shape, so batching with fixed shapes avoids recompiles.

Text in, text out, when the checkpoint carries its vocabulary (`flanrec.interop.vocabulary`:
a training MODEL_DIR, a converted checkpoint, an HF dir with spiece.model) or one is given
with `load(path, vocabulary=...)`:

    model.generate_text(["Here is what user 42 watched: ...; which movie next?"])  # [str]
    model.score_text(["inputs ..."], ["target text"])                              # [batch]
    model.encode(["some text"]); model.decode(ids)

Texts are tokenized exactly as the tasks tokenize them (the seqio vocabulary, EOS appended).

A checkpoint of a TUNING='prompt'|'lora' run loads the same way: its frozen backbone (the
path stored in the checkpoint, or `backbone=`) plus the adapters; LoRA is merged into the
kernels unless `merge_lora=False`, a soft prompt stays part of the model's config.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flanrec.checkpoints.loading import load_params_any
from flanrec.interop import vocabulary as vocab_files
from flanrec.model import decoding
from flanrec.model.adapters import adapter_specs, check_all_params
from flanrec.model.config import T5Config
from flanrec.model.network import Transformer
from flanrec.model.params import check_params, flatten


def shift_right(targets: np.ndarray | jax.Array, start_token: int = 0) -> jax.Array:
    """T5 decoder inputs: the targets shifted one step right behind the start token."""
    targets = jnp.asarray(targets)
    start = jnp.full(targets.shape[:-1] + (1,), start_token, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def _logits(config: T5Config, params: Any, enc: jax.Array, dec_in: jax.Array) -> jax.Array:
    return Transformer(config).apply({"params": params}, enc, dec_in)


@functools.partial(jax.jit, static_argnames=("config",))
def _score(config: T5Config, params: Any, enc: jax.Array, targets: jax.Array) -> jax.Array:
    dec_in = shift_right(targets, config.decoder_start_token_id)
    logits = Transformer(config).apply({"params": params}, enc, dec_in, targets)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(targets > 0, token_logp, 0.0), axis=-1)


class FlanT5Model:
    """A loaded model: `.config`, `.params` (nested dict of arrays), `.vocabulary` (a seqio
    vocabulary or None) and numpy-in/out methods; the `*_text` methods need the vocabulary."""

    def __init__(self, config: T5Config, params: Any, vocabulary: Any = None) -> None:
        if adapter_specs(config):
            check_all_params(flatten(params), config, "FlanT5Model params")
        else:
            check_params(flatten(params), config, "FlanT5Model params")
        if vocabulary is not None and vocabulary.vocab_size > config.vocab_size:
            raise ValueError(f"vocabulary {vocabulary} has {vocabulary.vocab_size} ids but the "
                             f"model embeds only {config.vocab_size}: it is not this model's")
        self.config = config
        self.params = jax.tree.map(jnp.asarray, params)
        self.vocabulary = vocabulary

    # ------------------------------------------------------------------ text
    def _vocab(self) -> Any:
        if self.vocabulary is None:
            raise ValueError("this checkpoint carries no vocabulary (no spiece.model next to "
                             "it): pass one, e.g. flanrec.load(path, vocabulary='data/ml-100k') "
                             "(a prepared dir, a dir with spiece.model or a .model file), or "
                             "use the token-id methods")
        return self.vocabulary

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """int32 [batch, length] token ids of `texts` with EOS, 0-padded (the tasks' own
        tokenization). `max_length` truncates before the EOS, as seqio's
        `append_eos_after_trim`; the width is rounded up to a multiple of 8 (fewer shapes,
        fewer compilations)."""
        vocab = self._vocab()
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        rows = []
        for text in texts:
            ids = list(vocab.encode(text))
            if max_length is not None:
                ids = ids[: max_length - 1]
            rows.append(ids + [int(vocab.eos_id)])
        width = max(8, -(-max(len(r) for r in rows) // 8) * 8) if rows else 8
        out = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def decode(self, ids: Any) -> str | list[str]:
        """Text of one id sequence (cut at the first EOS, padding dropped), or a list for a
        [batch, length] array."""
        vocab = self._vocab()
        arr = np.asarray(ids)
        if arr.ndim > 1:
            return [self.decode(row) for row in arr]
        seq = [int(t) for t in arr.tolist()]
        if vocab.eos_id in seq:
            seq = seq[: seq.index(vocab.eos_id)]
        return vocab.decode([t for t in seq if t > 0])

    def generate_text(self, texts: Sequence[str], max_length: int = 32, num_beams: int = 1,
                      input_length: int | None = None, length_penalty: float = 0.0,
                      all_beams: bool = False) -> list[str] | list[list[str]]:
        """Generated text for each input text: the best beam, or every beam (best first)
        with `all_beams`. `input_length` truncates the inputs (default: no truncation)."""
        seqs = self.generate(self.encode(texts, input_length), max_length, num_beams,
                             length_penalty)
        if num_beams == 1:
            return [self.decode(row) for row in seqs]
        beams = [[self.decode(b) for b in row] for row in seqs]
        return beams if all_beams else [row[0] for row in beams]

    def score_text(self, inputs: Sequence[str], targets: Sequence[str],
                   input_length: int | None = None) -> np.ndarray:
        """Summed log-likelihood of each target text (with its EOS) given its input, [batch]."""
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        return self.score(self.encode(inputs, input_length), self.encode(targets))

    def logits(self, encoder_tokens: np.ndarray, decoder_input_tokens: np.ndarray) -> np.ndarray:
        """float32 logits [batch, decoder_len, vocab]."""
        return np.asarray(_logits(self.config, self.params, _tokens(encoder_tokens),
                                  _tokens(decoder_input_tokens)))

    def score(self, encoder_tokens: np.ndarray, target_tokens: np.ndarray) -> np.ndarray:
        """Summed log-likelihood of each target sequence (padding 0 excluded), [batch]."""
        return np.asarray(_score(self.config, self.params, _tokens(encoder_tokens),
                                 _tokens(target_tokens)))

    def generate(self, encoder_tokens: np.ndarray, max_length: int, num_beams: int = 1,
                 length_penalty: float = 0.0, constraint: Any = None,
                 return_scores: bool = False) -> Any:
        """Greedy (num_beams=1): int32 [batch, max_length]; beam search: [batch, beams,
        max_length], best first. With `return_scores`, also the summed log-probs
        ([batch] or [batch, beams]). `constraint`: see `flanrec.model.decoding`."""
        enc = _tokens(encoder_tokens)
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if num_beams == 1:
            seqs, scores = decoding.greedy_decode(self.config, self.params, enc, max_length,
                                                  constraint)
        else:
            seqs, scores = decoding.beam_search(self.config, self.params, enc, max_length,
                                                num_beams, length_penalty, constraint)
        seqs, scores = np.asarray(seqs), np.asarray(scores)
        return (seqs, scores) if return_scores else seqs


def _tokens(x: Any) -> jax.Array:
    arr = np.asarray(x)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer tokens of shape [batch, length], got "
                         f"{arr.dtype} {arr.shape}")
    return jnp.asarray(arr, jnp.int32)


def load(path: str | os.PathLike[str], dtype: str | None = None, *, merge_lora: bool = True,
         backbone: str | os.PathLike[str] | None = None, vocabulary: Any = None
         ) -> FlanT5Model:
    """Load a model for scoring/generation; `dtype` ('float32'/'bfloat16') sets activations.

    `merge_lora`/`backbone`: for checkpoints of LoRA / prompt runs (see the module doc).
    `vocabulary`: for the text methods; default the one the checkpoint carries (for an
    adapter run, its MODEL_DIR's, else its backbone's); a prepared data dir, a dir with
    spiece.model or a `.model` file; or a seqio vocabulary object."""
    config, params = load_params_any(path, merge_lora=merge_lora, backbone=backbone)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    return FlanT5Model(config, params, _resolve_vocabulary(path, vocabulary, backbone))


def _resolve_vocabulary(path: str | os.PathLike[str], vocabulary: Any,
                        backbone: str | os.PathLike[str] | None) -> Any:
    if vocabulary is not None and not isinstance(vocabulary, str | os.PathLike):
        return vocabulary

    if vocabulary is not None:
        return vocab_files.from_path(vocabulary)
    for candidate in (path, backbone):
        if candidate is not None and vocab_files.vocabulary_dir(candidate) is not None:
            return vocab_files.checkpoint_vocabulary(candidate)
    return None
