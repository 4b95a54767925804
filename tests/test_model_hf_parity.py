"""Numerical parity with transformers' PyTorch T5 on random padded batches (fp32)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from hf_fixtures import hf_encoder, hf_logits, make_hf_t5, padded_batch, shift_right

from flanrec import api
from flanrec.model import Transformer

_PAIRS: dict = {}


@pytest.fixture(scope="module", params=[(2, None), (2, 3)], ids=["sym", "dec3"])
def pair(request, tmp_path_factory):
    """(HF model, our FlanT5Model) sharing the same random weights via import_hf."""
    return _pair(*request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def sym_pair(tmp_path_factory):
    return _pair(2, None, tmp_path_factory)


def _pair(layers, dec_layers, tmp_path_factory):
    if (layers, dec_layers) in _PAIRS:
        return _PAIRS[layers, dec_layers]
    model = make_hf_t5(num_layers=layers, num_decoder_layers=dec_layers, seed=layers)
    _make_eos_likely(model)
    path = tmp_path_factory.mktemp("hf") / "model"
    model.save_pretrained(str(path))
    ours = api.load(path)
    assert ours.config.num_decoder_layers == (dec_layers or layers)
    _PAIRS[layers, dec_layers] = model, ours
    return model, ours


def _make_eos_likely(model) -> None:
    """Random weights rarely emit EOS; copy the most-generated token's output row (plus
    noise) into EOS's, so decoding sees a mix of finished and unfinished sequences."""
    enc = padded_batch(np.random.default_rng(99), 8, 9)
    tokens = _hf_generate(model, enc, max_new_tokens=10, num_beams=1).numpy()[:, 1:]
    values, counts = np.unique(tokens[tokens > 1], return_counts=True)
    top = int(values[np.argmax(counts)])
    w = model.lm_head.weight
    for seed in range(30):  # deterministic: first noise giving a healthy mix
        noise = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            w[1] = w[top] + 0.3 * w.std() * noise
        tokens = _hf_generate(model, enc, max_new_tokens=10, num_beams=1).numpy()
        if 0.25 <= (tokens == 1).any(axis=1).mean() <= 0.75:
            return
    raise AssertionError("could not make EOS likely in the fixture")


def test_encoder_and_logits_match(pair):
    theirs, ours = pair
    rng = np.random.default_rng(0)
    enc = padded_batch(rng, 4, 13)
    dec_in = shift_right(padded_batch(rng, 4, 9))
    encoded = jax.jit(Transformer(ours.config).apply, static_argnames="method")(
        {"params": ours.params}, enc, method="encode")
    np.testing.assert_allclose(np.asarray(encoded), hf_encoder(theirs, enc), atol=1e-4)
    ref = hf_logits(theirs, enc, dec_in)
    got = ours.logits(enc, dec_in)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_score_matches_transformers_loss(sym_pair):
    theirs, ours = sym_pair
    rng = np.random.default_rng(1)
    enc = padded_batch(rng, 3, 10)
    tgt = padded_batch(rng, 3, 7)
    got = ours.score(enc, tgt)
    for i in range(3):
        labels = torch.tensor(np.where(tgt[i:i + 1] > 0, tgt[i:i + 1], -100), dtype=torch.long)
        with torch.no_grad():
            out = theirs(input_ids=torch.tensor(enc[i:i + 1], dtype=torch.long),
                         attention_mask=torch.tensor(enc[i:i + 1] > 0, dtype=torch.long),
                         labels=labels)
        want = -float(out.loss) * int((tgt[i] > 0).sum())  # mean NLL over non-pad tokens
        assert got[i] == pytest.approx(want, rel=1e-4, abs=1e-4)


def _hf_generate(model, enc, **kw):
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                              attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                              do_sample=False, use_cache=False, **kw)


def test_greedy_matches_hf_generate(pair):
    theirs, ours = pair
    enc = padded_batch(np.random.default_rng(2), 6, 9)
    max_len = 10
    got = ours.generate(enc, max_length=max_len)
    ref = _hf_generate(theirs, enc, max_new_tokens=max_len, num_beams=1).numpy()[:, 1:]
    ref = np.pad(ref, ((0, 0), (0, max_len - ref.shape[1])))  # HF stops when all are done
    np.testing.assert_array_equal(got, ref)
    assert (got == 1).any(), "fixture should produce some EOS"


def test_beam_search_matches_hf_generate(sym_pair):
    theirs, ours = sym_pair
    enc = padded_batch(np.random.default_rng(3), 3, 9)
    k, max_len = 3, 8
    seqs, scores = ours.generate(enc, max_length=max_len, num_beams=k, return_scores=True)
    out = _hf_generate(theirs, enc, max_new_tokens=max_len, num_beams=k,
                       num_return_sequences=k, length_penalty=0.0, early_stopping=False,
                       output_scores=True, return_dict_in_generate=True)
    ref = out.sequences.numpy()[:, 1:].reshape(3, k, -1)
    ref = np.pad(ref, ((0, 0), (0, 0), (0, max_len - ref.shape[2])))
    # HF fills after EOS with EOS in beam search; we emit padding like greedy decoding does.
    after_eos = np.cumsum(np.cumsum(ref == 1, axis=-1), axis=-1) > 1
    ref = np.where(after_eos, 0, ref)
    np.testing.assert_array_equal(seqs, ref)
    np.testing.assert_allclose(scores, out.sequences_scores.numpy().reshape(3, k), atol=1e-4)
    # The best beam is at least as likely as greedy's sequence.
    _, greedy_score = ours.generate(enc, max_length=max_len, return_scores=True)
    assert np.all(scores[:, 0] >= greedy_score - 1e-5)
