"""Prefix trie of every valid item ID (as token ids + EOS) in flat arrays.

Constrained beam search asks, at every step and for every beam, "which tokens may come
next?". A Python dict trie would need a host callback per step; these arrays let a jitted
decoder answer with gathers (see ``flanrec.infer.constraints``).

Layout (node 0 is the root; nodes are numbered in depth-first pre-order, children visited in
ascending token order):
  child_start[node]         node's children are edges child_start[node]..child_start[node+1]-1
  child_tokens[edge]        (compressed sparse rows, ascending token within a node)
  child_next[edge]          the node that edge's token leads to
  children_tokens[node, k]  derived, padded: k-th smallest child token, -1 up to the widest
  children_next[node, k]    fan-out (what the jitted decoder gathers from when it fits a
                            memory budget; built on first use, refused with the sizes beyond
                            it, and the decoder then gathers from the sparse rows)
  leaf_item[node]           item number (position in the ``sequences`` list) for the node
                            reached by an item's EOS, else -1
  leaf_lo[node], leaf_hi[node]
                            the items below ``node`` are exactly the leaves with rank
                            lo..hi-1, where rank is the DFS order of leaves; ``rank_item`` /
                            ``item_rank`` convert between rank and item number
  dense_next[node, token]   optional node x vocab table of next nodes (-1 = not allowed),
                            built only when nodes*vocab <= dense_limit

Because each subtree's items are one contiguous rank range, per-user exclusion of seen items
is exact at every step: with ``c`` the prefix sums of a user's allowed-item bitmap in rank
order, a child may be taken iff ``c[hi] - c[lo] > 0``. Beams therefore never enter a prefix
whose items are all excluded, and every finished beam is an allowed item.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Sequence

import numpy as np

from flanrec.errors import ConfigError, UserError

TABLE_LIMIT_ENV = "FLANREC_TRIE_TABLE_LIMIT"
DEFAULT_TABLE_LIMIT = 4 << 30
"""Bytes the padded [nodes, widest fan-out] tables of a trie may take (both together) before
``children_tokens`` refuses to build them; ``$FLANREC_TRIE_TABLE_LIMIT`` overrides it."""


class TrieTooLarge(UserError, ValueError):
    """The padded children tables of a trie would not fit the memory limit (with the sizes)."""


def table_limit() -> int:
    """The padded-table budget in bytes (``$FLANREC_TRIE_TABLE_LIMIT``, else 4 GiB)."""
    text = os.environ.get(TABLE_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_TABLE_LIMIT
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"${TABLE_LIMIT_ENV}: expected a number of bytes, got {text!r}"
                          ) from None
    if value < 0:
        raise ConfigError(f"${TABLE_LIMIT_ENV}: expected a number of bytes >= 0, got {text!r}")
    return value


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover - the loop always returns


@dataclasses.dataclass(frozen=True)
class TrieArrays:
    """The trie's edges in compressed sparse rows: node n's children are entries
    ``child_start[n] .. child_start[n+1]-1`` of ``child_tokens`` / ``child_next``, ascending
    by token. Memory is O(edges) however wide a node is (a catalogue of single-token IDs
    hangs every item off the root); the padded [nodes, widest fan-out] tables that the
    jitted decoder prefers are derived on demand (``children_tokens``), within a memory
    budget."""

    child_start: np.ndarray  # int64 [num_nodes + 1]
    child_tokens: np.ndarray  # int32 [num_edges]
    child_next: np.ndarray  # int32 [num_edges]
    leaf_item: np.ndarray  # int32 [num_nodes]
    leaf_lo: np.ndarray  # int32 [num_nodes]
    leaf_hi: np.ndarray  # int32 [num_nodes]
    rank_item: np.ndarray  # int32 [num_items]: DFS leaf rank -> item number
    item_rank: np.ndarray  # int32 [num_items]: item number -> DFS leaf rank
    dense_next: np.ndarray | None  # int32 [num_nodes, vocab_size] or None
    eos_id: int
    pad_id: int
    vocab_size: int
    max_length: int  # longest item sequence, EOS included: a decode length that always fits

    @property
    def num_nodes(self) -> int:
        return int(self.child_start.shape[0]) - 1

    @property
    def num_items(self) -> int:
        return int(self.rank_item.shape[0])

    @functools.cached_property
    def num_children(self) -> np.ndarray:
        """int32 [num_nodes]: children per node."""
        return np.diff(self.child_start).astype(np.int32)

    @functools.cached_property
    def max_fanout(self) -> int:
        return max(1, int(self.num_children.max(initial=0)))

    def padded_bytes(self) -> int:
        """Bytes of the two padded int32 tables ``children_tokens``/``children_next``."""
        return 2 * 4 * self.num_nodes * self.max_fanout

    def _padded(self, values: np.ndarray) -> np.ndarray:
        need, limit = self.padded_bytes(), table_limit()
        if need > limit:
            raise TrieTooLarge(
                f"item trie of {self.num_items:,} items: {self.num_nodes:,} nodes x "
                f"{self.max_fanout:,} children at its widest node need {_size(need)} as "
                f"padded tables, over the {_size(limit)} limit (${TABLE_LIMIT_ENV}); read "
                "its sparse rows instead (child_start, child_tokens, child_next), as "
                "constrained decoding then does")
        out = np.full((self.num_nodes, self.max_fanout), -1, np.int32)
        counts = self.num_children
        rows = np.repeat(np.arange(self.num_nodes), counts)
        cols = np.arange(len(values)) - np.repeat(self.child_start[:-1], counts)
        out[rows, cols] = values
        return out

    @functools.cached_property
    def children_tokens(self) -> np.ndarray:
        """int32 [num_nodes, max_fanout]: k-th smallest child token, -1 padding (built on
        first use; TrieTooLarge when it would exceed the budget, with the sizes)."""
        return self._padded(self.child_tokens)

    @functools.cached_property
    def children_next(self) -> np.ndarray:
        """int32 [num_nodes, max_fanout]: the node each child token leads to, -1 padding."""
        return self._padded(self.child_next)

    @classmethod
    def from_padded(cls, children_tokens: np.ndarray, children_next: np.ndarray,
                    num_children: np.ndarray, **fields) -> TrieArrays:
        """A trie given as padded tables (a trie file that stores those, not sparse rows)."""
        counts = np.asarray(num_children, np.int64)
        keep = np.arange(children_tokens.shape[1])[None, :] < counts[:, None]
        start = np.concatenate([[0], np.cumsum(counts)])
        return cls(start, np.asarray(children_tokens)[keep].astype(np.int32),
                   np.asarray(children_next)[keep].astype(np.int32), **fields)


def _first_bad_item(sequences: Sequence[Sequence[int]], bad: int, eos_id: int,
                    vocab_size: int, pad_id: int) -> str:
    """The message for item ``bad``, the first whose tokens break a rule (in rule order)."""
    toks = [int(t) for t in sequences[bad]]
    if toks and toks[-1] == eos_id:
        toks = toks[:-1]
    if not toks:
        return f"item {bad}: empty token sequence"
    for t in toks:
        if not 0 <= t < vocab_size:
            return f"item {bad}: token {t} outside the vocabulary [0, {vocab_size})"
        if t in (eos_id, pad_id):
            return (f"item {bad}: token sequence {toks} contains EOS ({eos_id}) or "
                    f"padding ({pad_id}) before its end")
    raise AssertionError(f"item {bad} breaks no rule")  # pragma: no cover


def build_trie(sequences: Sequence[Sequence[int]], eos_id: int = 1, vocab_size: int = 32128,
               pad_id: int = 0, dense_limit: int = 1 << 24, end_with_eos: bool = True
               ) -> TrieArrays:
    """Build the trie of ``seq + [eos_id]`` for every item token sequence.

    ``sequences[i]`` is item i's token ids as the vocabulary encodes its ID string, without
    EOS (a single trailing EOS is tolerated and not doubled). Raises ValueError for an empty
    sequence, a token outside [0, vocab_size), EOS or padding inside a sequence, or two items
    with the same token sequence (two IDs the tokenizer cannot tell apart).

    ``end_with_eos=False`` builds the trie of the bare token sequences, for targets that
    continue with the next item instead of EOS (the seqrec family): an item then ends where
    its tokens end, so every item must have the same number of tokens (then no item is a
    prefix of another, and all beams finish together); otherwise ValueError names two items
    of different lengths.

    Built with array operations on the sorted sequences (a node per distinct prefix, in the
    sorted order that is DFS pre-order), so a catalogue of a million items takes seconds and
    memory proportional to its tokens.
    """
    n = len(sequences)
    lens = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
    flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64,
                       count=int(lens.sum()))
    ends = np.cumsum(lens)
    has_eos = np.zeros(n, bool)
    nonempty = lens > 0
    has_eos[nonempty] = flat[ends[nonempty] - 1] == eos_id
    body = np.ones(len(flat), bool)
    body[ends[has_eos] - 1] = False  # a single trailing EOS is dropped (and re-added below)
    flat = flat[body]
    lens = lens - has_eos
    owner = np.repeat(np.arange(n), lens)
    bad_token = (flat < 0) | (flat >= vocab_size) | (flat == eos_id) | (flat == pad_id)
    bad = np.concatenate([np.flatnonzero(lens == 0), owner[bad_token]])
    if len(bad):
        raise ValueError(_first_bad_item(sequences, int(bad.min()), eos_id, vocab_size, pad_id))
    if n == 0:
        raise ValueError("no items: a trie needs at least one item token sequence")
    if not end_with_eos:
        other = np.flatnonzero(lens != lens[0])
        if len(other):
            i = int(other[0])
            raise ValueError(f"items 0 and {i} have {int(lens[0])} and {int(lens[i])} "
                             "tokens: a trie without EOS needs every item ID to be the same "
                             "number of tokens")
    depth = lens + int(end_with_eos)  # path length from the root to the item's leaf
    width = int(depth.max())
    table = np.full((n, width), -1, np.int64)  # each item's path, -1 after its end
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    table[owner, np.arange(len(flat)) - np.repeat(starts, lens)] = flat
    if end_with_eos:
        table[np.arange(n), lens] = eos_id
    order = np.lexsort(table.T[::-1])  # lexicographic by path: DFS pre-order of the leaves
    paths = table[order]
    plen = depth[order]
    lcp = np.zeros(n, np.int64)  # tokens each path shares with the one before it
    if n > 1:
        eq = paths[1:] == paths[:-1]
        lcp[1:] = np.where(eq.all(1), width, np.argmin(eq, axis=1))
    dup = np.flatnonzero(lcp >= plen)
    if len(dup):
        # the pair whose later item comes first in the input, as a scan would find it
        pairs = []
        for r in dup.tolist():
            first = r
            while first > 0 and lcp[first] >= plen[first]:
                first -= 1
            group = sorted(order[first:r + 1].tolist())
            pairs.append((group[1], group[0]))
        b, a = min(pairs)
        toks = [int(t) for t in table[a, :lens[a]]]
        raise ValueError(f"items {a} and {b} have the same token sequence {toks}: their ID "
                         "strings tokenize identically")
    new = plen - lcp  # nodes each path adds (one per token past the shared prefix)
    base = 1 + np.concatenate([[0], np.cumsum(new)[:-1]])
    num_nodes = 1 + int(new.sum())
    node_at = np.zeros((n, width + 1), np.int64)  # node reached after d tokens of path r
    parents, tokens, children = [], [], []
    for d in range(1, width + 1):
        created = (d > lcp) & (d <= plen)
        ids = np.where(created, base + d - lcp - 1, -1)
        col = np.maximum.accumulate(ids)
        node_at[:, d] = np.where(d <= plen, col, -1)
        rows = np.flatnonzero(created)
        parents.append(node_at[rows, d - 1])
        tokens.append(paths[rows, d - 1])
        children.append(ids[rows])
    parent = np.concatenate(parents)
    token = np.concatenate(tokens)
    child = np.concatenate(children)
    by_child = np.argsort(child, kind="stable")  # pre-order: a node's children by token
    parent, token, child = parent[by_child], token[by_child], child[by_child]
    by_parent = np.argsort(parent, kind="stable")
    parent, token, child = parent[by_parent], token[by_parent], child[by_parent]
    child_start = np.searchsorted(parent, np.arange(num_nodes + 1)).astype(np.int64)
    leaf_item = np.full(num_nodes, -1, np.int32)
    leaf_item[node_at[np.arange(n), plen]] = order
    rank_item = order.astype(np.int32)
    item_rank = np.empty(n, np.int32)
    item_rank[rank_item] = np.arange(n, dtype=np.int32)
    leaf_lo = np.full(num_nodes, n, np.int64)
    leaf_hi = np.zeros(num_nodes, np.int64)
    on_path = node_at >= 0
    nodes = node_at[on_path]
    ranks = np.broadcast_to(np.arange(n)[:, None], node_at.shape)[on_path]
    np.minimum.at(leaf_lo, nodes, ranks)
    np.maximum.at(leaf_hi, nodes, ranks + 1)
    dense = None
    if num_nodes * vocab_size <= dense_limit:
        dense = np.full((num_nodes, vocab_size), -1, np.int32)
        dense[parent, token] = child
    return TrieArrays(child_start, token.astype(np.int32), child.astype(np.int32), leaf_item,
                      leaf_lo.astype(np.int32), leaf_hi.astype(np.int32), rank_item,
                      item_rank, dense, eos_id, pad_id, vocab_size, int(plen.max()))


def _edges(trie: TrieArrays, node: int) -> slice:
    return slice(int(trie.child_start[node]), int(trie.child_start[node + 1]))


def allowed_tokens(trie: TrieArrays, node: int) -> np.ndarray:
    """Sorted token ids that may follow ``node`` (empty for a finished or dead node)."""
    if node < 0:
        return np.zeros(0, np.int32)
    return trie.child_tokens[_edges(trie, node)].copy()


def step(trie: TrieArrays, node: int, token: int) -> int:
    """The node after ``token``, or -1 if ``token`` may not follow ``node``."""
    if node < 0:
        return -1
    edges = _edges(trie, node)
    toks = trie.child_tokens[edges]
    j = int(np.searchsorted(toks, token))
    if j < len(toks) and toks[j] == token:
        return int(trie.child_next[edges][j])
    return -1


def lookup(trie: TrieArrays, seq: Sequence[int]) -> int:
    """Item number whose tokens + EOS are exactly ``seq``, else -1."""
    node = 0
    for t in seq:
        node = step(trie, node, int(t))
        if node < 0:
            return -1
    return int(trie.leaf_item[node])


def accepts(trie: TrieArrays, seq: Sequence[int]) -> bool:
    """True iff ``seq`` is some item's token sequence followed by EOS."""
    return lookup(trie, seq) >= 0


def allowed_items_in_rank_order(trie: TrieArrays, allowed_items: np.ndarray) -> np.ndarray:
    """Prefix sums [rows, num_items+1] of per-row allowed-item bitmaps (given in item order).

    ``allowed_items`` is bool [rows, num_items] indexed by item number (the position in the
    ``sequences`` passed to build_trie). Row r may extend into child ``c`` iff
    ``out[r, leaf_hi[c]] - out[r, leaf_lo[c]] > 0``.
    """
    allowed_items = np.asarray(allowed_items, dtype=bool)
    if allowed_items.ndim != 2 or allowed_items.shape[1] != trie.num_items:
        raise ValueError(f"allowed_items must be [rows, {trie.num_items}], got "
                         f"{allowed_items.shape}")
    ranked = allowed_items[:, trie.rank_item].astype(np.int32)
    return np.concatenate([np.zeros((ranked.shape[0], 1), np.int32),
                           np.cumsum(ranked, axis=1, dtype=np.int32)], axis=1)


def allowed_tokens_masked(trie: TrieArrays, node: int, cums_row: np.ndarray) -> np.ndarray:
    """Like allowed_tokens, keeping only children with at least one allowed item below."""
    if node < 0:
        return np.zeros(0, np.int32)
    edges = _edges(trie, node)
    nxt = trie.child_next[edges]
    keep = cums_row[trie.leaf_hi[nxt]] - cums_row[trie.leaf_lo[nxt]] > 0
    return trie.child_tokens[edges][keep].copy()


def item_trie(item_ids: Sequence[str], encode: Callable[[str], Sequence[int]],
              eos_id: int = 1, vocab_size: int = 32128, pad_id: int = 0,
              dense_limit: int = 1 << 24) -> TrieArrays:
    """The trie of ``encode(id_string)`` for each ID string, item number = position.

    Typical use: ``item_trie([index.id_of(i) for i in split.all_items], vocab.encode)``; then
    item number j is ``split.all_items[j]``, and ``~splits.seen_mask(split, stage)[1]`` is
    directly the ``allowed_items`` bitmap for ``TrieConstraint.create``. Two IDs that encode
    to the same tokens raise ValueError naming both strings.
    """
    sequences = [list(encode(s)) for s in item_ids]
    try:
        return build_trie(sequences, eos_id, vocab_size, pad_id, dense_limit)
    except ValueError as e:
        msg = str(e)
        if "same token sequence" in msg:
            a, b = (int(x) for x in msg.split()[1:4:2])
            msg = f"ID strings {item_ids[a]!r} and {item_ids[b]!r}: {msg}"
        raise ValueError(msg) from None
