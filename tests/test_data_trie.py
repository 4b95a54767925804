"""The item trie accepts exactly the valid item sequences, and its JAX constraint agrees."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flanrec.data import trie as trie_lib

EOS, PAD, VOCAB = 1, 0, 12

# Item token sequences over a tiny vocabulary (2..VOCAB-1), distinct, 1..5 tokens long.
item_sets = st.lists(st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=5),
                     min_size=1, max_size=25, unique_by=tuple)
any_seq = st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=7)


def _all_paths(t: trie_lib.TrieArrays, node: int = 0, prefix: tuple = ()) -> set[tuple]:
    """Every root-to-leaf token path, by walking allowed_tokens/step."""
    if t.leaf_item[node] >= 0:
        return {prefix}
    out = set()
    for tok in trie_lib.allowed_tokens(t, node).tolist():
        out |= _all_paths(t, trie_lib.step(t, node, tok), prefix + (tok,))
    return out


@settings(max_examples=40, deadline=None)
@given(items=item_sets, probes=st.lists(any_seq, max_size=20))
def test_trie_accepts_exactly_the_items(items, probes):
    t = trie_lib.build_trie(items, eos_id=EOS, vocab_size=VOCAB)
    valid = {tuple(s) + (EOS,) for s in items}
    assert _all_paths(t) == valid  # nothing more, nothing less
    for i, s in enumerate(items):
        full = list(s) + [EOS]
        assert trie_lib.accepts(t, full)
        assert trie_lib.lookup(t, full) == i
        for cut in range(len(full)):  # proper prefixes are not items
            assert not trie_lib.accepts(t, full[:cut])
        for extra in range(VOCAB):  # nothing extends a finished item
            assert not trie_lib.accepts(t, full + [extra])
        assert not trie_lib.accepts(t, list(s))  # without EOS
    for p in probes:
        assert trie_lib.accepts(t, p) == (tuple(p) in valid)
    # leaf ranks: each subtree's items are one contiguous range
    for node in range(t.num_nodes):
        below = {t.leaf_item[n] for n in range(node, t.num_nodes)
                 if t.leaf_item[n] >= 0 and _is_descendant(t, node, n)}
        ranks = set(t.item_rank[list(below)].tolist()) if below else set()
        assert ranks == set(range(t.leaf_lo[node], t.leaf_hi[node]))
    if t.dense_next is not None:
        for node in range(t.num_nodes):
            for tok in range(VOCAB):
                assert t.dense_next[node, tok] == trie_lib.step(t, node, tok)


def _is_descendant(t, anc: int, node: int) -> bool:
    stack = [anc]
    while stack:
        n = stack.pop()
        if n == node:
            return True
        stack.extend(t.children_next[n, : t.num_children[n]].tolist())
    return False


def test_trie_rejects_bad_input():
    with pytest.raises(ValueError, match="same token sequence"):
        trie_lib.build_trie([[3, 4], [5], [3, 4, EOS]], vocab_size=VOCAB)
    with pytest.raises(ValueError, match="EOS"):
        trie_lib.build_trie([[3, EOS, 4]], vocab_size=VOCAB)
    with pytest.raises(ValueError, match="padding"):
        trie_lib.build_trie([[PAD, 4]], vocab_size=VOCAB)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trie_lib.build_trie([[3, VOCAB]], vocab_size=VOCAB)
    with pytest.raises(ValueError, match="empty"):
        trie_lib.build_trie([[3], []], vocab_size=VOCAB)


def test_dense_table_only_when_small():
    items = [[2, 3], [2, 4], [5]]
    assert trie_lib.build_trie(items, vocab_size=VOCAB).dense_next is not None
    assert trie_lib.build_trie(items, vocab_size=VOCAB, dense_limit=10).dense_next is None


# ------------------------------------------------------------------------------ JAX constraint


def _reachable(mask_of, step_of, max_len: int) -> set[tuple]:
    """Every sequence a decoder obeying ``mask_of(node)`` can produce (BFS over the trie)."""
    done, frontier = set(), [((), 0)]
    for _ in range(max_len):
        new = []
        for prefix, node in frontier:
            for tok in np.flatnonzero(mask_of(node)).tolist():
                if tok == PAD:
                    continue
                nxt = step_of(node, tok)
                assert nxt >= 0, "an allowed token led to a dead node"
                (done.add(prefix + (tok,)) if tok == EOS else new.append((prefix + (tok,), nxt)))
        frontier = new
    assert not frontier
    return done


MAX_NODES, MAX_ITEMS = 25 * 6 + 1, 25  # bounds for item_sets: pad to one shape, jit once


def _padded(c):
    """The constraint's arrays padded to fixed shapes (extra nodes unreachable), so the
    jitted checks below compile once for all hypothesis examples."""
    import jax.numpy as jnp

    from flanrec.infer.constraints import JaxTrie

    def pad(a, rows, cols=None, value=-1):
        a = np.asarray(a)
        width = [(0, rows - a.shape[0])] + ([(0, cols - a.shape[1])] if a.ndim == 2 else [])
        return jnp.asarray(np.pad(a, width, constant_values=value))

    tr = c.trie
    jt = JaxTrie(pad(tr.children_tokens, MAX_NODES, VOCAB), pad(tr.children_next, MAX_NODES,
                 VOCAB), pad(tr.leaf_lo, MAX_NODES, value=0), pad(tr.leaf_hi, MAX_NODES,
                 value=0), pad(tr.leaf_item, MAX_NODES))
    cums = np.asarray(c.cums)
    cums = np.pad(cums, [(0, 0), (0, MAX_ITEMS + 1 - cums.shape[1])], mode="edge")
    return jt, jnp.asarray(cums)


@functools.cache
def _jitted():
    import jax
    import jax.numpy as jnp

    from flanrec.infer.constraints import advance, allowed_mask

    @jax.jit
    def tables(jt, cums):
        nodes = jnp.arange(MAX_NODES, dtype=jnp.int32)
        masked = jax.vmap(lambda r: allowed_mask(jt, nodes, VOCAB, cums,
                                                 jnp.full((MAX_NODES,), r)))(
            jnp.arange(cums.shape[0]))
        free = allowed_mask(jt, nodes, VOCAB)
        pn = jnp.repeat(nodes, VOCAB)
        pt = jnp.tile(jnp.arange(VOCAB, dtype=jnp.int32), MAX_NODES)
        nxt = advance(jt, pn, pt).reshape(MAX_NODES, VOCAB)
        return masked, free, nxt

    return tables


@settings(max_examples=40, deadline=None)
@given(items=item_sets, data=st.data())
def test_trie_constraint_masks_seen_items_exactly(items, data):
    from flanrec.infer.constraints import TrieConstraint

    t = trie_lib.build_trie(items, eos_id=EOS, vocab_size=VOCAB)
    batch, beams = 2, 2
    allowed_items = np.array(data.draw(st.lists(
        st.lists(st.booleans(), min_size=len(items), max_size=len(items)),
        min_size=batch, max_size=batch)), dtype=bool)
    c = TrieConstraint.create(t, allowed_items=allowed_items, beams=beams)
    n = t.num_nodes
    masked, free, nxt = (np.asarray(a) for a in _jitted()(*_padded(c)))
    cums = trie_lib.allowed_items_in_rank_order(t, allowed_items)
    for node in range(n):
        for tok in range(VOCAB):
            want = trie_lib.step(t, node, tok)
            if tok == PAD and t.leaf_item[node] >= 0:
                want = node  # padding keeps a finished row on its leaf
            assert nxt[node, tok] == want
        # the numpy reference of the masked step agrees with the JAX mask
        for b in range(batch):
            ref = trie_lib.allowed_tokens_masked(t, node, cums[b]).tolist()
            got = np.flatnonzero(masked[b, node]).tolist()
            assert got == (ref if ref else [PAD])
    for b in range(batch):
        want = {tuple(items[i]) + (EOS,) for i in np.flatnonzero(allowed_items[b])}
        got = _reachable(lambda node, b=b: masked[b, node], lambda nd, tk: int(nxt[nd, tk]),
                         t.max_length)
        assert got == want
    assert _reachable(lambda node: free[node], lambda nd, tk: int(nxt[nd, tk]),
                      t.max_length) == {tuple(s) + (EOS,) for s in items}


def test_constraint_maps_beams_to_batch_rows():
    from flanrec.infer.constraints import TrieConstraint

    items = [[2, 3], [2, 4], [5], [6, 2]]
    t = trie_lib.build_trie(items, vocab_size=VOCAB)
    allowed_items = np.array([[True, False, False, False], [False, True, True, False]])
    c = TrieConstraint.create(t, allowed_items=allowed_items, beams=3)
    root = np.asarray(c.allowed(c.init(6)))
    assert [np.flatnonzero(r).tolist() for r in root] == [[2]] * 3 + [[2, 5]] * 3


def test_constraint_jits_and_handles_finished_rows():
    import jax
    import jax.numpy as jnp

    from flanrec.infer.constraints import TrieConstraint, advance, allowed_mask, to_jax

    items = [[2, 3], [2, 4], [5]]
    t = trie_lib.build_trie(items, vocab_size=VOCAB)
    jt = to_jax(t)
    nodes = jnp.array([0, trie_lib.step(t, 0, 2), -1], jnp.int32)
    mask = np.asarray(allowed_mask(jt, nodes, VOCAB))
    assert np.flatnonzero(mask[0]).tolist() == [2, 5]
    assert np.flatnonzero(mask[1]).tolist() == [3, 4]
    assert np.flatnonzero(mask[2]).tolist() == [PAD]  # dead row: pad only, never all-False
    nxt = np.asarray(advance(jt, nodes, jnp.array([5, 9, 3])))
    assert nxt[0] == trie_lib.step(t, 0, 5) and nxt[1] == -1 and nxt[2] == -1

    c = TrieConstraint.create(t, allowed_items=np.array([[True, False, True]]), beams=3)

    @jax.jit
    def run(constraint, tokens):
        state = constraint.init(3)
        for k in range(tokens.shape[1]):
            state = constraint.advance(state, tokens[:, k])
        return state, constraint.allowed(state), constraint.item(state)

    toks = jnp.array([[2, 3, EOS], [5, EOS, PAD], [2, 7, EOS]])
    state, allowed, item = run(c, toks)
    assert np.asarray(item).tolist() == [0, 2, -1]  # row 1 padded after EOS; row 2 left
    assert np.asarray(allowed)[:, PAD].all()
    _, allowed, _ = run(c, toks[:, :1])
    assert np.flatnonzero(np.asarray(allowed)[0]).tolist() == [3]  # item 1 ([2, 4]) masked
    with pytest.raises(ValueError, match="batch_beams"):
        c.init(4)


def test_item_trie_names_clashing_id_strings():
    vocab = {"a": 2, "b": 3, "c": 4}
    encode = lambda s: [vocab[ch] for ch in s if ch != " "]  # drops spaces, like SentencePiece
    t = trie_lib.item_trie(["ab", "c", "ba"], encode, vocab_size=VOCAB)
    assert trie_lib.lookup(t, [3, 2, EOS]) == 2
    with pytest.raises(ValueError, match="'ab' and 'a b'"):
        trie_lib.item_trie(["ab", "c", "a b"], encode, vocab_size=VOCAB)


def test_trie_constraint_in_the_models_beam_search():
    """End to end with H1's jitted beam search on a tiny random T5: every finished beam is an
    item the row may see, and per-user exclusion holds before any cut to K."""
    import jax
    import jax.numpy as jnp
    from hf_fixtures import random_params

    from flanrec.infer.constraints import TrieConstraint
    from flanrec.model import decoding
    from flanrec.model.config import get_preset

    cfg = get_preset("tiny")
    rng = np.random.default_rng(0)
    items = list({tuple(rng.integers(2, cfg.vocab_size, int(rng.integers(1, 4))).tolist())
                  for _ in range(40)})
    t = trie_lib.build_trie(items, vocab_size=cfg.vocab_size)
    allowed_items = rng.random((2, len(items))) < 0.5
    beams = 4
    constraint = TrieConstraint.create(t, allowed_items=allowed_items, beams=beams)
    enc = jnp.asarray(rng.integers(2, cfg.vocab_size, (2, 6)), jnp.int32)
    # Random params from the shared table (numpy): Transformer.init compiles every
    # initializer, which took most of this test's time on a busy CPU.
    params = jax.tree.map(jnp.asarray, random_params(cfg, seed=0))
    seqs, scores = decoding.beam_search(cfg, params, enc, max_length=t.max_length,
                                        num_beams=beams, constraint=constraint)
    seqs, scores = np.asarray(seqs), np.asarray(scores)
    for b in range(2):
        ok = {tuple(items[i]) + (EOS,) for i in np.flatnonzero(allowed_items[b])}
        finished = [tuple(s[: list(s).index(EOS) + 1])
                    for s, sc in zip(seqs[b], scores[b], strict=True)
                    if np.isfinite(sc) and EOS in s]
        assert len(finished) == min(beams, len(ok))
        assert set(finished) <= ok and len(set(finished)) == len(finished)
