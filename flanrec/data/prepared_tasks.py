"""SeqIO tasks and mixtures over a `flanrec.prepare` output (and families from user code).

`register_prepared` makes one seqio.Task per `tasks/<dir>/info.json` of a prepared dir,
`register_family_task` one for any registered family (`flanrec.data.families`) over it, and
`register_rec_mixture` the FLAN-style mixtures of a dir's tasks. The building blocks they
use (features, sources, preprocessors, postprocessors) are `flanrec.data.seqio_tasks`'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import gin
import seqio
import tensorflow as tf

from flanrec.data import families, family_source, writer
from flanrec.data import vocab as vocab_lib
from flanrec.data.family_source import FamilySource
from flanrec.data.prepared import read_prepare_json
from flanrec.data.seqio_tasks import (
    example_count_rate,
    output_features,
    postprocess_and_metrics,
    register_mixture,
    replace_task,
    standard_preprocessors,
    tfrecord_source,
)
from flanrec.files import outputs

PREPARED_TASKS: set[str] = set()
"""Names registered by `register_prepared`/`register_family_task`: one preprocessed example
per source example, which `flanrec.data.seqio_cache` relies on to recognise a cache of
older data."""


def prepared_task_dirs(data_dir: str) -> list[str]:
    """Names of the task directories (`DIR/tasks/*/info.json`), sorted."""
    root = os.path.join(data_dir, "tasks")
    if not tf.io.gfile.isdir(root):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(root)]
    return sorted(n for n in names
                  if tf.io.gfile.exists(os.path.join(root, n, writer.INFO_FILE)))


def register_prepared(
    data_dir: str,
    prefix: str = "ml100k",
    vocabulary: seqio.Vocabulary | None = None,
    replace: bool = True,
) -> list[str]:
    """Register one seqio.Task per task directory of a `flanrec.prepare` output.

    Task names are `{prefix}_{dir}` (e.g. `ml100k_seq_seqidx`, `ml100k_rating`). The
    vocabulary defaults to `flanrec.data.vocab.vocabulary_for_prepared(data_dir)`. With
    `replace=False` an already registered name raises (seqio's own behaviour). Returns the
    registered names.
    """

    if not tf.io.gfile.exists(os.path.join(data_dir, "prepare.json")):
        raise FileNotFoundError(
            f"{data_dir}: no prepare.json, so not a flanrec.prepare output. Run "
            f"`python -m flanrec.prepare --dataset ml-100k --out {data_dir}` first."
        )

    outputs.require_complete(data_dir, "prepared data dir")  # an unfinished gs:// upload
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    feats = output_features(vocabulary)
    names = []
    for dirname in prepared_task_dirs(data_dir):
        task_dir = os.path.join(data_dir, "tasks", dirname)
        info = writer.read_info(task_dir)
        name = f"{prefix}_{dirname}"
        index = info.get("index_file")
        postprocess, metrics = postprocess_and_metrics(
            info.get("target_kind", "text"),
            os.path.join(data_dir, index) if index else None,
            info.get("target_layout", "single"),
        )
        kwargs = dict(
            source=prepared_source(data_dir, task_dir, info),
            output_features=feats,
            preprocessors=standard_preprocessors(name, info.get("targets_eos", True),
                                                 _rephrase_seed(data_dir, info)),
            postprocess_fn=postprocess,
            metric_fns=metrics,
        )
        if replace:
            replace_task(name, **kwargs)
        else:
            seqio.TaskRegistry.add(name, **kwargs)
        PREPARED_TASKS.add(name)
        names.append(name)
    return names


def prepared_source(data_dir: str, task_dir: str, info: Mapping[str, Any]) -> seqio.DataSource:
    """The seqio source of one prepared task: rendered from the stored split (what prepare
    writes now) or the TFRecords an older prepare wrote."""
    if info.get("source") != "rendered":
        return tfrecord_source(task_dir, info)

    counts = {s: v["num_input_examples"] for s, v in info["splits"].items()}
    return FamilySource(data_dir, info["family"], info.get("index_method"), counts,
                        rephrase=rephrase_epochs())


@gin.configurable
def rephrase_epochs(enabled: bool = False) -> bool:
    """Whether tasks rendered on read phrase each later epoch with other seen templates
    (`family_source.vary_templates`; gin: `rephrase_epochs.enabled = True`).

    Off by default: the step costs ~20% of the input pipeline's throughput (one more map
    over every example), and with it off a task streams exactly the examples an earlier
    flanrec wrote to disk. Bound before the task module is imported (a run's gin file is).
    """
    return enabled


def _rephrase_seed(data_dir: str, info: Mapping[str, Any]) -> int | None:
    if info.get("source") != "rendered" or not rephrase_epochs():
        return None
    with tf.io.gfile.GFile(os.path.join(data_dir, "prepare.json")) as f:
        return int((json.load(f).get("options") or {}).get("seed", 0))


def register_family_task(
    data_dir: str,
    family: str,
    index_method: str | None = None,
    prefix: str | None = None,
    vocabulary: seqio.Vocabulary | None = None,
) -> str:
    """Register a seqio task of any registered family over a prepared dir; returns its name.

    The way to train on a family of your own (`flanrec.data.families.register`): nothing is
    prepared again, since the dir holds the split and the examples are rendered on read.
    The task is `{prefix}_{family}_{indexing suffix}` (indexed families) or
    `{prefix}_{family}`; `index_method` defaults to the dir's first indexing; its
    info.json-equivalent is kept on the source (`source.info`) for the inference job.
    """

    outputs.require_complete(data_dir, "prepared data dir")
    doc = read_prepare_json(data_dir)
    fam = families.get(family)
    methods = list(doc.get("index_methods") or [])
    method = index_method or (methods[0] if methods else None)
    if method not in methods:
        raise ValueError(f"{data_dir}: no item indexing {method!r} (prepared: {methods})")
    suffix = doc["index_suffixes"][methods.index(method)]
    prefix = prefix or doc.get("task_prefix") or "data"
    name = f"{prefix}_{fam.task_dirname(suffix)}"
    data = family_source.load_family_data(data_dir, method)
    counts = {}
    for out_split, split_name, _ in fam.output_splits():
        n = fam.num_examples(data, split_name)
        if n:
            counts[out_split] = n
    if not counts:
        raise ValueError(f"family {family} has no examples in {data_dir}: "
                         f"{fam.unavailable(data) or 'every split is empty'}")
    source = family_source.FamilySource(data_dir, family, method, counts,
                                        rephrase=rephrase_epochs())
    source.info = {"family": family, "target_kind": fam.target_kind, "index_method": method,
                   "index_file": f"index/{method}/item_index.json",
                   "features": family_source.feature_schema(fam),
                   "target_layout": fam.target_layout, "targets_eos": fam.targets_eos,
                   "splits": {s: {"num_input_examples": n} for s, n in counts.items()}}
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    postprocess, metrics = postprocess_and_metrics(
        fam.target_kind, os.path.join(data_dir, source.info["index_file"]), fam.target_layout)
    seed = int((doc.get("options") or {}).get("seed", 0)) if rephrase_epochs() else None
    replace_task(name, source=source, output_features=output_features(vocabulary),
                 preprocessors=standard_preprocessors(name, fam.targets_eos, seed),
                 postprocess_fn=postprocess, metric_fns=metrics)
    PREPARED_TASKS.add(name)
    return name


def prepared_family_tasks(data_dir: str, prefix: str = "ml100k") -> dict[str, dict[str, Any]]:
    """task name -> {family, indexing, num_train} for the tasks of a prepared dir."""
    out = {}
    for dirname in prepared_task_dirs(data_dir):
        info = writer.read_info(os.path.join(data_dir, "tasks", dirname))
        num_train = info["splits"].get("train", {}).get("num_input_examples", 0)
        out[f"{prefix}_{dirname}"] = {
            "family": info.get("family", dirname),
            "indexing": info.get("indexing"),
            "num_train": num_train,
            # A seqrec example carries a window of targets: mixtures weigh it by those.
            "train_targets": info.get("train_targets") or num_train,
        }
    return out




# Rates by train-example count, capped per family (FLAN style). `seq` is uncapped: it is the
# task the ml100k-loo numbers are reported on; the auxiliary families are capped so that they
# support rather than swamp it.
DEFAULT_FAMILY_CAPS: dict[str, int | None] = {
    name: families.get(name).mixture_cap for name in families.BUILTIN_FAMILIES}


@gin.configurable
def register_rec_mixture(
    data_dir: str,
    prefix: str = "ml100k",
    family_caps: Mapping[str, int | None] | None = None,
    default_cap: int | None = 30_000,
    temperature: float = 1.0,
) -> list[str]:
    """Register `{prefix}_rec_mix` (+ `{prefix}_rec_mix_{idx}` per extra indexing).

    `{prefix}_rec_mix` holds the index-free tasks and those of the dir's first indexing
    (tasks of different item indexings name items differently, so they do not belong in one
    mixture by default); `{prefix}_rec_mix_{idx}` holds the tasks of another indexing.
    Rate of a task = its train examples (for seqrec: its train target items, since each
    example trains a window of them), capped by its family's cap (`family_caps`, default
    DEFAULT_FAMILY_CAPS; `default_cap` for other families).
    Returns the mixture names. The tasks must be registered already (`register_prepared`).
    """
    caps = dict(DEFAULT_FAMILY_CAPS)
    caps.update(family_caps or {})
    with tf.io.gfile.GFile(os.path.join(data_dir, "prepare.json")) as f:
        prep = json.load(f)
    indexings = [s for s in prep.get("index_suffixes", [])]
    tasks = prepared_family_tasks(data_dir, prefix)
    names = []
    for n, suffix in enumerate(indexings or [None]):
        members = [
            (name, example_count_rate(t["train_targets"], caps.get(t["family"], default_cap),
                                      temperature))
            for name, t in sorted(tasks.items())
            # Index-free tasks are rendered with the first indexing's IDs: only there.
            if t["num_train"] > 0 and t["indexing"] in ((None, suffix) if n == 0 else (suffix,))
        ]
        if not members:
            continue
        mix = f"{prefix}_rec_mix" if n == 0 else f"{prefix}_rec_mix_{suffix}"
        register_mixture(mix, members)
        names.append(mix)
    return names
