"""The vocabulary a checkpoint carries, so its token ids can be turned back into text.

A model's ids mean nothing without the exact vocabulary its tasks were tokenized with: the
SentencePiece model *and* how seqio extended it (extra ids; item-ID tokens placed on reserved
rows by `flanrec.data.vocab.ItemTokenVocabulary`). Both travel as two files next to the
weights — in a training MODEL_DIR (written by `flanrec.train`), a params-only checkpoint and
an HF export (written by `flanrec.convert`):

    spiece.model              the SentencePiece model itself (HF's file name for it)
    flanrec_vocabulary.json   {"extra_ids": 100, "token_slots": {"<c17>": 32017, ...},
                               "max_rows": 32128}

Without the JSON file (a Hugging Face Flan-T5 directory) a `spiece.model` means seqio's
default: 100 extra ids, or the `extra_ids` of the directory's `tokenizer_config.json`.

Paths may be local or remote (`tf.io.gfile`), as seqio's own vocabularies are.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from flanrec.data import layout
from flanrec.files import storage

log = logging.getLogger(__name__)

SPIECE_FILE = "spiece.model"
VOCABULARY_FILE = "flanrec_vocabulary.json"
_FORMAT = "flanrec.vocabulary"
_STEP_DIR = re.compile(r"^checkpoint_\d+$")


class VocabularyMismatchError(ValueError):
    """A MODEL_DIR already carries a different vocabulary than the one being written."""


def describe(vocab: Any) -> dict[str, Any] | None:
    """The JSON description of a seqio vocabulary, or None if it cannot be carried.

    Only SentencePiece vocabularies with seqio's default extra-id order and no normalizer
    overrides are described: anything else could not be rebuilt from the two files."""
    import seqio

    if not isinstance(vocab, seqio.SentencePieceVocabulary):
        return None
    if getattr(vocab, "_normalizer_spec_overrides", None) is not None or not getattr(
            vocab, "_reverse_extra_ids", True):
        return None
    doc: dict[str, Any] = {"format": _FORMAT, "version": 1, "extra_ids": int(vocab.extra_ids),
                           "token_slots": {}, "max_rows": None}
    # flanrec.data.vocab.ItemTokenVocabulary, recognised without importing that module: it
    # registers gin configurables, which a job that has locked its config cannot do.
    if isinstance(getattr(vocab, "token_slots", None), dict):
        doc["token_slots"] = dict(vocab.token_slots)
        doc["max_rows"] = getattr(vocab, "_max_rows", None)
    return doc


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def write_vocabulary(vocab: Any, out_dir: str | os.PathLike[str]) -> bool:
    """Write `spiece.model` + `flanrec_vocabulary.json` for `vocab` into `out_dir`.

    Returns False (and writes nothing) when `vocab` cannot be carried (see `describe`). When
    `out_dir` already carries a vocabulary, it must be the same one: a MODEL_DIR whose
    checkpoints were trained on other ids is refused with VocabularyMismatchError rather than
    silently relabelled. Each file is written under a temporary name and then renamed."""
    doc = describe(vocab)
    if doc is None:
        log.warning("vocabulary %s cannot be stored with the checkpoint (not a plain "
                    "SentencePiece vocabulary); text in/out will need --vocab", vocab)
        return False
    gfile = _gfile()
    out = os.fspath(out_dir)
    with gfile.GFile(vocab.sentencepiece_model_file, "rb") as f:
        model = f.read()
    spm_path, json_path = os.path.join(out, SPIECE_FILE), os.path.join(out, VOCABULARY_FILE)
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if gfile.exists(spm_path):
        with gfile.GFile(spm_path, "rb") as f:
            same_model = f.read() == model
        old = read_description(out)
        if not same_model or (old is not None and _comparable(old) != _comparable(doc)):
            raise VocabularyMismatchError(
                f"{spm_path}: this directory already carries another vocabulary than the "
                f"task's ({vocab.sentencepiece_model_file}, {doc['extra_ids']} extra ids, "
                f"{len(doc['token_slots'])} item tokens on reserved rows); its checkpoints' "
                "token ids would change meaning. Use a new MODEL_DIR.")
        if old is not None:
            return True
    gfile.makedirs(out)

    for path, data in ((spm_path, model), (json_path, text.encode())):
        storage.write_atomic(path, data)  # the mode a plain open() gives, as for every file
    return True


def _comparable(doc: dict[str, Any]) -> tuple[int, dict[str, int], Any]:
    return int(doc.get("extra_ids", 100)), dict(doc.get("token_slots") or {}), doc.get(
        "max_rows")


def read_description(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed `flanrec_vocabulary.json` of `directory`, or None when there is none.

    An HF directory without it still gets `extra_ids` from its `tokenizer_config.json`."""
    gfile = _gfile()
    d = os.fspath(directory)
    path = os.path.join(d, VOCABULARY_FILE)
    if gfile.exists(path):
        with gfile.GFile(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a flanrec vocabulary description (expected "
                             f"format {_FORMAT!r})")
        slots = doc.get("token_slots") or {}
        if not isinstance(slots, dict) or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in slots.items()):
            raise ValueError(f"{path}: field 'token_slots' must be an object token -> id")
        if not isinstance(doc.get("extra_ids", 100), int):
            raise ValueError(f"{path}: field 'extra_ids' must be an integer")
        return doc
    config = os.path.join(d, "tokenizer_config.json")
    if gfile.exists(config):
        with gfile.GFile(config) as f:
            try:
                extra = json.load(f).get("extra_ids")
            except (json.JSONDecodeError, AttributeError):
                extra = None
        if isinstance(extra, int):
            return {"format": _FORMAT, "version": 1, "extra_ids": extra, "token_slots": {},
                    "max_rows": None}
    return None


def vocabulary_dir(path: str | os.PathLike[str]) -> str | None:
    """The directory holding the vocabulary of checkpoint `path`, if it carries one.

    Looked for in `path` itself (HF dir, params-only checkpoint, MODEL_DIR), and for a
    `checkpoint_N` dir in the MODEL_DIR above it."""
    gfile = _gfile()
    p = os.fspath(path).rstrip("/")
    candidates = [p]
    if _STEP_DIR.match(os.path.basename(p)):
        candidates.append(os.path.dirname(p))
    for c in candidates:
        if gfile.exists(os.path.join(c, SPIECE_FILE)):
            return c
    return None


def load_vocabulary(directory: str | os.PathLike[str]) -> Any:
    """The seqio vocabulary described by the files in `directory` (see the module doc)."""
    import seqio

    d = os.fspath(directory)
    spm = os.path.join(d, SPIECE_FILE)
    doc = read_description(d) or {"extra_ids": 100, "token_slots": {}, "max_rows": None}
    extra = int(doc.get("extra_ids", 100))
    slots = doc.get("token_slots") or {}
    if slots:
        from flanrec.data.vocab import ItemTokenVocabulary  # lazy: TF + seqio, 12 s

        return ItemTokenVocabulary(spm, slots, extra_ids=extra, max_rows=doc.get("max_rows"))
    return seqio.SentencePieceVocabulary(spm, extra_ids=extra)


def from_path(path: str | os.PathLike[str]) -> Any:
    """A vocabulary named by a user (`convert --vocab`, `flanrec.load(vocabulary=...)`): a
    prepared data dir (the vocabulary its tasks use), a directory carrying vocabulary files
    (MODEL_DIR, HF dir, export), or a SentencePiece `.model` file (100 extra ids)."""
    gfile = _gfile()
    p = os.fspath(path)
    if gfile.exists(os.path.join(p, layout.PREPARE_FILE)):
        from flanrec.data.vocab import vocabulary_for_prepared  # lazy: TF + seqio, 12 s

        return vocabulary_for_prepared(p)
    if gfile.isdir(p):
        found = vocabulary_dir(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no {SPIECE_FILE} in it (and no {layout.PREPARE_FILE}: "
                                    "not a prepared data dir either)")
        return load_vocabulary(found)
    if gfile.exists(p):
        import seqio

        return seqio.SentencePieceVocabulary(p)
    raise FileNotFoundError(f"{p}: no such vocabulary file or directory")


def checkpoint_vocabulary(path: str | os.PathLike[str]) -> Any:
    """The vocabulary checkpoint `path` carries (`vocabulary_dir`), or None."""
    d = vocabulary_dir(path)
    return None if d is None else load_vocabulary(d)


__all__ = ["SPIECE_FILE", "VOCABULARY_FILE", "VocabularyMismatchError", "checkpoint_vocabulary",
           "describe", "from_path", "load_vocabulary", "read_description", "vocabulary_dir",
           "write_vocabulary"]
