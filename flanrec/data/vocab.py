"""Vocabularies for flanrec tasks: the Flan-T5 SentencePiece model, or a small one trained here.

Three jobs, one module:

* `train_sentencepiece` trains a small SentencePiece model on task text. The ids follow T5
  (pad=0, eos=1, unk=2, no bos) because seqio hard-codes PAD_ID=0; item-ID tokens such as
  `<c17>` become user-defined symbols so each encodes to exactly one id.
* `ItemTokenVocabulary` is the Flan-T5 vocabulary with item-ID tokens mapped onto slots the
  pretrained model already has: the 100 extra ids (`<extra_id_*>`) and, past those, the padding
  rows of the 32128-row embedding. Token *i* takes id `base_size + i` (the lowest extra id
  first, so span-corruption sentinels `<extra_id_0>`, `<extra_id_1>`, ... stay free as long as
  possible). The mapping lives inside the SentencePiece model proto, so Python and TF
  tokenizers, encode and decode all agree without any text substitution pass.
* `get_vocabulary` is the gin-configurable entry point every task uses, so one gin binding or
  one environment variable (`FLANREC_VOCAB`) switches the vocabulary of all tasks at once.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from flanrec.data import layout
from flanrec.data.indexing.slots import read_slot_map
from flanrec.errors import ConfigError, UserError
from flanrec.files import storage

VOCAB_ENV = "FLANREC_VOCAB"
FLAN_T5_GCS_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
# Flan-T5's embedding has 32128 rows: 32000 pieces + 100 extra ids + 28 padding rows.
FLAN_T5_EMBEDDING_ROWS = 32128
TOKEN_SLOTS_FILE = layout.TOKEN_SLOTS_FILE  # written by flanrec.data.indexing


class VocabularyNotFoundError(UserError, FileNotFoundError):
    """No SentencePiece model could be found; the message lists every way to provide one."""


# ----------------------------------------------------------------------------------------------
# Training a small vocabulary
# ----------------------------------------------------------------------------------------------


def train_sentencepiece(
    texts: Iterable[str],
    out_path: str,
    vocab_size: int = 4000,
    user_defined_symbols: Sequence[str] = (),
    model_type: str = "unigram",
    byte_fallback: bool = True,
    max_sentences: int = 40_000,
) -> str:
    """Train a SentencePiece model on `texts` and write it to `out_path` (atomically).

    pad=0, eos=1, unk=2, bos=-1 (T5's layout; seqio assumes PAD_ID=0). `byte_fallback` makes
    decoding lossless for characters the small vocabulary never saw. `vocab_size` is a soft
    limit (`hard_vocab_limit=False`) so tiny corpora in tests do not fail. Returns out_path.
    """
    import sentencepiece as spm

    symbols = list(dict.fromkeys(user_defined_symbols))
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece: no non-empty training text")
    if len(texts) > max_sentences:
        step = len(texts) / max_sentences
        texts = [texts[int(i * step)] for i in range(max_sentences)]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            user_defined_symbols=symbols,
            byte_fallback=byte_fallback,
            hard_vocab_limit=False,
            character_coverage=1.0,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ConfigError(  # --vocab_size too small for the text: the user's to change
            f"SentencePiece training failed for vocab_size={vocab_size} "
            f"({len(texts)} sentences, {len(symbols)} user-defined symbols): {e}. With "
            "byte_fallback the vocabulary needs room for 256 byte pieces plus every "
            "character seen: raise vocab_size."
        ) from None

    storage.write_atomic(out_path, model.getvalue())
    return out_path


# ----------------------------------------------------------------------------------------------
# Flan-T5 vocabulary with item tokens on reserved slots
# ----------------------------------------------------------------------------------------------


def _read_model_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
    with tf.io.gfile.GFile(path, "rb") as f:
        return sentencepiece_model_pb2.ModelProto.FromString(f.read())


def piece_count(path: str) -> int:
    """Pieces in a SentencePiece model file (without seqio's extra ids)."""
    return len(_read_model_proto(path).pieces)


class ItemTokenVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePieceVocabulary whose reserved rows carry item-ID tokens like `<c17>`.

    `token_slots` maps each token to its id (the indexer's `token_slots.json`, see
    `flanrec.data.indexing.slots`): ids from the piece count of the SentencePiece model (32000
    for Flan-T5) upwards, i.e. the extra ids (`<extra_id_99>` = 32000 first) and then the
    padding rows up to `max_rows` (Flan-T5's embedding has 32128). Extra ids no token took keep
    their `<extra_id_k>` names and ids, exactly as in `seqio.SentencePieceVocabulary`.

    Tokens are USER_DEFINED pieces without the word-start marker, so `<a1><b2>` (no spaces)
    and `<a1> <b2>` both encode to them. It stays a `seqio.SentencePieceVocabulary` (T5X code
    that checks for one keeps working); equality includes the slot map, so all tasks of one
    mixture must use the same item index.
    """

    def __init__(
        self,
        sentencepiece_model_file: str,
        token_slots: Mapping[str, int],
        extra_ids: int = DEFAULT_EXTRA_IDS,
        max_rows: int | None = FLAN_T5_EMBEDDING_ROWS,
    ):
        self._token_slots = dict(sorted(token_slots.items(), key=lambda kv: kv[1]))
        ids = list(self._token_slots.values())
        if len(set(ids)) != len(ids):
            raise ValueError("ItemTokenVocabulary: two item tokens share one id")
        self._max_rows = max_rows
        super().__init__(sentencepiece_model_file, extra_ids=extra_ids)

    @property
    def token_slots(self) -> dict[str, int]:
        """token -> id (a copy)."""
        return dict(self._token_slots)

    def _model_context(self) -> Any:  # seqio's private _ModelContext
        if self._model:
            return self._model
        model = _read_model_proto(self._sentencepiece_model_file)
        base = len(model.pieces)
        existing = {p.piece for p in model.pieces}
        clash = [t for t in self._token_slots if t in existing]
        if clash:
            raise ValueError(
                f"item tokens {clash[:5]} already are pieces of {self._sentencepiece_model_file}"
            )
        low = [t for t, i in self._token_slots.items() if i < base]
        if low:
            raise ValueError(
                f"token slots {low[:3]} point below {base}, the piece count of "
                f"{self._sentencepiece_model_file}: the slot map was made for another "
                "vocabulary (compare its sp_size with this model's piece count)"
            )
        top = max([base + self._extra_ids - 1, *self._token_slots.values()])
        if self._max_rows is not None and top >= self._max_rows:
            raise ValueError(
                f"{len(self._token_slots)} item tokens need ids up to {top} but the model has "
                f"only {self._max_rows} embedding rows ({base} pieces + "
                f"{self._max_rows - base} reserved). Use an indexing with fewer distinct tokens "
                "(e.g. fewer codebook entries), or train a vocabulary with `prepare --train_vocab`."
            )
        by_id = {i: t for t, i in self._token_slots.items()}
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        for i in range(base, top + 1):
            if i in by_id:
                piece = by_id[i]
            elif i < base + self._extra_ids:
                # Same names and order as seqio: the highest extra id is <extra_id_0>.
                piece = f"▁<extra_id_{base + self._extra_ids - 1 - i}>"
            else:
                piece = f"<flanrec_unused_{i}>"
            model.pieces.add(piece=piece, score=0.0, type=user_defined)
        sp_model = model.SerializeToString()
        from sentencepiece import SentencePieceProcessor

        tokenizer = SentencePieceProcessor()
        tokenizer.LoadFromSerializedProto(sp_model)
        self._model = seqio.vocabularies._ModelContext(tokenizer=tokenizer, sp_model=sp_model)
        return self._model

    @property
    def vocab_size(self) -> int:
        """Rows the model needs: pieces + extra ids + any padding rows tokens took."""
        return self._base_vocab_size

    def __str__(self) -> str:
        return (
            f"ItemTokenVocabulary(file={self._sentencepiece_model_file}, "
            f"extra_ids={self._extra_ids}, item_tokens={len(self._token_slots)})"
        )


# ----------------------------------------------------------------------------------------------
# Finding the SentencePiece model
# ----------------------------------------------------------------------------------------------


def _hf_cache_candidates() -> list[str]:
    roots = [
        os.environ.get("HF_HUB_CACHE", ""),
        os.path.join(os.environ.get("HF_HOME", ""), "hub") if os.environ.get("HF_HOME") else "",
        os.path.expanduser("~/.cache/huggingface/hub"),
    ]
    found: list[str] = []
    for root in filter(None, roots):
        found += sorted(glob.glob(os.path.join(root, "models--google--flan-t5-*", "snapshots",
                                               "*", "spiece.model")))
    return found


def gin_macro(name: str) -> str | None:
    """Value of gin macro `name` if a parsed gin file defines it, else None.

    Macros need no registered configurable, so a run's gin file can set `FLANREC_VOCAB` /
    `FLANREC_DATA_DIR` before the module reading them is imported (T5X's import order).
    """
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return None
    return value or None


def resolve_spm_path(path: str | None = None) -> str:
    """The SentencePiece model: `path`, else gin macro / env FLANREC_VOCAB, else the HF cache.

    `path` may be a `.model` file, a directory holding `spiece.model` (an HF Flan-T5 checkpoint)
    or `sentencepiece.model`, or a `gs://` path (T5X users on TPU). Raises
    VocabularyNotFoundError naming every option when nothing is found; never downloads.
    """
    path = path or gin_macro(VOCAB_ENV) or os.environ.get(VOCAB_ENV) or None
    tried: list[str] = []
    if path:

        if storage.is_url(path) and path.endswith(".model"):
            return path  # read by seqio through tf.io.gfile; no listing of the bucket
        if storage.isdir(path):
            for name in ("spiece.model", "sentencepiece.model", "spm.model"):
                if storage.isfile(storage.join(path, name)):
                    return storage.join(path, name)
            tried.append(f"{path}/{{spiece,sentencepiece,spm}}.model")
        elif storage.is_url(path) or os.path.isfile(path):
            return path
        else:
            tried.append(path)
    else:
        cached = _hf_cache_candidates()
        if cached:
            return cached[0]
        tried.append("~/.cache/huggingface/hub/models--google--flan-t5-*/snapshots/*/spiece.model")
    raise VocabularyNotFoundError(
        "No SentencePiece vocabulary found (looked for: " + ", ".join(tried) + "). Options:\n"
        f"  1. set {VOCAB_ENV}=/path/to/flan-t5-checkpoint (a dir with spiece.model) or a .model"
        " file;\n"
        f"  2. gin: {VOCAB_ENV} = '/path/spiece.model' (a macro), or "
        "flanrec.data.vocab.get_vocabulary.path = '/path/spiece.model';\n"
        f"  3. TPU/T5X users: {FLAN_T5_GCS_VOCAB} (set it as the path);\n"
        "  4. train a small one offline: python -m flanrec.prepare ... --train_vocab "
        "(tasks then pick DIR/vocab/spm.model up by themselves)."
    )


def load_token_slots(data_dir: str) -> dict[str, int]:
    """token -> id from a prepared dir (`DIR/index/token_slots.json`, or DIR itself holding
    `token_slots.json`); {} when the index has no new tokens (numeric and title IDs).

    Parsed by `flanrec.data.indexing.slots.read_slot_map`, the one reader of the format.
    """

    for path in (storage.join(data_dir, layout.token_slots_file()),
                 storage.join(data_dir, layout.TOKEN_SLOTS_FILE)):
        if storage.exists(path):
            return read_slot_map(path)
    return {}


def trained_vocab_path(data_dir: str) -> str | None:
    """DIR/vocab/spm.model when `prepare --train_vocab` wrote one, else None."""
    path = os.path.join(data_dir, layout.VOCAB_FILE)
    return path if tf.io.gfile.exists(path) else None


@gin.configurable
def get_vocabulary(
    path: str | None = None,
    extra_ids: int = DEFAULT_EXTRA_IDS,
    item_tokens: Mapping[str, int] | Sequence[str] | str | None = None,
    max_rows: int | None = FLAN_T5_EMBEDDING_ROWS,
) -> seqio.Vocabulary:
    """The vocabulary of every flanrec task (gin: `get_vocabulary.path = ...`).

    `path`: SentencePiece model as accepted by `resolve_spm_path` (default: $FLANREC_VOCAB,
    then the HF cache). `item_tokens`: item-ID tokens to put on reserved rows: a token -> id
    slot map, a list (ids handed out from the piece count upwards), or a prepared data dir to
    read the slot map from. Without item tokens this returns a plain
    `seqio.SentencePieceVocabulary(path, extra_ids)`, which equals the vocabulary of Flan
    mixtures, so they can be mixed with ours. A trained vocabulary already holds the item
    tokens as pieces, so they are not put on reserved rows again.
    """
    spm_path = resolve_spm_path(path)
    if isinstance(item_tokens, str):
        item_tokens = load_token_slots(item_tokens)
    if not item_tokens:
        return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)
    pieces = [p.piece for p in _read_model_proto(spm_path).pieces]
    if all(t in set(pieces) for t in item_tokens):
        return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)
    if isinstance(item_tokens, Mapping):
        slots = dict(item_tokens)
    else:
        slots = {t: len(pieces) + i for i, t in enumerate(item_tokens)}
    return ItemTokenVocabulary(spm_path, slots, extra_ids=extra_ids, max_rows=max_rows)


def vocabulary_for_prepared(data_dir: str, path: str | None = None) -> seqio.Vocabulary:
    """The vocabulary for tasks of a prepared dir.

    Precedence: explicit `path` / gin / $FLANREC_VOCAB (with the dir's item tokens on reserved
    slots), else the dir's trained vocabulary (`prepare --train_vocab`), else the Flan-T5 model
    in the HF cache; otherwise VocabularyNotFoundError listing the options.
    """
    if path:
        return get_vocabulary(path, item_tokens=data_dir)
    if _gin_bound_path() is None and not gin_macro(VOCAB_ENV) and not os.environ.get(VOCAB_ENV):
        trained = trained_vocab_path(data_dir) or recorded_vocab_path(data_dir)
        if trained:
            return get_vocabulary(trained, item_tokens=data_dir, max_rows=None)
    # Leave `path` unset so a gin binding of get_vocabulary.path applies.
    return get_vocabulary(item_tokens=data_dir)


def recorded_vocab_path(data_dir: str) -> str | None:
    """The SentencePiece file prepare tokenized with (prepare.json `vocab.source`), if it is
    still there with the same contents (`vocab.source_md5`); else None.

    A dir prepared with `FLANREC_VOCAB=...` then registers without the variable set again,
    and never with a changed file under the same name.
    """
    import hashlib
    import json

    try:
        with open(os.path.join(data_dir, layout.PREPARE_FILE), encoding="utf-8") as f:
            rec = json.load(f).get("vocab") or {}
    except (OSError, ValueError):
        return None
    path, md5 = rec.get("source"), rec.get("source_md5")
    if not path or not md5 or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return path if hashlib.md5(f.read()).hexdigest() == md5 else None


def _gin_bound_path() -> str | None:
    try:
        return gin.query_parameter("flanrec.data.vocab.get_vocabulary.path")
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# Which vocabulary a prepare run tokenizes with (moved from flanrec.prepare)
# ----------------------------------------------------------------------------------------------


def base_piece_count(train_vocab: bool) -> int:
    """Pieces of the SentencePiece model training will use, where new ID tokens start.

    A trained vocabulary holds the tokens as pieces, so the slot map only matters for
    Flan-T5 (32000) or a model given by $FLANREC_VOCAB / gin, whose pieces are counted.
    """
    if train_vocab:
        return 32000
    try:
        path = resolve_spm_path()
    except VocabularyNotFoundError:
        return 32000
    return piece_count(path)


def resolve_prepare_vocab(vocab_path: str | None, slots: Mapping[str, int],
                          ) -> tuple[seqio.Vocabulary | None, str]:
    """The vocabulary to build tries with, or None (with the reason) when none is found.

    Preparing must work without any vocabulary (the tries are then built at read time), so a
    missing one is a reason recorded in prepare.json, not an error.
    """
    try:
        if vocab_path:
            return get_vocabulary(vocab_path, item_tokens=dict(slots) or None, max_rows=None), ""
        # The slot map was fitted to this model's pieces + 128 rows by fit_indexes.
        return get_vocabulary(item_tokens=dict(slots) or None, max_rows=None), ""
    except VocabularyNotFoundError as e:
        return None, str(e).splitlines()[0]


def vocab_source(trained: str | None, vocabulary: seqio.Vocabulary | None) -> dict[str, str]:
    """`source` (absolute path) and `source_md5` of an external SentencePiece file.

    Recorded in prepare.json so the dir registers with the same file later even without
    $FLANREC_VOCAB (`recorded_vocab_path` checks the md5); {} for a trained or remote file.
    """
    import hashlib

    path = getattr(vocabulary, "sentencepiece_model_file", "") if vocabulary else ""
    if trained or not path or "://" in path or not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        return {"source": os.path.abspath(path),
                "source_md5": hashlib.md5(f.read()).hexdigest()}


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> str:
    """md5 of the (slot-extended) SentencePiece model: a trie is only valid for that model.

    Stored in each trie file and compared when it is read, so a trie in another vocabulary's
    token ids is never used to constrain decoding.
    """
    import hashlib

    sp_model = getattr(vocabulary, "sp_model", None)
    if sp_model is None:
        return f"{type(vocabulary).__name__}:{vocabulary.vocab_size}"
    return hashlib.md5(sp_model).hexdigest()


def checkpoint_vocab_path(given: str | None, checkpoint: str | None) -> str:
    """The SentencePiece model that tokenizes item text for `--semantic_encoder`.

    It has to be the checkpoint's own: `given` (`--semantic_encoder_vocab`: a .model file,
    a dir with spiece.model, or a prepared dir whose `vocab/spm.model` the checkpoint was
    trained with), else the HF checkpoint dir's spiece.model, else $FLANREC_VOCAB / gin /
    the HF cache. Raises UserError naming the flag that fixes it.
    """
    if given:
        trained = os.path.join(given, layout.VOCAB_FILE)
        if os.path.isfile(trained):
            return trained
        try:
            return resolve_spm_path(given)
        except VocabularyNotFoundError:
            raise UserError(f"--semantic_encoder_vocab {given}: not a SentencePiece .model "
                            "file, a dir with spiece.model, or a prepared dir with "
                            "vocab/spm.model") from None
    enc = checkpoint or ""
    if os.path.isdir(enc):
        for name in ("spiece.model", "sentencepiece.model", "spm.model"):
            if os.path.isfile(os.path.join(enc, name)):
                return os.path.join(enc, name)
    try:
        return resolve_spm_path()
    except VocabularyNotFoundError as e:
        raise UserError(
            f"--semantic_encoder {enc}: no vocabulary to tokenize item text with (the "
            "checkpoint dir has no spiece.model). Pass --semantic_encoder_vocab (the model's "
            "spiece.model, or the prepared dir whose vocab/spm.model it was trained with), or "
            f"set {VOCAB_ENV}.\n{e}") from None
