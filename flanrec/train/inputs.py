"""The training job's input: which seqio task and split, and the batches each host feeds.

Split from `flanrec.train` because it is the one part of the job that talks to seqio and
tf.data, and the part `bench/input_pipeline.py` measures on its own. What it guarantees is
what exact resume needs: the training stream is a deterministic function of (seed, host
shard), so skipping `skip_batches` reproduces the interrupted stream; validation passes
over every example once, padded so every host runs as many steps.
"""

from __future__ import annotations

import dataclasses
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


def train_batches(cfg: DatasetConfig, per_host_batch: int, skip_batches: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """This host's endless stream of training batches, starting after `skip_batches`."""
    import tensorflow as tf

    ds = seqio_dataset(cfg, repeat=True, shuffle=cfg.shuffle)
    ds = ds.batch(per_host_batch, drop_remainder=True).skip(skip_batches)
    return iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())


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


def eval_batches(cfg: DatasetConfig, per_host_batch: int) -> list[dict[str, np.ndarray]]:
    """One full pass over the split on this host, padded so every host runs as many steps.

    Padding rows are all zeros (target id 0 = weight 0), so they change no metric; hosts
    agree on the number of batches through an allgather, since an uneven split would leave
    one host waiting in a collective forever.
    """
    ds = eval_dataset(cfg).batch(per_host_batch)
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
