"""The tokenizer files of an HF export, so transformers gives the ids the model was trained on.

seqio tokenizes with SentencePiece on the task vocabulary's model proto (`vocab.sp_model`: the
SentencePiece model plus seqio's extra ids and flanrec's item-ID tokens as user-defined
pieces). An export carries that proto twice:

    tokenizer.model           the whole proto, read by the SentencePiece library itself;
                              tokenizer_config.json names transformers' `SentencePieceBackend`
                              for it, so `AutoTokenizer.from_pretrained(export)` (transformers
                              5) runs the very encoder seqio runs: every text gets seqio's ids,
                              by construction
    tokenizer.json            the same vocabulary for the `tokenizers` library (fast
                              tokenizers, serving stacks that read only tokenizer.json), built
                              here to follow SentencePiece step by step (below)
    tokenizer_config.json     the class, special tokens, EOS appended as seqio's tasks do,
                              `split_special_tokens` (seqio reads "</s>" in text as characters)
    special_tokens_map.json
    spiece.model              the SentencePiece model alone (flanrec and seqio read it with
                              flanrec_vocabulary.json; written by flanrec.interop.vocabulary)

How tokenizer.json mirrors SentencePiece (sentencepiece/src/normalizer.cc, unigram_model.cc):

* normalizer: the proto's precompiled charsmap, then SentencePiece's whitespace rules on the
  normalized text (runs of spaces collapsed, leading and trailing ones dropped, the dummy
  prefix `▁`, spaces escaped to `▁`, trailing `▁` dropped) when the proto asks for them.
* no pre-tokenizer split on whitespace or punctuation: SentencePiece runs one Viterbi over the
  whole normalized sentence, and so does this Unigram model. The only split keeps names that
  SentencePiece never matches in text (control pieces such as `</s>`, `<unk>`, byte pieces
  `<0x41>`) from being matched: it cuts after their first character.
* model: Unigram with the proto's scores; user-defined pieces (item tokens, extra ids) get the
  score SentencePiece's Viterbi gives them (`bytes * max(FLT_MIN, max normal score) - 0.1`);
  pieces never matched get the lowest normal score, so the `<unk>` penalty (lowest score
  - 10) is SentencePiece's; byte fallback as in the proto.
* extra ids keep seqio's piece names (`▁<extra_id_0>`): seqio matches them only after a space.

What the `tokenizers` library cannot follow: its `Precompiled` normalizer applies the
charsmap per grapheme cluster (first match, whole cluster replaced), while SentencePiece takes
the longest match left to right. The two agree on precomposed text (what NFC text, the usual
form, holds) and differ on some combining-mark sequences (decomposed "ộ" = o + U+0302 +
U+0323, halfwidth katakana with a voiced mark "ｶﾞ"). And where two segmentations score the
same (digits "222" as "22"+"2" or "2"+"22"), SentencePiece's float32 sums break the tie one
way and the library's float64 sums may break it the other. `differences` finds such texts by
encoding them with both; the export checks natural probe texts and warns only if one differs.
transformers' `T5Tokenizer`/`T5TokenizerFast` rebuild their own pipeline from the vocabulary
(whitespace split, no byte fallback): load the export with `AutoTokenizer`.

The JSON is written by hand (the `tokenizers` format, version 1.0): exporting needs neither
transformers nor tokenizers; the check uses `tokenizers` when it is installed.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_MODEL_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MODEL_MAX_LENGTH = 512  # what Flan-T5's own tokenizer_config.json says
# transformers 5's SentencePiece-backed tokenizer class (tokenization_utils_sentencepiece).
TOKENIZER_CLASS = "SentencePieceBackend"

_EXTRA_ID = re.compile(r"^▁?<extra_id_(\d+)>$")
# SentencePiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM = 1  # TrainerSpec.ModelType
_FLT_MIN = struct.unpack("<f", struct.pack("<I", 0x00800000))[0]  # C's FLT_MIN

# Natural sentences for the export-time check, next to sentences with the vocabulary's item
# tokens: instructions like the tasks', apostrophes, semicolons, brackets, accents, several
# scripts, emoji, whitespace runs.
PROBES = (
    "Here is what user 42 watched: Star Wars (1977); Fargo (1996). Which movie next?",
    "Predict user 7's rating of 313 (Titanic (1997)) on a scale from 1 to 5; semicolons; "
    "don't.",
    "Rate 5/5 or 1/5: \"Toy Story\" (1995)... yes/no? 100% — maybe! ~ [brackets] {braces}",
    "Amélie (2001) — naïve café, Pokémon: crème brûlée! Ünïcödé, Misérables, Les (1995)",
    "東京物語 (1953), 千と千尋の神隠し, Москва, 🎬 emoji",
    "  leading, double  spaces\tand a tab, fullwidth ＡＢＣ１２３ and the ﬁ ligature ",
)


def _proto(vocab: Any) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.FromString(vocab.sp_model)


def item_tokens(vocab: Any, limit: int | None = None) -> list[str]:
    """User-defined pieces that are not sentinels or padding rows: the item-ID tokens."""
    out = []
    for p in _proto(vocab).pieces:
        if p.type == _USER_DEFINED and not _EXTRA_ID.match(p.piece) and not p.piece.startswith(
                "<flanrec_unused_"):
            out.append(p.piece)
            if limit is not None and len(out) >= limit:
                break
    return out


def probe_texts(vocab: Any) -> list[str]:
    """The export-time check corpus: `PROBES`, plus natural sentences with item tokens (alone,
    glued, after punctuation) and an extra id after a space."""
    texts = list(PROBES)
    # As rendered text shows them: a piece "▁14" is the word "14" after a space.
    tokens = [t.replace("▁", " ").strip() for t in item_tokens(vocab, limit=4)]
    tokens = [t for t in tokens if t]
    if tokens:
        a, b = tokens[0], tokens[-1]
        texts += [f"User 7 watched {a} {b}{a}, then {b}; what next? {a}",
                  f"Candidates: ({a}{b}) [{b}] {{{a}}}, user 12's pick: {b}."]
    extra = [p.piece for p in _proto(vocab).pieces if _EXTRA_ID.match(p.piece)]
    if extra:
        texts.append(f"Fill in: the movie {extra[0].lstrip('▁')} was released in 1995.")
    return texts


def _onig_escape(text: str) -> str:
    """`text` as a literal in an Oniguruma regex (the engine of `tokenizers`)."""
    return "".join(c if c.isalnum() or not c.isascii() else "\\" + c for c in text)


def _never_matched(proto: Any) -> list[str]:
    return [p.piece for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL, _UNUSED, _BYTE)]


def _scores(proto: Any) -> list[float]:
    """Each piece's score as SentencePiece's Viterbi uses it (see the module doc)."""
    normal = [p.score for p in proto.pieces if p.type == _NORMAL]
    low = min(normal) if normal else 0.0
    high = max([_FLT_MIN, *normal])
    out = []
    for p in proto.pieces:
        if p.type == _NORMAL:
            out.append(float(p.score))
        elif p.type == _USER_DEFINED:
            out.append(len(p.piece.encode()) * high - 0.1)
        else:
            out.append(float(low))
    return out


def tokenizer_json(vocab: Any) -> dict[str, Any]:
    """The `tokenizers` serialization of `vocab`'s SentencePiece proto (see the module doc)."""
    import base64

    proto = _proto(vocab)
    norm, spec = proto.normalizer_spec, proto.trainer_spec
    steps: list[dict[str, Any]] = []
    if norm.precompiled_charsmap:
        steps.append({"type": "Precompiled", "precompiled_charsmap":
                      base64.b64encode(norm.precompiled_charsmap).decode()})
    if norm.remove_extra_whitespaces:
        steps += [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
                  {"type": "Replace", "pattern": {"Regex": "\\A "}, "content": ""}]
    if norm.add_dummy_prefix:
        steps.append({"type": "Prepend", "prepend": "▁"})
    if norm.escape_whitespaces:
        steps.append({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
    if norm.remove_extra_whitespaces:  # SentencePiece drops trailing ▁, escaped or typed
        steps.append({"type": "Replace", "pattern": {"Regex": "▁+\\z"}, "content": ""})
    by_first: dict[str, list[str]] = {}
    for name in _never_matched(proto):
        if len(name) > 1:
            by_first.setdefault(name[0], []).append(name[1:])
    cuts = "|".join(f"{_onig_escape(first)}(?=" + "|".join(_onig_escape(r) for r in sorted(rest))
                    + ")" for first, rest in sorted(by_first.items()))
    pieces = proto.pieces
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, p in enumerate(pieces) if p.type in (_UNKNOWN, _CONTROL)]
    eos = pieces[spec.eos_id].piece if 0 <= spec.eos_id < len(pieces) else "</s>"
    seq_a, seq_b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}
    end = {"SpecialToken": {"id": eos, "type_id": 0}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": steps},
        "pre_tokenizer": ({"type": "Split", "pattern": {"Regex": cuts},
                           "behavior": "MergedWithPrevious", "invert": False} if cuts else None),
        "post_processor": {"type": "TemplateProcessing", "single": [seq_a, end],
                           "pair": [seq_a, end, seq_b, end],
                           "special_tokens": {eos: {"id": eos, "ids": [spec.eos_id],
                                                    "tokens": [eos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1 if norm.add_dummy_prefix else 0,
             "stop": 0}]},
        "model": {"type": "Unigram", "unk_id": spec.unk_id,
                  "vocab": [[p.piece, s] for p, s in zip(pieces, _scores(proto), strict=True)],
                  "byte_fallback": bool(spec.byte_fallback)},
    }


def tokenizer_files(vocab: Any) -> dict[str, str | bytes]:
    """name -> content of `tokenizer.model`, `tokenizer.json`, `tokenizer_config.json` and
    `special_tokens_map.json` for the seqio SentencePiece vocabulary `vocab` (spiece.model is
    written by `flanrec.interop.vocabulary`)."""
    proto = _proto(vocab)
    spec = proto.trainer_spec

    def name(index: int, default: str) -> str:
        return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else default

    special_map = {"eos_token": name(spec.eos_id, "</s>"), "unk_token": name(spec.unk_id, "<unk>"),
                   "pad_token": name(spec.pad_id, "<pad>")}
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": MODEL_MAX_LENGTH,
        **special_map,
        "special_tokens_pattern": "eos",  # EOS appended, as seqio's tasks do
        "split_special_tokens": True,  # "</s>" typed in text is characters, as in seqio
        "legacy": True,  # SentencePiece's own dummy prefix, untouched
        "clean_up_tokenization_spaces": False,
    }
    return {TOKENIZER_MODEL_FILE: bytes(vocab.sp_model),
            TOKENIZER_FILE: json.dumps(tokenizer_json(vocab), ensure_ascii=False) + "\n",
            TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            SPECIAL_TOKENS_FILE: json.dumps(special_map, indent=2, ensure_ascii=False) + "\n"}


def layout_problems(vocab: Any) -> list[str]:
    """Settings of the SentencePiece proto that the export cannot follow: T5's special ids
    (everywhere), and what tokenizer.json cannot mirror (tokenizer.model, read by SentencePiece
    itself, follows all of those)."""
    proto = _proto(vocab)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if (spec.pad_id, spec.eos_id, spec.unk_id) != (0, 1, 2):
        problems.append(f"pad/eos/unk ids are {spec.pad_id}/{spec.eos_id}/{spec.unk_id}, "
                        "not T5's 0/1/2 (seqio pads with 0, the export's config.json and "
                        "generation_config.json say pad 0, EOS 1)")
    if spec.model_type != _UNIGRAM:
        problems.append(f"the SentencePiece model type is {spec.model_type}, not unigram; "
                        "tokenizer.json holds a unigram model")
    if spec.treat_whitespace_as_suffix:
        problems.append("the SentencePiece model treats whitespace as a suffix")
    short = [n for n in _never_matched(proto) if len(n) == 1]
    if short:
        problems.append(f"control pieces of one character {short[:3]} would be matched in text")
    if not norm.remove_extra_whitespaces and norm.add_dummy_prefix:
        problems.append("the model keeps extra whitespace: a text that normalizes to nothing "
                        "gets SentencePiece's lone '▁', not tokenizers' empty encoding")
    return problems


def differences(vocab: Any, texts: Iterable[str]) -> list[tuple[str, str]]:
    """(text, why) for each text that tokenizer.json (read by the `tokenizers` library)
    encodes differently from `vocab` (seqio): each text is encoded by both. Empty when
    `tokenizers` is not installed."""
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - transformers installs it
        return []
    texts = list(texts)
    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(vocab)))
    tok.encode_special_tokens = True
    out = []
    sp = vocab.tokenizer
    proto = _proto(vocab)
    scores = _scores(proto)
    byte_ids = {i for i, p in enumerate(proto.pieces) if p.type == _BYTE}

    def total(ids: list[int]) -> float:
        return sum(scores[i] for i in ids if i not in byte_ids and i < len(scores))

    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        ours = [int(i) for i in vocab.encode(text)]
        if enc.ids == ours:
            continue
        if tok.normalizer.normalize_str(text) != sp.normalize(text):
            why = ("the tokenizers library normalizes it otherwise (its charsmap normalizer "
                   "works per grapheme cluster, SentencePiece by longest match)")
        elif abs(total(ours) - total(enc.ids)) <= 1e-4 * max(1.0, abs(total(ours))):
            why = ("two segmentations of equal score, a tie SentencePiece breaks by its "
                   "float32 rounding and tokenizers (float64) the other way")
        else:
            first = next((k for k, (a, b) in enumerate(zip(ours, enc.ids, strict=False)) if a != b),
                         min(len(ours), len(enc.ids)))
            why = f"the ids differ from position {first} on"
        out.append((text, why))
    return out


def warn_differences(vocab: Any, texts: Sequence[str], where: str) -> list[str]:
    """Log (warning) what tokenizer.json will not encode like seqio; returns the messages."""
    messages = [f"{where}: {p}" for p in layout_problems(vocab)]
    found = differences(vocab, texts)
    if found:
        text, why = found[0]
        messages.append(f"{where}: the tokenizers library reading {TOKENIZER_FILE} gives other "
                        f"ids than the model's for {len(found)} of {len(texts)} probe texts; "
                        f"first: {text!r}: {why} (AutoTokenizer reads {TOKENIZER_MODEL_FILE} "
                        "and gives the model's ids)")
    for m in messages:
        log.warning("%s", m)
    return messages


__all__ = ["PROBES", "SPECIAL_TOKENS_FILE", "TOKENIZER_CLASS", "TOKENIZER_CONFIG_FILE",
           "TOKENIZER_FILE", "TOKENIZER_MODEL_FILE", "differences", "item_tokens",
           "layout_problems", "probe_texts", "tokenizer_files", "tokenizer_json",
           "warn_differences"]
