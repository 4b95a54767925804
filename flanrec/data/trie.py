"""Prefix trie of every valid item ID (as token ids + EOS) in flat arrays.

Constrained beam search asks, at every step and for every beam, "which tokens may come
next?". A Python dict trie would need a host callback per step; these arrays let a jitted
decoder answer with gathers (see ``flanrec.infer.constraints``).

Layout (node 0 is the root; nodes are numbered in depth-first pre-order, children visited in
ascending token order):
  children_tokens[node, k]  k-th smallest child token, -1 padding up to the largest fan-out
  children_next[node, k]    the node that token leads to, -1 padding
  num_children[node]
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
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrieArrays:
    children_tokens: np.ndarray  # int32 [num_nodes, max_fanout]
    children_next: np.ndarray  # int32 [num_nodes, max_fanout]
    num_children: np.ndarray  # int32 [num_nodes]
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
        return int(self.num_children.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.rank_item.shape[0])

    @property
    def max_fanout(self) -> int:
        return int(self.children_tokens.shape[1])


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
    """
    children: list[dict[int, int]] = [{}]
    leaf_of: dict[int, int] = {}  # raw node -> item
    max_length = 0
    for i, seq in enumerate(sequences):
        toks = [int(t) for t in seq]
        if toks and toks[-1] == eos_id:
            toks = toks[:-1]
        if not toks:
            raise ValueError(f"item {i}: empty token sequence")
        for t in toks:
            if not 0 <= t < vocab_size:
                raise ValueError(f"item {i}: token {t} outside the vocabulary [0, {vocab_size})")
            if t in (eos_id, pad_id):
                raise ValueError(f"item {i}: token sequence {toks} contains EOS ({eos_id}) or "
                                 f"padding ({pad_id}) before its end")
        if not end_with_eos and max_length and len(toks) != max_length:
            raise ValueError(f"items 0 and {i} have {max_length} and {len(toks)} tokens: "
                             "a trie without EOS needs every item ID to be the same number "
                             "of tokens")
        node = 0
        for t in toks + ([eos_id] if end_with_eos else []):
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(children)
                children[node][t] = nxt
                children.append({})
            node = nxt
        if node in leaf_of:
            raise ValueError(f"items {leaf_of[node]} and {i} have the same token sequence "
                             f"{toks}: their ID strings tokenize identically")
        leaf_of[node] = i
        max_length = max(max_length, len(toks) + int(end_with_eos))

    n_nodes = len(children)
    # Renumber in DFS pre-order (children by ascending token), iteratively.
    new_id = np.full(n_nodes, -1, np.int64)
    order: list[int] = []
    stack = [0]
    while stack:
        raw = stack.pop()
        new_id[raw] = len(order)
        order.append(raw)
        stack.extend(children[raw][t] for t in sorted(children[raw], reverse=True))
    fanout = max(1, max(len(c) for c in children))
    ctok = np.full((n_nodes, fanout), -1, np.int32)
    cnext = np.full((n_nodes, fanout), -1, np.int32)
    nchild = np.zeros(n_nodes, np.int32)
    leaf_item = np.full(n_nodes, -1, np.int32)
    for raw, node in enumerate(new_id.tolist()):
        toks = sorted(children[raw])
        nchild[node] = len(toks)
        ctok[node, : len(toks)] = toks
        cnext[node, : len(toks)] = [new_id[children[raw][t]] for t in toks]
        if raw in leaf_of:
            leaf_item[node] = leaf_of[raw]
    # Leaves in DFS order get consecutive ranks; a subtree's leaves are a contiguous range.
    is_leaf = leaf_item >= 0
    rank_item = leaf_item[is_leaf].astype(np.int32)
    item_rank = np.empty(len(rank_item), np.int32)
    item_rank[rank_item] = np.arange(len(rank_item), dtype=np.int32)
    leaves_before = np.concatenate([[0], np.cumsum(is_leaf)]).astype(np.int32)
    # Pre-order: a subtree is nodes [node, node + size); compute sizes bottom-up.
    size = np.ones(n_nodes, np.int64)
    for node in range(n_nodes - 1, -1, -1):
        k = nchild[node]
        if k:
            size[node] += size[cnext[node, :k]].sum()
    leaf_lo = leaves_before[np.arange(n_nodes)]
    leaf_hi = leaves_before[np.arange(n_nodes) + size]
    dense = None
    if n_nodes * vocab_size <= dense_limit:
        dense = np.full((n_nodes, vocab_size), -1, np.int32)
        rows, cols = np.nonzero(ctok >= 0)
        dense[rows, ctok[rows, cols]] = cnext[rows, cols]
    return TrieArrays(ctok, cnext, nchild, leaf_item, leaf_lo.astype(np.int32),
                      leaf_hi.astype(np.int32), rank_item, item_rank, dense, eos_id, pad_id,
                      vocab_size, max_length)


def allowed_tokens(trie: TrieArrays, node: int) -> np.ndarray:
    """Sorted token ids that may follow ``node`` (empty for a finished or dead node)."""
    if node < 0:
        return np.zeros(0, np.int32)
    return trie.children_tokens[node, : trie.num_children[node]].copy()


def step(trie: TrieArrays, node: int, token: int) -> int:
    """The node after ``token``, or -1 if ``token`` may not follow ``node``."""
    if node < 0:
        return -1
    k = int(trie.num_children[node])
    toks = trie.children_tokens[node, :k]
    j = int(np.searchsorted(toks, token))
    if j < k and toks[j] == token:
        return int(trie.children_next[node, j])
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
    k = int(trie.num_children[node])
    nxt = trie.children_next[node, :k]
    keep = cums_row[trie.leaf_hi[nxt]] - cums_row[trie.leaf_lo[nxt]] > 0
    return trie.children_tokens[node, :k][keep].copy()


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
