"""`python -m flanrec.prepare`: raw logs -> split -> item index -> instruction tasks on disk.

One offline job, run once per dataset, so that training only reads files:

    python -m flanrec.prepare --dataset ml-100k --out ~/.cache/flanrec/prepared/ml-100k

fetch (H3's `flanrec.data.fetch`) -> read -> leave-one-out split (ml100k-loo exactly) ->
fit each item index on train sequences only -> render every task family for every split
(`flanrec.data.examples`) -> sharded TFRecords + info.json per task -> optional SentencePiece
training -> prefix tries of the valid item IDs. Everything is built in a scratch directory this
run creates and published by `flanrec.storage.staged_dir` (one rename locally; on gs:// the
files are uploaded and the ownership marker written last), so a crash never leaves a
half-prepared directory that tasks would register. An existing `--out` is replaced only when
it is a flanrec.prepare output; anything else is refused before any work, and nothing outside
the scratch directory is ever deleted.

Layout of OUT (the contract `tasks/` and the trainer read):

    prepare.json                      dataset, options, counts, fingerprints, timings
    .flanrec-output.json              ownership marker (job "prepare"), written last
    split/split.json                  per-user sequences (train items/ratings/timestamps,
                                      valid/test item and rating), catalogue, max_history
    split/sequences.tsv               user \\t i_1 ... i_n (the protocol's fingerprint text)
    split/items.tsv                   item \\t title \\t year \\t categories
    index/token_slots.json            new ID token -> vocabulary id (union of indexings)
    index/{method}/item_index.json    raw item -> ID string (flanrec.data.indexing format)
    index/{method}/trie.npz           prefix trie of item IDs as token ids (+ EOS), when a
                                      vocabulary was available; `items` gives item order
    index/{method}/trie_noeos.npz     the same without EOS, for the seqrec family (whose
                                      targets run on into the next item)
    vocab/spm.model                   with --train_vocab
    tasks/{task}/{split}.tfrecord-0000i-of-0000n, tasks/{task}/info.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flanrec import jobs, storage
from flanrec.data import locations
from flanrec.errors import UserError
from flanrec.progress import Progress, stage

INDEX_SUFFIX = {
    "sequential": "seqidx",
    "random": "randidx",
    "title": "titleidx",
    "collaborative": "cfidx",
    "semantic": "semidx",
}
DATASET_ALIASES = {
    "amazon-beauty": "amazon-2014-Beauty",
    "amazon-sports": "amazon-2014-Sports_and_Outdoors",
    "amazon-toys": "amazon-2014-Toys_and_Games",
}
# Families whose task name carries the indexing suffix (one task per indexing); the others
# are rendered once, with the first indexing's IDs.
INDEXED_FAMILIES = ("seq", "seqrec", "direct", "grounding")
FAMILIES = ("seq", "seqrec", "direct", "rating", "binary", "grounding", "profile")
TARGET_KIND = {
    "seq": "item",
    "seqrec": "item",
    "direct": "item",
    "rating": "rating",
    "binary": "binary",
    "grounding": "text",
    "profile": "text",
}
EVAL_SPLITS = ("validation", "test")
# Families whose targets are a sequence of item IDs without EOS (the decoder continues from
# one item to the next); inference ranks the last item after feeding the others as a prefix.
SEQUENCE_FAMILIES = ("seqrec",)


def default_cache_dir() -> str:
    return locations.cache_root()


def default_out(dataset: str) -> str:
    """`--out` when none is given: the one default data dir (flanrec.data.locations).

    `$FLANREC_DATA_DIR` is used only when it holds nothing or the same dataset: a default
    must never replace another dataset's prepared data.
    """
    out = locations.default_data_dir(dataset)
    info = os.path.join(out, "prepare.json")
    if os.environ.get(locations.DATA_DIR_ENV) and os.path.exists(info):
        try:
            with open(info, encoding="utf-8") as f:
                held = json.load(f).get("dataset")
        except (OSError, ValueError):
            held = None
        if held != dataset:
            raise UserError(f"{locations.DATA_DIR_ENV}={out} holds prepared {held!r}, not "
                            f"{dataset!r}; pass --out DIR for {dataset}")
    return out


def task_prefix_for(dataset: str) -> str:
    """ml-100k -> ml100k, amazon-2014-Beauty -> amazon_beauty, my-data.csv -> my_data_csv."""
    name = dataset.lower()
    if name.startswith("ml-"):
        return name.replace("-", "")
    if name.startswith("amazon-"):
        parts = [p for p in name.split("-")[1:] if not p.isdigit()]
        return "amazon_" + "_".join(parts)
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "data"


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PrepareOptions:
    """Everything that determines the output (recorded in prepare.json)."""

    dataset: str
    out: str
    raw_dir: str | None = None
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    indexing: tuple[str, ...] = ("sequential",)
    seed: int = 0
    num_shards: int = 2
    train_vocab: bool = False
    vocab_size: int = 4000
    max_history: int = 50
    families: tuple[str, ...] = FAMILIES
    # seqrec: decoder targets per training example, items the encoder reads, window tilings
    seqrec_window: int = 40
    seqrec_encoder_items: int = 10
    seqrec_tilings: int = 2
    # --train_vocab keeps every item ID string whole (one piece each)
    item_pieces: bool = True
    num_candidates: int = 20
    kcore: int | None = None
    min_rating: float | None = None
    task_prefix: str | None = None
    allow_download: bool = True
    unseen_eval: bool = True
    overwrite: bool = True
    # Semantic IDs embed items with, in this order of preference: a T5 encoder checkpoint
    # (HF dir / T5X / flanrec), a user-supplied .npy, else TF-IDF of the item text.
    semantic_encoder: str | None = None
    semantic_encoder_vocab: str | None = None  # default: the HF dir's spiece.model, $FLANREC_VOCAB
    semantic_embeddings: str | None = None  # a .npy file (rows: catalogue order) ("tfidf": None)
    semantic_embedding_items: str | None = None  # .json/.txt naming each .npy row's item
    semantic_batch_size: int = 64
    semantic_max_length: int = 128
    # How to read a --dataset csv|parquet file (flanrec.data.sources.table.read_table
    # keywords: delimiter, header, column_names, user_col, item_col, timestamp_col,
    # rating_col, title_col, encoding, items_path); gin bindings of read_table fill the rest.
    table_options: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def load_dataset(opts: PrepareOptions, out: str | None = None):  # noqa: ANN201 - Dataset
    """fetch + read: `--dataset csv|parquet` read `--raw_dir` directly. A `--raw_dir` URL
    (gs://...) is read from a local copy. With `out`, an output that would replace the
    fetched input folder is refused before the input is read."""
    from flanrec.data.fetch import fetch
    from flanrec.data.sources import read_dataset

    name = DATASET_ALIASES.get(opts.dataset, opts.dataset)
    if name in ("csv", "parquet") and not opts.raw_dir:
        raise UserError(f"--dataset {name} needs --raw_dir (the file or directory)")
    if name not in ("csv", "parquet") and opts.table_options:
        raise UserError(f"--dataset {opts.dataset} has its own reader: the CSV mapping options "
                        f"({', '.join(sorted(opts.table_options))}) apply to --dataset csv or "
                        "parquet only")
    with storage.local_copy(opts.raw_dir or "") as raw_dir:
        if name in ("csv", "parquet"):
            return read_dataset(name, raw_dir, **opts.table_options)
        fetched = fetch(name, opts.cache_dir, raw_dir=raw_dir or None,
                        allow_download=opts.allow_download)
        if out is not None and not opts.raw_dir:
            storage.check_apart(out, {"the fetched dataset": str(fetched.path)})
        return read_dataset(fetched.kind, fetched.path)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_split(split, meta, out_dir: str) -> dict[str, str]:  # noqa: ANN001
    """split/split.json, split/sequences.tsv, split/items.tsv; returns their sha256."""
    from flanrec.data import splits as splits_lib

    os.makedirs(out_dir, exist_ok=True)
    doc = {
        "max_history": split.max_history,
        "all_items": list(split.all_items),
        "users": [dataclasses.asdict(u) for u in split.users],
    }
    text = json.dumps(doc, ensure_ascii=False)
    with open(os.path.join(out_dir, "split.json"), "w", encoding="utf-8") as f:
        f.write(text)
    seqs = splits_lib.fingerprint_texts(split)["sequences"]
    with open(os.path.join(out_dir, "sequences.tsv"), "w", encoding="utf-8") as f:
        f.write(seqs)
    rows = []
    for item in split.all_items:
        cats = " | ".join(meta.categories.get(item, []))
        row = [item, meta.title.get(item, ""), meta.year.get(item, ""), cats]
        rows.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row) + "\n")
    with open(os.path.join(out_dir, "items.tsv"), "w", encoding="utf-8") as f:
        f.write("item\ttitle\tyear\tcategories\n" + "".join(rows))
    return {"split.json": _sha256(text), "sequences.tsv": _sha256(seqs)}


def tfidf_embed(texts: Sequence[str], dim: int = 64) -> Any:
    """Offline content embeddings for semantic IDs: TF-IDF of the item text, reduced by SVD.

    No pretrained encoder is needed (or available offline); titles, years and genres are
    enough for ml-100k's residual k-means to put similar movies under shared prefixes. For
    better IDs use a T5 encoder (`--semantic_encoder CKPT`) or your own embeddings
    (`--semantic_embeddings items.npy`).
    """
    import re

    import numpy as np

    docs = [re.findall(r"[a-z0-9']+", t.lower()) for t in texts]
    vocab = {w: j for j, w in enumerate(sorted({w for d in docs for w in d}))}
    tf_ = np.zeros((len(docs), max(len(vocab), 1)))
    for i, d in enumerate(docs):
        for w in d:
            tf_[i, vocab[w]] += 1.0
    df = (tf_ > 0).sum(0)
    x = tf_ * np.log((1 + len(docs)) / (1 + df))[None, :]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    u, sv, _ = np.linalg.svd(x - x.mean(0, keepdims=True), full_matrices=False)
    k = min(dim, u.shape[1])
    return u[:, :k] * sv[:k]


def fit_indexes(split, meta, opts: PrepareOptions, index_root: str,  # noqa: ANN001, ANN201
                sp_size: int = 32000):
    """Fit every requested indexing on train sequences only; one shared token-slot map.

    All indexings of one dir share one vocabulary, so their new tokens are placed on slots
    together (`token_slot_map` of the union) from id `sp_size` (the SentencePiece model's
    piece count: 32000 for Flan-T5) over the 128 rows above it; too many raises with the
    counts (then prepare the indexings into separate dirs).
    """
    from flanrec.data.indexing import fit_index, token_slot_map
    from flanrec.data.indexing.core import write_json_atomic
    from flanrec.data.indexing.slots import slot_map_json

    indexes = {}
    for method in opts.indexing:
        kwargs: dict[str, Any] = {}
        if method == "semantic":
            kwargs, source = semantic_embedding_source(opts)
        indexes[method] = fit_index(method, split, split.all_items, meta, seed=opts.seed,
                                    **kwargs)
        if method == "semantic":
            source["dim"] = indexes[method].options["embedding_dim"]
            indexes[method].options["embedding_source"] = source
    union = list(dict.fromkeys(t for ix in indexes.values() for t in ix.new_tokens))
    slots = token_slot_map(union, vocab_size=sp_size + 128, sp_size=sp_size) if union else {}
    os.makedirs(index_root, exist_ok=True)
    for method, ix in indexes.items():
        ix.save(os.path.join(index_root, method),
                slot_map={t: slots[t] for t in ix.new_tokens} if ix.new_tokens else None,
                vocab_size=sp_size + 128, sp_size=sp_size)
    if slots:
        write_json_atomic(os.path.join(index_root, "token_slots.json"),
                          slot_map_json(slots, vocab_size=sp_size + 128, sp_size=sp_size))
    return indexes, slots


def encoder_vocab_path(opts: PrepareOptions) -> str:
    """The SentencePiece model that tokenizes item text for `--semantic_encoder`.

    It has to be the checkpoint's own: `--semantic_encoder_vocab` (a .model file, a dir with
    spiece.model, or a prepared dir whose `vocab/spm.model` the checkpoint was trained with),
    else the HF checkpoint dir's spiece.model, else $FLANREC_VOCAB / gin / the HF cache.
    """
    from flanrec.data import vocab as vocab_lib

    given = opts.semantic_encoder_vocab
    if given:
        trained = os.path.join(given, "vocab", "spm.model")
        if os.path.isfile(trained):
            return trained
        try:
            return vocab_lib.resolve_spm_path(given)
        except vocab_lib.VocabularyNotFoundError:
            raise UserError(f"--semantic_encoder_vocab {given}: not a SentencePiece .model "
                            "file, a dir with spiece.model, or a prepared dir with "
                            "vocab/spm.model") from None
    enc = opts.semantic_encoder or ""
    if os.path.isdir(enc):
        for name in ("spiece.model", "sentencepiece.model", "spm.model"):
            if os.path.isfile(os.path.join(enc, name)):
                return os.path.join(enc, name)
    try:
        return vocab_lib.resolve_spm_path()
    except vocab_lib.VocabularyNotFoundError as e:
        raise UserError(
            f"--semantic_encoder {enc}: no vocabulary to tokenize item text with (the "
            "checkpoint dir has no spiece.model). Pass --semantic_encoder_vocab (the model's "
            "spiece.model, or the prepared dir whose vocab/spm.model it was trained with), or "
            f"set {vocab_lib.VOCAB_ENV}.\n{e}") from None


def semantic_embedding_source(opts: PrepareOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fit_index kwargs, the record for prepare.json) of the semantic IDs' embeddings.

    Encoder > user .npy > TF-IDF: TF-IDF is only the offline fallback when neither is given.
    """
    npy = opts.semantic_embeddings if opts.semantic_embeddings != "tfidf" else None
    if opts.semantic_encoder and npy:
        raise UserError("semantic IDs: give --semantic_encoder or --semantic_embeddings, "
                        "not both")
    if opts.semantic_embedding_items and not npy:
        raise UserError("--semantic_embedding_items names the rows of a "
                        "--semantic_embeddings .npy file; no .npy was given")
    if opts.semantic_encoder:
        import seqio

        from flanrec.data.indexing.encoder_embeddings import t5_encoder_embed_fn

        if not os.path.exists(opts.semantic_encoder):
            raise UserError(f"--semantic_encoder {opts.semantic_encoder}: no such checkpoint")
        spm = encoder_vocab_path(opts)
        fn = t5_encoder_embed_fn(opts.semantic_encoder,
                                 seqio.SentencePieceVocabulary(spm, extra_ids=0),
                                 batch_size=opts.semantic_batch_size,
                                 max_length=opts.semantic_max_length)
        return {"embed_fn": fn}, {
            "source": "t5_encoder", "checkpoint": opts.semantic_encoder, "vocabulary": spm,
            "pooling": "mean over non-padding encoder outputs",
            "max_length": opts.semantic_max_length}
    if npy:
        if not os.path.isfile(npy):
            raise UserError(f"--semantic_embeddings {npy}: no such file")
        return {"embeddings": npy, "embedding_items": opts.semantic_embedding_items}, {
            "source": "npy", "path": npy, "items": opts.semantic_embedding_items}
    return {"embed_fn": tfidf_embed}, {"source": "tfidf"}


def _family_splits(family: str, opts: PrepareOptions) -> list[tuple[str, str, tuple[str, ...]]]:
    """(output split, examples split_name, template types) for one family."""
    if family == "grounding":
        return [("train", "train", ("seen",))]
    out = [("train", "train", ("seen",))]
    out += [(s, s, ("seen",)) for s in EVAL_SPLITS]
    if opts.unseen_eval:
        out.append(("test_unseen", "test", ("unseen",)))
    return out


class _TextSample:
    """Keeps every k-th inputs/targets text seen while writing (the vocab training corpus)."""

    def __init__(self, every: int = 3):
        self.every = every
        self.n = 0
        self.texts: list[str] = []

    def tap(self, examples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for ex in examples:
            if self.n % self.every == 0:
                self.texts.append(ex["inputs"])
                self.texts.append(ex["targets"])
            self.n += 1
            yield ex


def _examples(family: str, split, dataset, index, opts: PrepareOptions,  # noqa: ANN001
              split_name: str, template_types: tuple[str, ...], prefix: str):
    from flanrec.data import examples as ex_lib

    common = dict(split_name=split_name, seed=opts.seed, template_types=template_types,
                  task_prefix=prefix + "_")
    if family == "profile":
        if dataset.users is None or not dataset.users.features:
            return None
        return ex_lib.profile_examples(split, index, dataset.users, dataset.items, **common)
    kwargs: dict[str, Any] = {}
    if family in ("seq", "seqrec", "direct"):
        kwargs["max_history"] = opts.max_history
    if family == "seqrec":
        kwargs.update(window=opts.seqrec_window, encoder_items=opts.seqrec_encoder_items,
                      tilings=opts.seqrec_tilings)
    if family == "direct":
        kwargs["num_candidates"] = min(opts.num_candidates, len(split.all_items))
    if family == "grounding" and not dataset.items.title:
        return None
    return ex_lib.build_examples(family, split, index, dataset.items, dataset.users,
                                 **common, **kwargs)


def write_tasks(split, dataset, indexes, opts: PrepareOptions, tasks_root: str,  # noqa: ANN001
                prefix: str, sample: _TextSample,
                report: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Render and write every (family, indexing) task; returns task dir -> info.

    `report` gets a progress line per task (examples rendered and written, rate) every few
    seconds and when the task is done (default: stdout).
    """
    from flanrec.data import splits as splits_lib
    from flanrec.data import writer

    methods = list(indexes)
    infos = {}
    todo = sum(len(methods) if f in INDEXED_FAMILIES else 1 for f in opts.families)
    number = 0
    for family in opts.families:
        if family not in FAMILIES:
            raise UserError(f"unknown family {family!r}; choose from {FAMILIES}")
        for n, method in enumerate(methods if family in INDEXED_FAMILIES else methods[:1]):
            suffix = INDEX_SUFFIX[method]
            dirname = f"{family}_{suffix}" if family in INDEXED_FAMILIES else family
            number += 1
            counter = Progress(f"prepare: task {number}/{todo} {dirname}", unit="examples",
                               log=report, untimed_first=False)
            splits_out = {}
            for out_split, split_name, ttypes in _family_splits(family, opts):
                ex = _examples(family, split, dataset, indexes[method], opts, split_name,
                               ttypes, prefix)
                if ex is None:
                    break
                ex = counter.wrap(ex)
                splits_out[out_split] = sample.tap(ex) if out_split == "train" else ex
            if not splits_out:
                counter.finish("skipped: the data has no fields for this family")
                continue
            info = writer.write_task(
                os.path.join(tasks_root, dirname), splits_out, num_shards=opts.num_shards,
                metadata={
                    "family": family,
                    "indexing": suffix if family in INDEXED_FAMILIES else None,
                    "index_method": method,
                    "index_file": f"index/{method}/item_index.json",
                    "target_kind": TARGET_KIND[family],
                    "primary_indexing": n == 0,
                    "targets_eos": family not in SEQUENCE_FAMILIES,
                    # Item predictions that carry loss in the train split (what a mixture
                    # rates a seqrec task by: one example holds up to a window of them).
                    "train_targets": (opts.seqrec_tilings * splits_lib.count_train_windows(
                        split) if family in SEQUENCE_FAMILIES else None),
                    "target_layout": ("item_sequence" if family in SEQUENCE_FAMILIES
                                      else "single"),
                },
            )
            if not info["splits"]:  # e.g. rating tasks of a log without ratings
                shutil.rmtree(os.path.join(tasks_root, dirname))
                counter.finish("skipped: no examples")
                continue
            counter.finish(f"splits {', '.join(info['splits'])}")
            infos[dirname] = info
    return infos


def skipped_families(families: Sequence[str], infos: dict[str, dict[str, Any]],
                     dataset: Any) -> dict[str, str]:
    """family -> why no task of it was written (a log without ratings, users or titles
    makes prepare drop families; say so instead of leaving it to a missing task name)."""
    import numpy as np

    reasons = {}
    for family in families:
        if any(name == family or name.startswith(family + "_") for name in infos):
            continue
        if family in ("rating", "binary") and bool(np.isnan(dataset.interactions.rating).all()):
            why = ("the log has no ratings (CSV: name the column with --rating_col; a column "
                   "called rating/score/stars is used automatically)")
        elif family == "profile" and (dataset.users is None or not dataset.users.features):
            why = "the dataset has no user features (age, gender, occupation)"
        elif family == "grounding" and not dataset.items.title:
            why = "no item has a title (CSV: --title_col, or --items_file)"
        else:
            why = "no examples for any split"
        reasons[family] = why
    return reasons


def base_piece_count(opts: PrepareOptions) -> int:
    """Pieces of the SentencePiece model training will use, where new ID tokens start.

    A trained vocabulary holds the tokens as pieces, so the slot map only matters for
    Flan-T5 (32000) or a model given by $FLANREC_VOCAB / gin, whose pieces are counted.
    """
    from flanrec.data import vocab as vocab_lib

    if opts.train_vocab:
        return 32000
    try:
        path = vocab_lib.resolve_spm_path()
    except vocab_lib.VocabularyNotFoundError:
        return 32000
    return vocab_lib.piece_count(path)


def resolve_prepare_vocab(vocab_path: str | None, slots: dict[str, int]):  # noqa: ANN201
    """The vocabulary to build tries with, or None (with the reason) when none is found."""
    from flanrec.data import vocab as vocab_lib

    try:
        if vocab_path:
            return vocab_lib.get_vocabulary(vocab_path, item_tokens=slots or None,
                                            max_rows=None), ""
        # The slot map was fitted to this model's pieces + 128 rows by fit_indexes.
        return vocab_lib.get_vocabulary(item_tokens=slots or None, max_rows=None), ""
    except vocab_lib.VocabularyNotFoundError as e:
        return None, str(e).splitlines()[0]


def _vocab_source(trained: str | None, vocabulary) -> dict[str, str]:  # noqa: ANN001
    """`source` (absolute path) and `source_md5` of an external SentencePiece file."""
    path = getattr(vocabulary, "sentencepiece_model_file", "") if vocabulary else ""
    if trained or not path or "://" in path or not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        return {"source": os.path.abspath(path),
                "source_md5": hashlib.md5(f.read()).hexdigest()}


def vocabulary_fingerprint(vocabulary) -> str:  # noqa: ANN001 - a seqio.Vocabulary
    """md5 of the (slot-extended) SentencePiece model: a trie is only valid for that model."""
    sp_model = getattr(vocabulary, "sp_model", None)
    if sp_model is None:
        return f"{type(vocabulary).__name__}:{vocabulary.vocab_size}"
    return hashlib.md5(sp_model).hexdigest()


def save_trie(path: str, trie, items: Sequence[str], vocab_id: str = "") -> None:  # noqa: ANN001
    """npz with the TrieArrays fields (no dense table), `items` (item number -> raw id) and
    `vocab_id` (vocabulary_fingerprint of the vocabulary the token ids come from)."""
    import numpy as np

    arrays = {f.name: getattr(trie, f.name) for f in dataclasses.fields(trie)
              if f.name != "dense_next"}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["items"] = np.asarray(list(items), dtype=object).astype(str)
    arrays["vocab_id"] = np.asarray(vocab_id)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_atomic(path, buf.getvalue())


def load_trie(path: str):  # noqa: ANN201 - (flanrec.data.trie.TrieArrays, list[str])
    """Inverse of save_trie (dense_next is None; build_trie can recompute it)."""
    import numpy as np

    from flanrec.data.trie import TrieArrays

    with np.load(io.BytesIO(storage.read_bytes(path))) as z:
        data = {k: z[k] for k in z.files}
    items = [str(x) for x in data.pop("items")]
    data.pop("vocab_id", None)
    scalars = {k: int(data.pop(k)) for k in ("eos_id", "pad_id", "vocab_size", "max_length")}
    return TrieArrays(dense_next=None, **data, **scalars), items


def trie_file(end_with_eos: bool = True) -> str:
    """File name of an indexing's trie: with EOS (most families) or without (seqrec)."""
    return "trie.npz" if end_with_eos else "trie_noeos.npz"


def build_tries(indexes, vocabulary, catalogue: Sequence[str], index_root: str,  # noqa: ANN001
                without_eos: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """index/{method}/trie.npz for every indexing (+ trie_noeos.npz for the methods in
    `without_eos`); returns per-method sizes. A method whose IDs cannot form a trie without
    EOS (unequal token counts) gets the reason under "noeos_error" instead."""
    from flanrec.data.trie import build_trie

    out: dict[str, dict[str, Any]] = {}
    for method, ix in indexes.items():
        seqs = [vocabulary.encode(ix.id_of(item)) for item in catalogue]
        trie = build_trie(seqs, eos_id=vocabulary.eos_id, vocab_size=vocabulary.vocab_size,
                          pad_id=0, dense_limit=0)
        save_trie(os.path.join(index_root, method, trie_file()), trie, catalogue,
                  vocabulary_fingerprint(vocabulary))
        out[method] = {"nodes": trie.num_nodes, "max_length": trie.max_length}
        if method in without_eos:
            try:
                bare = build_trie(seqs, eos_id=vocabulary.eos_id,
                                  vocab_size=vocabulary.vocab_size, pad_id=0, dense_limit=0,
                                  end_with_eos=False)
            except ValueError as e:
                out[method]["noeos_error"] = str(e)
                continue
            save_trie(os.path.join(index_root, method, trie_file(False)), bare, catalogue,
                      vocabulary_fingerprint(vocabulary))
            out[method]["noeos_max_length"] = bare.max_length
    return out


def item_pieces(indexes, catalogue: Sequence[str]) -> list[str]:  # noqa: ANN001
    """Word-initial ID strings ("▁1234") a trained vocabulary keeps as one piece each.

    One token per item makes the decoder's softmax a full-catalogue classifier (what works
    best for ranking) and lets the seqrec family's targets run from item to item without a
    separator. Only plain IDs qualify: indexings with new tokens (collaborative, semantic)
    place those tokens already, and titles contain spaces.
    """
    out: list[str] = []
    for ix in indexes.values():
        if ix.new_tokens:
            continue
        ids = [ix.id_of(item) for item in catalogue]
        if all(i and not any(c.isspace() for c in i) for i in ids):
            out += ["▁" + i for i in ids]
    return list(dict.fromkeys(out))


def item_trie(data_dir: str, vocabulary=None, method: str | None = None,  # noqa: ANN001, ANN201
              end_with_eos: bool = True):
    """(TrieArrays, items) of a prepared dir's item IDs under `vocabulary`.

    Loads `index/{method}/trie.npz` (`trie_noeos.npz` with `end_with_eos=False`) when it was
    built with this very vocabulary, else builds it in memory (about a second for ml-100k): a
    trie in another vocabulary's token ids would constrain decoding to the wrong tokens.
    `vocabulary` defaults to `vocabulary_for_prepared(data_dir)`, `method` to the dir's first
    indexing.
    """
    import numpy as np

    from flanrec.data import vocab as vocab_lib
    from flanrec.data.indexing import ItemIndex
    from flanrec.data.trie import build_trie

    doc = storage.read_json(storage.join(data_dir, "prepare.json"))
    method = method or doc["index_methods"][0]
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    path = storage.join(data_dir, "index", method, trie_file(end_with_eos))
    if storage.exists(path):
        with np.load(io.BytesIO(storage.read_bytes(path))) as z:
            stored = str(z["vocab_id"]) if "vocab_id" in z.files else ""
        if stored == vocabulary_fingerprint(vocabulary):
            return load_trie(path)
    index = ItemIndex.load(storage.join(data_dir, "index", method))
    catalogue = storage.read_json(storage.join(data_dir, "split", "split.json"))["all_items"]
    seqs = [vocabulary.encode(index.id_of(item)) for item in catalogue]
    trie = build_trie(seqs, eos_id=vocabulary.eos_id, vocab_size=vocabulary.vocab_size,
                      pad_id=0, dense_limit=0, end_with_eos=end_with_eos)
    return trie, list(catalogue)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def _check_out(opts: PrepareOptions) -> str:
    """--out, normalized, refused when it is (or holds) an input: before any work."""
    out = storage.normalize(opts.out)
    storage.check_apart(out, {"--raw_dir": opts.raw_dir,
                              "--semantic_embeddings": (opts.semantic_embeddings
                                                        if opts.semantic_embeddings != "tfidf"
                                                        else None),
                              "--semantic_encoder": opts.semantic_encoder})
    return out


_NO_OVERWRITE_HINT = (" and --no_overwrite was given (without it, a flanrec.prepare output "
                      "is replaced once the new one is complete)")


def prepare(opts: PrepareOptions, log: Any = print,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole job; returns the prepare.json document.

    `log` gets the final summary table; `progress` (default: stdout) one line as each stage
    starts and ends and, while tasks are rendered, a count-and-rate line every few seconds.
    """
    from flanrec.data import splits as splits_lib

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: list[float] = [t0]) -> None:  # noqa: B006 - a tiny closure clock
        now = time.time()
        timings[name] = round(now - since[0], 3)
        since[0] = now

    for m in opts.indexing:
        if m not in INDEX_SUFFIX:
            raise UserError(f"unknown indexing {m!r}; choose from {sorted(INDEX_SUFFIX)}")
    unknown = [f for f in opts.families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown families {unknown}; choose from {FAMILIES}")
    semantic_opts = [f"--{k}" for k in ("semantic_encoder", "semantic_encoder_vocab",
                                         "semantic_embeddings", "semantic_embedding_items")
                     if getattr(opts, k) not in (None, "tfidf")]
    if semantic_opts and "semantic" not in opts.indexing:
        raise UserError(f"{', '.join(semantic_opts)} only apply to --indexing semantic")
    if opts.num_shards < 2:
        raise UserError("--num_shards must be >= 2 (multi-host readers shard by file)")
    out = _check_out(opts)
    prefix = opts.task_prefix or task_prefix_for(opts.dataset)
    with storage.staged_dir(out, "prepare", replace=opts.overwrite,
                            replace_hint=_NO_OVERWRITE_HINT,
                            record={"dataset": opts.dataset}) as tmp:
        with stage(f"prepare: read {opts.dataset}", log=progress) as st:
            dataset = load_dataset(opts, out)
            st["note"] = f"{len(dataset.interactions):,} interactions"
        lap("read")
        with stage("prepare: split (leave-one-out)", log=progress) as st:
            split = splits_lib.leave_one_out(dataset, max_history=opts.max_history,
                                             kcore=opts.kcore, min_rating=opts.min_rating)
            splits_lib.check_usable(split, dataset.interactions.source or opts.dataset)
            fps = splits_lib.fingerprints(split)
            file_hashes = write_split(split, dataset.items, os.path.join(tmp, "split"))
            st["note"] = f"{len(split.users):,} users, {len(split.all_items):,} items"
        lap("split")
        index_root = os.path.join(tmp, "index")
        with stage(f"prepare: index ({', '.join(opts.indexing)})", log=progress):
            sp_size = base_piece_count(opts)
            indexes, slots = fit_indexes(split, dataset.items, opts, index_root, sp_size)
        lap("index")
        sample = _TextSample()
        infos = write_tasks(split, dataset, indexes, opts, os.path.join(tmp, "tasks"), prefix,
                            sample, report=progress)
        skipped = skipped_families(opts.families, infos, dataset)
        for family, why in skipped.items():
            log(f"warning: family {family!r} not written: {why}")
        lap("tasks")
        vocab_path = None
        if opts.train_vocab:
            from flanrec.data import vocab as vocab_lib

            pieces = item_pieces(indexes, split.all_items) if opts.item_pieces else []
            size = opts.vocab_size
            if len(pieces) > size // 2:  # leave room for the words of the templates
                size = len(pieces) + size // 2
                log(f"  vocabulary: {len(pieces)} item pieces, so {size} pieces in all "
                    f"(--vocab_size {opts.vocab_size} is too small to hold them and the text)")
            with stage(f"prepare: vocabulary ({size:,} pieces, SentencePiece)", log=progress):
                vocab_path = vocab_lib.train_sentencepiece(
                    sample.texts, os.path.join(tmp, "vocab", "spm.model"),
                    vocab_size=size, user_defined_symbols=list(slots) + pieces)
            lap("vocab")
        vocabulary, why_no_vocab = resolve_prepare_vocab(vocab_path, slots)
        tries = {}
        if vocabulary is not None:
            sequence_methods = [m for m in indexes if any(f in opts.families
                                                          for f in SEQUENCE_FAMILIES)]
            with stage("prepare: item tries", log=progress):
                tries = build_tries(indexes, vocabulary, split.all_items, index_root,
                                    without_eos=sequence_methods)
            _drop_sequence_tasks(tries, infos, os.path.join(tmp, "tasks"), opts, log)
            lap("trie")
        doc = {
            "format": "flanrec.prepared",
            "version": 1,
            "dataset": opts.dataset,
            "task_prefix": prefix,
            "options": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in dataclasses.asdict(opts).items()},
            "index_methods": list(indexes),
            "index_suffixes": [INDEX_SUFFIX[m] for m in indexes],
            "counts": {
                "interactions": len(dataset.interactions),
                "users": len(split.users),
                "items": len(split.all_items),
                "train_windows": splits_lib.count_train_windows(split),
                "tasks": {name: {s: v["num_input_examples"] for s, v in info["splits"].items()}
                          for name, info in infos.items()},
            },
            "fingerprints": fps,
            "fingerprints_match_ml100k_loo": (fps == splits_lib.ML100K_FINGERPRINTS
                                              if opts.dataset == "ml-100k" else None),
            "files": file_hashes,
            "skipped_families": skipped,
            "new_tokens": len(slots),
            "semantic_embeddings": (indexes["semantic"].options.get("embedding_source")
                                    if "semantic" in indexes else None),
            "vocab": {
                "trained": "vocab/spm.model" if vocab_path else None,
                "trie_vocab": (str(vocabulary).replace(tmp, out)
                               if vocabulary is not None else None),
                "trie_vocab_id": (vocabulary_fingerprint(vocabulary)
                                  if vocabulary is not None else None),
                # The SentencePiece file tokenized with, so the dir registers with it later
                # even without FLANREC_VOCAB (vocab.recorded_vocab_path checks its md5).
                **_vocab_source(vocab_path, vocabulary),
                "trie_skipped_because": why_no_vocab or None,
            },
            "tries": tries,
            "timings_s": timings,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        doc["timings_s"]["total"] = round(time.time() - t0, 3)
        storage.write_json_atomic(os.path.join(tmp, "prepare.json"), doc, ensure_ascii=True)
    log(summary_table(doc, out))
    return doc


def _drop_sequence_tasks(tries: dict[str, dict[str, Any]], infos: dict[str, Any],
                         tasks_root: str, opts: PrepareOptions, log: Any) -> None:
    """Remove seqrec tasks whose item IDs are not one fixed number of tokens.

    Their targets run from one item into the next without EOS, so an item must end where its
    tokens end. Asked for by name (--families), that is an error; as part of the default
    family list, the task is dropped with a warning naming the fix.
    """
    for method, info in tries.items():
        why = info.get("noeos_error")
        if not why:
            continue
        for family in SEQUENCE_FAMILIES:
            dirname = f"{family}_{INDEX_SUFFIX[method]}"
            if dirname not in infos:
                continue
            msg = (f"{family} with --indexing {method}: {why} under this vocabulary; prepare "
                   "with --train_vocab (every item ID becomes one piece) or an indexing of "
                   "fixed-length codes")
            if opts.families != FAMILIES:
                raise UserError(msg)
            log(f"  warning: task {dirname} skipped: {msg}")
            shutil.rmtree(os.path.join(tasks_root, dirname))
            del infos[dirname]


def summary_table(doc: dict[str, Any], out: str) -> str:
    c = doc["counts"]
    lines = [
        f"prepared {doc['dataset']} -> {out}  ({doc['timings_s']['total']:.1f} s)",
        f"  {c['interactions']:,} interactions, {c['users']:,} users, {c['items']:,} items, "
        f"{c['train_windows']:,} train windows; indexings: {', '.join(doc['index_methods'])}",
    ]
    if doc.get("fingerprints_match_ml100k_loo") is not None:
        lines.append(f"  ml100k-loo fingerprints match: {doc['fingerprints_match_ml100k_loo']}")
    splits = sorted({s for t in c["tasks"].values() for s in t},
                    key=lambda s: ("train", "validation", "test", "test_unseen").index(s)
                    if s in ("train", "validation", "test", "test_unseen") else 9)
    head = f"  {'task':28s}" + "".join(f"{s:>13s}" for s in splits)
    lines += [head, "  " + "-" * (len(head) - 2)]
    for name, counts in sorted(c["tasks"].items()):
        task = f"{doc['task_prefix']}_{name}"
        lines.append(f"  {task:28s}" + "".join(
            f"{counts[s]:>13,d}" if s in counts else f"{'-':>13s}" for s in splits))
    if doc["vocab"]["trie_skipped_because"]:
        lines.append(f"  tries skipped: {doc['vocab']['trie_skipped_because']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def list_tasks(data_dirs: Sequence[str] = ()) -> list[str]:
    """Registered seqio task and mixture names after `import tasks` (+ given prepared dirs)."""
    import seqio

    import tasks

    for d in data_dirs:
        tasks.register_prepared(d)
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def build_parser() -> argparse.ArgumentParser:
    p = jobs.JobArgumentParser(
        prog="python -m flanrec.prepare",
        description="Prepare a recommendation dataset as SeqIO instruction tasks (offline).",
    )
    p.add_argument("--dataset", help="ml-100k, ml-1m, ml-20m, amazon-2014-<Cat>, "
                   "amazon-beauty, csv, parquet, ...")
    p.add_argument("--out", help="output directory (written atomically; an existing one is "
                   "replaced only if flanrec.prepare wrote it); default "
                   f"${locations.DATA_DIR_ENV} if set, else "
                   f"{locations.default_prepared_dir('DATASET')}")
    p.add_argument("--raw_dir", help="raw files (skips fetching); required for csv/parquet")
    p.add_argument("--cache_dir", default=default_cache_dir(),
                   help="fetch cache (default $FLANREC_CACHE or ~/.cache/flanrec)")
    p.add_argument("--indexing", default="sequential",
                   help="comma list of " + "|".join(INDEX_SUFFIX) + " (first one is primary)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_shards", type=int, default=2, help="TFRecord shards per split (>= 2)")
    p.add_argument("--train_vocab", action="store_true",
                   help="train a small SentencePiece model on the task text (vocab/spm.model)")
    p.add_argument("--vocab_size", type=int, default=4000)
    p.add_argument("--max_history", type=int, default=50)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seqrec_window", type=int, default=40,
                   help="seqrec: item targets per training example (decoder positions)")
    p.add_argument("--seqrec_encoder_items", type=int, default=10,
                   help="seqrec: items before the window that the encoder reads")
    p.add_argument("--seqrec_tilings", type=int, default=2,
                   help="seqrec: shifted cuts of each sequence into windows (each training "
                   "item is a target this many times, in different contexts)")
    p.add_argument("--no_item_pieces", action="store_true",
                   help="with --train_vocab: do not force every item ID to be one piece")
    p.add_argument("--num_candidates", type=int, default=20)
    p.add_argument("--kcore", type=int, default=None, help="k-core filter (e.g. 5 for Amazon)")
    p.add_argument("--min_rating", type=float, default=None,
                   help="keep interactions rated >= this (default: all)")
    p.add_argument("--task_prefix", default=None, help="default: from the dataset (ml100k)")
    p.add_argument("--offline", action="store_true", help="never download anything")
    p.add_argument("--no_unseen_eval", action="store_true",
                   help="skip the test_unseen split (held-out templates)")
    p.add_argument("--no_overwrite", action="store_true",
                   help="fail (before any work) if --out exists and is not empty")
    p.add_argument("--semantic_encoder", default=None, metavar="CHECKPOINT",
                   help="semantic indexing: embed item text (title, year, genres, ...) with "
                   "this T5 checkpoint's encoder (HF dir, T5X or flanrec checkpoint), "
                   "mean-pooled")
    p.add_argument("--semantic_encoder_vocab", default=None, metavar="SPM",
                   help="its SentencePiece model (default: the checkpoint dir's spiece.model, "
                   "then $FLANREC_VOCAB); a prepared dir means its vocab/spm.model")
    p.add_argument("--semantic_embeddings", default=None, metavar="FILE.npy",
                   help="semantic indexing: user-supplied item embeddings .npy (rows in "
                   "catalogue order, or see --semantic_embedding_items). Without this or "
                   "--semantic_encoder: TF-IDF of title/year/genres")
    p.add_argument("--semantic_embedding_items", default=None, metavar="FILE.json",
                   help=".json list / .txt lines naming each embeddings row's item id")
    p.add_argument("--semantic_batch_size", type=int, default=64)
    p.add_argument("--semantic_max_length", type=int, default=128,
                   help="item text tokens fed to the encoder (EOS included)")
    p.add_argument("--list_tasks", action="store_true",
                   help="print registered task and mixture names (after `import tasks`; "
                   "with --out, that dir is registered too) and exit")
    g = p.add_argument_group(
        "reading --dataset csv|parquet (what is not given here comes from gin read_table.*, "
        "then the defaults: ',' with a header naming user_id, item_id, timestamp)")
    g.add_argument("--delimiter", default=None,
                   help="field separator: ',', ';', '|', or tab as '\\t' or 'tab'")
    g.add_argument("--header", dest="header", action="store_true", default=None,
                   help="the first line names the columns (default)")
    g.add_argument("--no_header", dest="header", action="store_false",
                   help="no header line: name the columns with --columns")
    g.add_argument("--columns", default=None, metavar="NAME,NAME,...",
                   help="column names of a file without a header, in file order")
    g.add_argument("--user_col", default=None, help="column of the user id (user_id)")
    g.add_argument("--item_col", default=None, help="column of the item id (item_id)")
    g.add_argument("--time_col", default=None, help="column of the integer timestamp "
                   "(timestamp)")
    g.add_argument("--rating_col", default=None,
                   help="column of the rating; default: a column named rating/score/stars "
                   "if there is one; 'none' reads no ratings")
    g.add_argument("--title_col", default=None,
                   help="column of the item title, in the log itself or in --items_file "
                   "(title)")
    g.add_argument("--items_file", default=None,
                   help="CSV/Parquet of item metadata (the item id column and --title_col)")
    g.add_argument("--encoding", default=None, help="text encoding of the file (utf-8)")
    g.add_argument("--gin_file", action="append", default=[],
                   help="gin file binding read_table.* (repeatable)")
    g.add_argument("--gin_bindings", action="append", default=[],
                   help="raw gin binding, e.g. \"read_table.delimiter = ';'\" (repeatable); "
                   "--gin.NAME=VALUE works too")
    jobs.add_verbose_flag(p)
    return p


def table_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The read_table keywords the user gave on the command line (nothing else, so gin
    bindings still apply to the rest). Refuses options that cannot work, by flag name."""
    out: dict[str, Any] = {}
    if args.delimiter is not None:
        d = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(args.delimiter, args.delimiter)
        if len(d) != 1:
            raise UserError(f"--delimiter must be one character (or '\\t' / 'tab'), got "
                            f"{args.delimiter!r}")
        out["delimiter"] = d
    if args.columns is not None:
        names = [c.strip() for c in args.columns.split(",")]
        if not all(names) or len(set(names)) != len(names):
            raise UserError(f"--columns must be distinct, non-empty names, got {args.columns!r}")
        if args.header:
            raise UserError("--columns names the columns of a file without a header; it "
                            "cannot go with --header")
        out["column_names"] = names
        out["header"] = False
    elif args.header is False:
        raise UserError("--no_header needs --columns NAME,NAME,... (the column names in "
                        "file order)")
    elif args.header is not None:
        out["header"] = True
    for flag, key in (("user_col", "user_col"), ("item_col", "item_col"),
                      ("time_col", "timestamp_col"), ("title_col", "title_col"),
                      ("encoding", "encoding"), ("items_file", "items_path")):
        value = getattr(args, flag)
        if value is not None:
            out[key] = value
    if args.rating_col is not None:
        out["rating_col"] = "" if args.rating_col.lower() == "none" else args.rating_col
    if "encoding" in out:
        import codecs

        try:
            codecs.lookup(out["encoding"])
        except LookupError:
            raise UserError(f"--encoding {out['encoding']!r}: unknown encoding (e.g. utf-8, "
                            "latin-1, cp1252)") from None
    return out


def configure_table_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parse gin files/bindings for the table reader (read_table.* ...), as the other jobs
    take them; a misspelled name fails here with gin's message."""
    import gin

    import flanrec.data.sources.table  # noqa: F401 - registers read_table with gin

    gin.clear_config()
    for path in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(list(files), list(bindings))


def cli(argv: list[str]) -> int:
    from flanrec.gin_cli import bindings_from_flags

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = bindings_from_flags(parser, rest, args.gin_bindings)
    table_options = table_options_from_args(args)
    if args.gin_file or bindings:
        configure_table_gin(args.gin_file, bindings)
    if args.list_tasks:
        # When a searched dir holds no prepared data, `import tasks` has said so (a warning
        # naming the dir and the command that prepares it).
        for name in list_tasks([args.out] if args.out else []):
            print(name)
        return 0
    if not args.dataset:
        build_parser().error("--dataset is required (or --list_tasks)")
    out = args.out or default_out(args.dataset)
    opts = PrepareOptions(
        dataset=args.dataset, out=out, raw_dir=args.raw_dir, cache_dir=args.cache_dir,
        indexing=tuple(m.strip() for m in args.indexing.split(",") if m.strip()),
        seed=args.seed, num_shards=args.num_shards, train_vocab=args.train_vocab,
        vocab_size=args.vocab_size, max_history=args.max_history,
        families=tuple(f.strip() for f in args.families.split(",") if f.strip()),
        seqrec_window=args.seqrec_window, seqrec_encoder_items=args.seqrec_encoder_items,
        seqrec_tilings=args.seqrec_tilings, item_pieces=not args.no_item_pieces,
        num_candidates=args.num_candidates, kcore=args.kcore, min_rating=args.min_rating,
        task_prefix=args.task_prefix, allow_download=not args.offline,
        unseen_eval=not args.no_unseen_eval, overwrite=not args.no_overwrite,
        semantic_encoder=args.semantic_encoder,
        semantic_encoder_vocab=args.semantic_encoder_vocab,
        semantic_embeddings=args.semantic_embeddings,
        semantic_embedding_items=args.semantic_embedding_items,
        semantic_batch_size=args.semantic_batch_size,
        semantic_max_length=args.semantic_max_length,
        table_options=table_options,
    )
    prepare(opts)
    return 0


def main(argv: list[str] | None = None) -> int:
    return jobs.run("flanrec.prepare", cli, argv)


if __name__ == "__main__":
    sys.exit(main())
