"""flanrec.api: loading any checkpoint kind and the numpy-in/numpy-out model methods."""

from __future__ import annotations

import numpy as np
import pytest
from hf_fixtures import hf_logits, make_hf_t5, padded_batch, shift_right

from flanrec import api
from flanrec.model.params import flatten


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf_t5(seed=5)
    path = tmp_path_factory.mktemp("api") / "hf"
    model.save_pretrained(str(path))
    return model, path


def _same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for name in fa:
        np.testing.assert_array_equal(np.asarray(fa[name]), np.asarray(fb[name]), err_msg=name)


def test_load_hf_and_use(hf_dir):
    theirs, path = hf_dir
    model = api.load(path)
    assert model.config.d_model == 32
    rng = np.random.default_rng(0)
    enc, tgt = padded_batch(rng, 2, 8), padded_batch(rng, 2, 5)
    logits = model.logits(enc, shift_right(tgt))
    assert isinstance(logits, np.ndarray) and logits.shape == (2, 5, 128)
    np.testing.assert_allclose(logits, hf_logits(theirs, enc, shift_right(tgt)), atol=1e-4)
    score = model.score(enc, tgt)
    assert isinstance(score, np.ndarray) and score.shape == (2,) and np.all(score < 0)
    out = model.generate(enc, max_length=4)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4) and out.dtype == np.int32


def test_load_bfloat16(hf_dir):
    _, path = hf_dir
    f32, bf16 = api.load(path), api.load(path, dtype="bfloat16")
    assert bf16.config.dtype == "bfloat16"
    enc = padded_batch(np.random.default_rng(1), 2, 8)
    dec = shift_right(padded_batch(np.random.default_rng(2), 2, 5))
    a, b = f32.logits(enc, dec), bf16.logits(enc, dec)
    assert b.dtype == np.float32 and np.all(np.isfinite(b))
    assert np.max(np.abs(a - b)) < 0.1 * np.max(np.abs(a))


def test_load_params_any_dispatches_t5x_and_flanrec(hf_dir, tmp_path):
    from flanrec import checkpoints
    from flanrec.interop import t5x

    _, path = hf_dir
    cfg, params = checkpoints.load_params_any(path)

    t5x_dir = t5x.write_t5x_checkpoint(params, tmp_path / "t5x_model", step=7)
    for where in (t5x_dir, tmp_path / "t5x_model"):
        cfg2, params2 = checkpoints.load_params_any(where)
        assert cfg2.d_model == cfg.d_model and cfg2.num_decoder_layers == cfg.num_decoder_layers
        _same_params(params, params2)
    ours = checkpoints.save_params_checkpoint(cfg, params, tmp_path / "flanrec_params")
    cfg3, params3 = checkpoints.load_params_any(ours)
    assert cfg3 == cfg
    _same_params(params, params3)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        api.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a flanrec checkpoint"):
        api.load(tmp_path / "empty")
