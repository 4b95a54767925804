"""A seqio source that renders a family's instruction examples when they are read.

Prepared dirs store what grows with the data (split sequences, item metadata, indexes,
tries, vocabulary), not rendered text: at MovieLens-1M scale the rendered examples of every
family would be 10x the interactions (1.2 GB), and changing one template would mean
preparing again.
`FamilySource` builds the examples from the stored split with the family's own builder
(`flanrec.data.families`), deterministically, one host's share (`shard_info`) at a time.

Templates per epoch. Epoch 0 is phrased exactly as the family's builder chooses (a hash of
seed, family, split and example key). With
`rephrase_epochs.enabled = True` (gin; `flanrec.data.prepared_tasks`), `vary_templates`,
a preprocessor placed after seqio's cache point (and so after seqio's repeat), counts the
examples it has seen in its stream; from the second pass over a train split on, it
re-phrases each example with the template the hash of (seed, epoch, key) picks among the
seen ones, and tokenizes it again. The count restarts with every new pipeline, so a
resumed run that skips N batches of a fresh pipeline sees exactly the examples the first
run saw (exact resume), and seqio's offline cache (which holds epoch 0, tokenized) stays
valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flanrec.data import families as families_lib
from flanrec.data import layout, prepared, templates
from flanrec.data.choice import choose_template
from flanrec.data.families import UNSEEN_SPLIT, FamilyData
from flanrec.data.indexing import ItemIndex
from flanrec.files import storage

log = logging.getLogger("flanrec.tasks")

# Features only the source and vary_templates use; they never reach a model batch.
RENDER_FEATURES = ("_fields", "_key", "_template_family", "_epoch_size")

_TF_DTYPE = {"string": tf.string, "int64": tf.int64, "float32": tf.float32,
             "string_list": tf.string, "int64_list": tf.int64}


def load_family_data(data_dir: str, index_method: str | None) -> FamilyData:
    """The split, item metadata, users and index of a prepared dir (cached per process).

    The cache key includes prepare.json's sha256, so a dir prepared again in the same
    process (a notebook, the tests) is read again.
    """

    doc = storage.read_text(storage.join(data_dir, layout.PREPARE_FILE))
    return _load(data_dir, index_method, hashlib.sha256(doc.encode("utf-8")).hexdigest())


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached(data_dir: str, index_method: str | None, doc_sha: str) -> FamilyData:

    doc = prepared.read_prepare_json(data_dir)
    methods = doc.get("index_methods") or []
    method = index_method or (methods[0] if methods else None)
    if method is None:
        raise prepared.PreparedDataError(
            f"{data_dir}/{layout.PREPARE_FILE}: no index_methods")
    index = ItemIndex.load(storage.join(data_dir, layout.index_dir(method)))
    options = doc.get("options") or {}
    return FamilyData(split=prepared.load_split(data_dir), index=index,
                      meta=prepared.load_meta(data_dir), users=prepared.load_users(data_dir),
                      options=options, seed=int(options.get("seed", 0)),
                      task_prefix=str(doc.get("task_prefix") or ""))


def _load(data_dir: str, index_method: str | None, doc_sha: str) -> FamilyData:
    with _LOCK:  # seqio builds mixture members from several threads
        return _cached(data_dir, index_method, doc_sha)


def feature_schema(family: families_lib.Family) -> dict[str, str]:
    """Kinds of every feature a family's examples carry (the info.json `features`)."""
    schema = {"inputs": "string", "targets": "string", "_task_name": "string",
              "_template_idx": "int64", "_template_type": "string"}
    schema.update(family.extra_features)
    return schema


def record(family: families_lib.Family, index_method: str | None,
           counts: Mapping[str, int], indexing: str | None = None) -> dict[str, Any]:
    """A task's record (what prepare writes to its info.json) for `family` over one
    indexing: target kind and layout, features, index file and counts per split."""
    return {"family": family.name, "target_kind": family.target_kind,
            "index_method": index_method, "indexing": indexing if family.indexed else None,
            "index_file": layout.index_file(index_method) if index_method else None,
            "features": feature_schema(family), "target_layout": family.target_layout,
            "targets_eos": family.targets_eos,
            "splits": {s: {"num_input_examples": n} for s, n in counts.items()}}


_CHUNK = 256
"""Examples per Python -> TF hand-over: tf.data's generator costs ~1 ms per call, so one call
per example would hold the pipeline under 1,000 examples/s; a chunk of 256 makes it ~4x
faster (the rendering itself runs at ~30,000 examples/s)."""


def _signature(schema: Mapping[str, str], rephrase: bool) -> dict[str, Any]:
    """Chunked specs: a leading batch axis, list features ragged."""
    sig: dict[str, Any] = {
        k: (tf.RaggedTensorSpec([None, None], _TF_DTYPE[kind], ragged_rank=1)
            if kind.endswith("_list") else tf.TensorSpec([None], _TF_DTYPE[kind]))
        for k, kind in schema.items()}
    if not rephrase:
        return sig
    sig.update({"_fields": tf.TensorSpec([None], tf.string),
                "_key": tf.TensorSpec([None], tf.string),
                "_template_family": tf.TensorSpec([None], tf.string),
                "_epoch_size": tf.TensorSpec([None], tf.int64)})
    return sig


def _chunk(rows: list[dict[str, Any]], schema: Mapping[str, str], rephrase: bool
           ) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    render = [("_fields", "string"), ("_key", "string"), ("_template_family", "string"),
              ("_epoch_size", "int64")] if rephrase else []
    for k, kind in list(schema.items()) + render:
        values = [r[k] for r in rows]
        if kind.endswith("_list"):
            out[k] = tf.ragged.constant(values, dtype=_TF_DTYPE[kind], ragged_rank=1) \
                if any(values) else tf.RaggedTensor.from_row_lengths(
                    tf.constant([], _TF_DTYPE[kind]), [0] * len(values))
        elif kind == "string":
            out[k] = np.array([v.encode("utf-8") if isinstance(v, str) else v
                               for v in values], dtype=object)
        else:
            out[k] = np.asarray(values, dtype=np.int64 if kind == "int64" else np.float32)
    return out


def shard_size(total: int, index: int, count: int) -> int:
    """Examples in shard `index` of `count` when shard i holds every count-th from i."""
    return len(range(index, total, count))


class FamilySource(seqio.DataSource):
    """Examples of one family over one prepared dir and item indexing, rendered on read."""

    def __init__(self, data_dir: str, family: str, index_method: str | None,
                 num_input_examples: Mapping[str, int], rephrase: bool = False,
                 info: Mapping[str, Any] | None = None, task_dir: str | None = None):
        """`info`: the task's record (its info.json, or the same built for a family
        registered over the dir); `task_dir`: the task's directory name under `tasks/`.
        Both default to what the family and counts say; `flanrec.data.task_meta` reads
        them back, so a registered task names everything inference and eval need."""
        super().__init__(splits=list(num_input_examples),
                         num_input_examples=dict(num_input_examples))
        self.data_dir = data_dir
        self.family = family
        self.index_method = index_method
        if info is None:
            info = record(families_lib.get(family), index_method, num_input_examples)
        self.info: dict[str, Any] = dict(info)
        self.task_dir = task_dir or families_lib.get(family).task_dirname(info.get("indexing"))
        # Carry RENDER_FEATURES for vary_templates only when it runs: four fewer tensors
        # per example through every later map otherwise.
        self.rephrase = rephrase

    @property
    def family_spec(self) -> families_lib.Family:
        """The registered `Family` this source renders (what its name stands for)."""
        return families_lib.get(self.family)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True  # shard i of n is every n-th example: any n works

    def list_shards(self, split: str) -> Sequence[str]:
        return [f"{self.data_dir}#{self.family}/{self.index_method}/{split}"]

    def _split_plan(self, split: str) -> tuple[str, tuple[str, ...]]:
        for out, split_name, ttypes in families_lib.get(self.family).output_splits():
            if out == split:
                return split_name, ttypes
        raise ValueError(f"family {self.family}: no split {split!r} (has {self.splits})")

    def examples(self, split: str, shard_index: int = 0, num_shards: int = 1
                 ) -> Iterator[dict[str, Any]]:
        """The rendered examples of `split` as Python dicts (what the dataset yields)."""
        family = families_lib.get(self.family)
        split_name, ttypes = self._split_plan(split)
        data = load_family_data(self.data_dir, self.index_method)
        return family.examples(data, split_name, ttypes, shard_index, num_shards)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *,
                    sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # order is the family's
        family = families_lib.get(self.family)
        schema = feature_schema(family)
        index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        # Only the train split is read for several epochs; evaluation is phrased once.
        epoch_size = (shard_size(self.num_input_examples(split), index, count)
                      if split == "train" else 0)

        def generate() -> Iterator[dict[str, Any]]:
            rows = []
            for ex in self.examples(split, index, count):
                row = {k: _plain(ex.get(k), kind) for k, kind in schema.items()}
                if self.rephrase:
                    row["_fields"] = json.dumps(ex.get("_fields", {}), ensure_ascii=False)
                    row["_key"] = str(ex.get("_key", ""))
                    row["_template_family"] = str(ex.get("_template_family", ""))
                    row["_epoch_size"] = epoch_size
                rows.append(row)
                if len(rows) == _CHUNK:
                    yield _chunk(rows, schema, self.rephrase)
                    rows = []
            if rows:
                yield _chunk(rows, schema, self.rephrase)

        chunks = tf.data.Dataset.from_generator(
            generate, output_signature=_signature(schema, self.rephrase))
        return chunks.unbatch()


def _plain(value: Any, kind: str) -> Any:
    if kind.endswith("_list"):
        return list(value or [])
    if value is None:
        return "" if kind == "string" else 0
    return value


def rephrase(fields_json: bytes, key: bytes, template_family: bytes, epoch: int, seed: int
             ) -> tuple[str, str, int, str]:
    """(inputs, targets, template index, template type) of an example in a later epoch."""

    tfam = template_family.decode("utf-8")
    pool = templates.template_indices(tfam, ("seen",))
    idx = choose_template(seed, tfam, "train", f"{key.decode('utf-8')}@{epoch}", pool)
    inputs, targets = templates.render(tfam, idx, **json.loads(fields_json.decode("utf-8")))
    return inputs, targets, idx, templates.template_type(tfam, idx)


def vary_templates(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                   seed: int = 0) -> tf.data.Dataset:
    """Re-phrase train examples after their first epoch; see the module docstring.

    `seed` is the prepared dir's seed (bound by the task registration, not seqio's
    shuffle seed), so the phrasing is a property of the data, like epoch 0's. The position
    in the stream comes from `enumerate` (restarting with every iterator), and only the six
    tensors a re-phrasing changes pass through the `tf.cond` (a `scan` and a whole-example
    `cond` cost twice as much). Still one more map per example: ~20% of the pipeline.
    """
    if "_fields" not in dataset.element_spec:  # e.g. a seqio cache built with it off
        log.warning("rephrase_epochs: these examples carry no template fields (a seqio "
                    "cache built without rephrase_epochs?); every epoch keeps epoch 0's")
        return dataset
    vocab = {k: f.vocabulary for k, f in output_features.items() if k in ("inputs", "targets")}

    def again(position: tf.Tensor, ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        size = ex.pop("_epoch_size")
        fields, key, tfam = ex.pop("_fields"), ex.pop("_key"), ex.pop("_template_family")
        epoch = tf.where(size > 0, position // tf.maximum(size, 1), tf.zeros_like(size))
        names = [n for n in ("inputs", "targets") if n in ex]

        def rephrased() -> tuple[tf.Tensor, ...]:
            inputs, targets, idx, ttype = tf.numpy_function(
                lambda f, k, t, e: _as_numpy(rephrase(f, k, t, int(e), seed)),
                [fields, key, tfam, epoch], [tf.string, tf.string, tf.int64, tf.string],
                stateful=False)
            texts = {"inputs": inputs, "targets": targets}
            out = []
            for name in names:
                text = tf.reshape(texts[name], [])
                out += [tf.cast(vocab[name].encode_tf(text), ex[name].dtype), text]
            return (*out, tf.reshape(idx, []), tf.reshape(ttype, []))

        def unchanged() -> tuple[tf.Tensor, ...]:
            out = []
            for name in names:
                out += [ex[name], ex[f"{name}_pretokenized"]]
            return (*out, ex["_template_idx"], ex["_template_type"])

        values = tf.cond(epoch > 0, rephrased, unchanged)
        for j, name in enumerate(names):
            ex[name], ex[f"{name}_pretokenized"] = values[2 * j], values[2 * j + 1]
        ex["_template_idx"], ex["_template_type"] = values[-2], values[-1]
        return ex

    return dataset.enumerate().map(again, num_parallel_calls=tf.data.AUTOTUNE)


def _as_numpy(values: tuple[str, str, int, str]) -> tuple[Any, ...]:
    import numpy as np

    inputs, targets, idx, ttype = values
    return (np.bytes_(inputs.encode("utf-8")), np.bytes_(targets.encode("utf-8")),
            np.int64(idx), np.bytes_(ttype.encode("utf-8")))


__all__ = ["FamilySource", "RENDER_FEATURES", "UNSEEN_SPLIT", "feature_schema",
           "load_family_data", "vary_templates"]
