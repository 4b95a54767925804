"""The training job's run settings: checked by name before anything is built, and the step
to stop at.

Split from `flanrec.train` so the job's body reads as the steps of a run; these are the
rules a user's settings must follow, each failing with the macro's name (UserError), since
a bad value otherwise surfaces late (a TypeError deep in optax) or never (`TRAIN_STEPS=-5`
trains nothing and exits 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gin
import numpy as np

from flanrec.errors import UserError
from flanrec.interop.t5x import checkpoint_step

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


def start_step_of(initial_checkpoint_path: str) -> int:
    """The step a fresh run starts at: a T5X checkpoint's own step (T5X restores it into the
    train state), 0 for HF and flanrec checkpoints (params only, fresh optimizer)."""

    return int(checkpoint_step(initial_checkpoint_path) or 0)


def total_steps(train_steps: int | None, relative: int | None, initial_step: int,
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
