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
finds flanrec's own gin files from any directory (`flanrec.frontend.gin_cli`).

The job reads top to bottom in `train()`: output dir → mesh → data → state (resume, initial
checkpoint or scratch) → compiled steps → loop (log, validate, checkpoint) → final save. What
it calls lives next to it: the input streams in `flanrec.train.inputs`, the settings checks
and step counting in `flanrec.train.settings`, the loop's watchers (metric window, SIGTERM,
best-checkpoint record) in `flanrec.train.monitor`, the gin and multi-host flags in
`flanrec.frontend.gin_cli` / `flanrec.frontend.jobs`.

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

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from etils import epath

from flanrec import partitioning
from flanrec.checkpoints import TrainCheckpointer, load_params_any
from flanrec.data import length_check
from flanrec.errors import ConfigError, UserError
from flanrec.files import outputs, storage
from flanrec.frontend.progress import Progress
from flanrec.infer.rank_eval import RankEvalConfig, RankValidator
from flanrec.interop import vocabulary
from flanrec.model import adapters
from flanrec.model.config import T5Config
from flanrec.model.network import Transformer
from flanrec.model.params import check_finite, check_params, count_params, flatten
from flanrec.peft import params as peft_params
from flanrec.train import ema as ema_lib
from flanrec.train import flops, losses, optimizers, scalars
from flanrec.train import steps as trainer
from flanrec.train.inputs import DatasetConfig, check_task, eval_batches, train_batches
from flanrec.train.monitor import (
    BEST_FILE,
    BEST_METRIC,
    Preemption,
    Timers,
    Window,
    format_eta,
    format_metrics,
    rank_better,
    read_best,
)
from flanrec.train.settings import check_settings, start_step_of, total_steps

log = logging.getLogger("flanrec.train")

class ModelDirError(UserError, PermissionError):
    """MODEL_DIR cannot be created or written (checked before anything compiles)."""


# ------------------------------------------------------------------------- small helpers
def _prepare_model_dir(model_dir: str) -> epath.Path:
    """Create MODEL_DIR (refusing a directory of someone else's files, or a file system
    Orbax cannot write) and prove it writable, before anything is compiled."""
    path = storage.orbax_path(model_dir)
    if jax.process_index() == 0:
        probe = path / f".write_probe_{os.getpid()}"
        try:
            outputs.claim_dir(str(path), "train", what="MODEL_DIR")
            probe.write_text("ok")
            probe.unlink()
        except storage.StorageError:
            raise  # already one line naming MODEL_DIR (e.g. a directory of user files)
        except OSError as e:
            raise ModelDirError(f"MODEL_DIR {model_dir} is not writable: {e}") from e
    return path


# ------------------------------------------------------------------------------ the job
@outputs.releases_locks  # MODEL_DIR is locked while this call runs
def train(*, model_dir: str = gin.REQUIRED, model_config: T5Config = gin.REQUIRED,
          train_dataset: DatasetConfig = gin.REQUIRED,
          eval_dataset: DatasetConfig | None = None,
          train_steps: int | None = gin.REQUIRED, eval_period: int = 0,
          eval_steps: int | None = None,
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
          prompt: adapters.PromptConfig | None = None,
          lora: adapters.LoraConfig | None = None,
          rank_eval: RankEvalConfig | None = None, early_stopping_patience: int = 0,
          devices: Sequence[jax.Device] | None = None, ema_decay: float = 0.0
          ) -> dict[str, Any]:
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

    `eval_steps` (T5X's name) caps the teacher-forced validation at that many batches of
    the split, the same first batches every time: on a large split (Amazon Beauty's 22k
    users) the full pass cost 2.3x the rank validation that picks the checkpoint, while a
    loss curve needs only a steady sample. None: the whole split.

    `ema_decay` (EMA_DECAY) > 0 keeps an exponential moving average of the trained weights
    (`flanrec.train.ema`): saved in every checkpoint and named there as the parameters to
    infer with, and the weights that validation and rank validation score.

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

    tf.config.set_visible_devices([], "GPU")  # the input pipeline must not grab accelerators
    ema_decay = ema_lib.check_decay(ema_decay)
    with_ema = ema_decay > 0
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
                          f"number of processes ({jax.process_count()}); set BATCH_SIZE (or "
                          "EXAMPLES_PER_UPDATE when BATCH_SIZE = 'auto')")
    per_host = batch // jax.process_count()
    if eval_steps is not None and (isinstance(eval_steps, bool) or
                                   not isinstance(eval_steps, int) or eval_steps < 1):
        raise ConfigError(f"train.eval_steps must be a positive number of validation batches "
                          f"(or None for the whole split), got {eval_steps!r}")
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
             jax.process_count(), model_config.name, count_params(model_config) / 1e6,
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
    abstract = trainer.abstract_state(model, tx, tuning, with_ema)
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
        state = trainer.TrainState(step_arr, params, opt_state,
                                   _resumed_ema(ckpt, resume_step, abstract, shardings)
                                   if with_ema else None)
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
            _load_backbone(initial_checkpoint_path, base_config), tuning, with_ema)
        skip = 0
    else:
        init_params = None
        if initial_checkpoint_path:

            src_cfg, init_params = load_params_any(initial_checkpoint_path)
            check_params(flatten(init_params), model_config,
                                str(initial_checkpoint_path))
            check_finite(flatten(init_params),
                                f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}")
            log.info("initial parameters from %s (%s)", initial_checkpoint_path, src_cfg.name)
        state = trainer.init_state(model, tx, init_rng, shardings, mesh, rules, init_params,
                                   with_ema)
        skip = 0
    if resume_step is None and initial_checkpoint_path:
        initial_step = start_step_of(initial_checkpoint_path)
        if initial_step:
            state = state.replace(step=jax.device_put(np.int32(initial_step), shardings.step))
    train_steps, steps_basis = total_steps(train_steps, train_steps_relative, initial_step,
                                            initial_checkpoint_path, resume_step)
    start_step = int(jax.device_get(state.step))

    # 5. Input streams, compiled steps, writers. The train step compiles on a thread while
    # the validation data is read (XLA leaves the GIL to the readers); so does the eval step.
    train_iter = train_batches(dataclasses.replace(train_dataset, seed=train_dataset.seed
                                                   if train_dataset.seed is not None
                                                   else random_seed), per_host, skip)
    bsh = partitioning.batch_sharding(mesh, rules)
    train_step = trainer.make_train_step(model, tx, schedule, loss_cfg, shardings, bsh, mesh,
                                         rules, num_microbatches, frozen_sh, ema_decay)
    eval_step = trainer.make_eval_step(model, loss_cfg,
                                       peft_params.combine(frozen_sh, shardings.params),
                                       bsh, mesh, rules)
    ahead = [_compile_ahead(train_step.compile_ahead, _abstract(state),
                            _abstract_batch(train_iter.spec, batch, bsh), dropout_rng,
                            frozen)]
    evals = None
    if eval_dataset is not None and eval_period:
        evals = eval_batches(eval_dataset, eval_dataset.batch_size // jax.process_count(),
                             limit=eval_steps)
        ahead.append(_compile_ahead(
            eval_step.compile_ahead, _abstract(peft_params.combine(frozen, state.params)),
            _abstract_batch({k: (v.shape, v.dtype) for k, v in evals[0].items()},
                            eval_dataset.batch_size, bsh)))
    ranker = None
    if ranking:

        assert rank_eval is not None
        ranker = RankValidator(rank_eval, model_config.replace(dropout_rate=0.0),
                               train_dataset.task_feature_lengths)
    best = read_best(out, start_step) if ranking else {}
    for thread in ahead:
        thread.join()  # the first step must not compile the same program a second time
    lengths = train_dataset.task_feature_lengths
    prompt_cfg = adapters.prompt_of(model_config)
    extra_inputs = prompt_cfg.length if prompt_cfg and prompt_cfg.fusion == "concat" else 0
    step_flops = flops.train_flops_per_step(base_config, batch,
                                            lengths["inputs"] + extra_inputs,
                                            lengths["targets"])
    peak, peak_source = flops.peak_flops_total()
    log.info("%.3g model FLOPs per step; peak %.3g FLOP/s (%s)", step_flops, peak, peak_source)
    meter = trainer.Throughput(step_flops, peak, batch, train_steps,
                               peak_measured=peak_source.startswith("measured"))
    from clu import metric_writers

    quiet = jax.process_index() > 0
    writers = {name: metric_writers.create_default_writer(os.fspath(out / name),
                                                          just_logging=quiet)
               for name in ("train", "validation")}
    preemption = Preemption()

    def save(step: int, metrics: Mapping[str, float] | None = None) -> None:
        meta = {"model_config": base_config.to_dict(), "rng": dropout_rng,
                "initial_step": initial_step,
                "data_position": {"train_batches": step - initial_step,
                                  "per_host_batch": per_host,
                                  "process_count": jax.process_count()}}
        if efficient:  # adapters only: the backbone is named, not copied
            meta.update(tuning=tuning, peft=adapters.adapters_to_dict(model_config),
                        backbone=_abs_path(initial_checkpoint_path))
        if with_ema:
            meta["ema_decay"] = ema_decay
        ckpt.save(step, state.params, state.opt_state, meta=meta, force=True,
                  metrics={BEST_METRIC: metrics[BEST_METRIC]} if metrics else None,
                  ema_params=state.ema_params)
        log.info("checkpoint %d started (%s)", step, "async" if async_checkpointing else "sync")

    def rank_validate(step: int) -> dict[str, float]:
        assert ranker is not None
        m = ranker.evaluate(peft_params.combine(frozen, scored_params()))
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

    def scored_params() -> Any:
        """What validation scores: the moving average under EMA_DECAY (what inference
        will use), else the trained weights."""
        return state.ema_params if with_ema else state.params

    def validate(step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        t_eval = time.time()
        progress = Progress(f"validation @ step {step}", total=len(evals or []),
                            unit="batches", log=log.info)
        for b in evals or []:
            result = eval_step(peft_params.combine(frozen, scored_params()),
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
    window, last_train, last_eval = Window(), {}, {}
    pending: tuple[int, Any] | None = None
    step = start_step
    stopped_early = False
    timers = Timers()
    timers.add("setup", time.time() - t_start)
    log.info("training from step %d to %d (%s; setup %.1fs)", step, train_steps, steps_basis,
             time.time() - t_start)
    t_loop = time.perf_counter()
    try:
        while step < train_steps:
            with timers.part("input"):
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
                timers.add("first step", time.perf_counter() - t_loop
                           - timers.seconds.get("input", 0.0))
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
                             "%.3g FLOP/s (MFU %s) | ETA %s", step, train_steps,
                             last_train["loss"],
                             100 * last_train["accuracy"], last_train["learning_rate"],
                             last_train["grad_norm"],
                             last_train.get("examples_per_sec", float("nan")),
                             last_train.get("target_tokens_per_sec", float("nan")),
                             last_train.get("flops_per_sec", float("nan")),
                             trainer.format_mfu(last_train.get("mfu", float("nan"))),
                             format_eta(last_train.get("eta_sec", float("nan"))))
            ranked: dict[str, float] = {}
            if eval_now:
                with timers.part("validation"):
                    last_eval = validate(step) if evals is not None else {}
                if ranker is not None:
                    with timers.part("rank validation"):
                        ranked = rank_validate(step)
                    last_eval.update({f"rank/{k}": v for k, v in ranked.items()})
                    save_now = True  # every ranked step is a candidate for the best
            if save_now:
                with timers.part("checkpoints"):
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
        with timers.part("checkpoints"):
            ckpt.wait()
            ckpt.close()
        for w in writers.values():
            w.flush()
            w.close()
    accounted = sum(v for k, v in timers.seconds.items() if k != "setup")
    timers.add("steps", time.perf_counter() - t_loop - accounted)
    log.info("where the time went: %s (steps: the training steps, host work between them "
             "and log lines)", timers.summary())
    return {"step": step, "train": last_train, "validation": last_eval,
            "preempted": step < train_steps and not stopped_early,
            "stopped_early": stopped_early, "best": {k: v for k, v in best.items()
                                                     if k != "history"}}


# ------------------------------------------------------------------ steps and vocabulary
def _resumed_ema(ckpt: TrainCheckpointer, step: int, abstract: trainer.TrainState,
                 shardings: trainer.TrainState) -> Any:
    """The moving average saved at `step`, in its shards; a checkpoint saved without one
    (the run had EMA_DECAY = 0 until now) starts it from the restored params."""
    want = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract.ema_params, shardings.ema_params)
    restored = ckpt.restore_ema(step, want)
    if restored is not None:
        return restored
    log.warning("checkpoint %d has no moving average of the weights: EMA_DECAY starts it "
                "from the restored weights", step)
    params = ckpt.restore(step, abstract_params=want)[0]
    return jax.jit(ema_lib.init, out_shardings=shardings.ema_params)(params)


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays (what compiling needs)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=a.sharding), tree)


def _abstract_batch(spec: Mapping[str, tuple[Sequence[int], Any]], global_batch: int,
                    sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch `partitioning.host_to_global` makes of per-host batches of `spec`."""
    return {k: jax.ShapeDtypeStruct((global_batch, *shape[1:]), np.dtype(dtype),
                                    sharding=sharding) for k, (shape, dtype) in spec.items()}


def _compile_ahead(compile_fn: Any, *args: Any) -> threading.Thread:
    """`compile_fn(*args)` on a thread. A failure here is only logged: the step's first
    call compiles again and reports the error where it belongs."""
    def run() -> None:
        try:
            compile_fn(*args)
        except Exception as e:  # the real call raises it again
            log.debug("compiling ahead failed (the first call compiles): %s", e)

    thread = threading.Thread(target=run, name="flanrec-compile", daemon=True)
    thread.start()
    return thread


def _save_task_vocabulary(model_dir: Any, task_name: str) -> None:
    """MODEL_DIR/spiece.model + flanrec_vocabulary.json: the ids' meaning, for
    `flanrec.load(...).generate_text` and `convert --to hf` (`flanrec.interop.vocabulary`)."""
    import seqio

    vocab = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    vocabulary.write_vocabulary(vocab, os.fspath(model_dir))


# ------------------------------------------------------------ parameter-efficient tuning
def _abs_path(path: str | None) -> str | None:
    return None if path is None else storage.normalize(path)


def _with_tuning(cfg: T5Config, tuning: str, prompt: adapters.PromptConfig | None,
                 lora: adapters.LoraConfig | None, train_dataset: DatasetConfig,
                 initial_checkpoint_path: str | None) -> T5Config:
    """The model config of this TUNING, refusing settings that cannot work, by name."""
    if tuning not in adapters.TUNINGS:
        raise ConfigError(f"TUNING must be one of {adapters.TUNINGS}, got {tuning!r}")
    if tuning == "full":
        return cfg
    if not initial_checkpoint_path:
        raise ConfigError(f"TUNING={tuning!r} freezes the backbone: set INITIAL_CHECKPOINT_PATH "
                          "to the pretrained model (a frozen random backbone learns nothing)")
    if tuning == "prompt":
        prompt = prompt or adapters.PromptConfig()
        if prompt.fusion == "concat" and train_dataset.pack:
            raise ConfigError("PROMPT_FUSION='concat' needs unpacked inputs (PACK = False): "
                              "one prompt per row cannot serve several packed examples")
        return adapters.with_adapters(cfg, prompt=prompt)
    return adapters.with_adapters(cfg, lora=lora or adapters.LoraConfig())


def _load_backbone(path: str, base: T5Config) -> dict[str, Any]:

    src_cfg, params = load_params_any(path)
    check_params(flatten(params), base, f"INITIAL_CHECKPOINT_PATH {path}")
    check_finite(flatten(params), f"INITIAL_CHECKPOINT_PATH {path}")
    log.info("frozen backbone from %s (%s)", path, src_cfg.name)
    return params


def _check_resumed_adapters(meta: Mapping[str, Any], cfg: T5Config, tuning: str,
                            initial_checkpoint_path: str, where: Any) -> None:
    """A resumed adapter run must continue on the same backbone with the same adapters."""
    want = {"tuning": tuning, "peft": adapters.adapters_to_dict(cfg),
            "backbone": _abs_path(initial_checkpoint_path)}
    got = {k: meta.get(k) for k in want}
    norm = json.loads(json.dumps(want))  # tuples → lists, as stored
    bad = [k for k in want if got[k] != norm[k]]
    if bad:
        raise ConfigError(f"{where}: cannot resume: the checkpoint was trained with "
                          + ", ".join(f"{k}={got[k]!r}" for k in bad) + " but this run has "
                          + ", ".join(f"{k}={norm[k]!r}" for k in bad))
