"""`prepare --dataset csv` with collaborative indexing: new ID tokens on reserved rows.

A generic interaction CSV goes through the same path as ml-100k. Collaborative IDs
(`<c3><c17>`) are new tokens: prepare places them on the rows above the SentencePiece
model's pieces, the tasks tokenize them to exactly those ids, the trie is built in that id
space and generated text maps back to items. A small trained model stands in for Flan-T5's.
"""

from __future__ import annotations

import json

import pytest
import seqio

from flanrec.data import vocab as vocab_lib  # noqa: E402


@pytest.fixture(scope="module")
def toy_prepared(tmp_path_factory):
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("csv")
    rows = ["user_id,item_id,timestamp"]
    for u in range(40):
        group = u % 2  # two taste groups, so co-occurrence clusters exist
        for t in range(12):
            item = 1 + group * 40 + (u * 7 + t * 3) % 40
            rows.append(f"u{u},{item},{1000 + 10 * t + (t % 3 == 0)}")
    (root / "log.csv").write_text("\n".join(rows) + "\n")
    base = vocab_lib.train_sentencepiece(
        [f"Here is the viewing history of user {i}: movie {i * 3}, item {i}. Which next?"
         for i in range(3000)], str(root / "base.model"), vocab_size=400)
    mp = pytest.MonkeyPatch()
    mp.setenv(vocab_lib.VOCAB_ENV, base)
    try:
        doc = prepare(PrepareOptions(dataset="csv", raw_dir=str(root / "log.csv"),
                                     out=str(root / "out"), task_prefix="toy",
                                     indexing=("collaborative", "sequential"),
                                     num_candidates=5, allow_download=False),
                      log=lambda m: None)
        yield root / "out", base, doc
    finally:
        mp.undo()


def test_layout_and_dropped_families(toy_prepared):
    out, base, doc = toy_prepared
    tasks = sorted(p.name for p in (out / "tasks").iterdir())
    # No ratings in the log: no rating/binary tasks; no user features: no profile task.
    # seqrec needs IDs of one fixed token count: the collaborative codes are, the sequential
    # numbers under this base vocabulary are not (that task is dropped with a warning).
    assert tasks == ["direct_cfidx", "direct_seqidx", "grounding_cfidx", "grounding_seqidx",
                     "seq_cfidx", "seq_seqidx", "seqrec_cfidx"]
    assert "noeos_error" in doc["tries"]["sequential"]
    assert doc["index_suffixes"] == ["cfidx", "seqidx"]
    assert doc["counts"]["train_windows"] == 40 * 9
    slots = json.loads((out / "index" / "token_slots.json").read_text())
    pieces = vocab_lib.piece_count(base)
    assert slots["sp_size"] == pieces and min(slots["tokens"].values()) == pieces
    assert doc["tries"]["collaborative"]["nodes"] > 0


def test_item_tokens_encode_to_their_slots_and_decode_back(toy_prepared):
    import tasks
    from flanrec.data.indexing import ItemIndex
    from flanrec.data.prepared import load_trie
    from flanrec.data.trie import accepts

    out, base, _ = toy_prepared
    names = tasks.register_prepared(str(out), vocabulary=vocab_lib.get_vocabulary(
        base, item_tokens=str(out)))
    try:
        assert "toy_rec_mix" in names and "toy_rec_mix_seqidx" in names
        mix = seqio.get_mixture_or_task("toy_rec_mix_seqidx")
        assert {t.name for t in mix.tasks} == {"toy_seq_seqidx", "toy_direct_seqidx",
                                               "toy_grounding_seqidx"}
        task = seqio.get_mixture_or_task("toy_seq_cfidx")
        vocab = task.output_features["targets"].vocabulary
        assert isinstance(vocab, vocab_lib.ItemTokenVocabulary)
        slots = vocab.token_slots
        index = ItemIndex.load(out / "index" / "collaborative")
        trie, items = load_trie(str(out / "index" / "collaborative" / "trie.npz"))
        for item in items[:10]:
            ids = vocab.encode(index.id_of(item))
            tokens = [t for t in slots if t in index.id_of(item)]
            assert set(ids) >= {slots[t] for t in tokens} and tokens
            assert vocab.decode(ids) == index.id_of(item)
            assert accepts(trie, ids + [vocab.eos_id])
        # The stored trie is reused for the vocabulary it was built with, rebuilt otherwise.
        from flanrec.data.prepared import item_trie

        same, _ = item_trie(str(out), vocab, "collaborative")
        assert same.num_nodes == trie.num_nodes and (same.children_tokens ==
                                                     trie.children_tokens).all()
        plain = seqio.SentencePieceVocabulary(base, extra_ids=100)
        other, other_items = item_trie(str(out), plain, "collaborative")
        assert other_items == items and other.vocab_size == plain.vocab_size
        assert accepts(other, plain.encode(index.id_of(items[0])) + [1])
        n = 0
        for ex in task.get_dataset({"inputs": 512, "targets": 16}, split="test",
                                   shuffle=False).as_numpy_iterator():
            assert max(ex["targets"]) >= min(slots.values())  # an item token, not pieces
            text = vocab.decode(ex["targets"].tolist())
            assert task.postprocess_fn(text, is_target=True) == ex["target_item"].decode()
            n += 1
        assert n == 40
        batch = next(iter(seqio.get_dataset(
            "toy_rec_mix", {"inputs": 512, "targets": 16},
            seqio.EncDecFeatureConverter(pack=True), batch_size=2).as_numpy_iterator()))
        assert batch["decoder_target_tokens"].max() < vocab.vocab_size
    finally:
        for name in names:
            if name in seqio.MixtureRegistry.names():
                seqio.MixtureRegistry.remove(name)
            elif name in seqio.TaskRegistry.names():
                seqio.TaskRegistry.remove(name)


def test_failure_late_in_the_job_leaves_the_old_output(toy_prepared, tmp_path):
    """The vocabulary step fails after every task was written: nothing of it may remain."""
    import os

    from flanrec.files import outputs
    from flanrec.prepare import PrepareOptions, prepare

    out_dir, _, _ = toy_prepared
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare.json").write_text('{"sentinel": true}')
    outputs.write_marker(str(out), "prepare")  # an earlier prepare output: replaceable
    opts = PrepareOptions(dataset="csv", raw_dir=str(out_dir.parent / "log.csv"), out=str(out),
                          train_vocab=True, vocab_size=100, allow_download=False)
    with pytest.raises(ValueError, match="raise vocab_size"):
        prepare(opts, log=lambda m: None)
    assert json.loads((out / "prepare.json").read_text()) == {"sentinel": True}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no scratch dir, no out.old-*


def test_tfidf_embeddings_put_similar_items_together():
    import numpy as np

    from flanrec.prepare.index import tfidf_embed

    x = tfidf_embed(["Toy Story; year: 1995; categories: Animation, Comedy",
                     "Toy Story 2; year: 1999; categories: Animation, Comedy",
                     "Heat; year: 1995; categories: Crime, Thriller",
                     "Casino; year: 1995; categories: Crime, Drama"], dim=3)
    assert x.shape == (4, 3) and np.isfinite(x).all()
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert d[0, 1] < d[0, 2] and d[2, 3] < d[2, 1]
