"""Soft prompts and LoRA inside the network: exactness against the base model, fusion rules
against hand-built equivalents, masking with padding, decoding, LoRA merge."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hf_fixtures import padded_batch, random_params, shift_right

from flanrec.model import Transformer, get_preset
from flanrec.model.adapters import (
    LoraConfig,
    PromptConfig,
    adapter_specs,
    merge_lora,
    with_adapters,
)
from flanrec.model.decoding import greedy_decode
from flanrec.model.layers import Dense
from flanrec.model.params import check_params, flatten, param_specs, unflatten

# One layer per stack: every block kind (encoder self-, decoder self- and cross-attention, MLP)
# is still there, at half the compile time of the 2-layer preset.
TINY = get_preset("tiny", dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1)
ALL_KERNELS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")


def random_adapters(cfg, seed: int = 1, zero_b: bool = False) -> dict:
    """Random adapter leaves from the spec table (B zero on request). LoRA factors of std 0.1
    perturb each kernel by ~20%: far from the base model, yet the float32 round-off of the
    whole tiny network stays below the 1e-5 the merge test asks for."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, _) in adapter_specs(cfg).items():
        value = rng.normal(0.0, 0.1 if name.startswith("lora/") else 0.5, shape)
        if zero_b and name.endswith("lora_b"):
            value = np.zeros(shape)
        flat[name] = value.astype(np.float32)
    return unflatten(flat)


@functools.partial(jax.jit, static_argnames=("cfg",))
def logits(cfg, params, enc, dec, prompt_ids=None):
    return Transformer(cfg).apply({"params": params}, enc, dec, prompt_ids=prompt_ids)


@functools.partial(jax.jit, static_argnames=("cfg",))
def encode(cfg, params, enc):
    return Transformer(cfg).apply({"params": params}, enc, method=Transformer.encode)


@pytest.fixture(scope="module")
def base():
    return random_params(TINY, seed=3)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    enc = padded_batch(rng, 3, 9)
    dec = shift_right(padded_batch(rng, 3, 5))
    return enc, dec


def test_adapter_params_have_their_own_keys_and_axes():
    cfg = with_adapters(TINY, PromptConfig(length=3, families=("seq", "rating")),
                        LoraConfig(rank=2, targets=ALL_KERNELS))
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 2), jnp.int32)))["params"]
    shapes = flatten(nn.unbox(boxed))
    axes = flatten(nn.get_partition_spec(boxed))
    backbone = {k for k in shapes if not k.startswith(("prompt/", "lora/"))}
    assert backbone == set(param_specs(TINY))          # base tree unchanged
    specs = adapter_specs(cfg)
    assert set(shapes) - backbone == set(specs)
    for name, (shape, logical) in specs.items():
        assert shapes[name].shape == shape and tuple(axes[name]) == logical, name
    # LoRA factors carry the axes of the kernel they adapt; every kernel of every block.
    q = "lora/decoder/layers_0/encoder_decoder_attention/query"
    assert tuple(axes[f"{q}/lora_a"]) == ("embed", "lora_rank")
    assert tuple(axes[f"{q}/lora_b"]) == ("lora_rank", "joined_kv")
    assert tuple(axes["lora/encoder/layers_0/mlp/wo/lora_a"]) == ("mlp", "lora_rank")
    n_kernels = (4 + 3) + (8 + 3)  # encoder: attention + mlp; decoder: self + cross + mlp
    assert len([k for k in specs if k.endswith("lora_a")]) == n_kernels
    assert shapes["prompt/rating"].shape == (3, 32)


@pytest.mark.parametrize("kind", ["concat-0", "add-zeros", "lora-zero-b"])
def test_neutral_adapters_give_exactly_the_base_logits(base, batch, kind):
    cfg = {"concat-0": with_adapters(TINY, PromptConfig(length=0)),
           "add-zeros": with_adapters(TINY, PromptConfig(length=1, fusion="add")),
           "lora-zero-b": with_adapters(TINY, lora=LoraConfig(rank=4, targets=ALL_KERNELS))}[kind]
    adapters = random_adapters(cfg, zero_b=True)
    if kind == "add-zeros":
        adapters["prompt"]["all"][:] = 0.0
    enc, dec = batch
    want = np.asarray(logits(TINY, base, enc, dec))
    got = np.asarray(logits(cfg, {**base, **adapters}, enc, dec))
    np.testing.assert_array_equal(got, want)


def test_concat_prompt_equals_prepending_the_tokens_it_copies(base, batch):
    """A concat prompt whose rows are the embeddings of tokens t1..tP is, by construction,
    the base model reading t1..tP in front of its input: encoder, logits and greedy decoding."""
    cfg = with_adapters(TINY, PromptConfig(length=2))
    t = np.array([17, 42])
    params = {**base, "prompt": {"all": base["token_embedder"]["embedding"][t]}}
    enc, dec = batch
    prefixed = np.concatenate([np.broadcast_to(t, (enc.shape[0], 2)), enc], axis=1)
    np.testing.assert_allclose(np.asarray(encode(cfg, params, enc)),
                               np.asarray(encode(TINY, base, prefixed)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits(cfg, params, enc, dec)),
                               np.asarray(logits(TINY, base, prefixed, dec)),
                               atol=1e-5, rtol=1e-5)
    # decoding.py builds Transformer(config) itself: the prompt must reach it (encode/decode
    # with the extended cross-attention mask) with no change to the decoding code.
    got, got_s = greedy_decode(cfg, params, jnp.asarray(enc), 6)
    want, want_s = greedy_decode(TINY, base, jnp.asarray(prefixed), 6)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_allclose(np.asarray(got_s), np.asarray(want_s), atol=1e-4)


def test_concat_masks_padding_and_prompt_positions(base):
    cfg = with_adapters(TINY, PromptConfig(length=2))
    params = {**base, **random_adapters(cfg)}
    tokens = jnp.array([[5, 1, 0, 0], [5, 6, 7, 1]])
    mask = Transformer(cfg).apply({"params": params}, tokens, None,
                                  method=lambda m, t, s: m._encoder_key_mask(t, s))
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    # A row's outputs do not depend on how much padding follows it.
    row = np.array([[9, 23, 4, 1]])
    dec = np.array([[0, 12, 8]])
    short = np.asarray(logits(cfg, params, row, dec))
    for pad in (3, 11):
        long = np.asarray(logits(cfg, params, np.pad(row, [(0, 0), (0, pad)]), dec))
        np.testing.assert_allclose(long, short, atol=1e-5, rtol=1e-5)
    enc_short = np.asarray(encode(cfg, params, row))
    enc_long = np.asarray(encode(cfg, params, np.pad(row, [(0, 0), (0, 5)])))
    assert enc_short.shape == (1, 2 + 4, 32) and enc_long.shape == (1, 2 + 9, 32)
    np.testing.assert_allclose(enc_long[:, :6], enc_short, atol=1e-5, rtol=1e-5)


def test_concat_refuses_packed_inputs(base):
    cfg = with_adapters(TINY, PromptConfig(length=2))
    params = {**base, **random_adapters(cfg)}
    enc = jnp.array([[5, 1, 6, 1]])
    seg = jnp.array([[1, 1, 2, 2]])
    with pytest.raises(ValueError, match="packed inputs"):
        Transformer(cfg).apply({"params": params}, enc, enc, encoder_segment_ids=seg,
                               decoder_segment_ids=seg)


def test_add_prompt_equals_shifting_every_non_pad_embedding(base, batch):
    """'add' = the base encoder with v added to every embedding row but padding's."""
    cfg = with_adapters(TINY, PromptConfig(length=1, fusion="add"))
    v = np.random.default_rng(5).normal(size=(1, 32)).astype(np.float32)
    params = {**base, "prompt": {"all": v}}
    shifted = {**base, "token_embedder": {"embedding": np.concatenate(
        [base["token_embedder"]["embedding"][:1], base["token_embedder"]["embedding"][1:] + v])}}
    enc, _ = batch
    np.testing.assert_allclose(np.asarray(encode(cfg, params, enc)),
                               np.asarray(encode(TINY, shifted, enc)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="length=1"):
        PromptConfig(length=3, fusion="add")


def test_prompt_per_family_is_picked_by_prompt_ids(base, batch):
    cfg = with_adapters(TINY, PromptConfig(length=2, families=("seq", "rating")))
    params = {**base, **random_adapters(cfg)}
    single = with_adapters(TINY, PromptConfig(length=2))
    enc, dec = batch
    got = np.asarray(logits(cfg, params, enc, dec, jnp.array([1, 0, 1])))
    for row, family in enumerate(("rating", "seq", "rating")):
        one = {**base, "prompt": {"all": params["prompt"][family]}}
        want = np.asarray(logits(single, one, enc[row:row + 1], dec[row:row + 1]))
        np.testing.assert_allclose(got[row:row + 1], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prompt_ids"):
        logits(cfg, params, enc, dec)


def test_dense_lora_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    w = rng.normal(size=(5, 4)).astype(np.float32)
    a = rng.normal(size=(5, 2)).astype(np.float32)
    b = rng.normal(size=(2, 4)).astype(np.float32)
    dense = Dense(4, ("embed", "mlp"), jnp.float32, nn.initializers.zeros, lora_scale=1.5)
    got = dense.apply({"params": {"kernel": w}}, x, {"lora_a": a, "lora_b": b})
    np.testing.assert_allclose(np.asarray(got), x @ w + 1.5 * (x @ a) @ b, rtol=1e-5, atol=1e-5)


def test_merged_lora_equals_unmerged(base, batch):
    cfg = with_adapters(TINY, lora=LoraConfig(rank=3, alpha=6.0, targets=ALL_KERNELS))
    params = {**base, **random_adapters(cfg, seed=4)}
    enc, dec = batch
    unmerged = np.asarray(logits(cfg, params, enc, dec))
    merged_cfg, merged = merge_lora(cfg, params)
    assert type(merged_cfg).__name__ == "T5Config" and "lora" not in merged
    check_params(flatten(merged), merged_cfg, "merged")
    got = np.asarray(logits(merged_cfg, merged, enc, dec))
    np.testing.assert_allclose(got, unmerged, atol=1e-5, rtol=1e-5)
    assert np.max(np.abs(unmerged - np.asarray(logits(TINY, base, enc, dec)))) > 1e-2
