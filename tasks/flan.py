"""The Flan bridge: instruction data exported from the Flan 2022 collection as a seqio task.

FLAN itself cannot be installed here, but its mixtures can be exported (e.g. with seqio's
cache job or `Mixture.get_dataset` → JSONL/TFRecord) to files of `inputs`, `targets` and
the metadata `_task_name`, `_template_type`, `_template_idx`. Point the gin macro or env var
`FLANREC_FLAN_DATA` at them:

* a directory: every `{split}*.jsonl` / `{split}*.tfrecord*` file is that split's data
  (split = train, validation, test);
* a file or glob: the train split.

The task `flan2022_bridge` is then registered on import. Its vocabulary is that of the
registered recommendation tasks (so the two can be mixed), else `get_vocabulary()`.
"""

from __future__ import annotations

import logging
import os

import gin
import seqio
import tensorflow as tf

from flanrec.data import seqio_tasks
from flanrec.data import vocab as vocab_lib

log = logging.getLogger("flanrec.tasks")

FLAN_DATA_ENV = "FLANREC_FLAN_DATA"
BRIDGE_TASK = "flan2022_bridge"
SPLITS = ("train", "validation", "test")


@gin.configurable
def flan_data(path: str | None = None) -> str | None:
    """Where Flan-format instruction data lives: `path`, gin macro or env FLANREC_FLAN_DATA."""
    value = path or vocab_lib.gin_macro(FLAN_DATA_ENV) or os.environ.get(FLAN_DATA_ENV)
    return os.path.expanduser(value) if value else None


def _split_files(path: str) -> dict[str, list[str]]:
    if tf.io.gfile.isdir(path):
        out = {}
        for split in SPLITS:
            files = sorted(tf.io.gfile.glob(os.path.join(path, f"{split}*.jsonl"))
                           + tf.io.gfile.glob(os.path.join(path, f"{split}*.tfrecord*")))
            if files:
                out[split] = files
        if not out:
            raise FileNotFoundError(
                f"{path}: no {{train,validation,test}}*.jsonl or *.tfrecord* files")
        return out
    files = sorted(tf.io.gfile.glob(path))
    if not files:
        raise FileNotFoundError(f"{FLAN_DATA_ENV}={path}: no file matches")
    return {"train": files}


def _tfrecord_metadata(first_file: str) -> dict[str, tf.dtypes.DType]:
    """Which metadata features the export carries, with their dtypes (from one record)."""
    from tensorflow.core.example import example_pb2

    for raw in tf.data.TFRecordDataset(first_file).take(1):
        feats = example_pb2.Example.FromString(raw.numpy()).features.feature
        out = {}
        for key, want in seqio_tasks.METADATA_FEATURES.items():
            if key in feats:
                kind = feats[key].WhichOneof("kind")
                out[key] = tf.int64 if kind == "int64_list" else (
                    tf.float32 if kind == "float_list" else tf.string)
                if out[key] != want:
                    raise ValueError(f"{first_file}: feature {key} is {kind}, expected "
                                     f"{want.name}")
        return out
    raise ValueError(f"{first_file}: empty TFRecord file")


def _default_vocabulary() -> seqio.Vocabulary:
    """The rec tasks' vocabulary when any is registered (they must match to be mixed).

    Several registered prepared dirs with different vocabularies make the choice ambiguous:
    that is an error naming them, never a silent pick of whichever registered first.
    """
    from tasks import _prepared

    found: dict[str, seqio.Vocabulary] = {}
    for prefix in _prepared.REGISTERED:
        for name in seqio.TaskRegistry.names():
            if name.startswith(prefix + "_"):
                found[prefix] = seqio.get_mixture_or_task(name).output_features[
                    "targets"].vocabulary
                break
    distinct = []
    for vocab in found.values():
        if all(vocab != v for v in distinct):
            distinct.append(vocab)
    if len(distinct) > 1:
        raise ValueError(
            f"prepared dirs {sorted(found)} are registered with different vocabularies; pass "
            "vocabulary= to register_flan_bridge (the one of the tasks you will mix it with)")
    if distinct:
        return distinct[0]
    return vocab_lib.get_vocabulary()


def register_flan_bridge(path: str, name: str = BRIDGE_TASK,
                         vocabulary: seqio.Vocabulary | None = None) -> seqio.Task:
    """Register `name` over Flan-format JSONL or TFRecord files at `path` (see module doc)."""
    files = _split_files(path)
    vocabulary = vocabulary or _default_vocabulary()
    kinds = {f.endswith(".jsonl") for fs in files.values() for f in fs}
    if kinds == {True}:
        return seqio_tasks.register_jsonl_task(name, files, vocabulary)
    if kinds == {False}:
        first = next(iter(files.values()))[0]
        return seqio_tasks.register_tfrecord_task(
            name, files, vocabulary, extra_features=_tfrecord_metadata(first))
    raise ValueError(f"{path}: mixes JSONL and TFRecord files; use one format")


def _register_from_config() -> str | None:
    path = flan_data()
    if not path:
        return None
    try:
        register_flan_bridge(path)
    except (FileNotFoundError, ValueError, vocab_lib.VocabularyNotFoundError) as e:
        log.warning("Flan bridge task not registered: %s", e)
        return None
    return BRIDGE_TASK


BRIDGE = _register_from_config()
"""The bridge task's name when registered on import, else None."""
