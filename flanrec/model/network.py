"""T5 v1.1 / Flan-T5 encoder-decoder in Flax linen.

Why linen rather than NNX: the checkpoints we start from are T5X checkpoints, and T5X (with
flaxformer) is linen. Writing the model in linen lets every parameter carry
`nn.with_logical_partitioning` metadata under the *same* names T5X uses
(`encoder/layers_0/attention/query/kernel`, ...), so a T5X checkpoint maps onto our tree one to
one and the partitioner reuses linen's mature logical-axis helpers (`nn.get_partition_spec`,
`nn.logical_to_mesh_sharding`, `nn.with_logical_constraint`).

Names, shapes and logical axes of parameters are fixed by `flanrec.convert.common.param_specs`;
a test checks `Transformer.init` against that table. Attention kernels are stored 2-D
(`[embed, joined_kv]`), which is T5X's `DenseGeneral` kernel flattened.

Numerics follow T5 v1.1 exactly (checked against transformers' PyTorch T5 in the tests):
RMSNorm without mean or bias computed in float32; gated-GELU (tanh approximation); relative
position bias (bidirectional buckets in the encoder, causal in the decoder, one table per stack,
shared by all its layers); no 1/sqrt(d_kv) in attention (T5 folds it into the query init);
untied, unscaled output logits. Parameters are float32; activations use `config.dtype`;
attention softmax, norms and logits are float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from flanrec.model.config import T5Config

Array = jax.Array
Initializer = Callable[..., Array]

# Large negative logit for masked attention entries. Finite (not -inf) so that a row whose keys
# are all masked (e.g. a padding query in a packed batch) yields a uniform softmax, not NaN.
_MASK_VALUE = -1e10

_constrain = nn.with_logical_constraint


def _boxed(init: Initializer, axes: tuple[str, ...]) -> Initializer:
    return nn.with_logical_partitioning(init, axes)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's log-spaced bucket of `memory_position - query_position`.

    Computed in numpy on static positions (lengths are static under jit), in float32 like
    transformers' implementation, so bucket boundaries agree with the reference exactly.
    Half the buckets (bidirectional) or all of them (causal) cover distances; small distances
    get their own bucket, larger ones share log-spaced buckets up to `max_distance`.
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    bucket = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket += (rel > 0).astype(np.int64) * num_buckets
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
                  / np.float32(np.log(max_distance / max_exact))
                  * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return bucket + np.where(is_small, n, large)


class RMSNorm(nn.Module):
    """T5 layer norm: scale-only, no mean subtraction, no bias; statistics in float32."""

    epsilon: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _boxed(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (x32 * lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


class Dense(nn.Module):
    """Bias-free projection with a 2-D float32 kernel, computed in the activation dtype."""

    features: int
    axes: tuple[str, str]
    dtype: Any
    kernel_init: Initializer
    out_dtype: Any = None  # e.g. float32 logits from bf16 activations

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", _boxed(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), jnp.float32)
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                       preferred_element_type=self.out_dtype or self.dtype)


class Embed(nn.Module):
    """Token embedding table shared by encoder and decoder inputs (not by the logits)."""

    vocab_size: int
    features: int
    dtype: Any

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        table = self.param("embedding", _boxed(nn.initializers.normal(stddev=1.0),
                                               ("vocab", "embed")),
                           (self.vocab_size, self.features), jnp.float32)
        return jnp.take(table.astype(self.dtype), tokens, axis=0)


class RelativePositionBias(nn.Module):
    """One learned scalar per (head, bucket); owned by a stack and shared by its layers."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, qlen: int, klen: int) -> Array:
        """Bias [1, heads, qlen, klen] in float32 for queries/keys at positions 0..len-1."""
        table = self.param(
            "rel_embedding",
            _boxed(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets), jnp.float32)
        rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        return jnp.take(table, jnp.asarray(buckets, jnp.int32), axis=1)[None]


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(d) scaling, additive position bias, optional KV cache.

    `decode=True` keeps keys/values in the 'cache' collection. Self-attention: the first call
    creates zeroed caches of the decoder's max_decode_length (default: the input length, as
    in T5X's `init(..., decode=True)`); later calls take one token at a time, write it at
    `cache_index` and attend to positions <= cache_index. Cross-attention: the first call
    stores the projected encoder keys/values, later calls reuse them.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    cross: bool = False  # encoder-decoder attention: caches projected encoder keys/values

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None,
                 bias: Array | None) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h, dk = cfg.num_heads, cfg.d_kv
        base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(*args: Any) -> Array:  # the attention's 1/sqrt(d_kv), folded into init
            return base_init(*args) / np.sqrt(dk).astype(np.float32)

        def proj(name: str, init: Initializer, x: Array) -> Array:
            y = Dense(cfg.inner_dim, ("embed", "joined_kv"), dtype, init, name=name)(x)
            y = y.reshape(*x.shape[:-1], h, dk)
            return _constrain(y, ("batch", "length", "heads", "kv"))

        q = proj("query", query_init, inputs_q)
        if self.decode and self.cross:
            # Keys/values of the encoder output do not change while decoding: project them
            # once (on the first decode call under `apply`) and reuse them at every step.
            # Never during `init`: a cache made from init's dummy encoder would be silently
            # wrong; without it, the first real step adds it (use decoding.init_cache).
            if self.has_variable("cache", "cached_key"):
                k = self.variable("cache", "cached_key").value
                v = self.variable("cache", "cached_value").value
            else:
                k = proj("key", base_init, inputs_kv)
                v = proj("value", base_init, inputs_kv)
                if not self.is_initializing():
                    self.variable("cache", "cached_key", lambda: k)
                    self.variable("cache", "cached_value", lambda: v)
        else:
            k = proj("key", base_init, inputs_kv)
            v = proj("value", base_init, inputs_kv)

        if self.decode and not self.cross:
            initialized = self.has_variable("cache", "cached_key")
            # Cache length: the decoder sizes the position bias by max_decode_length.
            max_len = bias.shape[-1] if bias is not None else k.shape[1]
            shape = (k.shape[0], max_len, h, dk)
            cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
            cache_index = self.variable("cache", "cache_index",
                                        lambda: jnp.array(0, dtype=jnp.int32))
            if initialized:
                max_len = cached_key.value.shape[1]
                if q.shape[1] != 1:
                    raise ValueError(f"incremental decoding takes one token per step, got "
                                     f"decoder inputs of length {q.shape[1]}")
                if bias is not None and bias.shape[-1] != max_len:
                    raise ValueError(f"position bias covers {bias.shape[-1]} positions but the "
                                     f"cache holds {max_len}: pass max_decode_length={max_len}")
                idx = cache_index.value
                k = lax.dynamic_update_slice(cached_key.value, k, (0, idx, 0, 0))
                v = lax.dynamic_update_slice(cached_value.value, v, (0, idx, 0, 0))
                cached_key.value, cached_value.value = k, v
                cache_index.value = idx + 1
                step_mask = (jnp.arange(max_len) <= idx)[None, None, None, :]
                mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
                if bias is not None:
                    bias = lax.dynamic_slice_in_dim(bias, idx, 1, axis=2)
            elif bias is not None:  # cache-creating call: plain causal attention
                bias = bias[:, :, :q.shape[1], :k.shape[1]]

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = jnp.where(mask, logits, _MASK_VALUE)
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=self.deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = _constrain(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(*out.shape[:2], cfg.inner_dim)
        out = Dense(cfg.d_model, ("joined_kv", "embed"), dtype, base_init, name="out")(out)
        return _constrain(out, ("batch", "length", "embed"))


class MlpBlock(nn.Module):
    """Gated-GELU feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        gate = Dense(cfg.d_ff, ("embed", "mlp"), dtype, init, name="wi_0")(x)
        lin = Dense(cfg.d_ff, ("embed", "mlp"), dtype, init, name="wi_1")(x)
        y = jax.nn.gelu(gate, approximate=True) * lin
        y = _constrain(y, ("batch", "length", "mlp"))
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        y = Dense(cfg.d_model, ("mlp", "embed"), dtype, init, name="wo")(y)
        return _constrain(y, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, bias: Array) -> Array:
        cfg, det = self.config, self.deterministic
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype))
        drop = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, name="attention")(y, y, mask, bias)
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y)
        x = x + drop(y, deterministic=det)
        return _constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array | None, self_bias: Array,
                 cross_mask: Array | None) -> Array:
        cfg, det = self.config, self.deterministic
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype))
        drop = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_self_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, self.decode, name="self_attention")(
            y, y, self_mask, self_bias)
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_cross_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, self.decode, cross=True,
                               name="encoder_decoder_attention")(y, encoded, cross_mask, None)
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y)
        x = x + drop(y, deterministic=det)
        return _constrain(x, ("batch", "length", "embed"))


def _remat(cls: type[nn.Module], policy: str) -> type[nn.Module]:
    """Rematerialise a layer to trade compute for activation memory (names are unchanged)."""
    if policy == "none":
        return cls
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if policy not in policies:
        raise ValueError(f"unknown remat_policy {policy!r}; expected none, full or dots")
    return nn.remat(cls, policy=policies[policy])


class Encoder(nn.Module):
    config: T5Config
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, embedded: Array, mask: Array | None, deterministic: bool) -> Array:
        cfg = self.config
        length = embedded.shape[1]
        bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    bidirectional=True, name="relpos_bias")(length, length)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        layer_cls = _remat(EncoderLayer, self.remat_policy)
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, mask, bias)
        x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return _constrain(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, embedded: Array, encoded: Array, self_mask: Array | None,
                 cross_mask: Array | None, deterministic: bool, decode: bool,
                 max_decode_length: int | None) -> Array:
        cfg = self.config
        length = embedded.shape[1]
        # While decoding, queries sit anywhere in [0, max_decode_length); the attention picks
        # the row of the full table at its cache index.
        bias_len = (max_decode_length or length) if decode else length
        bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    bidirectional=False, name="relpos_bias")(bias_len, bias_len)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        layer_cls = DecoderLayer if decode else _remat(DecoderLayer, self.remat_policy)
        for i in range(cfg.num_decoder_layers):
            x = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(
                x, encoded, self_mask, bias, cross_mask)
        x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        logits = Dense(cfg.vocab_size, ("embed", "vocab"), jnp.dtype(cfg.dtype),
                       nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                       out_dtype=jnp.dtype(cfg.logits_dtype), name="logits_dense")(x)
        return _constrain(logits, ("batch", "length", "vocab"))


def _segment_mask(q_seg: Array | None, k_seg: Array | None) -> Array | None:
    if q_seg is None or k_seg is None:
        return None
    return (q_seg[:, None, :, None] == k_seg[:, None, None, :])


def _and(*masks: Array | None) -> Array | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


class Transformer(nn.Module):
    """Flan-T5 encoder-decoder; `__call__` returns float32 logits [batch, target_len, vocab].

    Padding (token 0) is masked as attention *keys* only: outputs at padding positions are
    never used, and leaving their queries unmasked matches transformers' T5 bit for bit.
    Packed examples are separated by `encoder_segment_ids` / `decoder_segment_ids`.
    Positions are accepted for T5X call compatibility but unused: relative attention only
    depends on position differences, which are identical within a packed segment.
    """

    config: T5Config
    remat_policy: str = "none"  # none | full | dots  (activation rematerialisation per layer)

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, jnp.dtype(cfg.dtype))
        self.encoder = Encoder(cfg, self.remat_policy)
        self.decoder = Decoder(cfg, self.remat_policy)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, enable_dropout: bool = False) -> Array:
        """Encoder outputs [batch, input_len, d_model] in the activation dtype."""
        del encoder_positions  # see class docstring
        tokens = encoder_input_tokens
        mask = _and((tokens > 0)[:, None, None, :],
                    _segment_mask(encoder_segment_ids, encoder_segment_ids))
        return self.encoder(self.token_embedder(tokens), mask, not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array | None = None,
               encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
        """Decoder logits (float32) [batch, decoder_len, vocab].

        Incremental decoding: build the cache once with
        `flanrec.model.decoding.init_cache(config, params, encoded, encoder_input_tokens,
        max_length)`, then call with one token per step, `decode=True`,
        `max_decode_length=max_length` and `mutable=['cache']`. A `decode=True` call on a
        fresh (empty) cache creates it and runs ordinary causal attention over its input.
        """
        del decoder_positions
        length = decoder_input_tokens.shape[1]
        causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
        if decode:
            self_mask = causal  # a single step is [1, 1]; the cache masks future positions
        else:
            target_mask = (None if decoder_target_tokens is None
                           else (decoder_target_tokens > 0)[:, None, None, :])
            self_mask = _and(causal, target_mask,
                             _segment_mask(decoder_segment_ids, decoder_segment_ids))
        cross_mask = _and((encoder_input_tokens > 0)[:, None, None, :],
                          _segment_mask(decoder_segment_ids, encoder_segment_ids))
        return self.decoder(self.token_embedder(decoder_input_tokens), encoded, self_mask,
                            cross_mask, not enable_dropout, decode, max_decode_length)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array | None = None,
                 encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, enable_dropout: bool = False,
                 decode: bool = False, max_decode_length: int | None = None) -> Array:
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode, max_decode_length)
