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

import seqio
import tensorflow as tf

from flanrec import metrics as metrics_lib
from flanrec.data import families, family_source, writer

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


def per_example_postcache() -> tuple[Any, ...]:
    """The post-cache preprocessors `standard_preprocessors` adds that map each example on its
    own and the same way every epoch (no seed, no position): a training input pipeline may
    run them once per example and repeat their output (`flanrec.train.inputs`).
    `vary_templates` is not one: it re-phrases by epoch."""
    return (seqio.preprocessors.append_eos_after_trim, _append_eos_to_inputs_only)



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
# Instruction data from files (the Flan bridge and "add your own task")
# ---------------------------------------------------------------------------------------------


def replace_task(name: str, **kwargs: Any) -> seqio.Task:
    """seqio.TaskRegistry.add, replacing a task of that name (re-registering a dir or a
    file in a notebook must not fail on the first registration)."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **kwargs)


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
        return replace_task(name, **kwargs)
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
        return replace_task(name, **kwargs)
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


def example_count_rate(count: int, maximum: int | None, temperature: float) -> float:
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
