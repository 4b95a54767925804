"""T5X's Adafactor optimizer state for a T5X checkpoint that flanrec writes.

T5X's stock fine-tuning restores `RestoreCheckpointConfig(mode='specific')` into a train
state built with its own `t5x.adafactor.Adafactor`, and that restore fails ("target dict
contains keys {'param_states'} which are not present in state dict") unless the checkpoint
holds the whole optimizer state. Its layout, as `Adafactor.init_param_state`,
`Adafactor._factored_dims` and `Adafactor.init_state` in t5x/adafactor.py build it
(google-research/t5x; `OptimizerState(step, param_states)` from t5x/optimizers.py):

    state/step                                      int32 scalar
    state/param_states/<parameter path>/v_row       float32
                                       /v_col       float32
                                       /v           float32
                                       /m           float32 (momentum dtype)

Per parameter of shape S: when Adafactor factors (`factored` and the second-largest dim of
S is at least `min_dim_size_to_factor`, 128 by default), with d1 the second-largest and d0
the largest axis in `np.argsort(S)` order, `v_row` has shape `np.delete(S, d0)` and `v_col`
`np.delete(S, d1)`, and `v` is a placeholder `zeros((1,))`; otherwise `v` has shape S and
`v_row`, `v_col` are `zeros((1,))`. `m` has shape S with momentum (`beta1`), else
`zeros((1,))`. T5X's `logical_factor_rules` (the T5 v1.1 gins) fall back to these heuristics
for every parameter of rank <= 2, which is all of Flan-T5's.

Where each array is stored follows `Adafactor.derive_logical_axes`: `v_row` and `v_col`
never get partitioning axes, nor do the `(1,)` placeholders, and T5X's checkpointer keeps
an array without axes inline in the msgpack file (`_ParameterInfo(ts_spec=None)`); only a
full-size `v` or `m` is a TensorStore array. T5X refuses to read an axis-less array from
TensorStore, so the split matters (`stored_inline`).

optax's Adafactor (what flanrec trains with, `flanrec.train.optimizers.adafactor`) keeps the very
same statistics under the same rule (`optax.scale_by_factored_rms`: same factored dims, same
decay schedule 1 - (step + 1)^-0.8, same epsilon added to the squared gradient) and its
momentum is an EMA of the same scaled update, so its moments are copied over unchanged. Where
flanrec's state has no matching moment (AdamW, a converted HF checkpoint, another factoring)
the slot is zeros, which is what T5X's own `init_state` would start from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

SLOTS = ("v_row", "v_col", "v", "m")
_PLACEHOLDER = (1,)


@dataclasses.dataclass(frozen=True)
class AdafactorLayout:
    """The T5X Adafactor settings that decide the state's shapes (T5X's defaults)."""

    factored: bool = True
    min_dim_size_to_factor: int = 128
    momentum: bool = False


def factored_dims(shape: tuple[int, ...], layout: AdafactorLayout) -> tuple[int, int] | None:
    """(d1, d0): the second-largest and largest axis, as T5X's `_factored_dims`; None when
    the parameter is not factored."""
    if not layout.factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < layout.min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def slot_shapes(shape: tuple[int, ...], layout: AdafactorLayout) -> dict[str, tuple[int, ...]]:
    """Shapes of v_row, v_col, v, m for a parameter of `shape` (see the module doc)."""
    shape = tuple(int(d) for d in shape)
    dims = factored_dims(shape, layout)
    out = {slot: _PLACEHOLDER for slot in SLOTS}
    if dims is None:
        out["v"] = shape
    else:
        d1, d0 = dims
        out["v_row"] = tuple(np.delete(shape, d0).tolist())
        out["v_col"] = tuple(np.delete(shape, d1).tolist())
    if layout.momentum:
        out["m"] = shape
    return out


def stored_inline(slot: str, shape: tuple[int, ...]) -> bool:
    """Whether T5X keeps this optimizer slot inline in the msgpack file (no partitioning
    axes) rather than as a TensorStore array (see the module doc)."""
    return slot in ("v_row", "v_col") or tuple(shape) == _PLACEHOLDER


def _find(tree: Any, keys: set[str]) -> list[Mapping[str, Any]]:
    """Every mapping in a restored optax state tree whose keys are exactly `keys` (Orbax
    stores optax's NamedTuple states as dicts, chains as lists)."""
    found = []
    if isinstance(tree, Mapping):
        if set(tree) == keys:
            found.append(tree)
        else:
            for v in tree.values():
                found += _find(v, keys)
    elif isinstance(tree, list | tuple):
        for v in tree:
            found += _find(v, keys)
    return found


def optax_moments(opt_state: Any) -> dict[str, dict[str, np.ndarray]]:
    """'/'-joined parameter name -> {slot: array} taken from an optax Adafactor state.

    `opt_state` is a restored flanrec `opt_state` item (nested dicts/lists of arrays). The
    second moments come from the one `FactoredState` (count, v_row, v_col, v), momentum from
    an `EmaState` (count, ema) next to it; {} when the state is not Adafactor's (e.g. AdamW)
    or is ambiguous."""
    from flanrec.model.params import flatten  # lazy: JAX/Flax (3.5 s); reading stays numpy

    factored = _find(opt_state, {"count", "v_row", "v_col", "v"})
    if len(factored) != 1:
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for slot in ("v_row", "v_col", "v"):
        for name, value in flatten(factored[0][slot]).items():
            out.setdefault(name, {})[slot] = np.asarray(value)
    ema = _find(opt_state, {"count", "ema"})
    if len(ema) == 1:
        for name, value in flatten(ema[0]["ema"]).items():
            if name in out:
                out[name]["m"] = np.asarray(value)
    return out


@dataclasses.dataclass
class StateReport:
    """What went into the exported state: how many slots carry trained values."""

    copied: int = 0
    zeros: int = 0
    mismatched: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.copied} optimizer moments copied, {self.zeros} zero-filled"
        if self.mismatched:
            text += (f"; {len(self.mismatched)} did not fit T5X's layout and start from zero "
                     f"(first: {self.mismatched[0]})")
        return text


def param_states(flat_params: Mapping[str, Any], layout: AdafactorLayout = AdafactorLayout(),
                 moments: Mapping[str, Mapping[str, np.ndarray]] | None = None
                 ) -> tuple[dict[str, dict[str, np.ndarray]], StateReport]:
    """T5X's per-parameter Adafactor state for `flat_params` ('/'-joined names → arrays).

    Slots whose trained value in `moments` (from `optax_moments`) has T5X's shape are copied
    as float32; the others are zeros of T5X's shape. The unused placeholders (shape (1,))
    are always zeros, as T5X keeps them."""
    report = StateReport()
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, param in flat_params.items():
        shapes = slot_shapes(tuple(np.shape(param)), layout)
        trained = (moments or {}).get(name, {})
        slots = {}
        for slot, shape in shapes.items():
            value = trained.get(slot)
            if shape == _PLACEHOLDER or value is None:
                slots[slot] = np.zeros(shape, np.float32)
                report.zeros += shape != _PLACEHOLDER
            elif tuple(value.shape) == shape:
                slots[slot] = np.asarray(value, np.float32)
                report.copied += 1
            else:
                slots[slot] = np.zeros(shape, np.float32)
                report.zeros += 1
                report.mismatched.append(f"{name}/{slot}: flanrec {tuple(value.shape)}, "
                                         f"T5X {shape}")
        out[name] = slots
    return out, report


__all__ = ["SLOTS", "AdafactorLayout", "StateReport", "factored_dims", "optax_moments",
           "param_states", "slot_shapes", "stored_inline"]
