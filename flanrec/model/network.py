"""T5 v1.1 / Flan-T5 encoder-decoder in Flax linen.

Why linen rather than NNX: the checkpoints we start from are T5X checkpoints, and T5X (with
flaxformer) is linen. Writing the model in linen lets every parameter carry
`nn.with_logical_partitioning` metadata under the *same* names T5X uses
(`encoder/layers_0/attention/query/kernel`, ...), so a T5X checkpoint maps onto our tree one to
one and the partitioner reuses linen's mature logical-axis helpers (`nn.get_partition_spec`,
`nn.logical_to_mesh_sharding`, `nn.with_logical_constraint`).

Names, shapes and logical axes of parameters are fixed by `flanrec.model.params.param_specs`;
a test checks `Transformer.init` against that table. Attention kernels are stored 2-D
(`[embed, joined_kv]`), which is T5X's `DenseGeneral` kernel flattened.

Numerics follow T5 v1.1 exactly (checked against transformers' PyTorch T5 in the tests):
RMSNorm without mean or bias computed in float32; gated-GELU (tanh approximation); relative
position bias (bidirectional buckets in the encoder, causal in the decoder, one table per stack,
shared by all its layers); no 1/sqrt(d_kv) in attention (T5 folds it into the query init);
untied, unscaled output logits. Parameters are float32; activations use `config.dtype`;
attention softmax, norms and logits are float32.

Adapters (`flanrec.model.adapters`): when the config is a `PeftT5Config` carrying a soft
prompt and/or LoRA, the model declares them under their own top-level keys (`prompt`, `lora`;
table in `flanrec.model.adapters.adapter_specs`) and threads them down as plain arrays. With a
plain `T5Config` none of that code runs: parameter tree and numerics are exactly Flan-T5's.
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

from flanrec.model.adapters import LORA_KEY, PROMPT_KEY, adapter_specs
from flanrec.model.config import T5Config

Array = jax.Array
Initializer = Callable[..., Array]
Lora = dict[str, Any] | None  # subtree of the `lora` params mirroring the module path, or None

# Large negative logit for masked attention entries. Finite (not -inf) so that a row whose keys
# are all masked (e.g. a padding query in a packed batch) yields a uniform softmax, not NaN.
_MASK_VALUE = -1e10

_constrain = nn.with_logical_constraint


def _boxed(init: Initializer, axes: tuple[str, ...]) -> Initializer:
    return nn.with_logical_partitioning(init, axes)


def _sub(tree: Lora, key: str) -> Lora:
    """The LoRA subtree of a child module (None when nothing below is adapted)."""
    return None if tree is None else tree.get(key)


def _lora_scale(config: T5Config) -> float:
    lora = getattr(config, "lora", None)
    return 0.0 if lora is None else lora.scale


def _init_adapters(rng: Array, specs: dict[str, tuple[tuple[int, ...], tuple[str, ...]]],
                   prompt_init: str) -> dict[str, Any]:
    """Fresh adapter leaves (boxed with their logical axes) for one top-level key.

    LoRA A: fan-in normal; LoRA B: zeros (a fresh adapter is the base model). Prompts:
    U(-0.5, 0.5) as in Lester et al., or zeros; 'vocab' initialisation needs the backbone's
    embedding and is done by the trainer after loading it
    (`flanrec.peft.params.init_prompt_from_vocab`).
    """
    leaves = {}
    for i, (name, (shape, axes)) in enumerate(sorted(specs.items())):
        key = jax.random.fold_in(rng, i)
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "lora_a":
            init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        elif leaf == "lora_b" or prompt_init == "zeros":
            init = nn.initializers.zeros
        else:
            init = nn.initializers.uniform(1.0)
            init = functools.partial(lambda base, k, s, d: base(k, s, d) - 0.5, init)
        leaves[name] = _boxed(init, axes)(key, shape, jnp.float32)
    tree: dict[str, Any] = {}
    for name, value in leaves.items():
        node = tree
        *parents, last = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


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
        kernel = self.param("kernel", _boxed(self.kernel_init, self.axes),
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
                      name=name)(x, _sub(lora, name))
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
        out = Dense(cfg.d_model, ("joined_kv", "embed"), dtype, base_init, lora_scale=scale,
                    name="out")(out, _sub(lora, "out"))
        return _constrain(out, ("batch", "length", "embed"))


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
        gate = dense(cfg.d_ff, ("embed", "mlp"), name="wi_0")(x, _sub(lora, "wi_0"))
        lin = dense(cfg.d_ff, ("embed", "mlp"), name="wi_1")(x, _sub(lora, "wi_1"))
        y = jax.nn.gelu(gate, approximate=True) * lin
        y = _constrain(y, ("batch", "length", "mlp"))
        y = nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        y = dense(cfg.d_model, ("mlp", "embed"), name="wo")(y, _sub(lora, "wo"))
        return _constrain(y, ("batch", "length", "embed"))


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
                                                           _sub(lora, "attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y, _sub(lora, "mlp"))
        x = x + drop(y, deterministic=det)
        return _constrain(x, ("batch", "length", "embed"))


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
            y, y, self_mask, self_bias, _sub(lora, "self_attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_cross_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, det, self.decode, cross=True,
                               name="encoder_decoder_attention")(
            y, encoded, cross_mask, None, _sub(lora, "encoder_decoder_attention"))
        x = x + drop(y, deterministic=det)
        y = norm(name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, det, name="mlp")(y, _sub(lora, "mlp"))
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
    def __call__(self, embedded: Array, mask: Array | None, deterministic: bool,
                 lora: Lora = None) -> Array:
        cfg = self.config
        length = embedded.shape[1]
        bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    bidirectional=True, name="relpos_bias")(length, length)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x, ("batch", "length", "embed"))
        layer_cls = _remat(EncoderLayer, self.remat_policy)
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, deterministic, name=f"layers_{i}")(
                x, mask, bias, _sub(lora, f"layers_{i}"))
        x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return _constrain(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, embedded: Array, encoded: Array, self_mask: Array | None,
                 cross_mask: Array | None, deterministic: bool, decode: bool,
                 max_decode_length: int | None, lora: Lora = None) -> Array:
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
                x, encoded, self_mask, bias, cross_mask, _sub(lora, f"layers_{i}"))
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

    Soft prompt (`config.prompt`, see `flanrec.model.adapters.PromptConfig`):
    - `concat`: the P prompt vectors become encoder positions 0..P-1 and the input moves to
      P..P+L-1, as in Lester et al. (2021): one bidirectional encoder over prompt + input,
      prompt keys always visible, and the decoder cross-attends to the prompt's encodings
      too (`decode` extends the encoder mask by P, so `Transformer.encode`/`decode` keep
      working for the decoding loops). Relative position bias is T5's own over the longer
      sequence: input-to-input distances are unchanged (the bias depends only on
      differences), prompt-to-input distances grow with the input position and saturate in
      the log buckets like any far token. Packed inputs are refused (one prompt per row
      cannot belong to several segments).
    - `add`: one learned vector added to the embedding of every non-padding input token.
    `prompt_ids` ([batch] int, index into `config.prompt.families`) picks each row's prompt;
    with a single family it may be omitted.
    """

    config: T5Config
    remat_policy: str = "none"  # none | full | dots  (activation rematerialisation per layer)

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, jnp.dtype(cfg.dtype))
        self.encoder = Encoder(cfg, self.remat_policy)
        self.decoder = Decoder(cfg, self.remat_policy)
        prompt = getattr(cfg, "prompt", None)
        specs = adapter_specs(cfg)
        for key in (PROMPT_KEY, LORA_KEY):
            mine = {n[len(key) + 1:]: v for n, v in specs.items() if n.startswith(key + "/")}
            if mine:
                value = self.param(key, _init_adapters, mine,
                                   "zeros" if prompt is None else prompt.init)
            else:
                value = None
            setattr(self, f"{key}_params", value)

    def _prompt_rows(self, batch: int, prompt_ids: Array | None) -> Array:
        prompt = self.config.prompt
        tables = jnp.stack([self.prompt_params[f] for f in prompt.families])  # [F, P, d]
        if prompt_ids is None:
            if len(prompt.families) > 1 and not self.is_initializing():
                raise ValueError(f"the model has one soft prompt per family "
                                 f"{prompt.families}: pass prompt_ids ([batch] indices)")
            rows = jnp.broadcast_to(tables[0][None], (batch, *tables.shape[1:]))
        else:
            rows = jnp.take(tables, jnp.asarray(prompt_ids, jnp.int32), axis=0)
        return rows.astype(jnp.dtype(self.config.dtype))

    def _concat_length(self, segment_ids: Array | None) -> int:
        """Number of prompt positions prepended to the encoder sequence (0 without concat)."""
        prompt = getattr(self.config, "prompt", None)
        if prompt is None or prompt.fusion != "concat":
            return 0
        if segment_ids is not None:
            raise ValueError("soft prompt fusion 'concat' does not support packed inputs "
                             "(encoder_segment_ids given): train with PACK = False, or use "
                             "fusion 'add'")
        return prompt.length

    def _encoder_key_mask(self, tokens: Array, segment_ids: Array | None) -> Array:
        """[batch, P + L] bool: which encoder positions are real (prompt ones always are)."""
        valid = tokens > 0
        n = self._concat_length(segment_ids)
        if n:
            valid = jnp.concatenate([jnp.ones((tokens.shape[0], n), jnp.bool_), valid], axis=1)
        return valid

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, enable_dropout: bool = False,
               prompt_ids: Array | None = None) -> Array:
        """Encoder outputs [batch, input_len (+ P with a concat prompt), d_model]."""
        del encoder_positions  # see class docstring
        tokens = encoder_input_tokens
        embedded = self.token_embedder(tokens)
        prompt = getattr(self.config, "prompt", None)
        if prompt is not None:
            rows = self._prompt_rows(tokens.shape[0], prompt_ids)
            if self._concat_length(encoder_segment_ids):
                embedded = jnp.concatenate([rows, embedded], axis=1)
            elif prompt.fusion == "add":
                embedded = embedded + jnp.where((tokens > 0)[..., None], rows, 0)
        mask = _and(self._encoder_key_mask(tokens, encoder_segment_ids)[:, None, None, :],
                    _segment_mask(encoder_segment_ids, encoder_segment_ids))
        return self.encoder(embedded, mask, not enable_dropout, _sub(self.lora_params, "encoder"))

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array | None = None,
               encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None,
               decoder_key_mask: Array | None = None) -> Array:
        """Decoder logits (float32) [batch, decoder_len, vocab].

        Incremental decoding: build the cache once with
        `flanrec.model.decoding.init_cache(config, params, encoded, encoder_input_tokens,
        max_length)`, then call with one token per step, `decode=True`,
        `max_decode_length=max_length` and `mutable=['cache']`. A `decode=True` call on a
        fresh (empty) cache creates it and runs ordinary causal attention over its input.
        `encoder_input_tokens` are the raw input tokens (without prompt positions).
        `decoder_key_mask` (bool [batch, max_decode_length], decode only): cache positions a
        step may attend to, e.g. False on the left padding of decoder prefixes of unequal
        lengths (`decoding.beam_search(decoder_prefix=...)`).
        """
        del decoder_positions
        length = decoder_input_tokens.shape[1]
        causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
        if decode:
            # A single step is [1, 1]; the cache masks future positions.
            self_mask = (causal if decoder_key_mask is None
                         else decoder_key_mask[:, None, None, :])
        else:
            target_mask = (None if decoder_target_tokens is None
                           else (decoder_target_tokens > 0)[:, None, None, :])
            self_mask = _and(causal, target_mask,
                             _segment_mask(decoder_segment_ids, decoder_segment_ids))
        key_mask = self._encoder_key_mask(encoder_input_tokens, encoder_segment_ids)
        if key_mask.shape[1] != encoded.shape[1]:
            raise ValueError(f"encoded has {encoded.shape[1]} positions but the encoder mask "
                             f"{key_mask.shape[1]}: pass the raw encoder_input_tokens given "
                             "to encode()")
        cross_mask = _and(key_mask[:, None, None, :],
                          _segment_mask(decoder_segment_ids, encoder_segment_ids))
        return self.decoder(self.token_embedder(decoder_input_tokens), encoded, self_mask,
                            cross_mask, not enable_dropout, decode, max_decode_length,
                            _sub(self.lora_params, "decoder"))

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array | None = None,
                 encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, enable_dropout: bool = False,
                 decode: bool = False, max_decode_length: int | None = None,
                 prompt_ids: Array | None = None) -> Array:
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout, prompt_ids)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode, max_decode_length)
