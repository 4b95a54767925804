"""Inference computations on tiny random models: constrained top-K, candidate scoring, HF parity.

No SeqIO here (fast): the job-level tests are in test_infer_job.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hf_fixtures import make_hf_t5, padded_batch, random_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanrec import api
from flanrec.data.trie import build_trie, lookup
from flanrec.infer import modes
from flanrec.model.config import T5Config

EOS = 1


def tiny_config(vocab: int, d_model: int = 32, layers: int = 2) -> T5Config:
    return T5Config(vocab_size=vocab, d_model=d_model, d_ff=2 * d_model, num_heads=4,
                    d_kv=d_model // 4, num_encoder_layers=layers, num_decoder_layers=layers,
                    name="tiny-test")


def random_items(rng: np.random.Generator, n: int, vocab: int, max_len: int
                 ) -> list[list[int]]:
    """n distinct token sequences (tokens 2..vocab-1, no EOS/padding) of length 1..max_len."""
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < n:
        seq = tuple(int(t) for t in rng.integers(2, vocab, size=int(rng.integers(1, max_len + 1))))
        if seq not in seen:
            seen.add(seq)
            out.append(list(seq))
    return out


def item_decoder(items: list[list[int]]) -> modes.ItemDecoder:
    names = [f"i{j}" for j in range(len(items))]
    table = dict(zip(names, items, strict=True))
    return modes.ItemDecoder(names, names, lambda s: table[s])


# ------------------------------------------------------------------ constrained decoding


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), vocab=st.integers(12, 40), n_items=st.integers(2, 14),
       max_len=st.integers(1, 3), k=st.integers(1, 6), batch=st.integers(1, 3))
def test_constrained_beams_are_always_allowed_distinct_items(seed, vocab, n_items, max_len, k,
                                                             batch):
    rng = np.random.default_rng(seed)
    cfg = tiny_config(vocab, d_model=16, layers=1)
    params = random_params(cfg, seed)
    items = random_items(rng, n_items, vocab, max_len)
    trie = build_trie(items, eos_id=EOS, vocab_size=vocab)
    allowed = rng.random((batch, n_items)) < 0.7
    enc = padded_batch(rng, batch, 7, vocab=vocab)
    seqs, scores = modes.predict_topk(cfg, params, enc, trie, allowed, k)
    assert seqs.shape == (batch, k, trie.max_length) and scores.shape == (batch, k)
    for r in range(batch):
        finite = np.isfinite(scores[r])
        # Exactly min(k, allowed) beams finish; the rest are rows with nothing left.
        assert finite.sum() == min(k, int(allowed[r].sum()))
        found = []
        for b in np.flatnonzero(finite):
            row = seqs[r, b]
            end = int(np.flatnonzero(row == EOS)[0])
            j = lookup(trie, row[: end + 1])
            assert j >= 0, f"beam {row} is not an item"
            assert allowed[r, j], f"beam decoded masked item {j}"
            assert np.all(row[end + 1:] == 0)
            found.append(j)
        assert len(set(found)) == len(found)
        out = modes.items_from_beams(seqs[r: r + 1], scores[r: r + 1], item_decoder(items),
                                     EOS, k)[0]
        assert out["items"] == found and out["invalid"] == out["duplicates"] == 0


@pytest.mark.parametrize("mask", [False, True], ids=["all", "masked"])
def test_constrained_top_list_equals_exhaustive_scoring(mask):
    """With beams >= catalogue size, beam search is exact: same order and scores as
    scoring every (allowed) item with the teacher-forced model."""
    rng = np.random.default_rng(5)
    vocab, n_items = 24, 7
    cfg = tiny_config(vocab, layers=1)
    params = random_params(cfg, 1)
    items = random_items(rng, n_items, vocab, 3)
    trie = build_trie(items, eos_id=EOS, vocab_size=vocab)
    enc = padded_batch(rng, 3, 9, vocab=vocab)
    allowed = np.ones((3, n_items), bool)
    if mask:
        allowed[0, [0, 3]] = False
        allowed[2, [1, 2, 6]] = False
    seqs, scores = modes.predict_topk(cfg, params, enc, trie, allowed if mask else None,
                                      k=n_items)
    cands = modes.encode_candidates([f"i{j}" for j in range(n_items)],
                                    lambda s: items[int(s[1:])], EOS, trie.max_length)
    full = modes.score_candidates(cfg, params, enc, cands)
    got = modes.items_from_beams(seqs, scores, item_decoder(items), EOS, n_items)
    for r in range(3):
        ok = np.flatnonzero(allowed[r])
        order = ok[np.argsort(-full[r, ok], kind="stable")]
        assert got[r]["items"] == order.tolist()
        np.testing.assert_allclose(got[r]["scores"], full[r, order], atol=1e-4)


def test_items_from_beams_counts_invalid_duplicate_and_masked():
    items = [[5], [6, 7]]
    dec = item_decoder(items)
    seqs = np.array([[[5, 1, 0], [9, 1, 0], [6, 7, 1], [5, 1, 0], [6, 7, 7], [6, 7, 1]]])
    scores = np.array([[-1.0, -2.0, -3.0, -4.0, -5.0, -np.inf]])
    out = modes.items_from_beams(seqs, scores, dec, EOS, k=6)[0]
    # [9] is no item, the 4th beam repeats item 0, the 5th never ended (no EOS); -inf: no beam.
    assert out == {"items": [0, 1], "scores": [-1.0, -3.0], "invalid": 2, "duplicates": 1,
                   "masked": 0}
    out = modes.items_from_beams(seqs, scores, dec, EOS, k=6, excluded=[{0}])[0]
    assert out["items"] == [1] and out["masked"] == 2 and out["duplicates"] == 0
    assert modes.items_from_beams(seqs, scores, dec, EOS, k=1)[0]["items"] == [0]


# ------------------------------------------------------------------ scoring


def test_score_candidates_equals_model_log_likelihood():
    rng = np.random.default_rng(2)
    cfg = tiny_config(64)
    params = random_params(cfg, 3)
    model = api.FlanT5Model(cfg, params)
    enc = padded_batch(rng, 3, 11, vocab=64)
    cands = np.stack([padded_batch(rng, 5, 6, vocab=64) for _ in range(3)])  # [3, 5, 6]
    got = modes.score_candidates(cfg, params, enc, cands)
    ref = model.score(np.repeat(enc, 5, axis=0), cands.reshape(15, 6)).reshape(3, 5)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # Blocked path (encoder once, candidates in padded blocks) gives the same numbers.
    np.testing.assert_allclose(modes.score_candidates(cfg, params, enc, cands, block=2), got,
                               atol=1e-5)
    shared = modes.score_candidates(cfg, params, enc, cands[0], block=2)
    np.testing.assert_allclose(shared[0], got[0], atol=1e-5)


def test_expected_rating_and_answer_distribution():
    scores = np.log(np.array([[0.1, 0.2, 0.3, 0.2, 0.2], [1, 0, 0, 0, 0]]) + 1e-300)
    expected, probs = modes.expected_rating(scores, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(expected, [0.1 + 0.4 + 0.9 + 0.8 + 1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    p = modes.answer_distribution(np.array([[-3.0, -1.0]]))
    assert abs(p[0, 1] - 1 / (1 + np.exp(-2.0))) < 1e-12


# ------------------------------------------------------------------ parity with transformers


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    import torch

    model = make_hf_t5(num_layers=2, seed=7)
    # Random weights rarely emit EOS: give EOS the output row of the most generated token
    # plus noise, so beams mix finished and unfinished hypotheses of several lengths.
    enc = torch.tensor(padded_batch(np.random.default_rng(99), 8, 9), dtype=torch.long)
    with torch.no_grad():
        tokens = model.generate(input_ids=enc, attention_mask=(enc > 0).long(),
                                max_new_tokens=8, num_beams=1, do_sample=False).numpy()
        values, counts = np.unique(tokens[tokens > 1], return_counts=True)
        top = int(values[np.argmax(counts)])
        w = model.lm_head.weight
        for seed in range(30):
            noise = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(seed))
            w[1] = w[top] + 0.3 * w.std() * noise
            out = model.generate(input_ids=enc, attention_mask=(enc > 0).long(),
                                 max_new_tokens=8, num_beams=1, do_sample=False).numpy()
            if 0.25 <= (out == 1).any(axis=1).mean() <= 0.75:
                break
    path = tmp_path_factory.mktemp("hf") / "model"
    model.save_pretrained(str(path))
    return model, api.load(path)


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, "never"), (0.0, False)])
def test_unconstrained_beam_search_matches_transformers(hf_pair, length_penalty,
                                                        early_stopping):
    import torch

    theirs, ours = hf_pair
    enc = padded_batch(np.random.default_rng(99), 8, 9)[:3]  # the inputs EOS was tuned on
    k, max_len = 4, 8
    seqs, scores = modes.predict_topk(ours.config, ours.params, enc, None, None, k,
                                      max_length=max_len, length_penalty=length_penalty)
    with torch.no_grad():
        out = theirs.generate(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor(enc > 0, dtype=torch.long), max_new_tokens=max_len,
            num_beams=k, num_return_sequences=k, length_penalty=length_penalty,
            early_stopping=early_stopping, do_sample=False, output_scores=True,
            return_dict_in_generate=True)
    ref = out.sequences.numpy()[:, 1:].reshape(3, k, -1)
    ref = np.pad(ref, ((0, 0), (0, 0), (0, max_len - ref.shape[2])))
    # transformers pads finished beams with EOS (its pad id here); we emit padding 0.
    after_eos = np.cumsum(np.cumsum(ref == EOS, axis=-1), axis=-1) > 1
    ref = np.where(after_eos, 0, ref)
    np.testing.assert_array_equal(seqs, ref)
    np.testing.assert_allclose(scores, out.sequences_scores.numpy().reshape(3, k), atol=1e-4)
    assert (seqs == EOS).any() and not (seqs == EOS).any(-1).all(), \
        "fixture should mix finished and unfinished beams"
