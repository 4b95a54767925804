"""SeqIO tasks and mixtures over a `flanrec.prepare` output (and families from user code).

`register_prepared` makes one seqio.Task per `tasks/<dir>/info.json` of a prepared dir,
`register_family_task` one for any registered family (`flanrec.data.families`) over it, and
`register_rec_mixture` the FLAN-style mixtures of a dir's tasks. The building blocks they
use (features, sources, preprocessors, postprocessors) are `flanrec.data.seqio_tasks`'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import gin
import seqio
import tensorflow as tf

from flanrec.data import families, layout, prepared, writer
from flanrec.data import vocab as vocab_lib
from flanrec.data.family_source import FamilySource, load_family_data, record
from flanrec.data.seqio_tasks import (
    example_count_rate,
    output_features,
    postprocess_and_metrics,
    register_mixture,
    replace_task,
    standard_preprocessors,
)
from flanrec.data.task_meta import registered_data_dirs
from flanrec.files import outputs, storage

log = logging.getLogger("flanrec.tasks")

PREPARED_TASKS: set[str] = set()
"""Names registered by `register_prepared`/`register_family_task`: one preprocessed example
per source example, which `flanrec.data.seqio_cache` relies on to recognise a cache built
from other data."""

_WARNED_STALE: set[str] = set()


def warn_if_examples_are_stale(data_dir: str, doc: Mapping[str, Any] | None = None) -> None:
    """Log `prepared.stale_examples_warning` once per dir and process.

    Every job that reads a prepared dir registers its tasks here (train, infer, eval,
    `import tasks`), so a dir an older flanrec wrote is named whichever job a user starts
    with, not only by the quickstart; a warning, since the dir still loads and is the user's.
    """
    key = storage.normalize(data_dir)
    if key in _WARNED_STALE:
        return
    _WARNED_STALE.add(key)
    line = prepared.stale_examples_warning(
        dict(doc) if doc is not None else prepared.read_prepare_json(data_dir), data_dir)
    if line:
        log.warning("%s", line)


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
    if not tf.io.gfile.exists(os.path.join(data_dir, layout.PREPARE_FILE)):
        raise FileNotFoundError(
            f"{data_dir}: no {layout.PREPARE_FILE}, so not a flanrec.prepare output. Run "
            f"`python -m flanrec.prepare --dataset ml-100k --out {data_dir}` first."
        )

    outputs.require_complete(data_dir, "prepared data dir")  # an unfinished gs:// upload
    warn_if_examples_are_stale(data_dir)
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
            source=prepared_source(data_dir, dirname, info),
            output_features=feats,
            preprocessors=standard_preprocessors(name, info.get("targets_eos", True),
                                                 _rephrase_seed(data_dir)),
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


def prepared_source(data_dir: str, dirname: str, info: Mapping[str, Any]) -> FamilySource:
    """The seqio source of the prepared task `tasks/<dirname>`: its family's examples,
    rendered from the stored split when read."""
    if info.get("source") != "rendered":
        raise prepared.PreparedDataError(
            f"{data_dir}/{layout.task_dir(dirname)}/{writer.INFO_FILE}: source "
            f"{info.get('source')!r}, expected 'rendered' (examples built from the stored "
            "split); run flanrec.prepare on the data again")
    counts = {s: v["num_input_examples"] for s, v in info["splits"].items()}
    return FamilySource(data_dir, info["family"], info.get("index_method"), counts,
                        rephrase=rephrase_epochs(), info=info, task_dir=dirname)


@gin.configurable
def rephrase_epochs(enabled: bool = False) -> bool:
    """Whether tasks rendered on read phrase each later epoch with other seen templates
    (`family_source.vary_templates`; gin: `rephrase_epochs.enabled = True`).

    Off by default: the step costs ~20% of the input pipeline's throughput (one more map
    over every example), and with it off every epoch streams exactly the examples the
    family's builder makes. Bound before the task module is imported (a run's gin file is).
    """
    return enabled


def _rephrase_seed(data_dir: str) -> int | None:
    """The prepared dir's seed when epochs are re-phrased, else None (no re-phrasing)."""
    if not rephrase_epochs():
        return None
    return int((prepared.read_prepare_json(data_dir).get("options") or {}).get("seed", 0))


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
    `{prefix}_{family}`; `index_method` defaults to the dir's first indexing; its record
    (what info.json holds for a prepared task) is kept on the source (`source.info`), where
    `flanrec.data.task_meta` finds it.
    """

    outputs.require_complete(data_dir, "prepared data dir")
    doc = prepared.read_prepare_json(data_dir)
    warn_if_examples_are_stale(data_dir, doc)
    fam = families.get(family)
    methods = list(doc.get("index_methods") or [])
    method = index_method or (methods[0] if methods else None)
    if method not in methods:
        raise ValueError(f"{data_dir}: no item indexing {method!r} (prepared: {methods})")
    suffix = doc["index_suffixes"][methods.index(method)]
    prefix = prefix or doc.get("task_prefix") or "data"
    name = f"{prefix}_{fam.task_dirname(suffix)}"
    data = load_family_data(data_dir, method)
    counts = {}
    for out_split, split_name, _ in fam.output_splits():
        n = fam.num_examples(data, split_name)
        if n:
            counts[out_split] = n
    if not counts:
        raise ValueError(f"family {family} has no examples in {data_dir}: "
                         f"{fam.unavailable(data) or 'every split is empty'}")
    source = FamilySource(data_dir, family, method, counts, rephrase=rephrase_epochs(),
                          info=record(fam, method, counts, suffix),
                          task_dir=fam.task_dirname(suffix))
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    postprocess, metrics = postprocess_and_metrics(
        fam.target_kind, os.path.join(data_dir, source.info["index_file"]), fam.target_layout)
    seed = int((doc.get("options") or {}).get("seed", 0)) if rephrase_epochs() else None
    replace_task(name, source=source, output_features=output_features(vocabulary),
                 preprocessors=standard_preprocessors(name, fam.targets_eos, seed),
                 postprocess_fn=postprocess, metric_fns=metrics)
    PREPARED_TASKS.add(name)
    return name


def ensure_registered(data_dir: str) -> str:
    """Register the tasks and mixtures of the prepared dir `data_dir` unless a registered
    task reads it already (the inference job's DATA_DIR); returns the dir as registered."""
    path = storage.normalize(data_dir)
    if path in {storage.normalize(d) for d in registered_data_dirs()}:
        return path
    prefix = prepared.read_prepare_json(path).get("task_prefix") or "data"
    register_prepared(path, prefix)
    register_rec_mixture(path, prefix)
    return path


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
    prep = prepared.read_prepare_json(data_dir)
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
