"""Train state, the partitioned train/eval steps, and the throughput numbers around them.

`make_train_step` returns one `jax.jit` program with explicit in/out shardings and the state
donated (pjit semantics, see `flanrec.partitioning`). Inside, the global batch may be split
into microbatches whose *summed* losses and gradients are normalised once by the number of
real target tokens, so accumulation is exact: one call = one optimizer update.

Parameter-efficient tuning (TUNING = 'prompt' | 'lora', `flanrec.peft`): the train state's
`params` hold only the trainable adapters, and the frozen backbone travels as a separate,
non-donated argument of the step. Gradients are taken with respect to the adapters alone, so
no backbone-sized gradient, optimizer statistic or checkpoint array exists, and the backbone
cannot change (it is never an output of the step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flanrec import partitioning
from flanrec.model import hash_prng
from flanrec.model.config import T5Config
from flanrec.peft import params as peft_params
from flanrec.train import ema as ema_lib
from flanrec.train import flops, losses

log = logging.getLogger(__name__)

Batch = Mapping[str, jax.Array]
_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                  "decoder_positions")
TOKEN_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


@flax.struct.dataclass
class TrainState:
    """Everything a step updates: the step counter, parameters and optimizer state, and
    with EMA_DECAY > 0 the moving average of the parameters (`flanrec.train.ema`; None
    otherwise, which adds no leaf)."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any = None


def _init_params(model: nn.Module, rng: jax.Array) -> Any:
    dummy = jnp.ones((1, 1), jnp.int32)
    return nn.unbox(model.init(rng, dummy, dummy, dummy)["params"])


def _fresh(params: Any, tx: optax.GradientTransformation, ema: bool) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      ema_lib.init(params) if ema else None)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation,
                   tuning: str = "full", ema: bool = False) -> TrainState:
    """Shapes and dtypes of the train state (trainable params only), without allocating it.
    `ema`: with the moving average of the params (EMA_DECAY > 0)."""
    def build(rng: jax.Array) -> TrainState:
        params, _ = peft_params.split(_init_params(model, rng), tuning)
        return _fresh(params, tx, ema)

    return jax.eval_shape(build, jax.random.PRNGKey(0))


def abstract_frozen(model: nn.Module, tuning: str) -> Any:
    """Shapes of the frozen backbone under `tuning` ({} for full fine-tuning)."""
    return jax.eval_shape(lambda r: peft_params.split(_init_params(model, r), tuning)[1],
                          jax.random.PRNGKey(0))


def state_shardings(abstract: TrainState, cfg: T5Config, mesh: Mesh,
                    rules: partitioning.Rules) -> TrainState:
    """`NamedSharding` for every leaf of the train state (optimizer state follows params)."""
    return partitioning.logical_to_shardings(partitioning.state_logical_specs(abstract, cfg),
                                             mesh, rules)


def frozen_shardings(abstract: Any, cfg: T5Config, mesh: Mesh, rules: partitioning.Rules
                     ) -> Any:
    """`NamedSharding`s of the frozen backbone: the same layout full fine-tuning uses."""
    return partitioning.logical_to_shardings(
        partitioning.state_logical_specs(abstract, cfg), mesh, rules)


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               shardings: TrainState, mesh: Mesh, rules: partitioning.Rules,
               params: Mapping[str, Any] | None = None, ema: bool = False) -> TrainState:
    """A fresh train state created directly in its shards.

    From scratch, the initialiser itself runs partitioned (no host ever holds the full
    model); from `params` (host numpy arrays of an imported checkpoint) each device receives
    its slice, and only the optimizer state is computed on device. `ema`: the moving
    average starts as a copy of the initial params.
    """
    with partitioning.mesh_context(mesh, rules):
        if params is None:
            def build(rng: jax.Array) -> TrainState:
                return _fresh(_init_params(model, rng), tx, ema)

            return jax.jit(build, out_shardings=shardings)(rng)
        sharded = partitioning.shard_params(params, shardings.params)

        def attach(p: Any) -> TrainState:
            return _fresh(p, tx, ema)

        return jax.jit(attach, in_shardings=(shardings.params,), out_shardings=shardings,
                       donate_argnums=(0,))(sharded)


def init_adapted_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       shardings: TrainState, frozen_sh: Any, mesh: Mesh,
                       rules: partitioning.Rules, backbone: Mapping[str, Any], tuning: str,
                       ema: bool = False) -> tuple[TrainState, Any]:
    """(fresh adapter train state, frozen backbone) for TUNING='prompt'|'lora'.

    The backbone (host numpy arrays of the initial checkpoint) goes straight into its shards;
    adapters are initialised on device (only their initialisers survive jit's dead-code
    elimination), prompts with `init='vocab'` from the backbone's own embedding rows.
    """
    frozen = partitioning.shard_params(backbone, frozen_sh)
    cfg = model.config
    prompt = getattr(cfg, "prompt", None)

    def build(rng: jax.Array, frozen: Any) -> TrainState:
        params, _ = peft_params.split(_init_params(model, rng), tuning)
        if prompt is not None and prompt.init == "vocab" and "prompt" in params:
            params = {**params, "prompt": peft_params.init_prompt_from_vocab(
                cfg, frozen, jax.random.fold_in(rng, 1))["prompt"]}
        return _fresh(params, tx, ema)

    with partitioning.mesh_context(mesh, rules):
        state = jax.jit(build, in_shardings=(None, frozen_sh),
                        out_shardings=shardings)(rng, frozen)
    return state, frozen


def _forward_sums(model: nn.Module, params: Any, batch: Batch, loss_cfg: losses.LossConfig,
                  dropout_rng: jax.Array | None) -> dict[str, jax.Array]:
    inputs = {k: batch[k] for k in MODEL_FEATURES if k in batch}
    train = dropout_rng is not None
    logits = model.apply({"params": params}, **inputs, enable_dropout=train,
                         rngs={"dropout": dropout_rng} if train else None)
    targets = batch["decoder_target_tokens"]
    return losses.cross_entropy_sums(logits, targets, losses.target_weights(targets), loss_cfg)


def dropout_key(raw: jax.Array) -> jax.Array:
    """The step's dropout key, of the hash PRNG (`flanrec.model.hash_prng`), from the raw
    uint32 key words stored in checkpoints.

    Wrapping (not re-deriving) keeps resume exact: the same stored words give the same
    masks. Parameter initialisation keeps JAX's default PRNG.
    """
    return hash_prng.wrap(raw)


def _split_microbatches(batch: Batch, n: int) -> Batch:
    """[B, …] → [n, B/n, …] taking rows n apart, so every microbatch stays spread over all
    data-parallel devices (a contiguous split would put each microbatch on 1/n of them)."""
    def split(x: jax.Array) -> jax.Array:
        b = x.shape[0]
        if b % n:
            raise ValueError(f"batch size {b} is not divisible by num_microbatches={n}")
        y = x.reshape((b // n, n) + x.shape[1:])
        y = nn.with_logical_constraint(y, ("batch",) + (None,) * (y.ndim - 1))
        return jnp.swapaxes(y, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], loss_cfg: losses.LossConfig,
                    shardings: TrainState, batch_sharding: NamedSharding, mesh: Mesh,
                    rules: partitioning.Rules, num_microbatches: int = 1,
                    frozen_shardings: Any = None, ema_decay: float = 0.0,
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """`step(state, batch, rng, frozen=None) -> (state, metrics)`; the state is donated.

    `frozen` (with `frozen_shardings`): the backbone under parameter-efficient tuning; the
    model sees `combine(frozen, state.params)`, gradients exist only for `state.params`.

    Dropout keys are `fold_in(rng, step)` (and the microbatch index), so a resumed run draws
    exactly the masks an uninterrupted one would. Metrics are global over the batch: `loss`
    and `accuracy` per real target token, `grad_norm` of the normalised gradient (before any
    clipping), the `learning_rate` used for this update, and the token count.

    A state holding `ema_params` (EMA_DECAY > 0) folds the updated params into that moving
    average with `ema_decay`, in the same program (`flanrec.train.ema.update`).
    """
    def step(state: TrainState, batch: Batch, rng: jax.Array, frozen: Any
             ) -> tuple[TrainState, dict]:
        grad_fn = jax.grad(lambda p, b, r: (lambda s: (s["loss"], s))(
            _forward_sums(model, peft_params.combine(frozen, p), b, loss_cfg, r)),
            has_aux=True)
        rng = jax.random.fold_in(dropout_key(rng), state.step)
        if num_microbatches == 1:
            grads, sums = grad_fn(state.params, batch, rng)
        else:
            micro = _split_microbatches(batch, num_microbatches)

            def body(carry: tuple, xs: tuple) -> tuple[tuple, None]:
                g_acc, s_acc = carry
                i, mb = xs
                g, s = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return (jax.tree_util.tree_map(jnp.add, g_acc, g),
                        jax.tree_util.tree_map(jnp.add, s_acc, s)), None

            zeros_g = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            zeros_s = {k: jnp.zeros((), jnp.float32)
                       for k in ("loss", "z_loss", "correct", "weight")}
            (grads, sums), _ = jax.lax.scan(
                body, (zeros_g, zeros_s), (jnp.arange(num_microbatches), micro))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["loss"] / denom,
            "z_loss": sums["z_loss"] / denom,
            "accuracy": sums["correct"] / denom,
            "target_tokens": sums["weight"],
            "grad_norm": _norm(grads),
            # Norm of the *updated* parameters: a non-finite value here means this step made
            # the weights unusable even if its loss (computed before the update) was finite.
            "param_norm": _norm(params),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        }
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = ema_lib.update(ema_params, params, ema_decay)
        return TrainState(state.step + 1, params, opt_state, ema_params), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    frozen_sh = {} if frozen_shardings is None else frozen_shardings
    jitted = jax.jit(step, in_shardings=(shardings, batch_sharding, replicated, frozen_sh),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))

    def run(state: TrainState, batch: Batch, rng: jax.Array, frozen: Any = None
            ) -> tuple[TrainState, dict]:
        with partitioning.mesh_context(mesh, rules):
            return jitted(state, batch, rng, {} if frozen is None else frozen)

    def compile_ahead(state: Any, batch: Any, rng: Any, frozen: Any = None) -> None:
        """Compile for these shapes (arrays or `jax.ShapeDtypeStruct`s) without running:
        the first `run` with the same shapes then finds the program in JAX's cache."""
        with partitioning.mesh_context(mesh, rules):
            jitted.lower(state, batch, rng, {} if frozen is None else frozen).compile()

    run.compile_ahead = compile_ahead  # type: ignore[attr-defined]
    return run


def make_eval_step(model: nn.Module, loss_cfg: losses.LossConfig, params_shardings: Any,
                   batch_sharding: NamedSharding, mesh: Mesh, rules: partitioning.Rules,
                   ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """`eval_step(params, batch) -> sums` of teacher-forced loss terms (no dropout)."""
    def step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        return _forward_sums(model, params, batch, loss_cfg, None)

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(params_shardings, batch_sharding),
                     out_shardings=replicated)

    def run(params: Any, batch: Batch) -> dict[str, jax.Array]:
        with partitioning.mesh_context(mesh, rules):
            return jitted(params, batch)

    def compile_ahead(params: Any, batch: Any) -> None:
        """As `make_train_step`'s: compile for these shapes without running."""
        with partitioning.mesh_context(mesh, rules):
            jitted.lower(params, batch).compile()

    run.compile_ahead = compile_ahead  # type: ignore[attr-defined]
    return run


def check_token_ids(batch: Mapping[str, np.ndarray], vocab_size: int, where: str) -> None:
    """Refuse token ids outside the model's embedding table, naming the feature.

    XLA clamps out-of-range gathers silently on TPU; a vocabulary/model mismatch would then
    train on garbage without any error.
    """
    for name in TOKEN_FEATURES:
        arr = batch.get(name)
        if arr is None:
            continue
        hi, lo = int(np.max(arr)), int(np.min(arr))
        if hi >= vocab_size or lo < 0:
            bad = hi if hi >= vocab_size else lo
            raise ValueError(f"{where}: feature {name!r} contains token id {bad}, outside the "
                             f"model vocabulary [0, {vocab_size}); does the task's "
                             "vocabulary match the model config (vocab_size)?")


def format_mfu(mfu: float) -> str:
    """"41.27%", or "n/a" when there is no trustworthy utilisation (see `Throughput`)."""
    return f"{100 * mfu:.2f}%" if mfu == mfu and 0 <= mfu <= 1 else "n/a"


class Throughput:
    """Examples/s, target tokens/s, achieved FLOP/s, MFU and ETA over the interval since the
    last report.

    The clock starts after the first step has finished, so compilation never counts.

    A `peak_measured` peak (CPU: a matmul probed once at start-up, under whatever load the
    machine had then) is a floor of the true peak, not the peak: when training itself runs
    faster, the peak is raised to the achieved rate (said once in the log), so MFU stays at
    most 100%. A datasheet or gin peak is never raised: a rate above it means the figure is
    wrong, and MFU is NaN (not printed) rather than above 100%.
    """

    def __init__(self, flops_per_step: float, peak_flops: float, global_batch: int,
                 total_steps: int, peak_measured: bool = False) -> None:
        self.flops_per_step = flops_per_step
        self.peak_flops = peak_flops
        self.peak_measured = peak_measured
        self.global_batch = global_batch
        self.total_steps = total_steps
        self._said: set[str] = set()
        self._t0: float | None = None
        self._step0 = 0
        self._tokens = 0.0

    def start(self, step: int) -> None:
        self._t0, self._step0, self._tokens = time.perf_counter(), step, 0.0

    def add_tokens(self, n: float) -> None:
        self._tokens += n

    def report(self, step: int) -> dict[str, float]:
        if self._t0 is None or step <= self._step0:
            return {}
        dt = time.perf_counter() - self._t0
        steps = step - self._step0
        sec_per_step = dt / steps
        achieved = self.flops_per_step * steps / dt
        if achieved > self.peak_flops:
            if self.peak_measured:
                if "raised" not in self._said:
                    self._said.add("raised")
                    log.info("training runs at %.3g FLOP/s, above the matmul peak measured at "
                             "start-up (%.3g, under load then): MFU is taken against the "
                             "highest rate seen", achieved, self.peak_flops)
                self.peak_flops = achieved
            elif "above" not in self._said:
                self._said.add("above")
                log.warning("training runs at %.3g FLOP/s, above the peak %.3g FLOP/s it was "
                            "given: the peak figure is wrong, MFU is not reported (set "
                            "flops.peak_flops_total.peak_flops_per_device)", achieved,
                            self.peak_flops)
        out = {
            "examples_per_sec": self.global_batch * steps / dt,
            "target_tokens_per_sec": self._tokens / dt,
            "steps_per_sec": steps / dt,
            "flops_per_sec": achieved,
            "mfu": flops.utilisation(achieved, self.peak_flops),
            "eta_sec": sec_per_step * max(self.total_steps - step, 0),
        }
        self.start(step)
        return out
