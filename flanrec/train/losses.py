"""Token-level cross-entropy with z-loss and label smoothing, as sums (not means).

The functions return *sums* over target tokens plus the token count, never means: gradient
accumulation over microbatches and data parallelism over hosts then normalise once, by the
number of real target tokens in the whole global batch, so 2 microbatches of 4 give exactly
the loss of one batch of 8 (a mean of per-microbatch means would weight short targets more).
Padding (target id 0, seqio's PAD_ID) carries weight 0.
"""

from __future__ import annotations

import dataclasses
import math

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
    prediction scores 0), `z_loss` (its share), `correct` (the target has the highest logit)
    and `weight` (the number of real target tokens); all float32 sums over weighted positions.

    The gradient with respect to the logits is written out (`_ce_bwd`) as the one
    elementwise pass it is, softmax(1 + 2 z log Z) minus the smoothed target, instead of
    what autodiff makes of log-softmax, a gather and a z-loss: a scatter into a zeroed
    [batch, length, vocab] buffer and several full passes, which on XLA:CPU cost more than
    the cross-entropy itself at recommendation-sized vocabularies. `correct` compares the
    target logit with the row maximum log-sum-exp needs anyway (a tie counts as correct,
    where argmax would pick the lower id; real logits essentially never tie).
    """
    w = weights.astype(jnp.float32)
    loss, z, correct = _ce(logits.astype(jnp.float32), targets, w, float(cfg.z_loss),
                           float(cfg.label_smoothing))
    return {"loss": loss, "z_loss": z, "correct": correct, "weight": jnp.sum(w)}


def _smoothing(label_smoothing: float, vocab: int) -> tuple[float, float, float]:
    """(weight of the target, weight of every other token, entropy floor)."""
    if label_smoothing <= 0.0:
        return 1.0, 0.0, 0.0
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # Entropy of the smoothed target distribution: the minimum reachable cross-entropy.
    floor = -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
    return confidence, low, floor


def _ce_fwd(logits: jnp.ndarray, targets: jnp.ndarray, w: jnp.ndarray, z_loss: float,
            label_smoothing: float) -> tuple[tuple[jnp.ndarray, ...], tuple[jnp.ndarray, ...]]:
    vocab = logits.shape[-1]
    confidence, low, floor = _smoothing(label_smoothing, vocab)
    row_max = jnp.max(logits, axis=-1)
    log_z = row_max + jnp.log(jnp.sum(jnp.exp(logits - row_max[..., None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    target_lp = target_logit - log_z
    if low:
        sum_lp = jnp.sum(logits, axis=-1) - vocab * log_z
        ce = -(confidence - low) * target_lp - low * sum_lp - floor
    else:
        ce = -target_lp
    z = z_loss * jnp.square(log_z)
    correct = (target_logit >= row_max).astype(jnp.float32)
    out = (jnp.sum((ce + z) * w), jnp.sum(z * w), jnp.sum(correct * w))
    return out, (logits, log_z, targets, w)


def _ce_bwd(z_loss: float, label_smoothing: float, res: tuple[jnp.ndarray, ...],
            g: tuple[jnp.ndarray, ...]) -> tuple[jnp.ndarray, None, None]:
    logits, log_z, targets, w = res
    g_loss, g_z, _ = g
    confidence, low, _ = _smoothing(label_smoothing, logits.shape[-1])
    p = jnp.exp(logits - log_z[..., None])
    zz = (2.0 * z_loss * log_z)[..., None]
    onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == \
        targets[..., None]
    d_ce = p - jnp.where(onehot, confidence - low, 0.0) - low
    dlogits = (g_loss * (d_ce + zz * p) + g_z * zz * p) * w[..., None]
    return dlogits, None, None


_ce = jax.custom_vjp(lambda logits, targets, w, z_loss, label_smoothing:
                     _ce_fwd(logits, targets, w, z_loss, label_smoothing)[0],
                     nondiff_argnums=(3, 4))
_ce.defvjp(_ce_fwd, _ce_bwd)


def target_weights(targets: jnp.ndarray) -> jnp.ndarray:
    """1 for every real target token, 0 for padding (id 0)."""
    return (targets != 0).astype(jnp.float32)
