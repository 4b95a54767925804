"""Optimizers and learning-rate schedules, all gin-configurable.

Defaults follow T5X's fine-tuning recipe for Flan-T5: Adafactor with factored second moments,
decay 0.8, update clipping 1.0, no momentum and updates scaled by the parameter RMS, at a
constant learning rate of 1e-3. Gradient accumulation is NOT done here (no
`optax.MultiSteps`): the train step sums gradients over microbatches itself, so one step is
always exactly one optimizer update over the global batch and the step counter, schedule
and checkpoints never have to know about microbatches.
"""

from __future__ import annotations

from collections.abc import Callable

import gin
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


# ----------------------------------------------------------------------------- schedules
@gin.configurable
def constant_schedule(value: float = 1e-3) -> Schedule:
    """A flat learning rate (T5X's fine-tuning default is 1e-3 with Adafactor)."""
    return optax.constant_schedule(value)


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000,
          linear_warmup: bool = False) -> Schedule:
    """T5X's `constant * rsqrt_decay`: base / sqrt(max(step, warmup_steps)).

    T5's pre-training schedule is flat at base/sqrt(warmup) for `warmup_steps`, then decays
    as 1/sqrt(step). `linear_warmup=True` additionally ramps from 0 over the warm-up (T5X's
    `linear_warmup` factor), which helps from-scratch runs with large learning rates.
    """
    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        lr = base_learning_rate / jnp.sqrt(jnp.maximum(step, float(warmup_steps)))
        if linear_warmup:
            lr = lr * jnp.minimum(1.0, step / max(warmup_steps, 1))
        return lr

    return schedule


@gin.configurable
def linear_schedule(peak_value: float = 1e-3, warmup_steps: int = 0, total_steps: int = 10_000,
           end_value: float = 0.0) -> Schedule:
    """Linear warm-up from 0 to `peak_value`, then linear decay to `end_value`."""
    def schedule(step: jnp.ndarray) -> jnp.ndarray:
        step = jnp.asarray(step, jnp.float32)
        warm = peak_value * step / max(warmup_steps, 1)
        frac = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        return jnp.where(step < warmup_steps, warm, peak_value + (end_value - peak_value) * frac)

    return schedule


@gin.configurable
def cosine_schedule(peak_value: float = 1e-3, warmup_steps: int = 0, total_steps: int = 10_000,
           end_value: float = 0.0) -> Schedule:
    """Linear warm-up, then cosine decay to `end_value` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps,
                                              max(total_steps, warmup_steps + 1), end_value)


# ---------------------------------------------------------------------------- optimizers
@gin.configurable
def adafactor(schedule: Schedule, *, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0,
              multiply_by_parameter_scale: bool = True, momentum: float | None = None,
              factored: bool = True, min_dim_size_to_factor: int = 128,
              weight_decay_rate: float | None = None,
              epsilon: float = 1e-30) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern 2018) with T5X's defaults.

    Factored second moments keep optimizer memory at O(rows + cols) per matrix — the reason
    XXL fits on a pod slice — and parameter-scaled updates make the learning rate relative.
    """
    return optax.adafactor(learning_rate=schedule, decay_rate=decay_rate,
                           clipping_threshold=clipping_threshold,
                           multiply_by_parameter_scale=multiply_by_parameter_scale,
                           momentum=momentum, factored=factored,
                           min_dim_size_to_factor=min_dim_size_to_factor,
                           weight_decay_rate=weight_decay_rate, eps=epsilon)


@gin.configurable
def adamw(schedule: Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AdamW: two full-size moments per parameter (3× params memory); simple and robust."""
    return optax.adamw(learning_rate=schedule, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)


@gin.configurable
def make_optimizer(optimizer: Callable[..., optax.GradientTransformation] = adafactor,
                   schedule: Schedule | None = None,
                   grad_clip_norm: float | None = None,
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """The optax transformation and its schedule (returned so the trainer can log the lr).

    `grad_clip_norm` clips the *global* gradient norm before the optimizer sees it; T5X's
    Adafactor recipe leaves it off and relies on Adafactor's own update clipping.
    """
    schedule = constant_schedule() if schedule is None else schedule
    tx = optimizer(schedule)
    if grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx, schedule
