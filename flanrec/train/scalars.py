"""The TensorBoard scalars of `flanrec.train`, named as T5X names the same quantities.

Why T5X's names: a T5X user's dashboards, alerts and habits (`timing/seqs_per_second`,
`cross_ent_loss`) should carry over unchanged. The names and their meaning were read from
T5X itself (google-research/t5x: `models.compute_base_metrics`, `trainer.apply_grads`,
`train.py`):

=====================================  =========================================================
`loss`                                 cross-entropy + z-loss per target token (T5X with
                                       loss_normalizing_factor = NUM_REAL_TARGET_TOKENS)
`cross_ent_loss`, `z_loss`             its two parts
`accuracy`                             argmax accuracy over real (non-padding) target tokens
`learning_rate`                        the rate of the last update in the window
`timing/steps_per_second`              training steps per second (compilation excluded)
`timing/seqs_per_second`               rows of the global batch per second (`_per_core`: / devices)
`timing/target_tokens_per_second`      target positions (padding included, as T5X counts them)
                                       per second (`_per_core`: / devices)
`non_padding_fraction/loss_weights`    real target tokens / target positions
`timing/evaluate_seconds`              wall time of one validation pass
=====================================  =========================================================

flanrec's own extras, which T5X does not log: `mfu` (model FLOPs utilisation; left out when
no trustworthy peak is known), `timing/flops_per_second` (achieved model FLOP/s),
`grad_norm`, `param_norm`, `timing/nonpadding_target_tokens_per_second` and
`timing/eta_seconds`. Validation writes `loss`, `cross_ent_loss`, `z_loss` and `accuracy` under
`MODEL_DIR/validation`.
"""

from __future__ import annotations

from collections.abc import Mapping

TRAIN_TAGS = ("loss", "cross_ent_loss", "z_loss", "accuracy", "learning_rate",
              "non_padding_fraction/loss_weights", "timing/steps_per_second",
              "timing/seqs_per_second", "timing/seqs_per_second_per_core",
              "timing/target_tokens_per_second", "timing/target_tokens_per_second_per_core")
"""Every tag above that T5X writes too."""
VALIDATION_TAGS = ("loss", "cross_ent_loss", "z_loss", "accuracy")


def train_scalars(window: Mapping[str, float], rates: Mapping[str, float], *,
                  batch_size: int, target_length: int, num_devices: int) -> dict[str, float]:
    """Tag -> value for one log period.

    `window`: step metrics averaged over the period (`loss`, `z_loss`, `accuracy`,
    `target_tokens`, `grad_norm`, `param_norm`, `learning_rate`). `rates`:
    `trainer.Throughput.report` (empty when no step was timed yet, e.g. right after a
    resume); `batch_size` is global, `target_length` the padded target length.
    """
    positions = float(batch_size * target_length)
    out = {
        "loss": window["loss"],
        "z_loss": window["z_loss"],
        "cross_ent_loss": window["loss"] - window["z_loss"],
        "accuracy": window["accuracy"],
        "learning_rate": window["learning_rate"],
        "grad_norm": window["grad_norm"],
        "param_norm": window["param_norm"],
    }
    if positions:
        out["non_padding_fraction/loss_weights"] = window["target_tokens"] / positions
    if rates:
        steps = rates["steps_per_sec"]
        cores = max(num_devices, 1)
        out.update({
            "timing/steps_per_second": steps,
            "timing/seqs_per_second": rates["examples_per_sec"],
            "timing/seqs_per_second_per_core": rates["examples_per_sec"] / cores,
            "timing/target_tokens_per_second": steps * positions,
            "timing/target_tokens_per_second_per_core": steps * positions / cores,
            "timing/nonpadding_target_tokens_per_second": rates["target_tokens_per_sec"],
            "timing/eta_seconds": rates["eta_sec"],
        })
        if rates.get("mfu", float("nan")) == rates.get("mfu"):  # NaN: no trustworthy peak
            out["mfu"] = rates["mfu"]
        if "flops_per_sec" in rates:
            out["timing/flops_per_second"] = rates["flops_per_sec"]
    return out


def validation_scalars(sums: Mapping[str, float]) -> dict[str, float]:
    """Tag -> value of one validation pass from the eval step's summed terms."""
    w = max(sums.get("weight", 0.0), 1.0)
    return {
        "loss": sums["loss"] / w,
        "z_loss": sums.get("z_loss", 0.0) / w,
        "cross_ent_loss": (sums["loss"] - sums.get("z_loss", 0.0)) / w,
        "accuracy": sums["correct"] / w,
    }
