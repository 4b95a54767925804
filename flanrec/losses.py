"""Token-level cross-entropy with z-loss and label smoothing, as sums (not means).

The functions return *sums* over target tokens plus the token count, never means: gradient
accumulation over microbatches and data parallelism over hosts then normalise once, by the
number of real target tokens in the whole global batch, so 2 microbatches of 4 give exactly
the loss of one batch of 8 (a mean of per-microbatch means would weight short targets more).
Padding (target id 0, seqio's PAD_ID) carries weight 0.
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """`z_loss` pulls log Z towards 0, keeping bf16 logits stable (T5X uses 1e-4);
    `label_smoothing` spreads that much probability mass uniformly over the vocabulary."""

    z_loss: float = 1e-4
    label_smoothing: float = 0.0


def cross_entropy_sums(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray,
                       cfg: LossConfig) -> dict[str, jnp.ndarray]:
    """Summed loss terms over a `[batch, length, vocab]` prediction.

    Returns `loss` (cross-entropy + z-loss, smoothed-label entropy subtracted so a perfect
    prediction scores 0), `z_loss` (its share), `correct` (argmax hits) and `weight` (the
    number of real target tokens); all float32 sums over weighted positions.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    confidence = 1.0 - cfg.label_smoothing
    if cfg.label_smoothing > 0.0:
        low = cfg.label_smoothing / (vocab - 1)
        # Entropy of the smoothed target distribution: the minimum reachable cross-entropy.
        floor = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        target_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        ce = -(confidence - low) * target_lp - low * jnp.sum(log_probs, axis=-1) - floor
    else:
        ce = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    z = cfg.z_loss * jnp.square(log_z)
    w = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((ce + z) * w),
        "z_loss": jnp.sum(z * w),
        "correct": jnp.sum(correct * w),
        "weight": jnp.sum(w),
    }


def target_weights(targets: jnp.ndarray) -> jnp.ndarray:
    """1 for every real target token, 0 for padding (id 0)."""
    return (targets != 0).astype(jnp.float32)
