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

Numerics follow T5 v1.1 exactly (checked against transformers' PyTorch T5 in the tests); the
layers themselves are `flanrec.model.layers`, this module stacks them: one relative position
bias table per stack, shared by all its layers; untied, unscaled output logits (or, with
`config.logits_via_embedding`, T5X's tied ones: the token embedding scores the vocabulary,
divided by sqrt(d_model)); padding and segment masks; the soft prompt. Parameters are
float32; activations use `config.dtype`; attention softmax, norms and logits are float32.

Adapters (`flanrec.model.adapters`): when the config is a `PeftT5Config` carrying a soft
prompt and/or LoRA, the model declares them under their own top-level keys (`prompt`, `lora`;
table in `flanrec.model.adapters.adapter_specs`) and threads them down as plain arrays. With a
plain `T5Config` none of that code runs: parameter tree and numerics are exactly Flan-T5's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flanrec.model.adapters import LORA_KEY, PROMPT_KEY, adapter_specs
from flanrec.model.config import T5Config
from flanrec.model.layers import (
    Array,
    DecoderLayer,
    Dense,
    Embed,
    EncoderLayer,
    Lora,
    RelativePositionBias,
    RMSNorm,
    boxed,
    constrain,
    lora_child,
)


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
        leaves[name] = boxed(init, axes)(key, shape, jnp.float32)
    tree: dict[str, Any] = {}
    for name, value in leaves.items():
        node = tree
        *parents, last = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


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
        x = constrain(x, ("batch", "length", "embed"))
        layer_cls = _remat(EncoderLayer, self.remat_policy)
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, deterministic, name=f"layers_{i}")(
                x, mask, bias, lora_child(lora, f"layers_{i}"))
        x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return constrain(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config
    remat_policy: str = "none"
    # The token embedding, which scores the vocabulary when `config.logits_via_embedding`.
    shared_embedding: nn.Module | None = None

    @nn.compact
    def __call__(self, embedded: Array, encoded: Array, self_mask: Array | None,
                 cross_mask: Array | None, deterministic: bool, decode: bool,
                 max_decode_length: int | None, lora: Lora = None,
                 logit_positions: Array | None = None) -> Array:
        cfg = self.config
        length = embedded.shape[1]
        # While decoding, queries sit anywhere in [0, max_decode_length); the attention picks
        # the row of the full table at its cache index.
        bias_len = (max_decode_length or length) if decode else length
        bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    bidirectional=False, name="relpos_bias")(bias_len, bias_len)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "embed"))
        layer_cls = DecoderLayer if decode else _remat(DecoderLayer, self.remat_policy)
        for i in range(cfg.num_decoder_layers):
            x = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(
                x, encoded, self_mask, bias, cross_mask, lora_child(lora, f"layers_{i}"))
        if logit_positions is not None:  # one position per row: skip the others' logits
            x = jnp.take_along_axis(x, logit_positions.astype(jnp.int32)[:, None, None], axis=1)
        x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.logits_via_embedding:
            # Tied: the embedding rows score the vocabulary. They start ~N(0, 1), the untied
            # kernel's columns ~N(0, 1/d_model): hence T5X's (and transformers') division by
            # sqrt(d_model), here applied to the float logits after the product, as in T5X.
            logits = self.shared_embedding.attend(x, jnp.dtype(cfg.logits_dtype))
            logits = logits / jnp.sqrt(jnp.asarray(x.shape[-1], logits.dtype))
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), jnp.dtype(cfg.dtype),
                           nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                           out_dtype=jnp.dtype(cfg.logits_dtype), name="logits_dense")(x)
        return constrain(logits, ("batch", "length", "vocab"))


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
        self.decoder = Decoder(cfg, self.remat_policy,
                               self.token_embedder if cfg.logits_via_embedding else None)
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
        return self.encoder(embedded, mask, not enable_dropout,
                            lora_child(self.lora_params, "encoder"))

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array | None = None,
               encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: int | None = None,
               decoder_key_mask: Array | None = None,
               logit_positions: Array | None = None) -> Array:
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
        `logit_positions` (int32 [batch]): return the logits of that one decoder position per
        row ([batch, 1, vocab]), so a caller ranking the next token after a teacher-forced
        prefix pays the vocabulary projection once per row, not once per position.
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
                            lora_child(self.lora_params, "decoder"), logit_positions)

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
