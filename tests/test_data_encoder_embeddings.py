"""Semantic IDs from a T5 encoder: embeddings checked against HF transformers, then used.

A random tiny HF T5 checkpoint (tests/hf_fixtures.py) with a small SentencePiece model
trained here stands in for Flan-T5 + its spiece.model (neither is available offline). The
peer check: our jitted, batched, mean-pooled encoder equals transformers' PyTorch
`model.encoder` run on the very same token ids, pooled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers  # noqa: F401
from hf_fixtures import hf_encoder, make_hf_t5  # noqa: E402

from flanrec.errors import UserError

TITLES = [
    "Toy Story", "A Bug's Life", "Heat", "Casino", "Fargo", "Babe", "Jumanji", "Balto",
    "Sabrina", "Nixon", "Twister", "Ransom", "Scream", "Evita", "Mulan", "Antz",
]
GENRES = ["Animation", "Comedy", "Crime", "Drama", "Thriller", "Children's", "Romance"]


def _item_meta(n: int = 16):
    from flanrec.data.types import ItemMeta

    items = [str(i + 1) for i in range(n)]
    return items, ItemMeta(
        title={i: TITLES[k % len(TITLES)] + ("" if k < len(TITLES) else f" {k}")
               for k, i in enumerate(items)},
        year={i: str(1990 + k % 9) for k, i in enumerate(items)},
        categories={i: [GENRES[k % len(GENRES)], GENRES[(3 * k + 1) % len(GENRES)]]
                    for k, i in enumerate(items)},
    )


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """(HF dir with spiece.model, torch model, sentencepiece path)."""
    from flanrec.data import vocab as vocab_lib
    from flanrec.data.indexing import item_text

    root = tmp_path_factory.mktemp("enc")
    items, meta = _item_meta(40)
    corpus = [item_text(i, meta) for i in items] * 20
    # byte_fallback needs 256 pieces; the tiny model has 128 rows, so train without it.
    spm_path = vocab_lib.train_sentencepiece(corpus, str(root / "spm.model"), vocab_size=100,
                                             byte_fallback=False)
    assert vocab_lib.piece_count(spm_path) <= 128
    model = make_hf_t5(seed=3)
    hf_dir = root / "hf"
    model.save_pretrained(str(hf_dir))
    (hf_dir / "spiece.model").write_bytes(Path(spm_path).read_bytes())
    return hf_dir, model, spm_path


def _hf_mean_pooled(model, tokens: np.ndarray) -> np.ndarray:
    hidden = hf_encoder(model, tokens)
    mask = (tokens > 0)[..., None].astype(np.float32)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_t5_encoder_embeddings_match_hf_transformers(tiny_encoder):
    import seqio

    from flanrec.data.indexing import item_text
    from flanrec.prepare.embeddings import t5_encoder_embed_fn, tokenize_texts

    hf_dir, model, spm_path = tiny_encoder
    vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=0)
    items, meta = _item_meta(11)
    texts = [item_text(i, meta) for i in items] + ["", "Zz qq"]  # empty text: EOS only
    # batch_size 4 with 13 texts: three full batches and a padded last one.
    embed = t5_encoder_embed_fn(hf_dir, vocab, batch_size=4, max_length=12)
    got = embed(texts)
    assert got.dtype == np.float32 and got.shape == (13, 32)
    tokens = tokenize_texts(texts, vocab, max_length=12)
    longest = max(len(vocab.encode(t)) + 1 for t in texts)
    assert tokens.shape == (13, min(12, -(-longest // 8) * 8))
    lengths = (tokens > 0).sum(1)
    assert lengths.max() <= 12 and lengths[len(items)] == 1  # "" -> [EOS]
    rows_with_eos = tokens[np.arange(13), lengths - 1]
    assert (rows_with_eos == 1).all()  # EOS kept even where the text was cut
    assert tokens[0, : lengths[0] - 1].tolist() == list(vocab.encode(texts[0]))[: lengths[0] - 1]
    want = _hf_mean_pooled(model, tokens)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # Same answer however the texts are batched (padding rows never leak into real ones).
    np.testing.assert_allclose(embed(texts[:5]), got[:5], atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in got}) == 13


def test_vocabulary_that_does_not_fit_the_checkpoint_is_refused(tiny_encoder, tmp_path):
    import seqio

    from flanrec.data import vocab as vocab_lib
    from flanrec.prepare.embeddings import t5_encoder_embed_fn

    hf_dir, _, _ = tiny_encoder
    big = vocab_lib.train_sentencepiece(
        [f"word{i} thing{i * 7} other{i % 13}" for i in range(3000)],
        str(tmp_path / "big.model"), vocab_size=600)
    # Refused when the encoder is loaded (600 ids for 128 rows), before any text is embedded.
    with pytest.raises(ValueError, match="has 600 ids but the model embeds only 128"):
        t5_encoder_embed_fn(hf_dir, seqio.SentencePieceVocabulary(big, extra_ids=0))


def test_semantic_index_from_encoder_gives_unique_ids(tiny_encoder):
    import seqio

    from flanrec.data.indexing import fit_index
    from flanrec.prepare.embeddings import t5_encoder_embed_fn

    hf_dir, _, spm_path = tiny_encoder
    items, meta = _item_meta(40)
    train = {f"u{u}": [items[(u * 5 + t) % 40] for t in range(6)] for u in range(12)}
    embed = t5_encoder_embed_fn(hf_dir, seqio.SentencePieceVocabulary(spm_path, extra_ids=0))
    index = fit_index("semantic", train, items, meta, seed=0, embed_fn=embed, codebook_size=4)
    ids = [index.id_of(i) for i in items]
    assert len(set(ids)) == len(items)
    assert all(s.startswith("<a") and s.count("<") == 4 for s in ids)
    # Deterministic: the same checkpoint and seed give the same IDs.
    again = fit_index("semantic", train, items, meta, seed=0, embed_fn=embed, codebook_size=4)
    assert again.item_to_id == index.item_to_id


def test_prepare_csv_with_semantic_encoder(tiny_encoder, tmp_path):
    from flanrec.prepare.cli import cli as prepare_cli  # raises UserError
    from flanrec.prepare.cli import main

    hf_dir, _, spm_path = tiny_encoder
    rows = ["user_id,item_id,timestamp"]
    for u in range(12):
        for t in range(6):
            rows.append(f"u{u},{1 + (u * 5 + t) % 30},{1000 + 10 * t}")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    common = ["--dataset", "csv", "--raw_dir", str(tmp_path / "log.csv"), "--out", str(out),
              "--indexing", "semantic", "--families", "seq", "--offline", "--no_unseen_eval"]
    assert main(common + ["--semantic_encoder", str(hf_dir)]) == 0
    doc = json.loads((out / "prepare.json").read_text())
    src = doc["semantic_embeddings"]
    assert src["source"] == "t5_encoder" and src["checkpoint"] == str(hf_dir)
    assert src["vocabulary"] == str(hf_dir / "spiece.model") and src["dim"] == 32
    index = json.loads((out / "index" / "semantic" / "item_index.json").read_text())
    ids = [pair[1] for pair in index["items"]]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert index["options"]["embedding_source"]["source"] == "t5_encoder"
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["seq_semidx"]

    # A user-supplied .npy with an item list is recorded as such; TF-IDF only as the fallback.
    emb = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb[::-1])
    (tmp_path / "emb_items.json").write_text(json.dumps([str(i) for i in range(30, 0, -1)]))
    assert main(common + ["--semantic_embeddings", str(tmp_path / "emb.npy"),
                          "--semantic_embedding_items", str(tmp_path / "emb_items.json")]) == 0
    doc = json.loads((out / "prepare.json").read_text())
    assert doc["semantic_embeddings"] == {
        "source": "npy", "path": str(tmp_path / "emb.npy"),
        "items": str(tmp_path / "emb_items.json"), "dim": 6}
    assert main(common) == 0
    doc = json.loads((out / "prepare.json").read_text())
    assert doc["semantic_embeddings"]["source"] == "tfidf"

    with pytest.raises(UserError, match="not both"):
        prepare_cli(common + ["--semantic_encoder", str(hf_dir),
                              "--semantic_embeddings", str(tmp_path / "emb.npy")])
    with pytest.raises(UserError, match="only apply to --indexing semantic"):
        prepare_cli([a if a != "semantic" else "sequential" for a in common]
                    + ["--semantic_encoder", str(hf_dir)])
    # A checkpoint dir without spiece.model and no vocabulary anywhere: a clear error.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in hf_dir.iterdir():
        if f.name != "spiece.model":
            (bare / f.name).write_bytes(f.read_bytes())
    mp = pytest.MonkeyPatch()
    mp.delenv("FLANREC_VOCAB", raising=False)
    mp.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    mp.setenv("HOME", str(tmp_path))
    mp.delenv("HF_HOME", raising=False)
    try:
        with pytest.raises(UserError, match="--semantic_encoder_vocab"):
            prepare_cli(common + ["--semantic_encoder", str(bare)])
        with pytest.raises(UserError, match="--semantic_encoder_vocab .*nope"):
            prepare_cli(common + ["--semantic_encoder", str(bare),
                           "--semantic_encoder_vocab", str(tmp_path / "nope")])
        # ... which --semantic_encoder_vocab fixes (here: a file; a prepared dir works too).
        assert main(common + ["--semantic_encoder", str(bare),
                              "--semantic_encoder_vocab", spm_path]) == 0
        assert json.loads((out / "prepare.json").read_text())["semantic_embeddings"][
            "vocabulary"] == spm_path
        prepared = tmp_path / "earlier-prepared"  # a dir `prepare --train_vocab` wrote
        (prepared / "vocab").mkdir(parents=True)
        (prepared / "vocab" / "spm.model").write_bytes(Path(spm_path).read_bytes())
        assert main(common + ["--semantic_encoder", str(bare),
                              "--semantic_encoder_vocab", str(prepared)]) == 0
    finally:
        mp.undo()
    doc = json.loads((out / "prepare.json").read_text())
    assert doc["semantic_embeddings"]["vocabulary"] == str(prepared / "vocab" / "spm.model")
