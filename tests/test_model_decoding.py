"""Greedy/beam decoding on our own model: consistency, and trie-constrained decoding."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import padded_batch, random_params

from flanrec.api import FlanT5Model
from flanrec.model import get_preset
from flanrec.model.decoding import TransitionTableConstraint, beam_search, greedy_decode

CFG = get_preset("tiny")
# A hand-made trie of three "item ids": [5 7], [5 9], [12], each closed by EOS (1).
VALID = [(5, 7, 1), (5, 9, 1), (12, 1)]


def _trie_table(vocab: int) -> np.ndarray:
    table = np.full((6, vocab), -1, np.int32)
    table[0, 5], table[0, 12] = 1, 4
    table[1, 7], table[1, 9] = 2, 3
    table[2, 1] = table[3, 1] = table[4, 1] = 5
    table[5, 0] = 5  # after EOS only padding
    return table


@pytest.fixture(scope="module")
def model():
    return FlanT5Model(CFG, random_params(CFG, seed=7))


def test_one_beam_equals_greedy(model):
    enc = padded_batch(np.random.default_rng(0), 2, 7)
    greedy, g_score = greedy_decode(CFG, model.params, enc, 5)
    beams, b_score = beam_search(CFG, model.params, enc, 5, 1)
    np.testing.assert_array_equal(np.asarray(beams)[:, 0], np.asarray(greedy))
    np.testing.assert_allclose(np.asarray(b_score)[:, 0], np.asarray(g_score), atol=1e-5)


def test_beam_scores_are_sorted_log_likelihoods(model):
    enc = padded_batch(np.random.default_rng(1), 2, 7)
    seqs, scores = model.generate(enc, max_length=5, num_beams=4, return_scores=True)
    assert seqs.shape == (2, 4, 5) and scores.shape == (2, 4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # The score of each returned hypothesis is the model's log-likelihood of it.
    for b in range(4):
        np.testing.assert_allclose(model.score(enc, seqs[:, b]), scores[:, b], atol=1e-4)


def test_trie_constraint_beam_search(model):
    enc = padded_batch(np.random.default_rng(2), 2, 7)
    constraint = TransitionTableConstraint(jnp.asarray(_trie_table(CFG.vocab_size)))
    seqs, scores = model.generate(enc, max_length=5, num_beams=4, constraint=constraint,
                                  return_scores=True)
    for b in range(2):
        found = [tuple(int(t) for t in s if t != 0) for s in seqs[b, :3]]
        assert sorted(found) == sorted(VALID)  # exactly the valid ids, all of them
        assert np.all(np.isfinite(scores[b, :3]))
        assert scores[b, 3] == -np.inf  # only three valid ids exist
    for rank in range(3):
        np.testing.assert_allclose(model.score(enc, seqs[:, rank]), scores[:, rank], atol=1e-4)
    # Unconstrained, the model prefers other tokens: the constraint did the work.
    free = model.generate(enc, max_length=5, num_beams=4)
    assert any(tuple(int(t) for t in s if t != 0) not in VALID for s in free.reshape(-1, 5))


def test_trie_constraint_greedy(model):
    enc = padded_batch(np.random.default_rng(3), 2, 7)
    constraint = TransitionTableConstraint(jnp.asarray(_trie_table(CFG.vocab_size)))
    out, score = model.generate(enc, max_length=5, constraint=constraint, return_scores=True)
    for row in out:
        assert tuple(int(t) for t in row if t != 0) in VALID
    np.testing.assert_allclose(model.score(enc, out), score, atol=1e-4)


def test_generate_rejects_bad_input(model):
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(np.ones((1, 3), np.int32), max_length=3, num_beams=0)
    with pytest.raises(ValueError, match=r"shape \[batch, length\]"):
        model.generate(np.ones((3,), np.int32), max_length=3)


def test_item_trie_constraint_with_per_user_exclusion(model):
    """Integration with the data side's trie (flanrec.data.trie / trie_jax): every beam is a
    catalog item, all distinct, and items a user may not get never appear."""
    import flanrec.data.trie as trie_mod
    import flanrec.infer.constraints as trie_jax
    rng = np.random.default_rng(5)
    items = sorted({tuple(int(t) for t in rng.integers(2, CFG.vocab_size, rng.integers(1, 4)))
                    for _ in range(12)})
    trie = trie_mod.build_trie([list(s) for s in items], eos_id=1, vocab_size=CFG.vocab_size)
    allowed = np.ones((2, len(items)), bool)
    allowed[0, :6] = False  # user 0 has already seen the first six items
    k = 4
    constraint = trie_jax.TrieConstraint.create(trie, CFG.vocab_size, allowed_items=allowed,
                                                beams=k)
    enc = padded_batch(np.random.default_rng(6), 2, 7)
    seqs, scores = model.generate(enc, max_length=5, num_beams=k, constraint=constraint,
                                  return_scores=True)
    assert np.all(np.isfinite(scores))
    for b in range(2):
        found = [trie_mod.lookup(trie, [int(t) for t in s if t != 0]) for s in seqs[b]]
        assert min(found) >= 0 and len(set(found)) == k
        assert all(allowed[b, i] for i in found)
