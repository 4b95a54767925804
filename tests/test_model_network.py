"""The Flax T5 network on its own: parameter table, presets, masks, packing, cache, dtypes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hf_fixtures import padded_batch, random_params, shift_right

from flanrec.model import PRESETS, T5Config, Transformer, get_preset
from flanrec.model.decoding import init_cache
from flanrec.model.layers import relative_position_bucket
from flanrec.model.params import count_params, flatten, param_specs

TINY = get_preset("tiny", dropout_rate=0.1)


def _abstract_init(cfg: T5Config):
    model = Transformer(cfg)
    enc = jnp.ones((2, 5), jnp.int32)
    dec = jnp.ones((2, 4), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), enc, dec))["params"]


@functools.partial(jax.jit, static_argnames=("cfg", "enable_dropout"))
def forward(cfg, params, enc, dec, tgt=None, enc_seg=None, dec_seg=None, enc_pos=None,
            dec_pos=None, enable_dropout=False, rng=None):
    """Jitted forward pass: one compile per shape is far cheaper than eager op-by-op."""
    rngs = {"dropout": rng} if rng is not None else None
    return Transformer(cfg).apply({"params": params}, enc, dec, tgt, enc_seg, dec_seg, enc_pos,
                                  dec_pos, enable_dropout=enable_dropout, rngs=rngs)


@pytest.fixture(scope="module")
def tiny_params():
    return random_params(TINY)


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(num_decoder_layers=3, name="asym")],
                         ids=["tiny", "tiny-asym"])
def test_param_tree_matches_param_specs(cfg):
    boxed = _abstract_init(cfg)
    specs = param_specs(cfg)
    shapes = flatten(nn.unbox(boxed))
    axes = flatten(nn.get_partition_spec(boxed))
    assert set(shapes) == set(specs)
    for name, (shape, logical) in specs.items():
        assert shapes[name].shape == shape, name
        assert shapes[name].dtype == jnp.float32, name
        assert tuple(axes[name]) == logical, name


@pytest.mark.parametrize("name,expected", [
    ("flan-t5-small", 77e6), ("flan-t5-base", 248e6), ("flan-t5-large", 783e6),
    ("flan-t5-xl", 2.85e9), ("flan-t5-xxl", 11.1e9)])
def test_preset_parameter_counts(name, expected):
    cfg = PRESETS[name]
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(_abstract_init(cfg))))
    assert abs(count - expected) / expected < 0.01, (name, count)
    assert count == count_params(cfg)


def test_relative_position_bucket_matches_transformers():
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-600, 601)[None, :]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (16, 40)):
            ours = relative_position_bucket(rel, bidirectional, nb, md)
            theirs = T5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional=bidirectional, num_buckets=nb,
                max_distance=md).numpy()
            np.testing.assert_array_equal(ours, theirs)
    # Buckets saturate at the far end and are all used (bucket 16 would be "after, distance 0").
    ours = relative_position_bucket(rel, True, 32, 128)
    assert set(np.unique(ours)) == set(range(32)) - {16}


def test_padding_does_not_change_valid_outputs(tiny_params):
    rng = np.random.default_rng(1)
    enc = padded_batch(rng, 2, 7, min_len=3)
    tgt = padded_batch(rng, 2, 5, min_len=2)
    base = forward(TINY, tiny_params, enc, shift_right(tgt), tgt)
    # Extra padding on both sides must not change any non-padding logit.
    enc2 = np.pad(enc, ((0, 0), (0, 4)))
    tgt2 = np.pad(tgt, ((0, 0), (0, 3)))
    more = forward(TINY, tiny_params, enc2, shift_right(tgt2), tgt2)
    valid = tgt > 0
    np.testing.assert_allclose(np.asarray(more)[:, :5][valid], np.asarray(base)[valid],
                               atol=1e-5)


def test_packed_segments_equal_separate_examples(tiny_params):
    """Two examples packed into one row give the same logits as each run alone."""
    rng = np.random.default_rng(2)
    a_enc, b_enc = rng.integers(2, 128, 4), rng.integers(2, 128, 6)
    a_tgt, b_tgt = rng.integers(2, 128, 3), rng.integers(2, 128, 5)
    # Each example alone (right-padded to the packed shapes), as a batch of two.
    enc_alone = np.zeros((2, 12), np.int32)
    tgt_alone = np.zeros((2, 10), np.int32)
    enc_alone[0, :4], enc_alone[1, :6] = a_enc, b_enc
    tgt_alone[0, :3], tgt_alone[1, :5] = a_tgt, b_tgt
    alone = np.asarray(forward(TINY, tiny_params, enc_alone, shift_right(tgt_alone), tgt_alone))

    enc = np.zeros((1, 12), np.int32)
    enc_seg = np.zeros((1, 12), np.int32)
    enc[0, :4], enc[0, 4:10] = a_enc, b_enc
    enc_seg[0, :4], enc_seg[0, 4:10] = 1, 2
    tgt = np.zeros((1, 10), np.int32)
    dec_seg = np.zeros((1, 10), np.int32)
    tgt[0, :3], tgt[0, 3:8] = a_tgt, b_tgt
    dec_seg[0, :3], dec_seg[0, 3:8] = 1, 2
    dec_in = np.zeros_like(tgt)
    dec_in[0, 1:3], dec_in[0, 4:8] = a_tgt[:-1], b_tgt[:-1]  # shifted per segment
    enc_pos = np.concatenate([np.arange(4), np.arange(6), [0, 0]])[None]
    dec_pos = np.concatenate([np.arange(3), np.arange(5), [0, 0]])[None]
    packed = np.asarray(forward(TINY, tiny_params, enc, dec_in, tgt, enc_seg, dec_seg, enc_pos,
                                dec_pos))[0]
    np.testing.assert_allclose(packed[:3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[3:8], alone[1, :5], atol=1e-5)
    # Without segment ids the two examples would see each other.
    mixed = np.asarray(forward(TINY, tiny_params, enc, dec_in, tgt))[0]
    assert not np.allclose(mixed[3:8], alone[1, :5], atol=1e-3)


def test_incremental_decoding_equals_full_forward(tiny_params):
    model = Transformer(TINY)
    rng = np.random.default_rng(3)
    enc = padded_batch(rng, 3, 6)
    dec_in = shift_right(padded_batch(rng, 3, 7, min_len=7))
    full = np.asarray(forward(TINY, tiny_params, enc, dec_in))
    max_len = 9  # longer than the steps taken: the cache may be larger than used

    @jax.jit
    def prefill(enc):
        encoded = model.apply({"params": tiny_params}, enc, method=Transformer.encode)
        # A cache-creating call over the whole input is ordinary causal decoding.
        creating, _ = model.apply({"params": tiny_params}, encoded, enc, dec_in, decode=True,
                                  max_decode_length=max_len, mutable=["cache"],
                                  method=Transformer.decode)
        return encoded, init_cache(TINY, tiny_params, encoded, enc, max_len), creating

    @jax.jit
    def step(cache, encoded, token):
        logits, mut = model.apply({"params": tiny_params, "cache": cache}, encoded, enc,
                                  token, decode=True, max_decode_length=max_len,
                                  mutable=["cache"], method=Transformer.decode)
        return logits, mut["cache"]

    encoded, cache, creating = prefill(enc)
    np.testing.assert_allclose(np.asarray(creating), full, atol=1e-5)
    steps = []
    for i in range(dec_in.shape[1]):
        logits, cache = step(cache, encoded, dec_in[:, i:i + 1])
        steps.append(np.asarray(logits)[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)
    # The cross-attention cache holds the encoder's projected keys/values.
    assert cache["decoder"]["layers_1"]["encoder_decoder_attention"]["cached_key"].shape == (
        3, 6, 4, 8)
    # T5X-style `init(..., decode=True)` sizes the self-attention cache by the decoder input
    # and holds no cross-attention cache (that one must come from the real encoder output).
    shapes = jax.eval_shape(functools.partial(model.init, decode=True), jax.random.key(0),
                            enc, jnp.ones((3, max_len), jnp.int32))["cache"]["decoder"]
    assert shapes["layers_0"]["self_attention"]["cached_key"].shape == (3, max_len, 4, 8)
    assert "encoder_decoder_attention" not in shapes["layers_0"]


def test_decode_without_max_length_is_refused(tiny_params):
    model = Transformer(TINY)
    enc = jnp.ones((1, 3), jnp.int32)

    def run():
        encoded = model.apply({"params": tiny_params}, enc, method=Transformer.encode)
        cache = init_cache(TINY, tiny_params, encoded, enc, 5)
        return model.apply({"params": tiny_params, "cache": cache}, encoded, enc,
                           jnp.ones((1, 1), jnp.int32), decode=True, mutable=["cache"],
                           method=Transformer.decode)

    with pytest.raises(ValueError, match="max_decode_length=5"):
        jax.eval_shape(run)  # shapes only: the check happens while tracing


def test_dropout_only_when_enabled(tiny_params):
    enc = padded_batch(np.random.default_rng(4), 2, 8)  # shapes shared with the bf16 test
    dec = shift_right(padded_batch(np.random.default_rng(5), 2, 6))
    a = forward(TINY, tiny_params, enc, dec)
    # rbg keys (as T5X uses): threefry dropout masks take ~4x longer to compile on CPU.
    key = functools.partial(jax.random.key, impl="unsafe_rbg")
    c = forward(TINY, tiny_params, enc, dec, enable_dropout=True, rng=key(1))
    d = forward(TINY, tiny_params, enc, dec, enable_dropout=True, rng=key(2))
    e = forward(TINY, tiny_params, enc, dec, enable_dropout=True, rng=key(2))
    assert not np.allclose(a, c) and not np.allclose(c, d)
    np.testing.assert_array_equal(d, e)  # same key, same mask


def test_bfloat16_smoke(tiny_params):
    enc = padded_batch(np.random.default_rng(4), 2, 8)
    dec = shift_right(padded_batch(np.random.default_rng(5), 2, 6))
    f32 = forward(TINY, tiny_params, enc, dec)
    bf16 = forward(TINY.replace(dtype="bfloat16"), tiny_params, enc, dec)
    assert bf16.dtype == jnp.float32  # logits stay float32
    assert np.all(np.isfinite(bf16))
    scale = float(jnp.max(jnp.abs(f32)))
    assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.1 * scale
    # The argmax mostly survives the precision drop.
    assert np.mean(np.argmax(bf16, -1) == np.argmax(f32, -1)) > 0.8


def test_remat_keeps_names_and_values():
    """Rematerialisation changes the program (checkpointed layers), not names or values.

    (Gradients through `nn.remat` are flax/JAX's responsibility; comparing them here would
    cost two backward compiles.)
    """
    cfg = TINY.replace(num_encoder_layers=1, num_decoder_layers=1, name="one-layer")
    params = random_params(cfg)
    enc = jnp.array([[5, 6, 7, 1], [8, 1, 0, 0]])
    tgt = jnp.array([[9, 10, 1], [11, 1, 0]])
    dec = shift_right(np.asarray(tgt))
    plain, remat = Transformer(cfg), Transformer(cfg, remat_policy="dots")
    abstract = jax.eval_shape(lambda: remat.init(jax.random.key(0), enc, dec))["params"]
    assert set(flatten(nn.unbox(abstract))) == set(param_specs(cfg))

    def loss(model, p):
        logits = model.apply({"params": p}, enc, dec, tgt)
        return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(tgt, cfg.vocab_size))

    jaxpr = str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    assert "remat" not in str(jax.make_jaxpr(jax.grad(functools.partial(loss, plain)))(params))
    np.testing.assert_allclose(jax.jit(functools.partial(loss, remat))(params),
                               jax.jit(functools.partial(loss, plain))(params), rtol=1e-6)
    with pytest.raises(ValueError, match="remat_policy"):
        jax.eval_shape(Transformer(cfg, remat_policy="bogus").apply, {"params": params}, enc, dec)


@pytest.mark.parametrize("shape", [(4, 2, 8, 8), (8, 4, 192, 192)])
def test_position_bias_add_gradients_match_a_plain_add(shape):
    """The position bias's batch-summed gradient: the small shape takes XLA's own sum (bit
    for bit the plain add's), the large one (past _ONES_DOT_MIN_ELEMENTS) the ones-vector
    product; both must give the plain add's value and gradients."""
    from flanrec.model import layers

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=shape), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(1,) + shape[1:]), jnp.float32)
    weight = jnp.asarray(rng.normal(size=shape), jnp.float32)
    large = logits.size >= layers._ONES_DOT_MIN_ELEMENTS
    assert large == (shape[-1] == 192)
    # the large shape must take the ones-vector route on CPU, the small one XLA's own sum
    routed = "custom_vjp" in str(jax.make_jaxpr(layers.add_position_bias)(logits, bias))
    assert routed == (large and jax.default_backend() == "cpu")

    def loss(add, x, b):
        return jnp.sum(jnp.tanh(add(x, b)) * weight)

    ours = jax.jit(jax.grad(functools.partial(loss, layers.add_position_bias), (0, 1)))
    plain = jax.jit(jax.grad(functools.partial(loss, jnp.add), (0, 1)))
    (gx, gb), (px, pb) = ours(logits, bias), plain(logits, bias)
    np.testing.assert_array_equal(np.asarray(gx), np.asarray(px))
    assert gb.shape == bias.shape
    if large:
        np.testing.assert_allclose(np.asarray(gb), np.asarray(pb), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(np.asarray(gb), np.asarray(pb))
    np.testing.assert_array_equal(np.asarray(layers.add_position_bias(logits, bias)),
                                  np.asarray(logits + bias))
