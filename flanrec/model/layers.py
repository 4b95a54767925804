"""The layers of T5 v1.1 / Flan-T5 in Flax linen: RMSNorm, bias-free projections (with an
optional LoRA path), the token embedding, the relative position bias, attention with its KV
cache, the gated-GELU MLP, and the encoder and decoder layers built from them.

Numerics follow T5 v1.1 exactly (checked against transformers' PyTorch T5 in the tests):
RMSNorm without mean or bias computed in float32; gated-GELU (tanh approximation); relative
position bias (bidirectional buckets in the encoder, causal in the decoder); no 1/sqrt(d_kv) in
attention (T5 folds it into the query init). Parameters are float32 and carry their logical
axes; activations use `config.dtype`; attention softmax and norms are float32. Module names
are T5X's, so the parameter paths are exactly `flanrec.model.params.param_specs`. How the
layers are stacked, masked and given their adapters: `flanrec.model.network`.
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
Lora = dict[str, Any] | None  # subtree of the `lora` params mirroring the module path, or None

# Large negative logit for masked attention entries. Finite (not -inf) so that a row whose keys
# are all masked (e.g. a padding query in a packed batch) yields a uniform softmax, not NaN.
_MASK_VALUE = -1e10

# Activation sharding hint by logical axis names (bound by `partitioning.mesh_context`).
constrain = nn.with_logical_constraint


def boxed(init: Initializer, axes: tuple[str, ...]) -> Initializer:
    """`init` whose parameter carries its logical axes (the names of `flanrec.model.params`)."""
    return nn.with_logical_partitioning(init, axes)


def lora_child(tree: Lora, key: str) -> Lora:
    """The LoRA subtree of a child module (None when nothing below is adapted)."""
    return None if tree is None else tree.get(key)


def _lora_scale(config: T5Config) -> float:
    lora = getattr(config, "lora", None)
    return 0.0 if lora is None else lora.scale


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
        scale = self.param("scale", boxed(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (x32 * lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


@jax.custom_vjp
def _matmul_cpu(x: Array, kernel: Array) -> Array:
    return jnp.dot(x, kernel)


def _matmul_cpu_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.dot(x, kernel), (x, kernel)


def _matmul_cpu_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    """The kernel gradient x^T g as a plain matrix product of a materialised transpose of
    the narrower of x and g (behind an optimization barrier, so XLA cannot fold it back).

    XLA:CPU otherwise emits x^T g as a dot contracting the token dimension of both operands
    and makes that legal by writing one operand transposed; it picks the output gradient,
    which for the logits layer is a [tokens, vocab] transpose per step, the largest single
    cost of a small model's train step (profiled with jax.profiler). Transposing the narrow
    side (d_model wide for most kernels, the output gradient for `wo`) is cheap. Same
    arithmetic, other summation order.
    """
    x, kernel = res
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1]).astype(x.dtype)
    if x2.shape[1] <= g2.shape[1]:
        xt = jax.lax.optimization_barrier(jnp.transpose(x2))
        dkernel = jnp.dot(xt, g2, preferred_element_type=kernel.dtype)
    else:  # (g^T x)^T: the small [out, in] result is transposed instead
        gt = jax.lax.optimization_barrier(jnp.transpose(g2))
        dkernel = jnp.transpose(jnp.dot(gt, x2, preferred_element_type=kernel.dtype))
    dx = jnp.dot(g, kernel.T.astype(g.dtype)).astype(x.dtype)
    return dx, dkernel.astype(kernel.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def _matmul(x: Array, kernel: Array, out_dtype: Any) -> Array:
    """x @ kernel with float32 accumulation; on CPU with the transpose-sparing gradient."""
    if jax.default_backend() == "cpu" and x.dtype == kernel.dtype == jnp.float32 and \
            jnp.dtype(out_dtype) == jnp.float32:
        return _matmul_cpu(x, kernel)
    return jnp.dot(x, kernel, preferred_element_type=out_dtype)


@jax.custom_vjp
def _add_batch_broadcast_cpu(x: Array, bias: Array) -> Array:
    return x + bias


def _add_batch_broadcast_cpu_fwd(x: Array, bias: Array) -> tuple[Array, None]:
    return x + bias, None


def _add_batch_broadcast_cpu_bwd(_: None, g: Array) -> tuple[Array, Array]:
    """The bias gradient, a sum over the batch, as a product with a vector of ones.

    XLA:CPU hands the plain ``sum(g, axis=0)`` to YNNPACK as a reduction over the slowest
    axis, which it runs ~35x slower than this matrix-vector product (64 against 1.7 ms for
    [32, 4, 272, 272], the encoder's packed attention logits on Amazon Beauty): the largest
    single op of that train step in a jax.profiler trace. Same sum, other order.
    """
    rows = g.reshape(g.shape[0], -1)
    ones = jnp.ones((g.shape[0],), g.dtype)
    dbias = jnp.dot(ones, rows, preferred_element_type=jnp.float32)
    return g, dbias.reshape((1,) + g.shape[1:]).astype(g.dtype)


_add_batch_broadcast_cpu.defvjp(_add_batch_broadcast_cpu_fwd, _add_batch_broadcast_cpu_bwd)


# Below this many logits XLA:CPU's own batch sum is fast (0.26 ms for [32, 4, 56, 56], the
# ML-100K encoder's) and is kept, so small models train bit-identically to before; above it
# (from a few MiB, past the caches) YNNPACK's reduction falls off a cliff: 9.8 against 0.5 ms
# at [32, 4, 128, 128], 60 against 1.3 ms at [32, 4, 272, 272] (measured on 2 cores).
_ONES_DOT_MIN_ELEMENTS = 1 << 20


def add_position_bias(logits: Array, bias: Array) -> Array:
    """logits [batch, heads, q, k] + bias [1, heads, q, k] (the bias shared by the batch)."""
    if (jax.default_backend() == "cpu" and bias.ndim == logits.ndim and bias.shape[0] == 1
            and bias.shape[1:] == logits.shape[1:] and bias.dtype == logits.dtype
            and logits.size >= _ONES_DOT_MIN_ELEMENTS):
        return _add_batch_broadcast_cpu(logits, bias)
    return logits + bias


class Dense(nn.Module):
    """Bias-free projection with a 2-D float32 kernel, computed in the activation dtype.

    With `lora` ({'lora_a': [in, r], 'lora_b': [r, out]}) it computes
    x W + lora_scale · (x A) B without ever forming W + A B, so the frozen kernel is only
    read and its gradient is never materialised.
    """

    features: int
    axes: tuple[str, str]
    dtype: Any
    kernel_init: Initializer
    out_dtype: Any = None  # e.g. float32 logits from bf16 activations
    lora_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array, lora: Lora = None) -> Array:
        kernel = self.param("kernel", boxed(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), jnp.float32)
        out_dtype = self.out_dtype or self.dtype
        y = _matmul(x.astype(self.dtype), kernel.astype(self.dtype), out_dtype)
        if lora is not None:
            xa = jnp.dot(x.astype(self.dtype), lora["lora_a"].astype(self.dtype),
                         preferred_element_type=jnp.float32) * self.lora_scale
            y = y + jnp.dot(xa.astype(self.dtype), lora["lora_b"].astype(self.dtype),
                            preferred_element_type=out_dtype)
        return y


class Embed(nn.Module):
    """Token embedding table shared by encoder and decoder inputs, and by the logits of a
    tied model (`attend`)."""

    vocab_size: int
    features: int
    dtype: Any

    def setup(self) -> None:
        self.embedding = self.param("embedding", boxed(nn.initializers.normal(stddev=1.0),
                                                       ("vocab", "embed")),
                                    (self.vocab_size, self.features), jnp.float32)

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)

    def attend(self, query: Array, out_dtype: Any) -> Array:
        """query @ table^T: one score per vocabulary entry, accumulated in `out_dtype`."""
        return _matmul(query.astype(self.dtype), self.embedding.astype(self.dtype).T, out_dtype)


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
            boxed(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
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
                 bias: Array | None, lora: Lora = None) -> Array:
        cfg = self.config
        scale = _lora_scale(cfg)
        dtype = jnp.dtype(cfg.dtype)
        h, dk = cfg.num_heads, cfg.d_kv
        base_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(*args: Any) -> Array:  # the attention's 1/sqrt(d_kv), folded into init
            return base_init(*args) / np.sqrt(dk).astype(np.float32)

        def proj(name: str, init: Initializer, x: Array) -> Array:
            y = Dense(cfg.inner_dim, ("embed", "joined_kv"), dtype, init, lora_scale=scale,
                      name=name)(x, lora_child(lora, name))
            y = y.reshape(*x.shape[:-1], h, dk)
            return constrain(y, ("batch", "length", "heads", "kv"))

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
            logits = add_position_bias(logits, bias)
        if mask is not None:
            logits = jnp.where(mask, logits, _MASK_VALUE)
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=self.deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = constrain(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(*out.shape[:2], cfg.inner_dim)
        out = Dense(cfg.d_model, ("joined_kv", "embed"), dtype, base_init, lora_scale=scale,
                    name="out")(out, lora_child(lora, "out"))
        return constrain(out, ("batch", "length", "embed"))


class MlpBlock(nn.Module):
    """Gated-GELU feed-forward: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, lora: Lora = None) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        dense = functools.partial(Dense, dtype=dtype, kernel_init=init,
                                  lora_scale=_lora_scale(cfg))
        gate = dense(cfg.d_ff, ("embed", "mlp"), name="wi_0")(x, lora_child(lora, "wi_0"))
        lin = dense(cfg.d_ff, ("embed", "mlp"), name="wi_1")(x, lora_child(lora, "wi_1"))
        y = jax.nn.gelu(gate, approximate=True) * lin
        y = constrain(y, ("batch", "length", "mlp"))
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        y = dense(cfg.d_model, ("mlp", "embed"), name="wo")(y, lora_child(lora, "wo"))
        return constrain(y, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, bias: Array, lora: Lora = None) -> Array:
        cfg, det = self.config, self.deterministic
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype))
        drop = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, name="attention")(y, y, mask, bias,
                                                           lora_child(lora, "attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y, lora_child(lora, "mlp"))
        x = x + drop(y, deterministic=det)
        return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array | None, self_bias: Array,
                 cross_mask: Array | None, lora: Lora = None) -> Array:
        cfg, det = self.config, self.deterministic
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype))
        drop = nn.Dropout(cfg.dropout_rate)
        y = norm(name="pre_self_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, self.decode, name="self_attention")(
            y, y, self_mask, self_bias, lora_child(lora, "self_attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_cross_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, self.decode, cross=True,
                               name="encoder_decoder_attention")(
            y, encoded, cross_mask, None, lora_child(lora, "encoder_decoder_attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y, lora_child(lora, "mlp"))
        x = x + drop(y, deterministic=det)
        return constrain(x, ("batch", "length", "embed"))
