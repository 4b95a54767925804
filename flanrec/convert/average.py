"""Checkpoint averaging ("model soup", Wortsman et al. 2022): the elementwise mean of the
parameters of several fine-tuned checkpoints of one architecture.

    python -m flanrec.convert --average runs/a runs/b/checkpoint_3000 --out ckpt/soup [--to hf]

Any source `flanrec.checkpoints.load_params_any` reads works (flanrec MODEL_DIR or
checkpoint_N, HF dir, T5X checkpoint, LoRA runs — merged into their backbone first), as long
as all share one config. Means are accumulated in float64 and stored as float32, so averaging
N copies of the same checkpoint returns it bit for bit. Soft-prompt checkpoints are refused: a
plain T5 checkpoint has no place for the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flanrec.checkpoints import load_params_any
from flanrec.model.adapters import base_config, prompt_of
from flanrec.model.config import T5Config
from flanrec.model.params import check_finite, flatten, unflatten


def average_params(trees: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None,
                   ) -> dict[str, Any]:
    """Elementwise mean of parameter trees with identical names and shapes."""
    if not trees:
        raise ValueError("nothing to average: give at least one checkpoint")
    names = list(names) if names is not None else [f"#{i}" for i in range(len(trees))]
    flats = [flatten(t) for t in trees]
    ref = flats[0]
    for flat, name in zip(flats[1:], names[1:], strict=True):
        missing, extra = sorted(set(ref) - set(flat)), sorted(set(flat) - set(ref))
        if missing or extra:
            raise ValueError(f"{name}: parameters differ from {names[0]}: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for k in ref:
            if np.shape(flat[k]) != np.shape(ref[k]):
                raise ValueError(f"{name}: parameter {k} has shape {np.shape(flat[k])}, "
                                 f"{names[0]} has {np.shape(ref[k])}")
    out = {}
    for k in ref:
        acc = np.zeros(np.shape(ref[k]), np.float64)
        for flat in flats:
            acc += np.asarray(flat[k], np.float64)
        out[k] = (acc / len(flats)).astype(np.float32)
    return unflatten(out)


def load_for_average(paths: Sequence[str]) -> tuple[T5Config, dict[str, Any]]:
    """Load every checkpoint, check they share one config, return (config, mean params)."""

    if len(paths) < 2:
        raise ValueError(f"--average needs at least two checkpoints, got {list(paths)}")
    cfgs, trees = [], []
    for p in paths:
        cfg, params = load_params_any(p, merge_lora=True)
        check_finite(flatten(params), f"--average {p}")
        if prompt_of(cfg) is not None:
            raise ValueError(f"{p}: a soft-prompt checkpoint cannot be averaged into a plain "
                             "T5 checkpoint")
        cfgs.append(base_config(cfg))
        trees.append(params)
    shape_fields = [f for f in T5Config().to_dict() if f not in ("name", "dropout_rate", "dtype")]
    for p, cfg in zip(paths[1:], cfgs[1:], strict=True):
        diff = [f for f in shape_fields
                if cfg.to_dict()[f] != cfgs[0].to_dict()[f]]
        if diff:
            raise ValueError(f"{p}: model config differs from {paths[0]} in {diff}")
    return cfgs[0], average_params(trees, list(paths))
