"""HF checkpoint import/export: formats, round trip through transformers, and refusals."""

from __future__ import annotations

import copy as copy_module
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from hf_fixtures import hf_logits, make_hf_t5, padded_batch, shift_right
from safetensors.numpy import load_file, save_file

from flanrec.interop import hf
from flanrec.model.params import check_params, flatten, unflatten


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_t5(num_layers=2, num_decoder_layers=3, seed=11)


@pytest.fixture(scope="module")
def saved(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "flan"
    hf_model.save_pretrained(str(path))
    (path / "spiece.model").write_bytes(b"not really a sentencepiece model")
    return path


@pytest.fixture
def copy(saved, tmp_path):
    """A private copy of the saved checkpoint that a test may break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(saved, dst)
    return dst


def _edit_config(path, **changes):
    """Set fields of config.json; a value of `_DELETE` removes the field."""
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not _DELETE}
    (path / "config.json").write_text(json.dumps(cfg))


_DELETE = object()


def _flat(params):
    return flatten(params)


def test_import_maps_every_tensor(hf_model, saved):
    cfg, params = hf.import_hf(saved)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 3)
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.vocab_size) == (32, 64, 4, 8, 128)
    flat = _flat(params)
    check_params(flat, cfg, "test")
    assert all(v.dtype == np.float32 for v in flat.values())
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    np.testing.assert_array_equal(flat["token_embedder/embedding"], sd["shared.weight"])
    np.testing.assert_array_equal(flat["decoder/logits_dense/kernel"], sd["lm_head.weight"].T)
    np.testing.assert_array_equal(
        flat["decoder/layers_2/encoder_decoder_attention/out/kernel"],
        sd["decoder.block.2.layer.1.EncDecAttention.o.weight"].T)
    np.testing.assert_array_equal(
        flat["encoder/relpos_bias/rel_embedding"],
        sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T)
    assert hf.find_spiece_model(saved) == saved / "spiece.model"


def test_round_trip_through_transformers(hf_model, saved, tmp_path):
    import transformers

    cfg, params = hf.import_hf(saved)
    out = hf.export_hf(cfg, params, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors"]
    written = json.loads((out / "config.json").read_text())
    assert written["tie_word_embeddings"] is False
    assert written["feed_forward_proj"] == "gated-gelu" and written["is_gated_act"] is True
    assert written["dense_act_fn"] == "gelu_new"
    assert written["architectures"] == ["T5ForConditionalGeneration"]
    assert not list(tmp_path.glob(".export.tmp-*"))  # temp dir moved into place
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    assert reloaded.lm_head.weight.data_ptr() != reloaded.shared.weight.data_ptr()
    assert not reloaded.config.scale_decoder_outputs
    rng = np.random.default_rng(0)
    enc, dec = padded_batch(rng, 3, 9), shift_right(padded_batch(rng, 3, 6))
    np.testing.assert_array_equal(hf_logits(reloaded, enc, dec), hf_logits(hf_model, enc, dec))
    # And back again: the same parameters.
    cfg2, params2 = hf.import_hf(out)
    assert cfg2.replace(name=cfg.name) == cfg
    for name, value in _flat(params).items():
        np.testing.assert_array_equal(_flat(params2)[name], value)


def test_transformers_resaved_export_loads(hf_model, saved, tmp_path):
    """export -> transformers from_pretrained -> save_pretrained -> flanrec: transformers 5
    writes `tie_word_embeddings: true` (and `scale_decoder_outputs`, `dtype`) into every T5
    config it saves; the tensors and `scale_decoder_outputs` decide, so it still loads, equal."""
    import transformers

    import flanrec

    cfg, params = hf.import_hf(saved)
    out = hf.export_hf(cfg, params, tmp_path / "export")
    resaved = tmp_path / "resaved"
    transformers.T5ForConditionalGeneration.from_pretrained(str(out)).save_pretrained(
        str(resaved))
    written = json.loads((resaved / "config.json").read_text())
    if transformers.__version__.startswith("5."):  # the quirk this test is about
        assert written["tie_word_embeddings"] is True
        assert written["scale_decoder_outputs"] is False and "dtype" in written
    cfg2, params2 = hf.import_hf(resaved)
    assert cfg2.replace(name=cfg.name) == cfg
    for name, value in _flat(params).items():
        np.testing.assert_array_equal(_flat(params2)[name], value, err_msg=name)
    model = flanrec.load(str(resaved))
    rng = np.random.default_rng(1)
    enc, dec = padded_batch(rng, 2, 7), shift_right(padded_batch(rng, 2, 5))
    np.testing.assert_allclose(model.logits(enc, dec), hf_logits(hf_model, enc, dec),
                               rtol=1e-4, atol=1e-4)


def test_export_is_readable_by_others(saved, tmp_path):
    import os
    import stat

    cfg, params = hf.import_hf(saved)
    old = os.umask(0o077)  # even under a strict umask
    try:
        out = hf.export_hf(cfg, params, tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644), modes


def test_sharded_safetensors(hf_model, saved, tmp_path):
    hf_model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    _, a = hf.import_hf(saved)
    _, b = hf.import_hf(tmp_path / "sharded")
    for name, value in _flat(a).items():
        np.testing.assert_array_equal(_flat(b)[name], value)


def test_sharded_missing_shard_is_named(hf_model, tmp_path):
    path = tmp_path / "sharded"
    hf_model.save_pretrained(str(path), max_shard_size="30KB")
    victim = sorted(path.glob("model-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(hf.HFCheckpointError, match=f"names shard {victim.name}, which is missing"):
        hf.import_hf(path)


def test_pytorch_bin_and_bfloat16(hf_model, saved, tmp_path):
    _, ref = hf.import_hf(saved)
    path = tmp_path / "bin"
    shutil.copytree(saved, path)
    (path / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), path / "pytorch_model.bin")
    _, got = hf.import_hf(path)
    for name, value in _flat(ref).items():
        np.testing.assert_array_equal(_flat(got)[name], value)
    # bf16 safetensors (how large Flan-T5 checkpoints are often shipped): upcast to float32.
    bf = tmp_path / "bf16"
    shutil.copytree(saved, bf)
    copy_module.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(str(bf))
    _, got = hf.import_hf(bf)
    emb = _flat(got)["token_embedder/embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, _flat(ref)["token_embedder/embedding"], rtol=1e-2, atol=1e-2)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pytorch_bin_never_unpickles_objects(saved, tmp_path):
    path = tmp_path / "evil"
    shutil.copytree(saved, path)
    (path / "model.safetensors").unlink()
    torch.save({"shared.weight": _Evil()}, path / "pytorch_model.bin")
    with pytest.raises(hf.HFCheckpointError, match="weights-only"):
        hf.import_hf(path)


def test_pytorch_bin_without_torch_says_how_to_convert(saved, tmp_path, monkeypatch):
    path = tmp_path / "bin"
    shutil.copytree(saved, path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(hf.HFCheckpointError, match="needs torch.*safetensors"):
        hf.import_hf(path)


@pytest.mark.parametrize("change,pattern", [
    (dict(feed_forward_proj="relu"), "feed_forward_proj is 'relu'.*T5 v1.0"),
    (dict(scale_decoder_outputs=True), "scale_decoder_outputs is true.*T5 v1.0"),
    # A transformers-4 config (no scale_decoder_outputs field) of a tied T5 v1.0: scaled.
    (dict(tie_word_embeddings=True, scale_decoder_outputs=_DELETE),
     "tie_word_embeddings is not false.*T5 v1.0"),
    (dict(tie_word_embeddings=_DELETE, scale_decoder_outputs=_DELETE),
     "tie_word_embeddings is not false"),
    (dict(model_type="gpt2"), "model_type is 'gpt2'"),
    (dict(is_decoder=True), "not an encoder-decoder"),
    (dict(is_encoder_decoder=False), "not an encoder-decoder"),
    (dict(architectures=["T5EncoderModel"]), "no T5ForConditionalGeneration"),
    (dict(d_ff=96), r"wi_0.weight .*has shape \(32, 64\).*expected \(32, 96\)"),
    (dict(num_layers=3), r"missing parameters \['encoder/layers_2"),
    (dict(num_decoder_layers=2), r"unexpected tensors \['decoder.block.2"),
])
def test_refusals_from_config(copy, change, pattern):
    _edit_config(copy, **change)
    with pytest.raises(hf.HFCheckpointError, match=pattern) as err:
        hf.import_hf(copy)
    assert str(copy) in str(err.value)


def test_missing_config_and_weights(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(hf.HFCheckpointError, match="no weights found.*model.safetensors"):
        hf.import_hf(copy)
    (copy / "config.json").unlink()
    with pytest.raises(hf.HFCheckpointError, match="config.json: missing"):
        hf.import_hf(copy)
    with pytest.raises(hf.HFCheckpointError, match="not a directory"):
        hf.import_hf(copy / "nope")


def _rewrite_tensors(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_tied_checkpoint_without_lm_head(copy):
    _rewrite_tensors(copy, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(hf.HFCheckpointError, match="no lm_head.weight.*tied"):
        hf.import_hf(copy)


def test_missing_tensor_is_named_never_initialised(copy):
    key = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    _rewrite_tensors(copy, lambda t: t.pop(key))
    with pytest.raises(hf.HFCheckpointError, match="missing parameters.*decoder/layers_1/mlp/wo"):
        hf.import_hf(copy)


def test_wrong_tensor_shape_is_named(copy):
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    _rewrite_tensors(copy, lambda t: t.__setitem__(key, np.zeros((32, 31), np.float32)))
    with pytest.raises(hf.HFCheckpointError,
                       match=r"q.weight \(-> encoder/layers_0/attention/query/kernel\) has shape "
                             r"\(31, 32\).*expected \(32, 32\)"):
        hf.import_hf(copy)


def test_separate_input_embeddings_refused(copy):
    def edit(t):
        t["encoder.embed_tokens.weight"] = t["encoder.embed_tokens.weight"] + 1.0
    _rewrite_tensors(copy, edit)
    with pytest.raises(hf.HFCheckpointError, match="encoder.embed_tokens.weight differs"):
        hf.import_hf(copy)


def test_export_refuses_bad_params_and_non_empty_dir(saved, tmp_path):
    cfg, params = hf.import_hf(saved)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        hf.export_hf(cfg, params, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    flat = _flat(params)
    flat.pop("decoder/decoder_norm/scale")
    with pytest.raises(ValueError, match="missing parameters.*decoder_norm"):
        hf.export_hf(cfg, unflatten(flat), tmp_path / "other")
    assert not (tmp_path / "other").exists()
    assert not list(tmp_path.glob(".*tmp-*"))
