"""The HF export's tokenizer: transformers' `AutoTokenizer` (SentencePiece on the task's
proto) and `PreTrainedTokenizerFast` (tokenizer.json) load it and give the ids of the task's
seqio vocabulary, for a vocabulary trained here the way `prepare --train_vocab` trains it
(item-ID tokens as user-defined symbols, byte fallback) and for item tokens placed on
extra-id / padding rows (`ItemTokenVocabulary`, how Flan-T5's own vocabulary gets them).
tests/test_trust2_interop.py adds generated adversarial text and a prepared data set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import seqio
import transformers

from flanrec.data import families  # noqa: F401 (registers the built-in templates)
from flanrec.data.templates import PATTERNS
from flanrec.data.vocab import ItemTokenVocabulary, train_sentencepiece
from flanrec.interop import hf, hf_tokenizer
from flanrec.model.config import get_preset
from flanrec.model.params import param_specs, unflatten

ITEM_TOKENS = [f"<c{i}>" for i in range(24)]
TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Star Wars (1977)",
          "Fargo (1996)", "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)",
          "Misérables, Les (1995)", "Amélie (2001)", "Ghost in the Shell (Kôkaku kidôtai)"]


def _items(rng: np.random.Generator, n: int) -> list[str]:
    """Collaborative-style item IDs: two or three glued tokens, e.g. '<c3><c17>'."""
    return ["".join(rng.choice(ITEM_TOKENS, size=int(rng.integers(2, 4))))
            for _ in range(n)]


def _instructions(seed: int, n: int) -> list[str]:
    """Task inputs rendered from the real templates (seq, direct, rating, binary families)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        family = ("seq", "direct", "rating", "binary")[i % 4]
        template = PATTERNS[family][i % len(PATTERNS[family])][0]
        hist = _items(rng, 5)
        fields = {"user": int(rng.integers(1, 943)), "history": ", ".join(hist),
                  "last_item": hist[-1], "last_title": TITLES[i % len(TITLES)],
                  "candidates": " ".join(_items(rng, 4)), "num_candidates": 4,
                  "item": hist[0], "title": TITLES[(i + 3) % len(TITLES)]}
        out.append(template.format_map(fields))
    return out


# Test texts: instructions of other users, IDs alone and glued to words, punctuation,
# non-ASCII (accents the vocabulary saw, and scripts it never saw).
CORPUS = _instructions(seed=99, n=24) + [
    "<c3><c17>", "<c1> <c2><c3>, <c23>; then x<c5>y?", "(<c7>) [<c8>] {<c9>}",
    "Rate 5/5: \"Toy Story\" (1995)... yes/no? 100% — maybe!",
    "Amélie (2001), Misérables, Les (1995) and Kôkaku kidôtai",
    "東京物語 (1953) 🎬", "Москва слезам не верит", "  leading, double  spaces\tand tab ",
    "fullwidth ＡＢＣ１２３ and ﬁ ligature", "<extra_id_0> sentinel <extra_id_1> spans",
    "",
]


@pytest.fixture(scope="module")
def spm_models(tmp_path_factory) -> dict[str, str]:
    """Two small SentencePiece models trained here with `train_sentencepiece` (unigram, byte
    fallback, T5 ids): with the item tokens as user-defined symbols (`prepare
    --train_vocab`), and without them (a stand-in for Flan-T5's vocabulary)."""
    root = tmp_path_factory.mktemp("spm")
    texts = _instructions(seed=0, n=400) + TITLES * 5
    return {
        "trained": train_sentencepiece(texts, str(root / "items.model"), vocab_size=600,
                                       user_defined_symbols=ITEM_TOKENS),
        "base": train_sentencepiece(texts, str(root / "base.model"), vocab_size=600),
    }


def _vocabularies(spm_models: dict[str, str]) -> dict[str, seqio.Vocabulary]:
    base = seqio.SentencePieceVocabulary(spm_models["base"]).vocab_size
    # Item tokens from the piece count upwards: over the extra ids (highest first, as
    # `token_slot_map` does) and past them onto padding rows.
    slots = {t: base + i for i, t in enumerate(ITEM_TOKENS[:20])}
    slots.update({t: base + 100 + i for i, t in enumerate(ITEM_TOKENS[20:])})
    return {"trained": seqio.SentencePieceVocabulary(spm_models["trained"], extra_ids=100),
            "slots": ItemTokenVocabulary(spm_models["base"], slots, extra_ids=100,
                                         max_rows=base + 128)}


def _export(vocab: seqio.Vocabulary, out: Path) -> Path:
    cfg = get_preset("tiny").replace(vocab_size=-(-vocab.vocab_size // 128) * 128)
    rng = np.random.default_rng(0)
    params = unflatten({k: rng.standard_normal(s).astype(np.float32)
                        for k, (s, _) in param_specs(cfg).items()})
    return hf.export_hf(cfg, params, out, vocabulary=vocab)


@pytest.mark.parametrize("kind", ["trained", "slots"])
def test_autotokenizer_gives_the_task_ids(spm_models, tmp_path, caplog, kind):
    vocab = _vocabularies(spm_models)[kind]
    with caplog.at_level(logging.WARNING, logger="flanrec.interop.hf_tokenizer"):
        out = _export(vocab, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {"spiece.model", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "generation_config.json"} <= names
    # The probe texts encode alike in both tokenizer files: nothing to warn about.
    assert not [r for r in caplog.records if r.name.startswith("flanrec.convert")]
    # tokenizer.json differs only where the tokenizers library cannot follow SentencePiece
    # (the module doc); this corpus has none of those texts.
    assert hf_tokenizer.differences(vocab, CORPUS) == []
    for cls in (transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast):
        tok = cls.from_pretrained(str(out))
        assert len(tok) == vocab.vocab_size
        for text in CORPUS:  # byte fallback (CJK, emoji) included
            ours = list(vocab.encode(text))
            theirs = tok(text, add_special_tokens=False)["input_ids"]
            assert theirs == ours, (cls.__name__, text, ours, theirs)
        # As seqio's tasks do: EOS (1) appended; pad 0.
        text = CORPUS[0]
        assert tok(text)["input_ids"] == list(vocab.encode(text)) + [1]
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        # seqio's sentinel piece is "▁<extra_id_0>": matched after a space only.
        sentinel = tok.convert_tokens_to_ids("▁<extra_id_0>")
        assert sentinel == vocab.encode("<extra_id_0>")[0]
        assert sentinel not in tok("x<extra_id_0>", add_special_tokens=False)["input_ids"]
        if kind == "slots":  # item tokens on the extra-id rows
            assert tok.convert_tokens_to_ids("<c21>") == vocab.token_slots["<c21>"]


def test_slot_tokens_need_the_whole_proto(spm_models, tmp_path):
    """Why the export writes tokenizer.model (and tokenizer.json) next to spiece.model: item
    tokens on extra-id / padding rows are not pieces of spiece.model, so a tokenizer built
    from spiece.model alone cannot know them."""
    import sentencepiece as spm

    vocab = _vocabularies(spm_models)["slots"]
    out = _export(vocab, tmp_path / "export")
    text = "User 7 watched <c3><c21>"
    whole = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    alone = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    assert whole.encode(text) == list(vocab.encode(text)) != alone.encode(text)


def test_layout_problems_are_named(tmp_path):
    """A SentencePiece model trained with default ids (unk=0, bos=1, eos=2)."""
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(_instructions(seed=1, n=100)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"),
                                   vocab_size=200, minloglevel=2)
    vocab = seqio.SentencePieceVocabulary(str(tmp_path / "m.model"))
    problems = hf_tokenizer.layout_problems(vocab)
    assert any("not T5's 0/1/2" in p for p in problems)
