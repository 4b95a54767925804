"""Beam search after a decoder prefix (what the seqrec family ranks with) equals teacher forcing.

The prefix is fed through the KV cache step by step, rows left-padded to a common width with
the padding masked as keys; the first search step must then see exactly the distribution a
plain teacher-forced pass over ``[start] + prefix`` gives at its last position, whatever the
row's prefix length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hf_fixtures import padded_batch, random_params

from flanrec.model import get_preset
from flanrec.model.decoding import beam_search
from flanrec.model.network import Transformer

CFG = get_preset("tiny")


def _teacher_forced_logp(params, enc_row: np.ndarray, decoder_tokens: list[int]) -> np.ndarray:
    """log p(next token) after ``[start] + decoder_tokens`` for one unpadded row."""
    dec = np.asarray([[CFG.decoder_start_token_id] + decoder_tokens], np.int32)
    logits = Transformer(CFG).apply({"params": params}, jnp.asarray(enc_row[None]),
                                    jnp.asarray(dec))
    return np.asarray(jax.nn.log_softmax(logits[0, -1]))


def _right_aligned(prefixes: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(prefixes), width), np.int32)
    for r, p in enumerate(prefixes):
        if p:
            out[r, width - len(p):] = p
    return out, np.asarray([len(p) for p in prefixes], np.int32)


def test_first_step_after_prefix_equals_teacher_forcing():
    params = random_params(CFG, seed=3)
    rng = np.random.default_rng(0)
    enc = padded_batch(rng, 4, 9)
    prefixes = [[5, 7, 9, 11, 13], [20], [], [3, 4]]  # unequal lengths, one empty
    prefix, lengths = _right_aligned(prefixes, 6)
    k = 5
    seqs, scores = beam_search(CFG, params, jnp.asarray(enc), 1, k, 0.0, None,
                               jnp.asarray(prefix), jnp.asarray(lengths))
    seqs, scores = np.asarray(seqs), np.asarray(scores)
    for r, p in enumerate(prefixes):
        logp = _teacher_forced_logp(params, enc[r], p)
        best = np.argsort(-logp)[:k]
        np.testing.assert_array_equal(seqs[r, :, 0], best)
        np.testing.assert_allclose(scores[r], logp[best], atol=2e-5)


def test_multi_step_search_after_prefix_scores_its_hypotheses():
    params = random_params(CFG, seed=4)
    enc = padded_batch(np.random.default_rng(1), 2, 8)
    prefixes = [[9, 8, 7], [6]]
    prefix, lengths = _right_aligned(prefixes, 4)
    seqs, scores = beam_search(CFG, params, jnp.asarray(enc), 3, 3, 0.0, None,
                               jnp.asarray(prefix), jnp.asarray(lengths))
    seqs, scores = np.asarray(seqs), np.asarray(scores)
    for r, p in enumerate(prefixes):
        for b in range(3):
            hyp = [int(t) for t in seqs[r, b]]
            total = 0.0
            for j, t in enumerate(hyp):
                total += _teacher_forced_logp(params, enc[r], p + hyp[:j])[t]
                if t == CFG.eos_token_id:
                    break
            np.testing.assert_allclose(scores[r, b], total, atol=1e-4)


def test_prefix_of_zero_width_is_plain_beam_search():
    params = random_params(CFG, seed=5)
    enc = jnp.asarray(padded_batch(np.random.default_rng(2), 2, 7))
    plain = beam_search(CFG, params, enc, 4, 3)
    empty = beam_search(CFG, params, enc, 4, 3, 0.0, None, jnp.zeros((2, 3), jnp.int32),
                        jnp.zeros((2,), jnp.int32))
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(empty[0]))
    np.testing.assert_allclose(np.asarray(plain[1]), np.asarray(empty[1]), atol=1e-5)
