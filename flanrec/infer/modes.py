"""The three inference computations, as numpy-in/numpy-out functions anyone can call.

* ``predict_topk``: beam search constrained by the item trie, with each row's seen items
  removed *inside* the trie (a branch whose items are all excluded is never entered), so the
  K beams end on K distinct allowed items. One jitted program per batch shape: encoder, cache
  set-up and the ``lax.while_loop``; the trie is an argument (a pytree of arrays), so new
  per-user masks do not recompile.
* ``score_candidates``: summed log-likelihood of given target sequences; the encoder runs
  once per input and candidates go through the decoder in fixed-size blocks (a fixed block
  shape keeps one compiled program however many candidates a task has).
* ``NextItemRanker``: the same top-K as ``TriePredictor`` for tasks whose items are each one
  token and whose target is one item after a (possibly empty) decoder prefix (the seqrec
  family): one teacher-forced forward pass, the log-softmax over the whole vocabulary at the
  prefix's last position, the catalogue's token columns, seen items masked, ``top_k``. A
  one-token item's beam-search score is exactly that log-probability, so both give the same
  items and scores; the forward pass skips the trie, the K beams and the per-token loop.
* ``answer_distribution``: a softmax over the scores of a closed answer set ("1".."5" for
  ratings, "no"/"yes" for the binary family); the expected rating and p(yes) come from it.

``items_from_beams`` turns decoded beams into catalogue items, counting (never hiding)
beams that are not an item or repeat one.

* ``decode_free``: free decoding over the whole vocabulary, no trie (T5X's infer `predict`):
  greedy for one beam, else beam search; ``texts_from_beams`` turns the beams into text.
  What any task gets whose answer is text, and any other task when asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flanrec.data.trie import TrieArrays
from flanrec.infer.constraints import JaxTrie, SparseJaxTrie, TrieConstraint, to_jax
from flanrec.model import decoding
from flanrec.model.config import T5Config
from flanrec.model.network import Transformer


class ItemDecoder:
    """Token sequences <-> catalogue items for one vocabulary and one item indexing.

    ``items[j]`` is item number j (the trie's order); ``id_strings[j]`` its ID string;
    ``encode`` the vocabulary's string -> token ids. A decoded beam is looked up by its exact
    tokens first; with ``decode`` given, a beam whose tokens are not canonical but whose text
    normalises to an ID string still counts as that item (what a text postprocessor would do).
    """

    def __init__(self, items: Sequence[str], id_strings: Sequence[str],
                 encode: Callable[[str], Sequence[int]],
                 decode: Callable[[Sequence[int]], str] | None = None):
        if len(items) != len(id_strings):
            raise ValueError(f"{len(items)} items but {len(id_strings)} ID strings")
        self.items = list(items)
        self.id_strings = list(id_strings)
        self.by_tokens = {tuple(int(t) for t in encode(s)): j for j, s in enumerate(id_strings)}
        self.by_text = {" ".join(s.split()): j for j, s in enumerate(id_strings)}
        self.decode = decode

    def item_number(self, tokens: Sequence[int]) -> int:
        """Item number of an ID's tokens (without EOS), -1 if they name no item."""
        j = self.by_tokens.get(tuple(int(t) for t in tokens))
        if j is not None:
            return j
        if self.decode is not None and len(tokens):
            return self.by_text.get(" ".join(self.decode(list(tokens)).split()), -1)
        return -1


def allowed_from_seen(num_items: int, seen_cols: Sequence[Sequence[int]]) -> np.ndarray:
    """bool [rows, num_items]: True except at each row's seen item numbers."""
    allowed = np.ones((len(seen_cols), num_items), bool)
    for r, cols in enumerate(seen_cols):
        if len(cols):
            allowed[r, np.asarray(cols, np.int64)] = False
    return allowed


class TriePredictor:
    """Holds one trie on device; ``__call__`` runs constrained (or free) beam search.

    Building the device copy of the trie once per task (not per batch) is the only state.
    """

    def __init__(self, config: T5Config, trie: TrieArrays | None):
        if trie is not None and trie.vocab_size > config.vocab_size:
            raise ValueError(f"the item trie uses token ids up to {trie.vocab_size} but the "
                             f"model embeds only {config.vocab_size}: wrong vocabulary?")
        self.config = config
        self.trie = trie
        self.jax_trie: JaxTrie | SparseJaxTrie | None = None if trie is None else to_jax(trie)

    def constraint(self, allowed_items: np.ndarray | None, k: int) -> TrieConstraint:
        assert self.trie is not None and self.jax_trie is not None
        return TrieConstraint.create(self.trie, self.config.vocab_size, allowed_items, beams=k,
                                     device_trie=self.jax_trie)

    def __call__(self, params: Any, encoder_tokens: np.ndarray, k: int,
                 allowed_items: np.ndarray | None = None, max_length: int | None = None,
                 length_penalty: float = 0.0, decoder_prefix: np.ndarray | None = None,
                 prefix_lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sequences int32 [batch, k, max_length], scores float32 [batch, k]), best first.

        With a trie, ``max_length`` defaults to the longest item (EOS included), so every
        beam can finish. ``allowed_items`` (bool [batch, num_items]) needs the trie.
        ``decoder_prefix``/``prefix_lengths``: see ``decoding.beam_search`` (right-aligned
        prefixes the decoder reads before the search).
        """
        constraint = None
        if self.trie is not None:
            constraint = self.constraint(allowed_items, k)
            max_length = max_length or self.trie.max_length
        elif allowed_items is not None:
            raise ValueError("allowed_items needs a trie (constrained decoding)")
        if not max_length:
            raise ValueError("max_length is required without a trie")
        prefix = lengths = None
        if decoder_prefix is not None:
            prefix = jnp.asarray(decoder_prefix, jnp.int32)
            lengths = jnp.asarray(prefix_lengths if prefix_lengths is not None
                                  else (np.asarray(decoder_prefix) > 0).sum(1), jnp.int32)
        seqs, scores = decoding.beam_search(self.config, params, jnp.asarray(encoder_tokens,
                                                                             jnp.int32),
                                            int(max_length), int(k), float(length_penalty),
                                            constraint, prefix, lengths)
        return np.asarray(seqs), np.asarray(scores)


def one_token_items(id_strings: Sequence[str], encode: Callable[[str], Sequence[int]]
                    ) -> np.ndarray | None:
    """int32 [num_items]: each item's one token id, or None when any ID string encodes to
    another number of tokens (then only beam search over the trie ranks the catalogue)."""
    toks = [list(encode(s)) for s in id_strings]
    if not toks or any(len(t) != 1 for t in toks):
        return None
    return np.asarray([t[0] for t in toks], np.int32)


@functools.partial(jax.jit, static_argnames=("config", "k"))
def _rank_next(config: T5Config, params: Any, encoder_tokens: jax.Array,
               item_tokens: jax.Array, k: int, allowed: jax.Array | None,
               prefix: jax.Array, prefix_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch, width = prefix.shape
    # Left-align each row's prefix behind the start token, the layout training reads (the
    # targets start at position 0, padding follows); causal attention never looks past a
    # row's last real token, so its logits there are those of the unpadded row.
    cols = jnp.arange(width)[None, :]
    src = jnp.minimum(cols + (width - prefix_lengths)[:, None], width - 1)
    left = jnp.where(cols < prefix_lengths[:, None], jnp.take_along_axis(prefix, src, 1), 0)
    start = jnp.full((batch, 1), config.decoder_start_token_id, jnp.int32)
    model = Transformer(config)
    encoded = model.apply({"params": params}, encoder_tokens, method=Transformer.encode)
    logits = model.apply({"params": params}, encoded, encoder_tokens,
                         jnp.concatenate([start, left], 1), logit_positions=prefix_lengths,
                         method=Transformer.decode)[:, 0]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    item_logp = jnp.take(logp, item_tokens, axis=1)
    if allowed is not None:
        item_logp = jnp.where(allowed, item_logp, -jnp.inf)
    scores, items = jax.lax.top_k(item_logp, k)
    return items.astype(jnp.int32), scores


class NextItemRanker:
    """Top-K next items of a catalogue whose every item is one token, in one forward pass.

    ``item_tokens[j]`` is item number j's token (``one_token_items``). Scores are
    log-probabilities under the softmax over the model's whole vocabulary (the numbers beam
    search reports), restricted to the catalogue's tokens after masking.
    """

    def __init__(self, config: T5Config, item_tokens: np.ndarray):
        if int(np.max(item_tokens)) >= config.vocab_size:
            raise ValueError(f"item token ids reach {int(np.max(item_tokens))} but the model "
                             f"embeds only {config.vocab_size}: wrong vocabulary?")
        self.config = config
        self.num_items = len(item_tokens)
        self.item_tokens = jnp.asarray(item_tokens, jnp.int32)

    def __call__(self, params: Any, encoder_tokens: np.ndarray, k: int,
                 allowed_items: np.ndarray | None = None,
                 decoder_prefix: np.ndarray | None = None,
                 prefix_lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item numbers int32 [batch, k'], scores float32 [batch, k']), best first, with
        k' = min(k, catalogue size). A row with fewer than k' allowed items ends in -inf
        scores (those entries name no recommendation). ``decoder_prefix`` /
        ``prefix_lengths``: as ``TriePredictor`` (right-aligned, left-padded with 0)."""
        enc = jnp.asarray(encoder_tokens, jnp.int32)
        if decoder_prefix is None:
            prefix = jnp.zeros((enc.shape[0], 0), jnp.int32)
            lengths = jnp.zeros((enc.shape[0],), jnp.int32)
        else:
            prefix = jnp.asarray(decoder_prefix, jnp.int32)
            lengths = jnp.asarray(prefix_lengths if prefix_lengths is not None
                                  else (np.asarray(decoder_prefix) > 0).sum(1), jnp.int32)
        allowed = None if allowed_items is None else jnp.asarray(allowed_items, jnp.bool_)
        items, scores = _rank_next(self.config, params, enc, self.item_tokens,
                                   min(int(k), self.num_items), allowed, prefix, lengths)
        return np.asarray(items), np.asarray(scores)


def predict_topk(config: T5Config, params: Any, encoder_tokens: np.ndarray,
                 trie: TrieArrays | None, allowed_items: np.ndarray | None, k: int,
                 max_length: int | None = None, length_penalty: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Constrained top-k beams: (sequences [batch, k, L], scores [batch, k]), best first.

    ``trie=None`` decodes freely (then ``max_length`` is required). For many batches, keep a
    ``TriePredictor`` instead, which moves the trie to the device once.
    """
    return TriePredictor(config, trie)(params, encoder_tokens, k, allowed_items, max_length,
                                       length_penalty)


def items_from_beams(seqs: np.ndarray, scores: np.ndarray, decoder: ItemDecoder, eos_id: int,
                     k: int, excluded: Sequence[set[int]] | None = None) -> list[dict[str, Any]]:
    """Per row: the distinct items of its beams, best first, with the counts of what was
    dropped. ``eos_id < 0``: beams of a trie without EOS, whose tokens are the item's.

    Returns dicts with ``items`` (item numbers), ``scores``, ``invalid`` (finished or
    unfinished beams that are not a catalogue item), ``duplicates`` (beams naming an item
    already listed) and ``masked`` (beams naming an item in ``excluded[row]``: only free
    decoding can produce those). Beams scoring -inf are rows the constraint left nothing
    for (fewer allowed items than beams): they are not generations and are not counted.
    """
    out = []
    for r in range(seqs.shape[0]):
        items: list[int] = []
        item_scores: list[float] = []
        invalid = duplicates = masked = 0
        for b in range(seqs.shape[1]):
            score = float(scores[r, b])
            if not np.isfinite(score):
                continue
            row = seqs[r, b]
            if eos_id < 0:  # a trie without EOS (seqrec): the beam is the item's tokens
                j = decoder.item_number(row[row > 0])
            else:
                ends = np.flatnonzero(row == eos_id)
                j = decoder.item_number(row[: ends[0]]) if len(ends) else -1
            if j < 0:
                invalid += 1
            elif j in items:
                duplicates += 1
            elif excluded is not None and j in excluded[r]:
                masked += 1
            elif len(items) < k:
                items.append(j)
                item_scores.append(score)
        out.append({"items": items, "scores": item_scores, "invalid": invalid,
                    "duplicates": duplicates, "masked": masked})
    return out


@functools.partial(jax.jit, static_argnames=("config", "max_length"))
def _greedy(config: T5Config, params: Any, encoder_tokens: Any, max_length: int
            ) -> tuple[Any, Any]:
    return decoding.greedy_decode(config, params, encoder_tokens, max_length)


def decode_free(config: T5Config, params: Any, encoder_tokens: np.ndarray, k: int,
                max_length: int, length_penalty: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Free decoding: (sequences int32 [batch, k, max_length], scores float32 [batch, k]).

    One beam is greedy decoding (the arg-max token per step, one jitted `lax.while_loop`);
    more is `decoding.beam_search` without a constraint. Scores are summed log-likelihoods
    (divided by length ** length_penalty for beams), best first."""
    enc = jnp.asarray(encoder_tokens, jnp.int32)
    if k == 1 and length_penalty == 0.0:
        seqs, scores = _greedy(config, params, enc, int(max_length))
        return np.asarray(seqs)[:, None], np.asarray(scores)[:, None]
    seqs, scores = decoding.beam_search(config, params, enc, int(max_length), int(k),
                                        float(length_penalty))
    return np.asarray(seqs), np.asarray(scores)


def texts_from_beams(seqs: np.ndarray, scores: np.ndarray, decode: Callable[[list[int]], str],
                     eos_id: int) -> list[list[tuple[str, float, bool]]]:
    """Per row: (text, score, finished) of each beam, best first.

    A beam is cut at its first EOS; one that reached the length limit without EOS is kept
    as decoded (`finished` False), as T5X writes what the model produced. Beams scoring
    -inf (fewer hypotheses than beams) are left out."""
    out = []
    for r in range(seqs.shape[0]):
        row = []
        for b in range(seqs.shape[1]):
            score = float(scores[r, b])
            if not np.isfinite(score):
                continue
            toks = seqs[r, b]
            ends = np.flatnonzero(toks == eos_id)
            body = toks[: ends[0]] if len(ends) else toks[toks > 0]
            row.append((decode([int(t) for t in body]), score, bool(len(ends))))
        out.append(row)
    return out


def encode_candidates(texts: Sequence[str], encode: Callable[[str], Sequence[int]],
                      eos_id: int, length: int) -> np.ndarray:
    """int32 [len(texts), length]: each text's tokens + EOS, 0-padded; too long raises."""
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        toks = list(encode(text)) + [eos_id]
        if len(toks) > length:
            raise ValueError(f"candidate {text!r} is {len(toks)} tokens with EOS, longer than "
                             f"the target length {length} (raise TASK_FEATURE_LENGTHS"
                             "['targets'])")
        out[i, : len(toks)] = toks
    return out


def score_candidates(config: T5Config, params: Any, encoder_tokens: np.ndarray,
                     candidate_tokens: np.ndarray, block: int = 256) -> np.ndarray:
    """Summed log-likelihood float32 [batch, c] of each candidate target per input.

    ``candidate_tokens``: int32 [batch, c, L] (targets with EOS, 0-padded) or [c, L] shared
    by every row. The encoder runs once per batch; candidates are scored ``block`` at a time
    (the last block padded), so memory stays bounded for a full catalogue.
    """
    enc = jnp.asarray(encoder_tokens, jnp.int32)
    cands = np.asarray(candidate_tokens, np.int32)
    if cands.ndim == 2:
        cands = np.broadcast_to(cands[None], (enc.shape[0],) + cands.shape)
    if cands.ndim != 3 or cands.shape[0] != enc.shape[0]:
        raise ValueError(f"candidate_tokens must be [batch, c, L] with batch "
                         f"{enc.shape[0]}, got {cands.shape}")
    c = cands.shape[1]
    if c <= block:
        return np.asarray(decoding.score_candidates(config, params, enc, jnp.asarray(cands)))
    encoded = decoding.encode(config, params, enc)
    parts = []
    for lo in range(0, c, block):
        part = cands[:, lo: lo + block]
        if part.shape[1] < block:
            part = np.pad(part, ((0, 0), (0, block - part.shape[1]), (0, 0)))
        scores = decoding.score_with_encoded(config, params, encoded, enc, jnp.asarray(part))
        parts.append(np.asarray(scores)[:, : min(block, c - lo)])
    return np.concatenate(parts, axis=1)


def answer_distribution(scores: np.ndarray) -> np.ndarray:
    """Softmax over a closed answer set's log-likelihoods [batch, answers] (float64)."""
    s = np.asarray(scores, np.float64)
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def expected_rating(scores: np.ndarray, values: Sequence[float]) -> tuple[np.ndarray,
                                                                         np.ndarray]:
    """(expected rating [batch], probabilities [batch, len(values)]) from answer scores."""
    probs = answer_distribution(scores)
    return probs @ np.asarray(values, np.float64), probs


def rating_values(labels: Sequence[str]) -> list[float]:
    """Numeric values of rating answer strings ("1".."5"); non-numbers raise."""
    try:
        return [float(x) for x in labels]
    except ValueError as e:
        raise ValueError(f"rating answers must be numbers, got {list(labels)}") from e


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pad the leading axis to ``rows`` by repeating row 0 (a real input: an all-padding
    encoder row would be a degenerate, fully masked attention); callers drop the copies."""
    n = x.shape[0]
    if n == rows:
        return x
    if n == 0 or n > rows:
        raise ValueError(f"cannot pad {n} rows to {rows}")
    return np.concatenate([x, np.repeat(x[:1], rows - n, axis=0)], axis=0)
