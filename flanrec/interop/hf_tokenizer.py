"""The tokenizer files of an HF export, so `AutoTokenizer` gives the ids the model was trained on.

transformers builds `T5Tokenizer` (in 5.x the same class as `T5TokenizerFast`) from
`tokenizer.json` when there is one, else by converting `spiece.model`. The export writes a
`tokenizer.json` holding the whole vocabulary as seqio sees it, because `spiece.model` does
not know the item tokens that `ItemTokenVocabulary` put on extra-id and padding rows, and
because the conversion depends on the transformers version and on tokenizer_config.json
(transformers 5.24 given only `tokenizer_class` turns SentencePiece's user-defined pieces,
our item-ID tokens such as `<c17>`, into added tokens that split the text first and lose
the `▁` SentencePiece puts before ` <c17>`). In `tokenizer.json` the item tokens are plain
Unigram pieces with the SentencePiece model's score (0), which T5's pre-tokenizer
(whitespace split, then `▁` prepended) cuts exactly where SentencePiece does. So:

    spiece.model              the task's SentencePiece model (what seqio and HF's slow path read)
    tokenizer.json            the whole vocabulary as seqio sees it: pieces, extra ids, item
                              tokens on their rows; NFKC charsmap; T5's pre-tokenizer
    tokenizer_config.json     T5Tokenizer, special tokens, the extra ids still free
    special_tokens_map.json

What cannot agree, and is said at export time (`differences`, `warn_differences`):

* byte fallback: a vocabulary trained with `byte_fallback` (what `prepare --train_vocab`
  does) encodes characters it never saw as UTF-8 byte pieces; transformers' T5Tokenizer
  always builds its Unigram model without byte fallback and gives `<unk>` (id 2) instead.
* a sentinel `<extra_id_N>` glued to the preceding text: seqio's piece is `▁<extra_id_N>`, so
  it only matches after a space, while transformers matches the token anywhere.
* SentencePiece models that keep extra whitespace or add no dummy prefix, or whose pad / eos
  / unk ids are not T5's 0 / 1 / 2: transformers' T5 pre-tokenizer assumes both.

The JSON is written by hand (the `tokenizers` format, version 1.0) so exporting needs neither
transformers nor tokenizers; tests load it with the installed transformers.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MODEL_MAX_LENGTH = 512  # what Flan-T5's own tokenizer_config.json says

_EXTRA_ID = re.compile(r"^▁?<extra_id_(\d+)>$")
_EXTRA_ID_IN_TEXT = re.compile(r"<extra_id_(\d+)>")
# SentencePiece piece types (sentencepiece_model.proto)
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6

# Probe sentences for the export-time check, next to the vocabulary's own item tokens:
# instructions like the tasks', punctuation, non-ASCII text of several scripts.
PROBES = (
    "Here is what user 42 watched: Star Wars (1977); Fargo (1996). Which movie next?",
    "Rate 5/5 or 1/5: \"Toy Story\" (1995)... yes/no?",
    "Amélie (2001) — naïve café, Pokémon: crème brûlée!",
    "東京物語 (1953), 千と千尋の神隠し, Москва, 🎬 emoji",
)


def _proto(vocab: Any) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.FromString(vocab.sp_model)


def _hf_piece(piece: str) -> str:
    m = _EXTRA_ID.match(piece)
    return f"<extra_id_{m.group(1)}>" if m else piece


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
    """The export-time check corpus: `PROBES` plus sentences built from item tokens."""
    tokens = item_tokens(vocab, limit=4)
    texts = list(PROBES)
    if tokens:
        a, b = tokens[0], tokens[-1]
        texts.insert(0, f"User 7 watched {a} {b}{a}, then {b}; what next? {a}")
    return texts


def tokenizer_files(vocab: Any) -> dict[str, str]:
    """name -> text of `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`
    for the seqio SentencePiece vocabulary `vocab` (spiece.model is copied separately)."""
    proto = _proto(vocab)
    pieces = [(_hf_piece(p.piece), float(p.score), p.type) for p in proto.pieces]
    specials = [(i, name) for i, (name, _, kind) in enumerate(pieces)
                if kind in (_UNKNOWN, _CONTROL)]
    sentinels = [(i, name) for i, (name, _, _) in enumerate(pieces) if _EXTRA_ID.match(name)]
    sentinels.sort(key=lambda x: int(_EXTRA_ID.match(x[1]).group(1)))
    spec = proto.trainer_spec
    names = {"pad": _piece_name(proto, spec.pad_id, "<pad>"),
             "eos": _piece_name(proto, spec.eos_id, "</s>"),
             "unk": _piece_name(proto, spec.unk_id, "<unk>")}
    added = [_added_token(i, name) for i, name in sorted(specials + sentinels)]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                 "split": True}
    eos = names["eos"]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": ({"type": "Precompiled",
                        "precompiled_charsmap": base64.b64encode(charsmap).decode()}
                       if charsmap else None),
        "pre_tokenizer": {"type": "Sequence",
                          "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {eos: {"id": eos, "ids": [spec.eos_id], "tokens": [eos]}}},
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": spec.unk_id,
                  "vocab": [[name, score] for name, score, _ in pieces],
                  "byte_fallback": bool(spec.byte_fallback)},
    }
    sentinel_names = [name for _, name in sentinels]
    special_map = {"eos_token": names["eos"], "unk_token": names["unk"],
                   "pad_token": names["pad"], "additional_special_tokens": sentinel_names}
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        **special_map,
        # The sentinels still free (item tokens take the highest extra ids first), so
        # T5Tokenizer's own `extra_ids` bookkeeping agrees with the list above.
        "extra_ids": len(sentinel_names),
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in added},
    }
    return {TOKENIZER_FILE: json.dumps(tokenizer, ensure_ascii=False) + "\n",
            TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            SPECIAL_TOKENS_FILE: json.dumps(special_map, indent=2, ensure_ascii=False) + "\n"}


def _piece_name(proto: Any, index: int, default: str) -> str:
    return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else default


def _added_token(index: int, content: str) -> dict[str, Any]:
    return {"id": index, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def layout_problems(vocab: Any) -> list[str]:
    """Settings of the SentencePiece model that transformers' T5Tokenizer cannot follow."""
    proto = _proto(vocab)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if (spec.pad_id, spec.eos_id, spec.unk_id) != (0, 1, 2):
        problems.append(f"pad/eos/unk ids are {spec.pad_id}/{spec.eos_id}/{spec.unk_id}, "
                        "not T5's 0/1/2 (T5Tokenizer hard-codes unk = 2)")
    if not norm.add_dummy_prefix:
        problems.append("the SentencePiece model adds no dummy prefix; T5Tokenizer always "
                        "puts '▁' before the first word")
    return problems


def differences(vocab: Any, texts: Iterable[str]) -> list[tuple[str, str]]:
    """(text, why) for each text transformers' T5Tokenizer will encode differently from
    `vocab` (seqio), as far as the causes in the module doc predict."""
    proto = _proto(vocab)
    byte_ids = {i for i, p in enumerate(proto.pieces) if p.type == _BYTE}
    sentinel_ids = {i for i, p in enumerate(proto.pieces) if _EXTRA_ID.match(p.piece)}
    keeps_spaces = not proto.normalizer_spec.remove_extra_whitespaces
    out = []
    for text in texts:
        ids = list(vocab.encode(text))
        if byte_ids.intersection(ids):
            first = next(i for i in ids if i in byte_ids)
            out.append((text, f"byte-fallback piece {proto.pieces[first].piece} (seqio) where "
                              "transformers' T5Tokenizer, which has no byte fallback, gives "
                              "<unk>"))
            continue
        in_text = len(_EXTRA_ID_IN_TEXT.findall(text))
        if in_text != sum(i in sentinel_ids for i in ids):
            out.append((text, "a sentinel <extra_id_N> not preceded by a space: seqio splits "
                              "it into characters, transformers matches the token"))
            continue
        if keeps_spaces and (text != " ".join(text.split())):
            out.append((text, "leading, trailing or repeated whitespace, which this "
                              "SentencePiece model keeps and T5Tokenizer drops"))
    return out


def warn_differences(vocab: Any, texts: Sequence[str], where: str) -> list[str]:
    """Log (warning) what transformers will not tokenize like seqio; returns the messages."""
    messages = [f"{where}: {p}" for p in layout_problems(vocab)]
    found = differences(vocab, texts)
    if found:
        text, why = found[0]
        messages.append(f"{where}: transformers' tokenizer will not give the model's ids for "
                        f"{len(found)} of {len(texts)} probe texts; first: {text!r}: {why}")
    for m in messages:
        log.warning("%s", m)
    return messages


__all__ = ["PROBES", "SPECIAL_TOKENS_FILE", "TOKENIZER_CONFIG_FILE", "TOKENIZER_FILE",
           "differences", "item_tokens", "layout_problems", "probe_texts", "tokenizer_files",
           "warn_differences"]
