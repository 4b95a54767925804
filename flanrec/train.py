r"""Fine-tune (or pre-train) Flan-T5 on a SeqIO mixture: `python -m flanrec.train`.

    python -m flanrec.train \
      --gin_file=gin/models/flan_t5_small.gin --gin_file=gin/runs/finetune.gin \
      --gin.MODEL_DIR=/tmp/run --gin.MIXTURE_OR_TASK_NAME=ml100k_seq_rec \
      --gin.MIXTURE_OR_TASK_MODULE=tasks.movielens --gin.INITIAL_CHECKPOINT_PATH=/ckpt

Macros named as in T5X's finetune.gin: MODEL_DIR, MIXTURE_OR_TASK_NAME, MIXTURE_OR_TASK_MODULE,
TASK_FEATURE_LENGTHS, TRAIN_STEPS, TRAIN_STEPS_RELATIVE, BATCH_SIZE, DROPOUT_RATE,
INITIAL_CHECKPOINT_PATH, EVAL_PERIOD, RANDOM_SEED, USE_CACHED_TASKS; flanrec's own (T5X
configures these through bindings, e.g. `utils.SaveCheckpointConfig.period`): LEARNING_RATE,
CHECKPOINT_PERIOD, KEEP_CHECKPOINTS, LOG_PERIOD, NUM_MICROBATCHES, PACK, TUNING. As in
T5X, TRAIN_STEPS counts the step of a T5X INITIAL_CHECKPOINT_PATH too (see `train`).
`--gin.X=V` is a gin binding `X = V`; a V that is not a Python literal or gin reference is
taken as a string, so `--gin.MODEL_DIR=/tmp/run` needs no quotes. `--gin_file=runs/...`
finds flanrec's own gin files from any directory (`flanrec.gin_cli`).

The job reads top to bottom in `train()`: output dir → mesh → data → state (resume, initial
checkpoint or scratch) → compiled steps → loop (log, validate, checkpoint) → final save.

Exact resume. The training input is a *deterministic* function of (seed, host shard): seqio
shuffles with a fixed seed and repeats, and `data_position` (batches consumed, stored in the
checkpoint meta) is skipped on restart. We chose skip over tf.data iterator checkpoints
because the position is one host-independent integer in the checkpoint's JSON — no per-host
files holding shuffle buffers (hundreds of MB for long-sequence tasks), nothing extra for
Orbax to coordinate — at the cost of re-reading the skipped examples at restart (seconds for
recommendation-sized data). Dropout keys are `fold_in(rng, step)`, so a resumed run is
bitwise the uninterrupted one.

Parameter-efficient tuning: `TUNING = 'prompt' | 'lora'` (gin/runs/prompt_tuning.gin,
gin/runs/lora.gin) freezes the INITIAL_CHECKPOINT_PATH backbone and trains only a soft prompt
or LoRA adapters (`flanrec.peft`). Checkpoints then hold just the adapters and their optimizer
state (a few hundred KB for a prompt) plus, in `meta`, the backbone's path, the adapter config
and the tuning mode; resuming reloads the backbone from that pointer and refuses a different
one. `flanrec.api.load` turns such a checkpoint back into a usable model.
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: a caching malloc (flanrec.runtime)
    from flanrec import runtime

    runtime.reexec_with_tcmalloc()

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from etils import epath

from flanrec import flops, jobs, losses, optimizers, partitioning, scalars, storage, trainer
from flanrec.convert import common
from flanrec.data import length_check
from flanrec.errors import ConfigError, UserError
from flanrec.gin_cli import (
    add_gin_job_flags,
    configure_gin,
    parse_gin_job_args,
    split_search_paths,
)
from flanrec.inference.rank_eval import RankEvalConfig
from flanrec.model.config import T5Config
from flanrec.peft import config as peft_config
from flanrec.peft import params as peft_params
from flanrec.progress import Progress

log = logging.getLogger("flanrec.train")

# T5Config is a plain frozen dataclass; registering (not decorating) it keeps instances of the
# real class while gin checks every field name (`T5Config.d_modle = …` fails at parse time).
gin.register(T5Config, module="flanrec.model.config")
gin.register(peft_config.PromptConfig, module="flanrec.peft")
gin.register(peft_config.LoraConfig, module="flanrec.peft")
gin.register(RankEvalConfig, module="flanrec.inference")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; nothing from that step on is checkpointed."""


class ModelDirError(UserError, PermissionError):
    """MODEL_DIR cannot be created or written (checked before anything compiles)."""


# ---------------------------------------------------------------------------------- data
@gin.configurable
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


def _seqio_dataset(cfg: DatasetConfig, *, repeat: bool, shuffle: bool) -> Any:
    import seqio

    if cfg.use_cached:
        from flanrec.data import seqio_cache

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
        from flanrec.data import seqio_cache

        seqio_cache.check_cached(cfg.mixture_or_task_name, cfg.split)


def train_batches(cfg: DatasetConfig, per_host_batch: int, skip_batches: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """This host's endless stream of training batches, starting after `skip_batches`."""
    import tensorflow as tf

    ds = _seqio_dataset(cfg, repeat=True, shuffle=cfg.shuffle)
    ds = ds.batch(per_host_batch, drop_remainder=True).skip(skip_batches)
    return iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())


def _eval_dataset(cfg: DatasetConfig) -> Any:
    """Every example of the split once: a mixture's tasks one after another, each in full.

    A seqio Mixture samples its tasks and stops when the first one runs out, so one "pass"
    over a mixture scores a random part of the other tasks (and leaves their in-memory
    caches half read, tf.data's `cache_dataset_ops` warning); T5X evaluates every task in
    full, and so does this.
    """
    import seqio

    provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    if not isinstance(provider, seqio.Mixture):
        return _seqio_dataset(cfg, repeat=False, shuffle=False)
    parts = [_seqio_dataset(dataclasses.replace(cfg, mixture_or_task_name=task.name),
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
    ds = _eval_dataset(cfg).batch(per_host_batch)
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


# ------------------------------------------------------------------------- settings check
# (macro, minimum or None for "any integer", what it means): each must be an int (not a bool,
# not a string gin took from `--gin.X=abc`). Checked against the parsed gin config before
# anything is built, since a bad value otherwise surfaces after the pipeline set-up (as a
# TypeError deep in optax) or never (`TRAIN_STEPS=-5`: rc 0 and nothing trained).
_INT_SETTINGS: tuple[tuple[str, int | None, str], ...] = (
    ("TRAIN_STEPS", 1, "the total number of steps (from a T5X checkpoint: including its "
     "step, as in T5X)"),
    ("TRAIN_STEPS_RELATIVE", 1, "steps past the step the run started from"),
    ("BATCH_SIZE", 1, "the global batch size"),
    ("EVAL_BATCH_SIZE", 1, "the global validation batch size"),
    ("NUM_MICROBATCHES", 1, "gradient-accumulation microbatches per step"),
    ("LOG_PERIOD", 1, "steps between log lines"),
    ("EVAL_PERIOD", 0, "steps between validations (0: never)"),
    ("CHECKPOINT_PERIOD", 0, "steps between checkpoints (0: only the last)"),
    ("RANDOM_SEED", None, "the seed"),
)


def _bad_int(value: Any, minimum: int | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return True
    return minimum is not None and value < minimum


def check_settings(values: Mapping[str, Any]) -> None:
    """Refuse, by name, run settings of the wrong type or range (UserError).

    `values` maps T5X macro names (TRAIN_STEPS, BATCH_SIZE, ..., TASK_FEATURE_LENGTHS,
    KEEP_CHECKPOINTS, LEARNING_RATE, DROPOUT_RATE) to their values; absent names are skipped.
    """
    relative = values.get("TRAIN_STEPS_RELATIVE") is not None
    for name, minimum, meaning in _INT_SETTINGS:
        if name == "TRAIN_STEPS_RELATIVE" and not relative:
            continue  # None: unused, TRAIN_STEPS counts
        if name == "TRAIN_STEPS" and relative and values.get(name) is None:
            continue  # TRAIN_STEPS_RELATIVE counts instead
        if name in values and _bad_int(values[name], minimum):
            want = "an integer" if minimum is None else (
                "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
            raise UserError(f"{name} must be {want} ({meaning}), got {values[name]!r}")
    keep = values.get("KEEP_CHECKPOINTS")
    if "KEEP_CHECKPOINTS" in values and keep is not None and _bad_int(keep, 1):
        raise UserError(f"KEEP_CHECKPOINTS must be a positive integer or None (keep all), "
                        f"got {keep!r}")
    if "TASK_FEATURE_LENGTHS" in values:
        lengths = values["TASK_FEATURE_LENGTHS"]
        if not isinstance(lengths, Mapping) or not lengths or any(
                not isinstance(k, str) or _bad_int(v, 1) for k, v in lengths.items()):
            raise UserError("TASK_FEATURE_LENGTHS must be a dict of feature name -> positive "
                            f"integer, e.g. {{'inputs': 512, 'targets': 16}}, got {lengths!r}")
    for name, low, high in (("LEARNING_RATE", 0.0, math.inf), ("DROPOUT_RATE", 0.0, 1.0)):
        if name not in values:
            continue
        v = values[name]
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) \
            and low <= v and (v < high or high == math.inf)
        if not ok:
            span = ">= 0" if high == math.inf else f"in [{low:g}, {high:g})"
            raise UserError(f"{name} must be a number {span}, got {v!r}")


def check_gin_settings() -> None:
    """`check_settings` on the macros of the parsed gin config (call before `train()`:
    other configurables, e.g. a schedule's total_steps, read the same macros)."""
    names = [n for n, _, _ in _INT_SETTINGS] + ["KEEP_CHECKPOINTS", "TASK_FEATURE_LENGTHS",
                                                 "LEARNING_RATE", "DROPOUT_RATE"]
    values = {}
    for name in names:
        try:
            values[name] = gin.query_parameter(f"%{name}")
        except ValueError:  # macro not defined by these gin files
            continue
    check_settings({k: v for k, v in values.items()
                    if not isinstance(v, gin.config.ConfigurableReference)})


# ------------------------------------------------------------------------- small helpers
def _prepare_model_dir(model_dir: str) -> epath.Path:
    """Create MODEL_DIR (refusing a directory of someone else's files, or a file system
    Orbax cannot write) and prove it writable, before anything is compiled."""
    path = storage.orbax_path(model_dir)
    if jax.process_index() == 0:
        probe = path / f".write_probe_{os.getpid()}"
        try:
            storage.claim_dir(str(path), "train", what="MODEL_DIR")
            probe.write_text("ok")
            probe.unlink()
        except storage.StorageError:
            raise  # already one line naming MODEL_DIR (e.g. a directory of user files)
        except OSError as e:
            raise ModelDirError(f"MODEL_DIR {model_dir} is not writable: {e}") from e
    return path


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.1f}s" if seconds < 60 else str(datetime.timedelta(seconds=int(seconds)))


class _Preemption:
    """SIGTERM → stop at the next step boundary, after saving a checkpoint.

    Single process: our own handler sets a flag. Multi-process: jax's preemption sync
    manager (installed by `jax.distributed.initialize`) catches the signal on any host and
    makes every host agree on the same step; we leave its handler alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self.multi = jax.process_count() > 1
        self._previous = None if self.multi else signal.signal(signal.SIGTERM, self._handle)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        del frame
        log.warning("received signal %d: will save a checkpoint and stop at the next step",
                    signum)
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError as e:  # preemption service disabled in this jax config
                log.warning("no preemption sync across hosts: %s", e)
                self.multi = False
        return self.requested


class _Window:
    """Averages of the step metrics between two log lines, with the NaN check."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last: dict[str, float] = {}

    def add(self, step: int, metrics: Mapping[str, Any]) -> float:
        values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["param_norm"])):
            raise NonFiniteLossError(
                f"non-finite training at step {step}: loss {values['loss']}, grad norm "
                f"{values['grad_norm']}, parameter norm after the update "
                f"{values['param_norm']}; stopping without checkpointing this or any later "
                "step. Lower LEARNING_RATE, enable clipping or check this step's data.")
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.last = values
        return values["target_tokens"]

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out["learning_rate"] = self.last.get("learning_rate", float("nan"))
        self.sums, self.count = {}, 0
        return out


# ------------------------------------------------------------------------------ the job
@gin.configurable(denylist=["devices"])
def train(*, model_dir: str = gin.REQUIRED, model_config: T5Config = gin.REQUIRED,
          train_dataset: DatasetConfig = gin.REQUIRED,
          eval_dataset: DatasetConfig | None = None,
          train_steps: int | None = gin.REQUIRED, eval_period: int = 0,
          checkpoint_period: int = 1000, keep_checkpoints: int | None = 3,
          log_period: int = 100, initial_checkpoint_path: str | None = None,
          random_seed: int = 0, num_microbatches: int = 1,
          loss: losses.LossConfig | None = None,
          optimizer: tuple[Any, Any] | None = None,
          mesh_shape: Sequence[int] = (-1, 1),
          mesh_axes: Sequence[str] = ("data", "model"),
          rules: partitioning.Rules | None = None, remat_policy: str = "none",
          async_checkpointing: bool = True, tuning: str = "full",
          train_steps_relative: int | None = None,
          prompt: peft_config.PromptConfig | None = None,
          lora: peft_config.LoraConfig | None = None,
          rank_eval: RankEvalConfig | None = None, early_stopping_patience: int = 0,
          devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Run (or resume) one training job; returns the last logged train/validation metrics.

    `tuning`: 'full' trains every parameter; 'prompt' trains only the soft prompt `prompt`
    (default `PromptConfig()`), 'lora' only the adapters `lora` (default `LoraConfig()`),
    both on the frozen backbone of `initial_checkpoint_path`.

    `rank_eval` (gin: RANK_EVAL_TASK): every `eval_period` steps, rank the catalogue for the
    task's validation users as `flanrec.infer` would and log HR/NDCG/MRR@K; every evaluation
    saves a checkpoint, the one with the best validation NDCG@10 is never rotated away and is
    recorded in MODEL_DIR/best_checkpoint.json (what `flanrec.infer` uses for
    CHECKPOINT_PATH=MODEL_DIR). `early_stopping_patience` > 0 stops after that many
    evaluations without a better NDCG@10.

    Steps, as in T5X: starting from a T5X `initial_checkpoint_path`, the step count continues
    from that checkpoint's step (1,198,000 for Flan-T5 small) and `train_steps` is the total,
    pretrained steps included; from an HF or flanrec checkpoint (or scratch) it starts at 0.
    `train_steps_relative` (TRAIN_STEPS_RELATIVE) instead trains that many steps past the
    step the run started from, and then `train_steps` is ignored. Unlike T5X, whose relative
    count restarts at every resume, it is anchored at the run's first step (kept in the
    checkpoint meta), so a preempted run stops where an uninterrupted one would.
    """
    check_settings({"TRAIN_STEPS": train_steps, "TRAIN_STEPS_RELATIVE": train_steps_relative,
                    "BATCH_SIZE": train_dataset.batch_size,
                    "NUM_MICROBATCHES": num_microbatches, "LOG_PERIOD": log_period,
                    "EVAL_PERIOD": eval_period, "CHECKPOINT_PERIOD": checkpoint_period,
                    "KEEP_CHECKPOINTS": keep_checkpoints, "RANDOM_SEED": random_seed,
                    "TASK_FEATURE_LENGTHS": train_dataset.task_feature_lengths})
    import tensorflow as tf

    from flanrec.checkpoints import TrainCheckpointer
    from flanrec.model.network import Transformer

    tf.config.set_visible_devices([], "GPU")  # the input pipeline must not grab accelerators
    loss_cfg = loss or losses.LossConfig()
    tx, schedule = optimizer or optimizers.make_optimizer()
    rules = tuple(rules or partitioning.logical_axis_rules())
    t_start = time.time()

    # 1. Output directory and effective config, before any compilation.
    out = _prepare_model_dir(model_dir)
    if jax.process_index() == 0:
        storage.write_atomic(os.fspath(out / "config.gin"), gin.config_str())

    # 2. Mesh, model, sizes.
    mesh = partitioning.make_mesh(mesh_shape, mesh_axes, devices)
    dp = partitioning.data_parallel_size(mesh, rules)
    batch = train_dataset.batch_size
    if batch % (num_microbatches * dp) or batch % jax.process_count():
        raise ConfigError(f"BATCH_SIZE {batch} must be divisible by num_microbatches "
                          f"({num_microbatches}) × data-parallel size ({dp}) and by the "
                          f"number of processes ({jax.process_count()})")
    per_host = batch // jax.process_count()
    if eval_dataset is not None and eval_period and (
            eval_dataset.batch_size % dp or eval_dataset.batch_size % jax.process_count()):
        raise ConfigError(f"EVAL_BATCH_SIZE {eval_dataset.batch_size} must be divisible by the "
                          f"data-parallel size ({dp}) and the number of processes")
    base_config = model_config
    model_config = _with_tuning(model_config, tuning, prompt, lora, train_dataset,
                                initial_checkpoint_path)
    efficient = tuning != "full"
    model = Transformer(model_config, remat_policy=remat_policy)
    log.info("mesh %s over %d devices (%d processes); %s: %.1fM parameters; global batch %d "
             "(%d per host, %d microbatches)", dict(mesh.shape), mesh.size,
             jax.process_count(), model_config.name, common.count_params(model_config) / 1e6,
             batch, per_host, num_microbatches)

    # 3. Data checks (task registered, vocabulary fits) — still nothing compiled.
    check_task(train_dataset, model_config.vocab_size)
    if eval_dataset is not None and eval_period:
        check_task(eval_dataset, model_config.vocab_size)
    length_check.check_feature_lengths(train_dataset.mixture_or_task_name,
                                       train_dataset.task_feature_lengths,
                                       train_dataset.split, warn=log.warning)
    if jax.process_index() == 0:  # checkpoints carry their vocabulary: text in/out, HF export
        _save_task_vocabulary(out, train_dataset.mixture_or_task_name)

    # 4. Train state: resume > initial checkpoint > from scratch.
    abstract = trainer.abstract_state(model, tx, tuning)
    shardings = trainer.state_shardings(abstract, model_config, mesh, rules)
    frozen, frozen_sh = None, None
    if efficient:
        frozen_sh = trainer.frozen_shardings(trainer.abstract_frozen(model, tuning),
                                             model_config, mesh, rules)
        log.info("TUNING=%s: %s trainable parameters, backbone frozen", tuning,
                 f"{peft_params.count(abstract.params):,}")
    ranking = rank_eval is not None and bool(rank_eval.task) and eval_period > 0
    ckpt = TrainCheckpointer(out, max_to_keep=keep_checkpoints, async_save=async_checkpointing,
                             best_metric=BEST_METRIC if ranking else None)
    rng = jax.random.PRNGKey(random_seed)
    init_rng, dropout_rng = jax.random.split(rng)
    resume_step = ckpt.latest_step()
    initial_step = 0
    if jax.process_count() > 1:
        # Every host must resume from the same step even if one saw a later, still-committing
        # checkpoint directory: process 0's view wins.
        from jax.experimental import multihost_utils
        agreed = int(multihost_utils.broadcast_one_to_all(
            np.int32(-1 if resume_step is None else resume_step)))
        resume_step = None if agreed < 0 else agreed
    if resume_step is not None:
        def with_sharding(a: Any, s: Any) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

        params, opt_state, meta = ckpt.restore(
            resume_step,
            abstract_params=jax.tree_util.tree_map(with_sharding, abstract.params,
                                                   shardings.params),
            abstract_opt_state=jax.tree_util.tree_map(with_sharding, abstract.opt_state,
                                                      shardings.opt_state))
        step_arr = jax.device_put(np.int32(resume_step), shardings.step)
        state = trainer.TrainState(step_arr, params, opt_state)
        dropout_rng = jax.numpy.asarray(np.asarray(meta["rng"], np.uint32))
        initial_step = int(meta.get("initial_step", 0))
        position = meta.get("data_position") or {}
        skip = int(position.get("train_batches", resume_step - initial_step))
        if position.get("per_host_batch", per_host) != per_host or \
                position.get("process_count", jax.process_count()) != jax.process_count():
            log.warning("resuming with a different batch/host layout than %s: the input "
                        "stream will not match the interrupted run exactly", position)
        log.info("resumed from %s at step %d (skipping %d input batches)",
                 out / f"checkpoint_{resume_step}", resume_step, skip)
        if efficient:
            _check_resumed_adapters(meta, model_config, tuning, initial_checkpoint_path,
                                    out / f"checkpoint_{resume_step}")
            frozen = partitioning.shard_params(
                _load_backbone(initial_checkpoint_path, base_config), frozen_sh)
    elif efficient:
        state, frozen = trainer.init_adapted_state(
            model, tx, init_rng, shardings, frozen_sh, mesh, rules,
            _load_backbone(initial_checkpoint_path, base_config), tuning)
        skip = 0
    else:
        init_params = None
        if initial_checkpoint_path:
            from flanrec.api import load_params_any

            src_cfg, init_params = load_params_any(initial_checkpoint_path)
            common.check_params(common.flatten(init_params), model_config,
                                str(initial_checkpoint_path))
            common.check_finite(common.flatten(init_params),
                                f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}")
            log.info("initial parameters from %s (%s)", initial_checkpoint_path, src_cfg.name)
        state = trainer.init_state(model, tx, init_rng, shardings, mesh, rules, init_params)
        skip = 0
    if resume_step is None and initial_checkpoint_path:
        initial_step = _initial_step(initial_checkpoint_path)
        if initial_step:
            state = state.replace(step=jax.device_put(np.int32(initial_step), shardings.step))
    train_steps, steps_basis = _total_steps(train_steps, train_steps_relative, initial_step,
                                            initial_checkpoint_path, resume_step)
    start_step = int(jax.device_get(state.step))

    # 5. Input streams, compiled steps, writers.
    train_iter = train_batches(dataclasses.replace(train_dataset, seed=train_dataset.seed
                                                   if train_dataset.seed is not None
                                                   else random_seed), per_host, skip)
    evals = None
    if eval_dataset is not None and eval_period:
        evals = eval_batches(eval_dataset, eval_dataset.batch_size // jax.process_count())
    ranker = None
    if ranking:
        from flanrec.inference.rank_eval import RankValidator

        assert rank_eval is not None
        ranker = RankValidator(rank_eval, model_config.replace(dropout_rate=0.0),
                               train_dataset.task_feature_lengths)
    best = _read_best(out, start_step) if ranking else {}
    bsh = partitioning.batch_sharding(mesh, rules)
    train_step = trainer.make_train_step(model, tx, schedule, loss_cfg, shardings, bsh, mesh,
                                         rules, num_microbatches, frozen_sh)
    eval_step = trainer.make_eval_step(model, loss_cfg,
                                       peft_params.combine(frozen_sh, shardings.params),
                                       bsh, mesh, rules)
    lengths = train_dataset.task_feature_lengths
    prompt_cfg = peft_config.prompt_of(model_config)
    extra_inputs = prompt_cfg.length if prompt_cfg and prompt_cfg.fusion == "concat" else 0
    step_flops = flops.train_flops_per_step(base_config, batch,
                                            lengths["inputs"] + extra_inputs,
                                            lengths["targets"])
    peak, peak_source = flops.peak_flops_total()
    log.info("%.3g model FLOPs per step; peak %.3g FLOP/s (%s)", step_flops, peak, peak_source)
    meter = trainer.Throughput(step_flops, peak, batch, train_steps)
    from clu import metric_writers

    quiet = jax.process_index() > 0
    writers = {name: metric_writers.create_default_writer(os.fspath(out / name),
                                                          just_logging=quiet)
               for name in ("train", "validation")}
    preemption = _Preemption()

    def save(step: int, metrics: Mapping[str, float] | None = None) -> None:
        meta = {"model_config": base_config.to_dict(), "rng": dropout_rng,
                "initial_step": initial_step,
                "data_position": {"train_batches": step - initial_step,
                                  "per_host_batch": per_host,
                                  "process_count": jax.process_count()}}
        if efficient:  # adapters only: the backbone is named, not copied
            meta.update(tuning=tuning, peft=peft_config.adapters_to_dict(model_config),
                        backbone=_abs_path(initial_checkpoint_path))
        ckpt.save(step, state.params, state.opt_state, meta=meta, force=True,
                  metrics={BEST_METRIC: metrics[BEST_METRIC]} if metrics else None)
        log.info("checkpoint %d started (%s)", step, "async" if async_checkpointing else "sync")

    def rank_validate(step: int) -> dict[str, float]:
        assert ranker is not None
        m = ranker.evaluate(peft_params.combine(frozen, state.params))
        writers["validation"].write_scalars(step, {k: v for k, v in m.items()
                                                   if "@" in k})
        improved = rank_better(m[BEST_METRIC], best.get("value"))
        entry = {"step": step, **m}
        best.setdefault("history", []).append(entry)
        if improved:
            best.update(step=step, value=m[BEST_METRIC], metric=f"validation/{BEST_METRIC}",
                        task=ranker.info.name, split=ranker.cfg.split)
        if jax.process_index() == 0:
            storage.write_json_atomic(os.fspath(out / BEST_FILE), best, ensure_ascii=True)
        log.info("rank validation @ step %d | %s | %d users, %.1fs%s", step,
                 format_metrics(m, [f"{k}@{n}" for n in ranker.cfg.ks for k in
                                    ("hr", "ndcg")]), m["num_users"], m["seconds"],
                 " | best so far" if improved else
                 f" | best {best['value']:.4f} at step {best['step']}")
        return m

    def validate(step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        t_eval = time.time()
        progress = Progress(f"validation @ step {step}", total=len(evals or []),
                            unit="batches", log=log.info)
        for b in evals or []:
            result = eval_step(peft_params.combine(frozen, state.params),
                               partitioning.host_to_global(b, bsh))
            for k, v in jax.device_get(result).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            progress.update(1)
        metrics = scalars.validation_scalars(sums)
        writers["validation"].write_scalars(step, metrics)
        writers["train"].write_scalars(step, {"timing/evaluate_seconds": time.time() - t_eval})
        log.info("validation @ step %d | loss %.4f | token acc %.2f%% | %d target tokens",
                 step, metrics["loss"], 100 * metrics["accuracy"], sums["weight"])
        return {**metrics, "target_tokens": sums["weight"]}

    # 6. The loop. Metrics of step s are read after step s+1 is queued, so the device never
    # idles waiting for the host; a NaN is still caught before any checkpoint of it is made.
    window, last_train, last_eval = _Window(), {}, {}
    pending: tuple[int, Any] | None = None
    step = start_step
    stopped_early = False
    log.info("training from step %d to %d (%s; setup %.1fs)", step, train_steps, steps_basis,
             time.time() - t_start)
    try:
        while step < train_steps:
            host_batch = next(train_iter, None)
            if host_batch is None:
                raise ConfigError(f"{train_dataset.mixture_or_task_name}/{train_dataset.split}: "
                                  f"too few examples for one batch of {per_host} per host")
            trainer.check_token_ids(host_batch, model_config.vocab_size,
                                    f"training batch {step + 1}")
            state, metrics = train_step(state, partitioning.host_to_global(host_batch, bsh),
                                        dropout_rng, frozen)
            step += 1
            if pending is not None:
                meter.add_tokens(window.add(*pending))
            pending = (step, metrics)
            if step == start_step + 1:  # the first step includes compilation: not timed
                window.add(*pending)
                pending = None
                meter.start(step)
            stop = preemption.reached(step)
            is_last = step == train_steps
            save_now = is_last or stop or (checkpoint_period and step % checkpoint_period == 0)
            eval_now = (evals is not None or ranker is not None) and (
                is_last or step % eval_period == 0)
            if step % log_period == 0 or save_now or eval_now:
                if pending is not None:
                    meter.add_tokens(window.add(*pending))
                    pending = None
                if step % log_period == 0 or is_last:
                    averages, rates = window.pop(), meter.report(step)
                    last_train = {**averages, **rates}
                    writers["train"].write_scalars(step, scalars.train_scalars(
                        averages, rates, batch_size=batch, target_length=lengths["targets"],
                        num_devices=jax.device_count()))
                    log.info("step %d/%d | loss %.4f | token acc %.2f%% | lr %.3g | "
                             "grad norm %.3g | %.1f examples/s | %.0f target tokens/s | "
                             "MFU %.2f%% | ETA %s", step, train_steps, last_train["loss"],
                             100 * last_train["accuracy"], last_train["learning_rate"],
                             last_train["grad_norm"],
                             last_train.get("examples_per_sec", float("nan")),
                             last_train.get("target_tokens_per_sec", float("nan")),
                             100 * last_train.get("mfu", float("nan")),
                             _format_eta(last_train.get("eta_sec", float("nan"))))
            ranked: dict[str, float] = {}
            if eval_now:
                last_eval = validate(step) if evals is not None else {}
                if ranker is not None:
                    ranked = rank_validate(step)
                    last_eval.update({f"rank/{k}": v for k, v in ranked.items()})
                    save_now = True  # every ranked step is a candidate for the best
            if save_now:
                save(step, ranked or None)
            if eval_now or save_now:
                meter.start(step)  # throughput counts training only
            if stop and not is_last:
                log.warning("preempted: checkpoint %d saved, exiting", step)
                break
            if ranked and early_stopping_patience > 0 and not is_last:
                since = sum(1 for h in best["history"] if h["step"] > best["step"])
                if since >= early_stopping_patience:
                    log.info("early stopping at step %d: %d evaluations without a better "
                             "validation %s than %.4f (step %d)", step, since, BEST_METRIC,
                             best["value"], best["step"])
                    stopped_early = True
                    break
    finally:
        preemption.close()
        ckpt.wait()
        ckpt.close()
        for w in writers.values():
            w.flush()
            w.close()
    return {"step": step, "train": last_train, "validation": last_eval,
            "preempted": step < train_steps and not stopped_early,
            "stopped_early": stopped_early, "best": {k: v for k, v in best.items()
                                                     if k != "history"}}


# ------------------------------------------------------------------ steps and vocabulary
def _initial_step(initial_checkpoint_path: str) -> int:
    """The step a fresh run starts at: a T5X checkpoint's own step (T5X restores it into the
    train state), 0 for HF and flanrec checkpoints (params only, fresh optimizer)."""
    from flanrec.convert.t5x import checkpoint_step

    return int(checkpoint_step(initial_checkpoint_path) or 0)


def _total_steps(train_steps: int | None, relative: int | None, initial_step: int,
                 initial_checkpoint_path: str | None, resume_step: int | None
                 ) -> tuple[int, str]:
    """(the step to stop at, how it was counted — for the log line)."""
    if relative is not None:
        if relative < 1:
            raise UserError(f"TRAIN_STEPS_RELATIVE must be >= 1, got {relative}")
        ignored = "" if train_steps is None else f"; TRAIN_STEPS={train_steps} is ignored"
        return initial_step + relative, (f"TRAIN_STEPS_RELATIVE={relative} steps after step "
                                         f"{initial_step}{ignored}")
    if train_steps is None:
        raise UserError("TRAIN_STEPS is None and TRAIN_STEPS_RELATIVE is not set: set one of "
                        "them (the step to stop at, or how many steps to train)")
    if not initial_step:
        return train_steps, "TRAIN_STEPS counted from step 0"
    if train_steps <= initial_step and resume_step is None:
        raise UserError(
            f"TRAIN_STEPS={train_steps} is not above step {initial_step} of the T5X "
            f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}: as in T5X, TRAIN_STEPS counts "
            f"the pretrained steps too. Set TRAIN_STEPS={initial_step + train_steps} (or "
            f"TRAIN_STEPS_RELATIVE={train_steps}) for {train_steps} steps of fine-tuning")
    return train_steps, (f"TRAIN_STEPS counts the {initial_step} steps of the T5X initial "
                         "checkpoint, as in T5X")


def _save_task_vocabulary(model_dir: Any, task_name: str) -> None:
    """MODEL_DIR/spiece.model + flanrec_vocabulary.json: the ids' meaning, for
    `flanrec.load(...).generate_text` and `convert --to hf` (`flanrec.convert.vocabulary`)."""
    import seqio

    from flanrec.convert import vocabulary

    vocab = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    vocabulary.write_vocabulary(vocab, os.fspath(model_dir))


# ------------------------------------------------------------ parameter-efficient tuning
BEST_METRIC = "ndcg@10"
BEST_FILE = "best_checkpoint.json"  # flanrec.checkpoints.BEST_FILE


def _read_best(out: epath.Path, start_step: int) -> dict[str, Any]:
    """The best-checkpoint record of a resumed run (empty for a new one).

    Evaluations after `start_step` (the checkpoint resumed from) belong to a part of the run
    that is about to be redone: they are dropped, and the best is recomputed without them.
    """
    f = out / BEST_FILE
    if not f.exists():
        return {}
    try:
        doc = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f}: not valid JSON ({e}); move it aside to start the record "
                         "afresh") from None
    history = [h for h in doc.get("history", []) if h["step"] <= start_step]
    out_doc = {k: v for k, v in doc.items() if k not in ("history", "step", "value")}
    out_doc["history"] = history
    if history:
        top = max(history, key=lambda h: (h[BEST_METRIC], -h["step"]))
        out_doc.update(step=top["step"], value=top[BEST_METRIC])
    return out_doc


def rank_better(value: float, best: float | None) -> bool:
    """Strictly higher is better (a tie keeps the earlier checkpoint)."""
    return best is None or value > best


def format_metrics(metrics: Mapping[str, float], keys: Sequence[str]) -> str:
    return " | ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def _abs_path(path: str | None) -> str | None:
    return None if path is None else storage.normalize(path)


def _with_tuning(cfg: T5Config, tuning: str, prompt: peft_config.PromptConfig | None,
                 lora: peft_config.LoraConfig | None, train_dataset: DatasetConfig,
                 initial_checkpoint_path: str | None) -> T5Config:
    """The model config of this TUNING, refusing settings that cannot work, by name."""
    if tuning not in peft_config.TUNINGS:
        raise ConfigError(f"TUNING must be one of {peft_config.TUNINGS}, got {tuning!r}")
    if tuning == "full":
        return cfg
    if not initial_checkpoint_path:
        raise ConfigError(f"TUNING={tuning!r} freezes the backbone: set INITIAL_CHECKPOINT_PATH "
                          "to the pretrained model (a frozen random backbone learns nothing)")
    if tuning == "prompt":
        prompt = prompt or peft_config.PromptConfig()
        if prompt.fusion == "concat" and train_dataset.pack:
            raise ConfigError("PROMPT_FUSION='concat' needs unpacked inputs (PACK = False): "
                              "one prompt per row cannot serve several packed examples")
        return peft_config.with_adapters(cfg, prompt=prompt)
    return peft_config.with_adapters(cfg, lora=lora or peft_config.LoraConfig())


def _load_backbone(path: str, base: T5Config) -> dict[str, Any]:
    from flanrec.api import load_params_any

    src_cfg, params = load_params_any(path)
    common.check_params(common.flatten(params), base, f"INITIAL_CHECKPOINT_PATH {path}")
    common.check_finite(common.flatten(params), f"INITIAL_CHECKPOINT_PATH {path}")
    log.info("frozen backbone from %s (%s)", path, src_cfg.name)
    return params


def _check_resumed_adapters(meta: Mapping[str, Any], cfg: T5Config, tuning: str,
                            initial_checkpoint_path: str, where: Any) -> None:
    """A resumed adapter run must continue on the same backbone with the same adapters."""
    want = {"tuning": tuning, "peft": peft_config.adapters_to_dict(cfg),
            "backbone": _abs_path(initial_checkpoint_path)}
    got = {k: meta.get(k) for k in want}
    norm = json.loads(json.dumps(want))  # tuples → lists, as stored
    bad = [k for k in want if got[k] != norm[k]]
    if bad:
        raise ConfigError(f"{where}: cannot resume: the checkpoint was trained with "
                          + ", ".join(f"{k}={got[k]!r}" for k in bad) + " but this run has "
                          + ", ".join(f"{k}={norm[k]!r}" for k in bad))


# ---------------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = jobs.JobArgumentParser(prog="python -m flanrec.train", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gin_job_flags(parser, job="train")
    parser.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                        help="directories holding seqio caches (seqio.scripts.cache_tasks_main "
                             "output), searched when USE_CACHED_TASKS = True (comma-separated "
                             "or repeated; T5X's flag)")
    return parse_gin_job_args(parser, argv)


def cli(argv: Sequence[str]) -> int:
    """The job: parse, configure gin, train. Raises UserError (one line via `main`) for what
    the user can fix."""
    args, bindings = parse_args(argv)
    configure_gin(args.gin_file, bindings, args.gin_search_paths)  # before any jax backend use
    check_gin_settings()
    from flanrec.data import seqio_cache

    seqio_cache.add_cache_dirs(split_search_paths(args.seqio_additional_cache_dirs))
    jobs.init_distributed(args)
    if jax.process_count() > 1:
        log.info("process %d of %d", jax.process_index(), jax.process_count())
    try:
        result = train()
    except NonFiniteLossError as e:
        log.error("%s", e)
        return 1
    except ValueError as e:
        if "gin.REQUIRED" in str(e) or "Required bindings" in str(e):  # a macro left unset
            raise ConfigError(str(e)) from e
        raise
    if result["preempted"]:
        log.info("stopped early at step %d after SIGTERM; rerun the same command to resume",
                 result["step"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.run("flanrec.train", cli, argv)


if __name__ == "__main__":
    sys.exit(main())
