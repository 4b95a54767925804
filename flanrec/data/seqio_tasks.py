"""Plain-SeqIO building blocks for flanrec tasks: sources, preprocessors, postprocessors, metrics.

`tasks/*.py` only *register* things; the machinery lives here so users can register their own
prepared data (`register_prepared`) or instruction files (`register_jsonl_task`) the same way.

Conventions every flanrec task follows, so any set of them can be mixed:
* output features `inputs` and `targets`, both tokenized by one vocabulary, EOS appended
  after trimming (`seqio.preprocessors.append_eos_after_trim`);
* metadata features `_task_name` (string), `_template_idx` (int64), `_template_type`
  (string) on every example, filled in when a source lacks them. They reach the model
  batch only with `Mixture.get_dataset(passthrough_features=...)` and an unpacked feature
  converter (seqio refuses pass-through features with packing);
* file-based sources (`TFExampleDataSource`/`TextLineDataSource`) with `num_input_examples`,
  so hosts shard by file and `seqio.mixing_rate_num_examples` works.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import seqio
import tensorflow as tf

from flanrec import metrics as metrics_lib
from flanrec.data import families, writer

log = logging.getLogger("flanrec.tasks")

METADATA_FEATURES: dict[str, tf.dtypes.DType] = {
    "_task_name": tf.string,
    "_template_idx": tf.int64,
    "_template_type": tf.string,
}
"""Metadata present on every flanrec example (pass them to Mixture.get_dataset by name)."""

_TF_KIND = {
    "string": tf.string,
    "int64": tf.int64,
    "float32": tf.float32,
    "string_list": tf.string,
    "int64_list": tf.int64,
}

TARGET_KINDS = families.TARGET_KINDS

PREPARED_TASKS: set[str] = set()
"""Names registered by `register_prepared`: one preprocessed example per source example, which
`flanrec.data.seqio_cache` relies on to recognise a cache of older data."""


# ---------------------------------------------------------------------------------------------
# Features, sources, preprocessors
# ---------------------------------------------------------------------------------------------


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """`inputs`/`targets` with EOS, the T5X/Flan layout."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def feature_description(schema: Mapping[str, str]) -> dict[str, Any]:
    """tf.io parsing spec for an info.json schema (lists parse as dense 1-D tensors)."""
    out: dict[str, Any] = {}
    for name, kind in schema.items():
        if kind not in _TF_KIND:
            raise ValueError(f"feature {name!r}: unknown kind {kind!r}")
        if kind.endswith("_list"):
            out[name] = tf.io.RaggedFeature(_TF_KIND[kind])
        else:
            out[name] = tf.io.FixedLenFeature([], _TF_KIND[kind])
    return out


def tfrecord_source(task_dir: str, info: Mapping[str, Any] | None = None
                    ) -> seqio.TFExampleDataSource:
    """A TFExampleDataSource over a task directory written by `flanrec.data.writer`."""
    info = info or writer.read_info(task_dir)
    return seqio.TFExampleDataSource(
        split_to_filepattern={
            split: [os.path.join(task_dir, f) for f in s["files"]]
            for split, s in info["splits"].items()
        },
        feature_description=feature_description(info["features"]),
        num_input_examples={s: v["num_input_examples"] for s, v in info["splits"].items()},
    )


def add_metadata(dataset: tf.data.Dataset, task_name: str,
                 template_type: str = "") -> tf.data.Dataset:
    """Give every example the METADATA_FEATURES with fixed dtypes (fill missing ones).

    `_task_name` defaults to the seqio task name; `_template_idx` to -1 (unknown).
    """

    def fill(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        ex["_task_name"] = tf.cast(ex.get("_task_name", tf.constant(task_name)), tf.string)
        ex["_template_idx"] = tf.cast(ex.get("_template_idx", tf.constant(-1)), tf.int64)
        ex["_template_type"] = tf.cast(
            ex.get("_template_type", tf.constant(template_type)), tf.string
        )
        return ex

    return dataset.map(fill, num_parallel_calls=tf.data.AUTOTUNE)


def standard_preprocessors(task_name: str, targets_eos: bool = True,
                           rephrase_seed: int | None = None) -> list[Any]:
    """metadata -> tokenize (keeps `*_pretokenized` copies) -> [cache] -> EOS after trimming.

    Everything before `seqio.CacheDatasetPlaceholder` is deterministic (no seed, no sequence
    length), so `seqio.scripts.cache_tasks_main` can store its output once and
    `USE_CACHED_TASKS = True` reads exactly those examples back; trimming and EOS depend on
    the run's TASK_FEATURE_LENGTHS and therefore stay after the cache.

    `targets_eos=False` (the seqrec family) leaves EOS out of the targets only: they are a
    run of item IDs that the decoder continues from one item to the next, and an EOS after
    an arbitrary window end would teach it nothing. Inputs still end with EOS.

    `rephrase_seed` (tasks rendered on read, `flanrec.data.family_source`) adds
    `vary_templates` after the cache point: later epochs of a train split see other
    templates, chosen from (seed, epoch, example).
    """
    steps: list[Any] = [
        functools.partial(add_metadata, task_name=task_name),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
    ]
    if rephrase_seed is not None:
        from flanrec.data import family_source

        steps.append(functools.partial(family_source.vary_templates, seed=rephrase_seed))
    if targets_eos:
        steps.append(seqio.preprocessors.append_eos_after_trim)
    else:
        steps.append(_append_eos_to_inputs_only)
    return steps


def _append_eos_to_inputs_only(dataset: tf.data.Dataset,
                               output_features: Mapping[str, seqio.Feature],
                               sequence_length: Mapping[str, int] | None = None
                               ) -> tf.data.Dataset:
    """seqio's append_eos_after_trim for `inputs` alone (targets keep their last item)."""
    inputs_only = {k: f for k, f in output_features.items() if k != "targets"}
    return seqio.preprocessors.append_eos_after_trim(dataset, inputs_only, sequence_length)


# ---------------------------------------------------------------------------------------------
# Postprocessors and metrics
# ---------------------------------------------------------------------------------------------


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    return str(x)


def normalize_item_text(text: str) -> str:
    """Whitespace-normalized generated ID string (IDs compare after this)."""
    return " ".join(_text(text).split())


class ItemPostprocessor:
    """Generated text -> raw item id ("" when the text names no item).

    Holds the dir's ID -> item map (loaded on first use, so registering is cheap). Picklable
    and comparable, so it can sit in seqio tasks that gin deep-copies.
    """

    def __init__(self, index_path: str, last_of_sequence: bool = False):
        self.index_path = index_path
        self.last_of_sequence = last_of_sequence
        self._id_to_item: dict[str, str] | None = None

    def _map(self) -> dict[str, str]:
        if self._id_to_item is None:
            with tf.io.gfile.GFile(self.index_path) as f:
                doc = json.load(f)
            self._id_to_item = {normalize_item_text(i): item for item, i in doc["items"]}
        return self._id_to_item

    def __call__(self, output: Any, example: Mapping[str, Any] | None = None,
                 is_target: bool = False) -> str:
        text = normalize_item_text(output)
        if self.last_of_sequence:  # a seqrec target: prefix items, then the one to predict
            text = text.rsplit(" ", 1)[-1]
        return self._map().get(text, "")

    def __getstate__(self) -> dict[str, Any]:
        return {"index_path": self.index_path, "last_of_sequence": self.last_of_sequence,
                "_id_to_item": None}


def rating_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                         is_target: bool = False) -> float:
    """"4" / "4.0" / "4 stars" -> 4.0; NaN when no number starts the text."""
    words = _text(output).strip().split()
    if not words:
        return math.nan
    try:
        return float(words[0].rstrip(".,"))
    except ValueError:
        return math.nan


_YES = {"yes", "true", "1", "y"}
_NO = {"no", "false", "0", "n"}


def binary_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                         is_target: bool = False) -> int:
    """yes -> 1, no -> 0, anything else -> -1 (counted wrong by the metrics)."""
    words = _text(output).strip().lower().split()
    word = words[0].strip(".,!") if words else ""
    if word in _YES:
        return 1
    if word in _NO:
        return 0
    return -1


def text_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                       is_target: bool = False) -> str:
    return " ".join(_text(output).split())


def exact_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Share of predictions equal to the target (for item tasks this is HR@1)."""
    if not targets:
        return {"exact_match": 0.0}
    hits = sum(1 for t, p in zip(targets, predictions, strict=True) if t == p and t != "")
    return {"exact_match": hits / len(targets)}


# The metric fns live in flanrec.metrics, shared with `flanrec.eval` so a SeqIO evaluation
# and the offline job count hits, invalid answers and rating errors the same way.
HR_AT_1 = metrics_lib.make_ranking_metric_fn(ks=(1,))
"""Greedy decoding yields one item, so only K=1 is meaningful (no HR@10 posing as top-10)."""


def postprocess_and_metrics(target_kind: str, index_path: str | None,
                            target_layout: str = "single"
                            ) -> tuple[Callable[..., Any], list[Callable[..., Any]]]:
    """The postprocess_fn and metric_fns of a task whose targets are `target_kind`
    (`target_layout` "item_sequence": several item IDs, the last one is the answer)."""
    if target_kind == "item":
        if index_path is None:
            raise ValueError("item tasks need the item index (index_path)")
        return (ItemPostprocessor(index_path, target_layout == "item_sequence"), [HR_AT_1])
    if target_kind == "rating":
        return rating_postprocessor, [metrics_lib.seqio_rating_metrics]
    if target_kind == "binary":
        return binary_postprocessor, [metrics_lib.seqio_binary_metrics]
    if target_kind == "text":
        return text_postprocessor, [exact_match]
    raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")


# ---------------------------------------------------------------------------------------------
# Registering prepared data
# ---------------------------------------------------------------------------------------------


def prepared_task_dirs(data_dir: str) -> list[str]:
    """Names of the task directories (`DIR/tasks/*/info.json`), sorted."""
    root = os.path.join(data_dir, "tasks")
    if not tf.io.gfile.isdir(root):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(root)]
    return sorted(n for n in names
                  if tf.io.gfile.exists(os.path.join(root, n, writer.INFO_FILE)))


def _register_task(name: str, **kwargs: Any) -> seqio.Task:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **kwargs)


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
    from flanrec.data import vocab as vocab_lib

    if not tf.io.gfile.exists(os.path.join(data_dir, "prepare.json")):
        raise FileNotFoundError(
            f"{data_dir}: no prepare.json, so not a flanrec.prepare output. Run "
            f"`python -m flanrec.prepare --dataset ml-100k --out {data_dir}` first."
        )
    from flanrec import storage

    storage.require_complete(data_dir, "prepared data dir")  # an unfinished gs:// upload
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
            _register_task(name, **kwargs)
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
    from flanrec.data.family_source import FamilySource

    counts = {s: v["num_input_examples"] for s, v in info["splits"].items()}
    return FamilySource(data_dir, info["family"], info.get("index_method"), counts)


def _rephrase_seed(data_dir: str, info: Mapping[str, Any]) -> int | None:
    if info.get("source") != "rendered":
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
    from flanrec import storage
    from flanrec.data import family_source
    from flanrec.data import vocab as vocab_lib
    from flanrec.data.prepared import read_prepare_json

    storage.require_complete(data_dir, "prepared data dir")
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
    source = family_source.FamilySource(data_dir, family, method, counts)
    source.info = {"family": family, "target_kind": fam.target_kind, "index_method": method,
                   "index_file": f"index/{method}/item_index.json",
                   "features": family_source.feature_schema(fam),
                   "target_layout": fam.target_layout, "targets_eos": fam.targets_eos,
                   "splits": {s: {"num_input_examples": n} for s, n in counts.items()}}
    vocabulary = vocabulary or vocab_lib.vocabulary_for_prepared(data_dir)
    postprocess, metrics = postprocess_and_metrics(
        fam.target_kind, os.path.join(data_dir, source.info["index_file"]), fam.target_layout)
    _register_task(name, source=source, output_features=output_features(vocabulary),
                   preprocessors=standard_preprocessors(name, fam.targets_eos,
                                                        int((doc.get("options") or {}).get(
                                                            "seed", 0))),
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


# ---------------------------------------------------------------------------------------------
# Instruction data from files (the Flan bridge and "add your own task")
# ---------------------------------------------------------------------------------------------


def _parse_jsonl_line(line: tf.Tensor) -> dict[str, tf.Tensor]:
    """One JSON object -> inputs/targets/metadata tensors (py_function: TF has no JSON op)."""

    def parse(raw: bytes) -> tuple[bytes, bytes, bytes, int, bytes]:
        text = raw.numpy().decode("utf-8")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON object: {e.msg}: {text[:80]!r}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), str) \
                or not isinstance(obj.get("targets"), str):
            raise ValueError(f"each line needs string fields 'inputs' and 'targets': "
                             f"{text[:80]!r}")
        return (
            obj["inputs"].encode(), obj["targets"].encode(),
            str(obj.get("_task_name", "")).encode(), int(obj.get("_template_idx", -1)),
            str(obj.get("_template_type", "")).encode(),
        )

    inputs, targets, task, idx, ttype = tf.py_function(
        parse, [line], [tf.string, tf.string, tf.string, tf.int64, tf.string]
    )
    out = {"inputs": inputs, "targets": targets, "_task_name": task, "_template_idx": idx,
           "_template_type": ttype}
    for v in out.values():
        v.set_shape([])
    return out


def parse_jsonl(dataset: tf.data.Dataset, task_name: str) -> tf.data.Dataset:
    """Preprocessor: JSON lines -> features; an empty `_task_name` becomes the seqio name."""

    def fix(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = _parse_jsonl_line(ex)
        ex["_task_name"] = tf.where(tf.equal(ex["_task_name"], ""), task_name, ex["_task_name"])
        return ex

    return dataset.map(fix, num_parallel_calls=tf.data.AUTOTUNE)


def _expand(pattern: str | Sequence[str]) -> list[str]:
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files: list[str] = []
    for p in patterns:
        matched = sorted(tf.io.gfile.glob(p))
        if not matched:
            raise FileNotFoundError(f"no file matches {p!r}")
        files += matched
    return files


def _count_lines(files: Sequence[str]) -> int:
    n = 0
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            n += sum(1 for line in f if line.strip())
    return n


def register_jsonl_task(
    name: str,
    split_to_filepattern: Mapping[str, str | Sequence[str]],
    vocabulary: seqio.Vocabulary,
    num_input_examples: Mapping[str, int] | None = None,
    target_kind: str = "text",
    replace: bool = True,
) -> seqio.Task:
    """Register a task over JSON-lines files of {"inputs", "targets", [_task_name, ...]}.

    Blank lines are skipped. `num_input_examples` defaults to counting the non-blank lines
    (cheap for local files; pass it for large remote ones), so the task can be mixed by
    example count. Use several files per split to let hosts shard by file.
    """
    files = {split: _expand(p) for split, p in split_to_filepattern.items()}
    counts = dict(num_input_examples or {s: _count_lines(f) for s, f in files.items()})
    postprocess, metrics = postprocess_and_metrics(target_kind, None)
    source = seqio.TextLineDataSource(split_to_filepattern=files, num_input_examples=counts)

    # TextLineDataSource yields scalar string lines.
    def drop_blank(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)

    def text_to_features(dataset: tf.data.Dataset) -> tf.data.Dataset:
        return parse_jsonl(dataset, name)

    kwargs = dict(
        source=source,
        output_features=output_features(vocabulary),
        preprocessors=[drop_blank, text_to_features, *standard_preprocessors(name)],
        postprocess_fn=postprocess,
        metric_fns=metrics,
    )
    if replace:
        return _register_task(name, **kwargs)
    return seqio.TaskRegistry.add(name, **kwargs)


def register_tfrecord_task(
    name: str,
    split_to_filepattern: Mapping[str, str | Sequence[str]],
    vocabulary: seqio.Vocabulary,
    num_input_examples: Mapping[str, int] | None = None,
    extra_features: Mapping[str, tf.dtypes.DType] | None = None,
    replace: bool = True,
) -> seqio.Task:
    """Register a task over TFRecord files of tf.Examples with string `inputs`/`targets`.

    That is how the Flan 2022 collection exports its mixtures; metadata features present in
    the files (`_task_name`, `_template_type`, `_template_idx`) are read when listed in
    `extra_features` and filled in otherwise. `num_input_examples` is counted when absent.
    """
    files = {split: _expand(p) for split, p in split_to_filepattern.items()}
    description: dict[str, Any] = {
        "inputs": tf.io.FixedLenFeature([], tf.string),
        "targets": tf.io.FixedLenFeature([], tf.string),
    }
    for key, dtype in (extra_features or {}).items():
        description[key] = tf.io.FixedLenFeature([], dtype)
    if num_input_examples is None:
        num_input_examples = {
            s: sum(1 for _ in tf.data.TFRecordDataset(f)) for s, f in files.items()
        }
    kwargs = dict(
        source=seqio.TFExampleDataSource(files, description,
                                         num_input_examples=dict(num_input_examples)),
        output_features=output_features(vocabulary),
        preprocessors=standard_preprocessors(name),
        postprocess_fn=text_postprocessor,
        metric_fns=[exact_match],
    )
    if replace:
        return _register_task(name, **kwargs)
    return seqio.TaskRegistry.add(name, **kwargs)


# ---------------------------------------------------------------------------------------------
# Mixtures
# ---------------------------------------------------------------------------------------------


def register_mixture(name: str, tasks: Sequence[Any], replace: bool = True,
                     **kwargs: Any) -> seqio.Mixture:
    """seqio.MixtureRegistry.add, replacing an existing mixture of that name by default."""
    if replace and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, tasks, **kwargs)


def rate_by_examples(maximum: int | None = None, temperature: float = 1.0
                     ) -> Callable[[seqio.Task], float]:
    """FLAN-style rate: number of train examples, capped at `maximum`."""
    return functools.partial(seqio.mixing_rate_num_examples, maximum=maximum,
                             temperature=temperature)


def _rate(count: int, maximum: int | None, temperature: float) -> float:
    """FLAN's example-count rate for a count known without reading the task."""
    rate = float(count if maximum is None else min(count, maximum))
    return rate ** (1.0 / temperature)


def vocabularies_match(a: seqio.DatasetProviderBase, b: seqio.DatasetProviderBase) -> bool:
    """True if two tasks/mixtures tokenize `inputs` and `targets` the same way."""
    fa, fb = a.output_features, b.output_features
    return all(
        key in fa and key in fb and fa[key].vocabulary == fb[key].vocabulary
        for key in ("inputs", "targets")
    )


def describe_vocabulary(provider: seqio.DatasetProviderBase) -> str:
    return str(provider.output_features["targets"].vocabulary)


def log_registered(names: Sequence[str]) -> None:
    log.info("registered %d flanrec tasks: %s", len(names), ", ".join(names))


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
            (name, _rate(t["train_targets"], caps.get(t["family"], default_cap), temperature))
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
