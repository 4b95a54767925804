"""Decoding constraints: the item trie as a constraint a jitted beam search can apply.

A new decoding constraint goes here. Beam search (``flanrec.model.decoding``) takes any
object with

    init(batch_beams) -> state              # state: int32 [batch_beams] trie nodes
    allowed(state) -> bool [batch_beams, vocab]
    advance(state, token) -> state          # token: int32 [batch_beams]

``TrieConstraint`` is that object, a pytree (arrays are leaves), so it can be passed into
``jax.jit`` as an argument and a new batch's per-user masks do not trigger recompilation.
The trie itself is plain numpy (``flanrec.data.trie``, built at prepare time and read by
``flanrec.data.prepared``); this module is its device side, kept out of ``flanrec.data`` so
data preparation never imports JAX.

Per-user exclusion of seen items: pass ``allowed_items`` bool [batch, num_items] (item order
= the order of the sequences given to ``build_trie``; True = may be recommended) and
``beams`` (rows of the flattened ``batch_beams`` are batch-major: row r belongs to batch
element r // beams). A token is allowed only if at least one allowed item lies below it, so
the exclusion is exact before any cut to K. A finished (after EOS) or dead node allows only
the padding token, so a row is never all -inf; padding keeps a finished row on its leaf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flanrec.data.trie import TrieArrays, allowed_items_in_rank_order, table_limit


class JaxTrie(NamedTuple):
    children_tokens: jax.Array  # int32 [nodes, fanout]
    children_next: jax.Array  # int32 [nodes, fanout]
    leaf_lo: jax.Array  # int32 [nodes]
    leaf_hi: jax.Array  # int32 [nodes]
    leaf_item: jax.Array  # int32 [nodes]


class SparseJaxTrie(NamedTuple):
    """The trie's edges in compressed sparse rows, for a trie whose padded tables
    (nodes x widest fan-out) exceed the memory budget: each step gathers only the rows'
    own [rows, widest fan-out] window of edges. ``fanout`` carries the widest fan-out in its
    shape (zeros), so it is static under jit."""

    child_start: jax.Array  # int32 [nodes + 1]
    child_tokens: jax.Array  # int32 [edges]
    child_next: jax.Array  # int32 [edges]
    leaf_lo: jax.Array  # int32 [nodes]
    leaf_hi: jax.Array  # int32 [nodes]
    leaf_item: jax.Array  # int32 [nodes]
    fanout: jax.Array  # int8 [widest fan-out]


def to_jax(trie: TrieArrays) -> JaxTrie | SparseJaxTrie:
    """The device copy: padded tables when they fit ``flanrec.data.trie.table_limit()``
    (one gather per step), else the sparse rows (a catalogue of single-token IDs hangs every
    item off the root, whose padded table would be nodes x items)."""
    leaves = (jnp.asarray(trie.leaf_lo), jnp.asarray(trie.leaf_hi), jnp.asarray(trie.leaf_item))
    if trie.padded_bytes() <= table_limit():
        return JaxTrie(jnp.asarray(trie.children_tokens), jnp.asarray(trie.children_next),
                       *leaves)
    return SparseJaxTrie(jnp.asarray(trie.child_start.astype(np.int32)),
                         jnp.asarray(trie.child_tokens), jnp.asarray(trie.child_next),
                         *leaves, jnp.zeros((trie.max_fanout,), jnp.int8))


def _as_jax(trie: JaxTrie | SparseJaxTrie | TrieArrays) -> JaxTrie | SparseJaxTrie:
    return to_jax(trie) if isinstance(trie, TrieArrays) else trie


def _children(trie: JaxTrie | SparseJaxTrie, nodes: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    safe = jnp.maximum(nodes, 0)
    live = (nodes >= 0)[:, None]
    if isinstance(trie, SparseJaxTrie):
        start = trie.child_start[safe][:, None]
        edge = start + jnp.arange(trie.fanout.shape[0], dtype=jnp.int32)[None, :]
        live = live & (edge < trie.child_start[safe + 1][:, None])
        edge = jnp.minimum(edge, trie.child_tokens.shape[0] - 1)
        return (jnp.where(live, trie.child_tokens[edge], -1),
                jnp.where(live, trie.child_next[edge], -1))
    toks = jnp.where(live, trie.children_tokens[safe], -1)
    nxt = jnp.where(live, trie.children_next[safe], -1)
    return toks, nxt


def allowed_mask(trie: JaxTrie | SparseJaxTrie | TrieArrays, nodes: jax.Array, vocab_size: int,
                 cums: jax.Array | None = None, cum_rows: jax.Array | None = None,
                 pad_id: int = 0) -> jax.Array:
    """bool [len(nodes), vocab_size]: tokens that may follow each node.

    ``cums`` (int32 [users, num_items+1], prefix sums of allowed items in leaf-rank order)
    removes children with no allowed item below; node i uses row ``cum_rows[i]`` (default i).
    Only the needed entries are gathered, never a [len(nodes), num_items] copy. Rows with no
    allowed token (finished or dead nodes) allow ``pad_id`` only.
    """
    trie = _as_jax(trie)
    toks, nxt = _children(trie, nodes)
    ok = toks >= 0
    if cums is not None:
        safe = jnp.maximum(nxt, 0)
        lo = trie.leaf_lo[safe]
        hi = trie.leaf_hi[safe]
        rows = (jnp.arange(nodes.shape[0]) if cum_rows is None else cum_rows)[:, None]
        count = cums[rows, hi] - cums[rows, lo]
        ok = ok & (count > 0)
    n = nodes.shape[0]
    cols = jnp.where(ok, toks, vocab_size)  # disallowed -> a spill column, dropped below
    mask = jnp.zeros((n, vocab_size + 1), bool).at[jnp.arange(n)[:, None], cols].set(True)
    mask = mask[:, :vocab_size]
    empty = ~mask.any(1)
    return mask.at[:, pad_id].set(mask[:, pad_id] | empty)


def advance(trie: JaxTrie | SparseJaxTrie | TrieArrays, nodes: jax.Array, tokens: jax.Array,
            pad_id: int = 0) -> jax.Array:
    """Next node per row, -1 where ``tokens`` may not follow (or the node is already dead).

    Padding after EOS keeps a finished row on its leaf, so ``item`` still names its item.
    """
    trie = _as_jax(trie)
    toks, nxt = _children(trie, nodes)
    hit = toks == tokens[:, None]
    out = jnp.where(hit.any(1), jnp.max(jnp.where(hit, nxt, -1), axis=1), -1)
    finished = (nodes >= 0) & (trie.leaf_item[jnp.maximum(nodes, 0)] >= 0)
    return jnp.where(finished & (tokens == pad_id), nodes, out).astype(jnp.int32)


@jax.tree_util.register_pytree_node_class
class TrieConstraint:
    """Constrain decoding to item IDs, optionally excluding per-user seen items exactly.

    Build with ``TrieConstraint.create(trie_arrays, vocab_size, allowed_items=None, beams=1)``.
    """

    def __init__(self, trie: JaxTrie | SparseJaxTrie, cums: jax.Array | None,
                 vocab_size: int, beams: int, pad_id: int = 0):
        self.trie = trie
        self.cums = cums
        self.vocab_size = vocab_size
        self.beams = beams
        self.pad_id = pad_id

    @classmethod
    def create(cls, trie: TrieArrays, vocab_size: int | None = None,
               allowed_items: np.ndarray | None = None, beams: int = 1,
               device_trie: JaxTrie | SparseJaxTrie | None = None) -> TrieConstraint:
        """The constraint for one batch: ``trie`` with ``allowed_items`` (or all items).

        ``device_trie`` is ``to_jax(trie)`` made once by a caller that decodes many batches
        with one trie (``TriePredictor``), so each batch only moves its own masks.
        """
        vocab_size = trie.vocab_size if vocab_size is None else vocab_size
        cums = None
        if allowed_items is not None:
            cums = jnp.asarray(allowed_items_in_rank_order(trie, allowed_items))
        return cls(to_jax(trie) if device_trie is None else device_trie, cums, vocab_size,
                   beams, trie.pad_id)

    def tree_flatten(self):
        return (self.trie, self.cums), (self.vocab_size, self.beams, self.pad_id)

    @classmethod
    def tree_unflatten(cls, aux, children):
        trie, cums = children
        vocab_size, beams, pad_id = aux
        return cls(trie, cums, vocab_size, beams, pad_id)

    def init(self, batch_beams: int) -> jax.Array:
        if self.cums is not None and batch_beams != self.cums.shape[0] * self.beams:
            raise ValueError(f"batch_beams {batch_beams} != batch {self.cums.shape[0]} x "
                             f"beams {self.beams} of allowed_items")
        return jnp.zeros((batch_beams,), jnp.int32)

    def allowed(self, state: jax.Array) -> jax.Array:
        rows = jnp.arange(state.shape[0]) // self.beams
        return allowed_mask(self.trie, state, self.vocab_size, self.cums, rows, self.pad_id)

    def advance(self, state: jax.Array, token: jax.Array) -> jax.Array:
        return advance(self.trie, state, token.astype(jnp.int32), self.pad_id)

    def item(self, state: jax.Array) -> jax.Array:
        """Item number a finished row decoded (-1 if unfinished or dead)."""
        return jnp.where(state >= 0, self.trie.leaf_item[jnp.maximum(state, 0)], -1)
