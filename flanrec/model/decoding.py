"""Greedy and beam-search decoding over the KV cache, each one jitted `lax.while_loop`.

Why a single program: a Python loop around a jitted step pays dispatch and host sync per
token and cannot be sharded as a whole; a `while_loop` keeps the cache on device and lets
the loop stop as soon as every sequence is finished.

Constrained decoding (e.g. only valid item ids, from a prefix trie) plugs in through a
*constraint*: any pytree (a `flax.struct.dataclass` is convenient) whose class has three pure
jnp methods

    init(n: int) -> state                       # state for n = batch * beams rows
    allowed(state) -> bool[n, vocab]            # which next tokens each row may emit
    advance(state, tokens: int32[n]) -> state   # after emitting `tokens`

where `state` is any pytree whose leaves have `n` as leading axis (e.g. trie node ids).
Disallowed tokens get log-probability -inf *after* the softmax (like HF's
`prefix_allowed_tokens_fn`): scores stay true model log-likelihoods, not renormalised ones.
`TransitionTableConstraint` is a small dense reference implementation.

Scoring given targets (candidate items, closed answers such as "no"/"yes") is teacher
forcing, not search: `score_candidates` runs the encoder once per input and all of its
candidates through the decoder in one batch (`encode` + `score_with_encoded` let callers
score a large candidate set block by block against one encoder pass).

Conventions: decoding starts from `config.decoder_start_token_id`; a sequence ends at
`config.eos_token_id`; after that it emits padding (0). Returned sequences exclude the start
token and have exactly `max_length` columns.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax import lax

from flanrec.model.config import T5Config
from flanrec.model.network import Transformer

Array = jax.Array
NEG_INF = -jnp.inf


@flax.struct.dataclass
class TransitionTableConstraint:
    """A trie/automaton as a dense table: `next_state[s, t]` is the state after token t
    from state s, or -1 if t is not allowed there. State 0 is the start state.

    Dense tables cost states × vocab int32s; fine for tests and small catalogs. Row of a
    finished sequence: make EOS lead to a state that allows only padding (0), which maps to
    itself.
    """

    next_state: Array  # int32 [num_states, vocab]

    def init(self, n: int) -> Array:
        return jnp.zeros((n,), jnp.int32)

    def allowed(self, state: Array) -> Array:
        return self.next_state[state] >= 0

    def advance(self, state: Array, tokens: Array) -> Array:
        nxt = self.next_state[state, tokens]
        return jnp.maximum(nxt, 0)


def init_cache(config: T5Config, params: Any, encoded: Array, encoder_tokens: Array,
               max_length: int) -> Any:
    """Decoder cache for `max_length` steps: empty self-attention caches and the encoder's
    projected keys/values (computed here once, reused by every step)."""
    start = jnp.full((encoded.shape[0], 1), config.decoder_start_token_id, jnp.int32)
    _, mutated = Transformer(config).apply(
        {"params": params}, encoded, encoder_tokens, start, decode=True,
        max_decode_length=max_length, mutable=["cache"], method=Transformer.decode)
    return mutated["cache"]


def _step(model: Transformer, params: Any, cache: Any, encoded: Array, enc_tokens: Array,
          tokens: Array, max_length: int, key_mask: Array | None = None
          ) -> tuple[Array, Any]:
    """One decoder step: float32 log-probs [n, vocab] for the next token, updated cache."""
    logits, mutated = model.apply(
        {"params": params, "cache": cache}, encoded, enc_tokens, tokens[:, None],
        decode=True, max_decode_length=max_length, mutable=["cache"], method=Transformer.decode,
        decoder_key_mask=key_mask)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1), mutated["cache"]


def _prefill(model: Transformer, params: Any, cache: Any, encoded: Array, enc_tokens: Array,
             prefix: Array, prefix_lengths: Array, total_length: int
             ) -> tuple[Any, Array, Array]:
    """Feed decoder prefixes through the cache; returns (cache, next input token, key mask).

    ``prefix`` int32 [batch, P] holds each row's prefix right-aligned (left-padded; row r's
    real tokens are its last ``prefix_lengths[r]``). The decoder stream of row r is
    ``[pad] * (P - len_r) + [start] + prefix_r``: the first P positions go through the cache
    here, the last one is returned as the token the first search step feeds. Padding
    positions are masked as keys for the whole decode, so each row attends exactly to its
    own start token and prefix, at the relative distances it was trained with.
    """
    batch, p = prefix.shape
    start = model.config.decoder_start_token_id
    pos = jnp.arange(p + 1)[None, :]
    first = (p - prefix_lengths)[:, None]  # position of the start token
    stream = jnp.where(pos == first, start,
                       jnp.concatenate([jnp.zeros((batch, 1), prefix.dtype), prefix], 1))
    key_mask = jnp.concatenate(
        [pos >= first, jnp.ones((batch, total_length - p - 1), jnp.bool_)], axis=1)

    def body(j: Array, cache: Any) -> Any:
        token = lax.dynamic_index_in_dim(stream, j, axis=1, keepdims=False)
        _, cache = _step(model, params, cache, encoded, enc_tokens, token, total_length,
                         key_mask)
        return cache

    cache = lax.fori_loop(0, p, body, cache)
    return cache, stream[:, p].astype(jnp.int32), key_mask


def _mask(logp: Array, constraint: Any, state: Any) -> Array:
    if constraint is None:
        return logp
    return jnp.where(constraint.allowed(state), logp, NEG_INF)


def _select(pred: Array, new: Any, old: Any) -> Any:
    """Per-row choice between two pytrees whose leaves have the row as leading axis."""
    def pick(a: Array, b: Array) -> Array:
        return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


@functools.partial(jax.jit, static_argnames=("config", "max_length"))
def greedy_decode(config: T5Config, params: Any, encoder_tokens: Array, max_length: int,
                  constraint: Any = None) -> tuple[Array, Array]:
    """Greedy decoding: (tokens int32 [batch, max_length], summed log-probs float32 [batch])."""
    model = Transformer(config)
    encoded = model.apply({"params": params}, encoder_tokens, method=Transformer.encode)
    batch = encoder_tokens.shape[0]
    eos, pad = config.eos_token_id, config.pad_token_id
    carry = dict(
        i=jnp.array(0, jnp.int32),
        last=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
        cache=init_cache(config, params, encoded, encoder_tokens, max_length),
        done=jnp.zeros((batch,), jnp.bool_),
        out=jnp.full((batch, max_length), pad, jnp.int32),
        score=jnp.zeros((batch,), jnp.float32),
        cstate=None if constraint is None else constraint.init(batch),
    )

    def cond(c: dict[str, Any]) -> Array:
        return jnp.logical_and(c["i"] < max_length, jnp.logical_not(jnp.all(c["done"])))

    def body(c: dict[str, Any]) -> dict[str, Any]:
        logp, cache = _step(model, params, c["cache"], encoded, encoder_tokens, c["last"],
                            max_length)
        logp = _mask(logp, constraint, c["cstate"])
        token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        token = jnp.where(c["done"], pad, token)
        cstate = c["cstate"]
        if constraint is not None:
            cstate = _select(c["done"], cstate, constraint.advance(cstate, token))
        return dict(
            i=c["i"] + 1, last=token, cache=cache,
            done=jnp.logical_or(c["done"], token == eos),
            out=c["out"].at[:, c["i"]].set(token),
            score=c["score"] + jnp.where(c["done"], 0.0, token_logp),
            cstate=cstate,
        )

    final = lax.while_loop(cond, body, carry)
    return final["out"], final["score"]


def _gather_beams(tree: Any, flat_idx: Array) -> Any:
    """Reorder rows (leading axis batch*beams) of every non-scalar leaf.

    Cross-attention caches are skipped: beams only move within their batch element, whose
    rows all hold the same encoder keys/values, so gathering them would copy for nothing.
    """
    def gather(path: tuple[Any, ...], x: Array) -> Array:
        names = {getattr(p, "key", None) for p in path}
        if x.ndim == 0 or "encoder_decoder_attention" in names:
            return x
        return jnp.take(x, flat_idx, axis=0)
    return jax.tree_util.tree_map_with_path(gather, tree)


@functools.partial(jax.jit,
                   static_argnames=("config", "max_length", "num_beams", "length_penalty"))
def beam_search(config: T5Config, params: Any, encoder_tokens: Array, max_length: int,
                num_beams: int, length_penalty: float = 0.0,
                constraint: Any = None, decoder_prefix: Array | None = None,
                prefix_lengths: Array | None = None) -> tuple[Array, Array]:
    """Beam search: (sequences int32 [batch, k, max_length], scores float32 [batch, k]).

    Sorted best first. A finished hypothesis scores `sum_logprob / length ** length_penalty`
    (length counts generated tokens including EOS; 0 gives plain summed log-probs). As in
    transformers, each step expands the top 2k candidates; an EOS candidate is kept as a
    finished hypothesis only if it ranks in the top k of them, and the rest refill the live
    beams. The loop stops when no live beam can still beat the k-th finished one (exact for
    length_penalty >= 0) or at `max_length`, where unfinished beams compete with finished ones
    on the same scoring. Rows that no allowed continuation could extend score -inf.

    ``decoder_prefix`` (int32 [batch, P], right-aligned, left-padded with 0) with
    ``prefix_lengths`` (int32 [batch]): tokens the decoder reads after its start token and
    before the search begins (teacher-forced, not scored, not part of the output), e.g. the
    most recent items of a history that a seqrec model reads causally. Rows may have prefixes
    of different lengths, 0 included; their padding is masked.
    """
    model = Transformer(config)
    k = num_beams
    batch = encoder_tokens.shape[0]
    n = batch * k
    eos, pad = config.eos_token_id, config.pad_token_id
    p = 0 if decoder_prefix is None else decoder_prefix.shape[1]
    total = p + max_length  # decoder positions: prefix (start token included), then search
    encoded = model.apply({"params": params}, encoder_tokens, method=Transformer.encode)
    # Project the encoder outputs into cross-attention keys/values once per example, then copy
    # the cache to the k beams: projecting the repeated outputs would cost k times the FLOPs.
    cache = init_cache(config, params, encoded, encoder_tokens, total)
    first_token = jnp.full((batch,), config.decoder_start_token_id, jnp.int32)
    key_mask = None
    if p:
        if prefix_lengths is None:
            prefix_lengths = jnp.sum(decoder_prefix > 0, axis=1)
        cache, first_token, key_mask = _prefill(
            model, params, cache, encoded, encoder_tokens, decoder_prefix.astype(jnp.int32),
            prefix_lengths.astype(jnp.int32), total)
        key_mask = jnp.repeat(key_mask, k, axis=0)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, cache)
    encoded = jnp.repeat(encoded, k, axis=0)
    enc_tokens = jnp.repeat(encoder_tokens, k, axis=0)
    first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
    carry = dict(
        i=jnp.array(0, jnp.int32),
        last=jnp.repeat(first_token, k),
        cache=cache,
        live_seqs=jnp.full((batch, k, max_length), pad, jnp.int32),
        live_logp=jnp.broadcast_to(first_beam_only, (batch, k)).astype(jnp.float32),
        fin_seqs=jnp.full((batch, k, max_length), pad, jnp.int32),
        fin_scores=jnp.full((batch, k), NEG_INF, jnp.float32),
        cstate=None if constraint is None else constraint.init(n),
    )

    def penalty(length: Array) -> Array:
        return jnp.power(length.astype(jnp.float32), length_penalty)

    def all_done(c: dict[str, Any]) -> Array:
        # Best score any live beam could still reach: log-probs only decrease, so with
        # length_penalty >= 0 the largest denominator (max_length) bounds it from above.
        best_len = max_length if length_penalty >= 0 else c["i"] + 1
        best_live = jnp.max(c["live_logp"], axis=1) / penalty(jnp.asarray(best_len))
        return jnp.all(c["fin_scores"][:, k - 1] >= best_live)

    def cond(c: dict[str, Any]) -> Array:
        return jnp.logical_and(c["i"] < max_length, jnp.logical_not(all_done(c)))

    def body(c: dict[str, Any]) -> dict[str, Any]:
        i = c["i"]
        logp, cache = _step(model, params, c["cache"], encoded, enc_tokens, c["last"],
                            total, key_mask)
        logp = _mask(logp, constraint, c["cstate"])
        vocab = logp.shape[-1]
        cand = (c["live_logp"].reshape(n, 1) + logp).reshape(batch, k * vocab)
        top_logp, top_idx = lax.top_k(cand, 2 * k)  # [batch, 2k], best first
        beam = top_idx // vocab
        token = (top_idx % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(c["live_seqs"], beam[:, :, None], axis=1)
        seqs = seqs.at[:, :, i].set(token)
        is_eos = token == eos

        # Finished: EOS candidates ranked in the top k, merged with earlier finished ones.
        fin_new = jnp.where(is_eos & (jnp.arange(2 * k) < k), top_logp / penalty(i + 1),
                            NEG_INF)
        fin_all = jnp.concatenate([c["fin_scores"], fin_new], axis=1)
        fin_scores, fin_pick = lax.top_k(fin_all, k)
        fin_seqs = jnp.take_along_axis(
            jnp.concatenate([c["fin_seqs"], seqs], axis=1), fin_pick[:, :, None], axis=1)

        # Live: best k non-EOS candidates.
        live_logp, live_pick = lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
        live_seqs = jnp.take_along_axis(seqs, live_pick[:, :, None], axis=1)
        live_token = jnp.take_along_axis(token, live_pick, axis=1).reshape(n)
        src = jnp.take_along_axis(beam, live_pick, axis=1)
        flat_src = (jnp.arange(batch)[:, None] * k + src).reshape(n)
        cstate = c["cstate"]
        if constraint is not None:
            cstate = constraint.advance(_gather_beams(cstate, flat_src), live_token)
        return dict(i=i + 1, last=live_token, cache=_gather_beams(cache, flat_src),
                    live_seqs=live_seqs, live_logp=live_logp, fin_seqs=fin_seqs,
                    fin_scores=fin_scores, cstate=cstate)

    final = lax.while_loop(cond, body, carry)
    # Unfinished beams compete on the same scoring; finished ones come first on ties.
    live_scores = final["live_logp"] / penalty(jnp.maximum(final["i"], 1))
    scores = jnp.concatenate([final["fin_scores"], live_scores], axis=1)
    seqs = jnp.concatenate([final["fin_seqs"], final["live_seqs"]], axis=1)
    best_scores, pick = lax.top_k(scores, k)
    return jnp.take_along_axis(seqs, pick[:, :, None], axis=1), best_scores


@functools.partial(jax.jit, static_argnames=("config",))
def encode(config: T5Config, params: Any, encoder_tokens: Array) -> Array:
    """Encoder outputs [batch, length, d_model], computed once and reused by
    `score_with_encoded` for every block of candidates."""
    return Transformer(config).apply({"params": params}, encoder_tokens,
                                     method=Transformer.encode)


@functools.partial(jax.jit, static_argnames=("config",))
def score_with_encoded(config: T5Config, params: Any, encoded: Array, encoder_tokens: Array,
                       candidate_tokens: Array) -> Array:
    """Summed log-likelihood float32 [batch, c] of each candidate target.

    `candidate_tokens` int32 [batch, c, length]: each row a target sequence with its EOS,
    0-padded (padding is not scored; an all-padding row scores 0). The encoder output of
    input b is shared by its c candidates (repeated, not recomputed), so ranking c items
    costs one encoder pass and one teacher-forced decoder pass over b*c short rows.
    """
    batch, c, length = candidate_tokens.shape
    model = Transformer(config)
    targets = candidate_tokens.reshape(batch * c, length)
    start = jnp.full((batch * c, 1), config.decoder_start_token_id, targets.dtype)
    dec_in = jnp.concatenate([start, targets[:, :-1]], axis=1)
    logits = model.apply({"params": params}, jnp.repeat(encoded, c, axis=0),
                         jnp.repeat(encoder_tokens, c, axis=0), dec_in, targets,
                         method=Transformer.decode)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(targets > 0, token_logp, 0.0), axis=-1).reshape(batch, c)


@functools.partial(jax.jit, static_argnames=("config",))
def score_candidates(config: T5Config, params: Any, encoder_tokens: Array,
                     candidate_tokens: Array) -> Array:
    """`score_with_encoded` with the encoder in the same program: float32 [batch, c]."""
    encoded = encode(config, params, encoder_tokens)
    return score_with_encoded(config, params, encoded, encoder_tokens, candidate_tokens)
