"""The training job's input: which seqio task and split, and the batches each host feeds.

Split from `flanrec.train` because it is the one part of the job that talks to seqio and
tf.data, and the part `bench/input_pipeline.py` measures on its own. What it guarantees is
what exact resume needs: the training stream is a deterministic function of (seed, host
shard), so skipping `skip_batches` reproduces the interrupted stream; validation passes
over every example once, padded so every host runs as many steps.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import gin
import jax
import numpy as np

from flanrec.data import seqio_cache
from flanrec.errors import ConfigError


@gin.configurable(module="flanrec.train")  # its gin name since before the move
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One seqio input: which task, which split, how long, how many per step (global)."""

    mixture_or_task_name: str = ""
    task_feature_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)
    split: str = "train"
    batch_size: int = 0
    shuffle: bool = True
    seed: int | None = None
    pack: bool = True
    use_cached: bool = False
    # Training: hold the split's preprocessed examples in memory and repeat them, where that
    # leaves the stream unchanged (`repeated_task_dataset`); False re-runs seqio's
    # preprocessing every epoch (for a split too large for memory).
    in_memory: bool = True


def seqio_dataset(cfg: DatasetConfig, *, repeat: bool, shuffle: bool) -> Any:
    """This host's shard of `cfg`'s split as seqio builds it, through the encoder-decoder
    feature converter (packed when `cfg.pack`)."""
    import seqio

    if cfg.use_cached:

        seqio_cache.add_cache_dirs()
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    # seqio.get_dataset, minus its in-memory cache of small tasks: a cache filled by an
    # endless stream is never complete when training stops (tf.data then warns that the
    # partial cache is discarded), and local TFRecords are cheap to read again.
    provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    ds = provider.get_dataset(
        dict(cfg.task_feature_lengths), split=cfg.split, use_cached=cfg.use_cached,
        shuffle=shuffle, seed=cfg.seed, shard_info=shard, num_epochs=None if repeat else 1,
        trim_output_features=True, try_in_mem_cache=False)
    converter = seqio.EncDecFeatureConverter(pack=cfg.pack)
    return converter(ds, task_feature_lengths=dict(cfg.task_feature_lengths))


def check_task(cfg: DatasetConfig, model_vocab: int) -> None:
    """Fail early, by name, on an unknown task/split or a vocabulary the model cannot embed."""
    import seqio

    try:
        provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    except ValueError as e:
        raise ConfigError(f"MIXTURE_OR_TASK_NAME {cfg.mixture_or_task_name!r} is not registered "
                          "(is MIXTURE_OR_TASK_MODULE set to the module that registers it?)"
                          ) from e
    if cfg.split not in provider.splits:
        raise ConfigError(f"{cfg.mixture_or_task_name}: no split {cfg.split!r}; it has "
                          f"{sorted(provider.splits)}")
    for name, feature in provider.output_features.items():
        if name not in ("inputs", "targets"):
            continue
        if name not in cfg.task_feature_lengths:
            raise ConfigError(f"TASK_FEATURE_LENGTHS has no length for feature {name!r}")
        size = feature.vocabulary.vocab_size
        if size > model_vocab:
            raise ConfigError(f"{cfg.mixture_or_task_name}: feature {name!r} uses a vocabulary "
                              f"of {size} ids, but the model embeds only {model_vocab}")
    if cfg.use_cached:

        seqio_cache.check_cached(cfg.mixture_or_task_name, cfg.split)


# The most memory the training split may take when held in memory, per host, estimated as
# 8 bytes a token of the converted features (int32 inputs + 3 target-length arrays, with
# tf.data's overhead): ML-100K's seqrec split (6,242 examples of 56 + 40 tokens) is ~9 MB.
MAX_BYTES_IN_MEMORY = 1 << 30


def _epoch_invariant_task(cfg: DatasetConfig) -> Any:
    """The seqio Task of `cfg` when its precache output is the same every epoch, else None.

    That holds for a Task (not a Mixture) read on the fly that has a
    `seqio.CacheDatasetPlaceholder` (seqio's contract: everything before it is
    deterministic) and whose source yields one fixed order: a single shard, or a source
    that ignores `shuffle` (a family rendered on read). A multi-file source reshuffles its
    files every epoch, so caching its first epoch would change the stream.
    """
    import seqio

    if cfg.use_cached:
        return None
    task = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    if not isinstance(task, seqio.Task) or not task.supports_caching or \
            task.shuffle_buffer_size is None:
        return None
    source = task.source
    if len(source.list_shards(cfg.split)) != 1:
        return None
    count = source.num_input_examples(cfg.split)
    lengths = cfg.task_feature_lengths
    per_example = 8 * (lengths.get("inputs", 0) + 3 * lengths.get("targets", 0))
    if count is None or count // jax.process_count() * per_example > MAX_BYTES_IN_MEMORY:
        return None
    return task


def _per_example_postcache(task: Any) -> bool:
    """Whether every post-cache preprocessor of `task` maps each example on its own, the
    same way every epoch (then it commutes with repeat and shuffle)."""
    from flanrec.data import seqio_tasks

    known = seqio_tasks.per_example_postcache()
    steps = task.preprocessors[task._cache_step_idx + 1:]  # after the placeholder
    return all(getattr(step, "func", step) in known for step in steps)


def repeated_task_dataset(cfg: DatasetConfig, shuffle: bool) -> tuple[Any, Any] | None:
    """The endless stream `seqio_dataset(cfg, repeat=True)` yields, computing each example's
    preprocessing once instead of once per epoch.

    On a 2-core machine the input pipeline shares the cores with the train step, so each
    epoch re-rendering, re-tokenizing and re-converting the split (tf.data threads, and a
    Python generator holding the GIL for sources rendered on read) slows every step. Here
    one pass over the split is held in tf.data's in-memory cache, filled before training
    starts, and repeated: the precache part always (seqio's contract makes it
    deterministic), and the post-cache preprocessors, trimming and (unpacked) the feature
    converter too when each of them maps one example at a time the same way every epoch
    (`_per_example_postcache`): such maps commute with repeat and with the seeded shuffle,
    which permutes positions whatever the elements hold. Every other step runs in seqio's
    order, so the stream is element for element the one seqio builds
    (`tests/test_train_inputs_cache.py` compares them). Returns None where that cannot be
    guaranteed (`_epoch_invariant_task`); the caller then uses seqio's own pipeline.
    """
    import seqio
    import tensorflow as tf

    task = _epoch_invariant_task(cfg)
    if task is None:
        return None
    lengths = dict(cfg.task_feature_lengths)
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    source = task.source
    if source.supports_arbitrary_sharding or \
            len(source.list_shards(cfg.split)) >= shard.num_shards:
        ds = source.get_dataset(split=cfg.split, shuffle=shuffle, seed=cfg.seed,
                                shard_info=shard)
    else:
        ds = source.get_dataset(split=cfg.split, shuffle=shuffle, seed=cfg.seed)
        ds = ds.shard(shard.num_shards, shard.index)
    ds = task.preprocess_precache(ds, seed=cfg.seed)
    converter = seqio.EncDecFeatureConverter(pack=cfg.pack)

    def postcache(ds: Any) -> Any:
        ds = task.preprocess_postcache(ds, sequence_length=lengths, seed=cfg.seed)
        ds = task._validate_preprocessing(ds)  # the checks seqio runs
        return task._trim_output_features(ds, sequence_length=lengths)

    once = _per_example_postcache(task)
    converted = once and not cfg.pack  # packing joins neighbours: after the shuffle only
    if once:
        ds = postcache(ds)
        if converted:
            ds = converter(ds, task_feature_lengths=lengths)
    ds = ds.cache()
    # Filled by `fill` (one pass, in C++: no Python per example) before the stream is read:
    # a stream that stops before its first epoch ends would leave a partial cache that
    # tf.data warns about.
    filled = ds

    def fill() -> None:
        filled.reduce(np.int64(0), lambda n, _: n + 1)

    ds = ds.repeat()
    if not once:
        ds = postcache(ds)
    if shuffle:
        ds = ds.shuffle(task.shuffle_buffer_size, seed=cfg.seed)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return (ds if converted else converter(ds, task_feature_lengths=lengths)), fill


def train_batches(cfg: DatasetConfig, per_host_batch: int, skip_batches: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """This host's endless stream of training batches, starting after `skip_batches`.

    `cache`: preprocess the split once and repeat it from memory where the stream stays
    the same (`repeated_task_dataset`); the cache fills on a background thread from this
    call on, so it overlaps whatever the caller does before the first batch (reading the
    validation split, compiling). False always runs seqio's per-epoch pipeline.
    """
    import tensorflow as tf

    built = repeated_task_dataset(cfg, cfg.shuffle) if cfg.in_memory else None
    if built is None:
        ds = seqio_dataset(cfg, repeat=True, shuffle=cfg.shuffle)
        fill = None
    else:
        ds, fill = built
    ds = ds.batch(per_host_batch, drop_remainder=True).skip(skip_batches)
    return TrainStream(ds.prefetch(tf.data.AUTOTUNE), fill)


class TrainStream(Iterator[dict[str, np.ndarray]]):
    """Batches of a tf.data stream as numpy, after `fill` (run on its own thread from
    construction; its error is raised at the first batch). `spec` names each feature's
    per-host shape and dtype before any batch is read, so the step can compile meanwhile."""

    def __init__(self, ds: Any, fill: Any = None) -> None:
        self.spec = {k: (tuple(v.shape), v.dtype.as_numpy_dtype)
                     for k, v in ds.element_spec.items()}
        self._ds, self._it = ds, None
        self._errors: list[BaseException] = []
        self._thread = None
        if fill is not None:
            def run() -> None:
                try:
                    fill()
                except BaseException as e:  # handed to the reader, who raises it
                    self._errors.append(e)

            self._thread = threading.Thread(target=run, name="flanrec-input-cache",
                                            daemon=True)
            self._thread.start()

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            if self._thread is not None:
                self._thread.join()
                if self._errors:
                    raise self._errors[0]
            self._it = iter(self._ds.as_numpy_iterator())
        return next(self._it)


def eval_dataset(cfg: DatasetConfig) -> Any:
    """Every example of the split once: a mixture's tasks one after another, each in full.

    A seqio Mixture samples its tasks and stops when the first one runs out, so one "pass"
    over a mixture scores a random part of the other tasks (and leaves their in-memory
    caches half read, tf.data's `cache_dataset_ops` warning); T5X evaluates every task in
    full, and so does this.
    """
    import seqio

    provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    if not isinstance(provider, seqio.Mixture):
        return seqio_dataset(cfg, repeat=False, shuffle=False)
    parts = [seqio_dataset(dataclasses.replace(cfg, mixture_or_task_name=task.name),
                            repeat=False, shuffle=False)
             for task in provider.tasks if cfg.split in task.splits]
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    return ds


def eval_batches(cfg: DatasetConfig, per_host_batch: int, limit: int | None = None
                 ) -> list[dict[str, np.ndarray]]:
    """One full pass over the split on this host (its first `limit` batches when given, so a
    capped validation does not read the rest), padded so every host runs as many steps.

    Padding rows are all zeros (target id 0 = weight 0), so they change no metric; hosts
    agree on the number of batches through an allgather, since an uneven split would leave
    one host waiting in a collective forever.
    """
    ds = eval_dataset(cfg).batch(per_host_batch)
    if limit is not None:
        ds = ds.take(limit)
    batches = []
    for b in ds.as_numpy_iterator():
        rows = next(iter(b.values())).shape[0]
        if rows < per_host_batch:
            b = {k: np.pad(v, [(0, per_host_batch - rows)] + [(0, 0)] * (v.ndim - 1))
                 for k, v in b.items()}
        batches.append(b)
    count = len(batches)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        count = int(np.max(multihost_utils.process_allgather(np.int32(count))))
    if not batches and count:
        raise ConfigError(f"{cfg.mixture_or_task_name}/{cfg.split}: this host's shard is empty")
    if not count:
        raise ConfigError(f"{cfg.mixture_or_task_name}/{cfg.split}: the split is empty")
    batches += [{k: np.zeros_like(v) for k, v in batches[0].items()}] * (count - len(batches))
    return batches
