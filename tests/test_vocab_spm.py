"""flanrec.data.vocab: trained SentencePiece models, item tokens on reserved rows, lookup.

The Flan-T5 SentencePiece model is not available offline, so a small model trained here plays
its part: `ItemTokenVocabulary` only relies on "a SentencePiece model with N pieces whose
rows N.. are free", which holds for both.
"""

from __future__ import annotations

import json
import pickle

import gin
import pytest
import seqio
import tensorflow as tf

from flanrec.data import vocab as V  # noqa: E402
from flanrec.data.indexing.slots import token_slot_map  # noqa: E402

CORPUS = [
    f"User {u} watched Toy Story (1995), GoldenEye (1995) and movie {u * 7 % 1682}; "
    f"rating {u % 5 + 1} stars. Will they like Heat? yes"
    for u in range(1, 2000)
]
ITEM_TOKENS = [f"<c{i}>" for i in range(40)] + [f"<a{i}>" for i in range(70)]


def _pieces(path: str) -> int:
    """Piece count of the model file itself (seqio's tokenizer also counts extra ids)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=path).GetPieceSize()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small SentencePiece model standing in for Flan-T5's (no item tokens inside)."""
    path = str(tmp_path_factory.mktemp("spm") / "base.model")
    return V.train_sentencepiece(CORPUS, path, vocab_size=400)


def test_trained_model_has_t5_ids_and_single_id_item_tokens(tmp_path):
    path = V.train_sentencepiece(CORPUS, str(tmp_path / "spm.model"), vocab_size=500,
                                 user_defined_symbols=["<c17>", "<c3>", "<c17>"])
    vocab = seqio.SentencePieceVocabulary(path, extra_ids=10)
    sp = vocab.tokenizer
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert vocab.eos_id == 1 and vocab.pad_id == 0
    c17 = sp.piece_to_id("<c17>")
    assert sp.id_to_piece(c17) == "<c17>" and c17 != vocab.unk_id
    text = "history <c17><c3> <c17> then ünïcödé Ω"  # byte fallback: nothing is lost
    ids = vocab.encode(text)
    assert c17 in ids and vocab.unk_id not in ids
    assert vocab.decode(ids) == text
    import sentencepiece as spm

    assert vocab.vocab_size == spm.SentencePieceProcessor(model_file=path).GetPieceSize() + 10
    assert not (tmp_path / "spm.model.tmp").exists()


def test_train_rejects_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="no non-empty"):
        V.train_sentencepiece(["", ""], str(tmp_path / "x.model"))


def test_item_tokens_take_their_slots_and_round_trip(base_model):
    plain = seqio.SentencePieceVocabulary(base_model, extra_ids=100)
    base = _pieces(base_model)
    # Keep <extra_id_0> and <extra_id_1> for span corruption; tokens go from id `base` up.
    slots = token_slot_map(ITEM_TOKENS, vocab_size=base + 128, sp_size=base,
                           reserved_extra_ids=[0, 1])
    vocab = V.ItemTokenVocabulary(base_model, slots, extra_ids=100, max_rows=base + 128)
    assert slots["<c0>"] == base and max(slots.values()) == base + len(ITEM_TOKENS) + 1
    assert vocab.vocab_size == max(slots.values()) + 1

    text = "User 3 watched <c17><a5> <c3><a69> next: <c39>"
    ids = vocab.encode(text)
    for tok in ("<c17>", "<a5>", "<c3>", "<a69>", "<c39>"):
        assert slots[tok] in ids, tok
    assert vocab.decode(ids) == text
    # TF and Python tokenizers agree (seqio tokenizes in TF, the evaluator decodes in Python).
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == text
    # Extra ids no token took keep seqio's ids.
    for k in (0, 1):
        assert vocab.encode(f"a <extra_id_{k}>")[-1] == plain.encode(f"a <extra_id_{k}>")[-1]
    # Picklable (gin deep-copies vocabularies) and equality includes the slot map.
    again = pickle.loads(pickle.dumps(vocab))
    assert again == vocab and again.encode(text) == ids
    assert vocab != plain
    other = dict(slots)
    other["<c0>"], other["<c1>"] = slots["<c1>"], slots["<c0>"]
    assert V.ItemTokenVocabulary(base_model, other, extra_ids=100) != vocab


def test_item_tokens_beyond_the_reserved_rows_are_refused(base_model):
    base = _pieces(base_model)
    slots = {f"<c{i}>": base + i for i in range(130)}
    vocab = V.ItemTokenVocabulary(base_model, slots, extra_ids=100, max_rows=base + 128)
    with pytest.raises(ValueError, match="embedding rows"):
        vocab.encode("x")


def test_slot_map_for_another_vocabulary_is_refused(base_model):
    vocab = V.ItemTokenVocabulary(base_model, {"<c1>": 32000, "<c0>": 5}, extra_ids=100,
                                  max_rows=None)
    with pytest.raises(ValueError, match="another vocabulary"):
        vocab.encode("x")


def test_get_vocabulary_plain_list_and_prepared_dir(base_model, tmp_path, monkeypatch):
    monkeypatch.setenv(V.VOCAB_ENV, base_model)
    plain = V.get_vocabulary()
    assert type(plain) is seqio.SentencePieceVocabulary
    assert plain == seqio.SentencePieceVocabulary(base_model, extra_ids=100)

    listed = V.get_vocabulary(item_tokens=["<c0>", "<c1>"], max_rows=None)
    assert isinstance(listed, V.ItemTokenVocabulary)
    base = _pieces(base_model)
    assert listed.token_slots == {"<c0>": base, "<c1>": base + 1}

    # A prepared dir's slot map (written by the indexer) is read from DIR/index/.
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "token_slots.json").write_text(
        json.dumps({"tokens": {"<c0>": base + 5, "<c1>": base + 6}}))
    from_dir = V.get_vocabulary(item_tokens=str(tmp_path), max_rows=None)
    assert from_dir.encode("<c1>")[-1] == base + 6
    (tmp_path / "index" / "token_slots.json").write_text('{"tokens": ["<c0>"]}')
    with pytest.raises(ValueError, match="token_slots.json"):
        V.get_vocabulary(item_tokens=str(tmp_path))


def test_get_vocabulary_from_gin_and_hf_style_dir(base_model, tmp_path, monkeypatch):
    monkeypatch.delenv(V.VOCAB_ENV, raising=False)
    hf_dir = tmp_path / "flan-t5-small"
    hf_dir.mkdir()
    (hf_dir / "spiece.model").write_bytes(open(base_model, "rb").read())
    with gin.unlock_config():
        gin.bind_parameter("flanrec.data.vocab.get_vocabulary.path", str(hf_dir))
    try:
        vocab = V.get_vocabulary()
        assert vocab.sentencepiece_model_file == str(hf_dir / "spiece.model")
    finally:
        gin.clear_config()


def test_missing_vocabulary_error_names_every_option(tmp_path, monkeypatch):
    monkeypatch.delenv(V.VOCAB_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HOME", raising=False)
    with pytest.raises(V.VocabularyNotFoundError) as err:
        V.get_vocabulary()
    msg = str(err.value)
    for option in (V.VOCAB_ENV, "get_vocabulary.path", V.FLAN_T5_GCS_VOCAB, "--train_vocab"):
        assert option in msg
    with pytest.raises(V.VocabularyNotFoundError, match="nope.model"):
        V.get_vocabulary(str(tmp_path / "nope.model"))


def test_prepared_dir_prefers_its_trained_vocabulary(base_model, tmp_path, monkeypatch):
    monkeypatch.delenv(V.VOCAB_ENV, raising=False)
    (tmp_path / "vocab").mkdir()
    trained = V.train_sentencepiece(CORPUS, str(tmp_path / "vocab" / "spm.model"),
                                    vocab_size=400, user_defined_symbols=["<c0>"])
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "token_slots.json").write_text('{"tokens": {"<c0>": 32000}}')
    vocab = V.vocabulary_for_prepared(str(tmp_path))
    # The trained model holds <c0> as a piece: a plain vocabulary, no slot remapping.
    assert type(vocab) is seqio.SentencePieceVocabulary
    assert vocab.sentencepiece_model_file == trained
    # An explicit FLANREC_VOCAB wins over the trained one.
    monkeypatch.setenv(V.VOCAB_ENV, base_model)
    assert V.vocabulary_for_prepared(str(tmp_path)).sentencepiece_model_file == base_model


def test_too_small_vocab_size_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="raise vocab_size"):
        V.train_sentencepiece(CORPUS, str(tmp_path / "x.model"), vocab_size=100)
    assert not (tmp_path / "x.model").exists()


def test_gin_macro_sets_the_vocabulary(base_model, monkeypatch):
    """A run's gin file can name the model with a macro, read when tasks are imported."""
    monkeypatch.delenv(V.VOCAB_ENV, raising=False)
    gin.parse_config(f"FLANREC_VOCAB = '{base_model}'")
    try:
        assert V.get_vocabulary().sentencepiece_model_file == base_model
    finally:
        gin.clear_config()
