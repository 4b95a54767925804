"""Item indexers: unique IDs, fitted on training data only, deterministic, saved atomically."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flanrec.data import types
from flanrec.data.errors import DataError
from flanrec.data.indexing import (
    METHODS,
    NEW_TOKEN_RE,
    ItemIndex,
    extra_id,
    fit_index,
    load_slot_map,
    token_slot_map,
)


def make_split(seed: int = 0, n_users: int = 30, n_items: int = 60,
               heldout_seed: int | None = None) -> tuple[types.Split, types.ItemMeta]:
    """A random LOO split; ``heldout_seed`` re-draws only the validation/test items."""
    rng = np.random.default_rng(seed)
    catalogue = [f"i{j}" for j in range(n_items)]
    hrng = np.random.default_rng(seed if heldout_seed is None else heldout_seed)
    users = []
    for u in range(n_users):
        n = int(rng.integers(3, 15))
        train = [catalogue[j] for j in rng.choice(n_items, n, replace=False)]
        rest = [c for c in catalogue if c not in train]
        valid, test = (rest[j] for j in hrng.choice(len(rest), 2, replace=False))
        users.append(types.UserSequence(
            str(u), train, valid, test, train_ratings=[float(rng.integers(1, 6))
                                                       for _ in train],
            valid_rating=float(hrng.integers(1, 6)), test_rating=float(hrng.integers(1, 6))))
    titles = {c: f"Movie {int(c[1:]) % 45}" for c in catalogue}  # repeats on purpose
    meta = types.ItemMeta(title=titles, year={c: "1990" for c in catalogue[::2]},
                          categories={c: ["Drama"] if j % 2 else ["Comedy", "Crime"]
                                      for j, c in enumerate(catalogue)})
    return types.Split(users, catalogue), meta


def _opts(method: str, split: types.Split, seed: int = 0) -> dict:
    if method == "collaborative":
        return {"n_clusters": 4, "max_leaf": 6}
    if method == "semantic":
        emb = np.random.default_rng(seed).standard_normal((len(split.all_items), 8))
        return {"embeddings": emb, "codebook_size": 4}
    return {}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_unique_ids_and_is_deterministic(method):
    split, meta = make_split()
    a = fit_index(method, split, split.all_items, meta, seed=3, **_opts(method, split))
    b = fit_index(method, split, split.all_items, meta, seed=3, **_opts(method, split))
    assert a.item_to_id == b.item_to_id
    assert set(a.item_to_id) == set(split.all_items)
    assert len(set(a.item_to_id.values())) == len(split.all_items)
    assert a.method == method
    for id_str in a.item_to_id.values():
        pieces = NEW_TOKEN_RE.findall(id_str)
        if a.new_tokens:  # hierarchical IDs are made of new tokens only
            assert "".join(pieces) == id_str
            assert set(pieces) <= set(a.new_tokens)


@pytest.mark.parametrize("method", METHODS)
def test_held_out_items_do_not_change_ids(method):
    """Fitted on train only: re-drawing every validation/test item leaves every ID as is."""
    split_a, meta = make_split(heldout_seed=1)
    split_b, _ = make_split(heldout_seed=2)
    assert [u.test_item for u in split_a.users] != [u.test_item for u in split_b.users]
    assert [u.train_items for u in split_a.users] == [u.train_items for u in split_b.users]
    a = fit_index(method, split_a, split_a.all_items, meta, seed=0, **_opts(method, split_a))
    b = fit_index(method, split_b, split_b.all_items, meta, seed=0, **_opts(method, split_b))
    assert a.item_to_id == b.item_to_id


def test_sequential_numbers_by_first_training_appearance():
    train = {"10": ["c", "a"], "2": ["b", "c", "d"]}  # users ascend numerically: 2 then 10
    index = fit_index("sequential", train, ["a", "b", "c", "d", "e", "f"])
    assert index.item_to_id == {"b": "1", "c": "2", "d": "3", "a": "4", "e": "5", "f": "6"}
    assert index.options["items_unseen_in_train"] == 2
    # a list of sequences keeps the given order
    index = fit_index("sequential", [["c", "a"], ["b"]], ["a", "b", "c"], start=1001)
    assert index.item_to_id == {"c": "1001", "a": "1002", "b": "1003"}


def test_random_is_a_seeded_permutation():
    cat = [str(i) for i in range(50)]
    a = fit_index("random", [], cat, seed=0)
    assert sorted(int(v) for v in a.item_to_id.values()) == list(range(1, 51))
    assert a.item_to_id != fit_index("random", [], cat, seed=1).item_to_id
    assert a.item_to_id == fit_index("random", [["3", "4"]], cat, seed=0).item_to_id


def test_title_ids_are_unique_and_counted():
    meta = types.ItemMeta(title={"a": "Heat", "b": "Heat", "c": "  Heat  ", "d": "Up",
                                 "e": ""}, year={"d": "2009"})
    index = fit_index("title", [], ["a", "b", "c", "d", "e", "f"], meta)
    assert index.item_to_id == {"a": "Heat", "b": "Heat (2)", "c": "Heat (3)",
                                "d": "Up (2009)", "e": "item e", "f": "item f"}
    assert index.collisions_resolved == 2
    assert fit_index("title", [], ["d"], meta, with_year=False).item_to_id == {"d": "Up"}


def test_collaborative_separates_communities():
    """Two groups of users consuming disjoint item sets: the first ID token tells them apart."""
    rng = np.random.default_rng(0)
    group_a = [f"a{i}" for i in range(12)]
    group_b = [f"b{i}" for i in range(12)]
    train = [list(rng.choice(group_a, 6, replace=False)) for _ in range(20)]
    train += [list(rng.choice(group_b, 6, replace=False)) for _ in range(20)]
    index = fit_index("collaborative", train, group_a + group_b, seed=0, n_clusters=2,
                      max_leaf=5)
    first = {item: NEW_TOKEN_RE.findall(id_str)[0] for item, id_str in index.item_to_id.items()}
    assert len({first[i] for i in group_a}) == 1
    assert len({first[i] for i in group_b}) == 1
    assert first["a0"] != first["b0"]
    assert all(len(NEW_TOKEN_RE.findall(v)) >= 3 for v in index.item_to_id.values())
    used = sorted({t for v in index.item_to_id.values() for t in NEW_TOKEN_RE.findall(v)},
                  key=lambda t: int(t[2:-1]))
    assert index.new_tokens == used == [f"<c{i}>" for i in range(len(used))]
    assert len(used) <= 5
    assert index.collisions_resolved > 0


def test_collaborative_lanczos_path_is_deterministic():
    """Above DENSE_EIGH_MAX items the sparse eigensolver runs; it must be seeded too."""
    from flanrec.data.indexing import collaborative

    rng = np.random.default_rng(1)
    n = collaborative.DENSE_EIGH_MAX + 60
    items = [f"x{i}" for i in range(n)]
    half = n // 2
    train = [list(rng.choice(items[:half], 8, replace=False)) for _ in range(200)]
    train += [list(rng.choice(items[half:], 8, replace=False)) for _ in range(200)]
    a = fit_index("collaborative", train, items, seed=5, n_clusters=2, max_leaf=40)
    b = fit_index("collaborative", train, items, seed=5, n_clusters=2, max_leaf=40)
    assert a.item_to_id == b.item_to_id
    first = [NEW_TOKEN_RE.findall(a.item_to_id[i])[0] for i in items]
    assert len(set(first[:half])) == 1 and len(set(first[half:])) == 1
    assert first[0] != first[-1]


def test_semantic_codes_follow_embeddings_and_resolve_collisions(tmp_path):
    cat = [f"i{j}" for j in range(8)]
    centers = np.eye(4)[[0, 0, 1, 1, 2, 2, 3, 3]]
    emb = centers + 0.01 * np.arange(8)[:, None]
    emb[1] = emb[0]  # identical content -> same codes -> collision level tells them apart
    index = fit_index("semantic", [], cat, seed=0, embeddings=emb, codebook_size=4)
    ids = index.item_to_id
    first = {i: NEW_TOKEN_RE.findall(ids[i])[0] for i in cat}
    assert first["i0"] == first["i1"] and first["i2"] == first["i3"] != first["i0"]
    assert ids["i0"].endswith("<d0>") and ids["i1"].endswith("<d1>")
    assert ids["i0"][:-4] == ids["i1"][:-4]
    assert index.collisions_resolved == 1
    assert all(len(NEW_TOKEN_RE.findall(v)) == 4 for v in ids.values())
    # rows given in another order with the item list, from a .npy file: same index
    perm = np.random.default_rng(0).permutation(8)
    np.save(tmp_path / "emb.npy", emb[perm])
    (tmp_path / "items.json").write_text(json.dumps([cat[p] for p in perm]))
    again = fit_index("semantic", [], cat, seed=0, embeddings=str(tmp_path / "emb.npy"),
                      embedding_items=str(tmp_path / "items.json"), codebook_size=4)
    assert again.item_to_id == ids
    # embed_fn gets one text per catalogue item
    seen_texts = []

    def embed_fn(texts):
        seen_texts.extend(texts)
        return emb

    meta = types.ItemMeta(title={c: f"T{c}" for c in cat}, categories={"i0": ["Drama"]})
    assert fit_index("semantic", [], cat, meta, seed=0, embed_fn=embed_fn,
                     codebook_size=4).item_to_id == ids
    assert seen_texts[0] == "Ti0; categories: Drama" and len(seen_texts) == 8


def test_semantic_input_errors():
    cat = ["a", "b", "c"]
    with pytest.raises(ValueError, match="exactly one of"):
        fit_index("semantic", [], cat)
    with pytest.raises(ValueError, match="one row per item"):
        fit_index("semantic", [], cat, embeddings=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no embedding for 1 catalogue items"):
        fit_index("semantic", [], cat, embeddings=np.zeros((3, 4)),
                  embedding_items=["a", "b", "x"])
    bad = np.zeros((3, 2))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="row 1 .*'b'.* not finite"):
        fit_index("semantic", [], cat, embeddings=bad)


def test_fit_index_input_errors():
    with pytest.raises(ValueError, match="unknown indexing method"):
        fit_index("alphabetical", [], ["a"])
    with pytest.raises(ValueError, match="'z', which is not in the catalogue"):
        fit_index("sequential", [["a", "z"]], ["a"])
    with pytest.raises(ValueError, match="twice"):
        fit_index("sequential", [], ["a", "a"])
    with pytest.raises(ValueError, match="two items"):
        ItemIndex("x", {"a": "1", "b": "1"})


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_saved_files_follow_the_umask_not_mkstemps_0600(tmp_path, umask):
    """Indexes live in shared data dirs: other users (a TPU VM's service account, a
    colleague's notebook) must be able to read them, as with any file open() creates."""
    from flanrec.data.indexing.core import write_json_atomic

    old = os.umask(umask)
    try:
        index = ItemIndex("collaborative", {"a": "<c1><c2>", "b": "<c1><c3>"},
                          new_tokens=["<c1>", "<c2>", "<c3>"])
        index.save(tmp_path / "ix")
        write_json_atomic(tmp_path / "plain.json", {"x": 1})
        with open(tmp_path / "reference.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert os.stat(tmp_path / "reference.json").st_mode & 0o777 == want
    for path in (tmp_path / "ix" / "item_index.json", tmp_path / "ix" / "token_slots.json",
                 tmp_path / "plain.json"):
        assert os.stat(path).st_mode & 0o777 == want, path
    assert json.loads((tmp_path / "plain.json").read_text()) == {"x": 1}
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_save_load_roundtrip_with_slot_map(tmp_path):
    split, meta = make_split()
    index = fit_index("collaborative", split, split.all_items, meta, seed=0, n_clusters=4,
                      max_leaf=6)
    index.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["item_index.json", "token_slots.json"]
    loaded = ItemIndex.load(tmp_path)
    assert loaded.item_to_id == index.item_to_id and loaded.new_tokens == index.new_tokens
    assert loaded.collisions_resolved == index.collisions_resolved
    assert loaded.id_to_item[index.item_to_id["i3"]] == "i3"
    slots = load_slot_map(str(tmp_path))
    assert slots == token_slot_map(index.new_tokens)
    assert slots["<c0>"] == 32000
    # an index without new tokens removes a stale slot map
    fit_index("sequential", split, split.all_items).save(tmp_path)
    assert os.listdir(tmp_path) == ["item_index.json"]


def test_load_reports_bad_files(tmp_path):
    path = tmp_path / "item_index.json"
    path.write_text('{"format": "flanrec.item_index", ')
    with pytest.raises(DataError, match="item_index.json line 1: expected valid JSON"):
        ItemIndex.load(tmp_path)
    good = fit_index("sequential", [], ["a", "b"]).to_json()
    good["items"][1] = ["b", "1"]  # duplicate ID
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match="two items"):
        ItemIndex.load(tmp_path)
    good["items"][1] = ["b", 2]
    path.write_text(json.dumps(good))
    with pytest.raises(DataError, match=r"field 'items\[1\]'"):
        ItemIndex.load(tmp_path)
    with pytest.raises(DataError, match="file not found"):
        ItemIndex.load(tmp_path / "nowhere")


def test_token_slot_map_follows_flan_t5_layout():
    assert extra_id(0) == 32099 and extra_id(99) == 32000
    toks = [f"<c{i}>" for i in range(128)]
    m = token_slot_map(toks)
    assert m["<c0>"] == 32000 and m["<c99>"] == 32099 and m["<c127>"] == 32127
    assert len(set(m.values())) == 128
    with pytest.raises(ValueError, match="129 new tokens .* only 128 are free.* 1 too many"):
        token_slot_map(toks + ["<c128>"])
    r = token_slot_map(toks[:5], reserved_extra_ids=range(10, 100))  # keep 90 sentinels
    assert r["<c0>"] == 32090  # <extra_id_9>; ids 32000..32089 are reserved
    with pytest.raises(ValueError, match="only 38 are free"):
        token_slot_map(toks[:39], reserved_extra_ids=range(10, 100))
    with pytest.raises(ValueError, match="listed twice"):
        token_slot_map(["<a0>", "<a0>"])
    with pytest.raises(ValueError, match="out of range"):
        token_slot_map(["<a0>"], reserved_extra_ids=[100])


def test_ml100k_indexes_and_trie(ml100k_split, ml100k_dataset):
    """The real catalogue: train-only fitting, unique collaborative IDs that fit Flan-T5's
    free rows, and a trie over their token ids that accepts every item."""
    import dataclasses

    from flanrec.data.trie import accepts, build_trie

    split = ml100k_split
    seq = fit_index("sequential", split, split.all_items)
    unseen = set(split.all_items) - {i for u in split.users for i in u.train_items}
    assert seq.options["items_unseen_in_train"] == len(unseen) > 0
    assert {int(seq.item_to_id[i]) for i in unseen} == set(range(1683 - len(unseen), 1683))
    # swapping every user's validation and test items changes no ID
    swapped = dataclasses.replace(split, users=[
        dataclasses.replace(u, valid_item=u.test_item, test_item=u.valid_item)
        for u in split.users])
    assert fit_index("sequential", swapped, split.all_items).item_to_id == seq.item_to_id

    cid = fit_index("collaborative", split, split.all_items, seed=0)
    assert len(set(cid.item_to_id.values())) == 1682
    slots = token_slot_map(cid.new_tokens)
    seqs = [[slots[t] for t in NEW_TOKEN_RE.findall(cid.item_to_id[i])] for i in split.all_items]
    trie = build_trie(seqs, eos_id=1, vocab_size=32128)
    assert trie.num_items == 1682 and trie.max_fanout <= 20
    assert all(accepts(trie, s + [1]) for s in seqs)
    assert not accepts(trie, seqs[0]) and not accepts(trie, seqs[0] + [1, 1])
