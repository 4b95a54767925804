"""Device mesh, logical-axis rules and the host ↔ global array bridge.

How a training step is partitioned, in three moves:

1. Every parameter and key activation carries *logical* axis names (`embed`, `mlp`, `heads`,
   `vocab`, `batch`, …; the table is `flanrec.model.params.param_specs`, adapters'
   `flanrec.model.adapters.adapter_specs`).
2. A short list of *rules* maps logical names onto the axes of a device `Mesh` (`data`,
   `model`, optionally `fsdp`). Changing the rules re-partitions the whole model without
   touching model code: data parallel, 2-D data × model (Megatron-style heads/mlp split) or
   FSDP (`embed` sharded over the data axis as well) are each one gin file.
3. `jax.jit(step, in_shardings=…, out_shardings=…, donate_argnums=…)` over global
   `jax.Array`s is what T5X calls *pjit*: the same program runs on every device of every
   host (SPMD), XLA's partitioner inserts the collectives implied by the shardings, and
   donating the train state lets XLA update parameters and optimizer state in place, so the
   state is never held twice in device memory.

Rules resolve by priority: for each logical axis, the first rule whose mesh axis is still free
in that array wins (Flax semantics). That is why `batch → data` comes first: an activation
`[batch, length, embed]` keeps `embed` unsharded under FSDP rules (its `data` axis is taken by
`batch`), while a parameter `[embed, mlp]` gets `embed` sharded over `data`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flanrec.model.adapters import all_param_specs
from flanrec.model.config import T5Config
from flanrec.model.params import unflatten

Rules = tuple[tuple[str, Any], ...]

# Logical → mesh axis, in T5X's standard form (1-D activation and parameter partitioning).
STANDARD_RULES: Rules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
)


@gin.configurable
def logical_axis_rules(kind: str = "standard", fsdp_axis: str = "data") -> Rules:
    """The rule set by name: `standard` (data + model parallel) or `fsdp`.

    `fsdp` additionally shards every parameter's `embed` dimension over `fsdp_axis` (T5X's
    `parameter_partitioning_dims=2`), so parameters and optimizer state are divided among the
    data-parallel replicas instead of copied, at the price of an all-gather per layer.
    """
    if kind == "standard":
        return STANDARD_RULES
    if kind == "fsdp":
        # `batch` keeps priority: in activations `embed` falls through to None.
        batch_axes = ("data", "fsdp") if fsdp_axis == "fsdp" else "data"
        rules = [("batch", batch_axes)]
        rules += [r for r in STANDARD_RULES if r[0] not in ("batch", "embed")]
        rules += [("embed", fsdp_axis), ("embed", None)]
        return tuple(rules)
    raise ValueError(f"unknown logical_axis_rules kind {kind!r}; expected 'standard' or 'fsdp'")


def _resolve_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill the single -1 in `mesh_shape` so that the product equals `num_devices`."""
    shape = list(mesh_shape)
    fill = [i for i, s in enumerate(shape) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"MESH_SHAPE {tuple(mesh_shape)} has more than one -1")
    known = math.prod(s for s in shape if s != -1)
    if fill:
        if known <= 0 or num_devices % known:
            raise ValueError(f"MESH_SHAPE {tuple(mesh_shape)} does not divide "
                             f"{num_devices} devices")
        shape[fill[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"MESH_SHAPE {tuple(shape)} needs {math.prod(shape)} devices, "
                         f"but {num_devices} are available")
    return tuple(shape)


@gin.configurable
def make_mesh(mesh_shape: Sequence[int] = (-1, 1),
              axis_names: Sequence[str] = ("data", "model"),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes (or `devices`), one -1 filled in.

    On TPU `mesh_utils.create_device_mesh` orders devices so that the `model` axis (last)
    maps onto the fastest interconnect; elsewhere a plain reshape is what that does anyway.
    """
    if len(mesh_shape) != len(axis_names):
        raise ValueError(f"MESH_SHAPE {tuple(mesh_shape)} and axis names {tuple(axis_names)} "
                         "differ in length")
    devs = list(jax.devices() if devices is None else devices)
    shape = _resolve_shape(mesh_shape, len(devs))
    if devices is None and devs[0].platform == "tpu":
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devs, allow_split_physical_axes=True)
    else:
        grid = np.asarray(devs, dtype=object).reshape(shape)
    return Mesh(grid, tuple(axis_names))


def params_logical_specs(cfg: T5Config) -> dict[str, Any]:
    """Nested dict of `PartitionSpec(logical names…)` for every parameter of `cfg`, its
    adapters (soft prompt, LoRA) included.

    Derived from the shared table rather than from a model init, so partitioning (and the
    shape check of an initial checkpoint) needs no JAX model at all.
    """
    return unflatten({name: PartitionSpec(*axes)
                      for name, (_, axes) in all_param_specs(cfg).items()})


def logical_to_shardings(logical_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Tree of logical `PartitionSpec`s → tree of `NamedSharding`s on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_tree, mesh, list(rules))


def state_logical_specs(state_shapes: Any, cfg: T5Config) -> Any:
    """Logical specs for a whole train state (params + optimizer state + scalars), or for
    any tree holding parameters of `cfg` (the frozen backbone of an adapter run).

    Optimizer states mirror the parameter tree (Adam's `mu`/`nu`, Adafactor's `v_row`,
    `v_col`, `v`): a leaf whose key path ends in a parameter's path *and* has that parameter's
    shape takes the parameter's spec. Everything else (Adafactor's factored row/column
    statistics, counters, the step) is small and replicated. The table holds the adapters
    too, so full fine-tuning and TUNING='prompt'|'lora' (whose state holds only `prompt/…` or
    `lora/…`) are one rule: with a plain `T5Config` it is exactly the backbone's table.
    """
    table = {tuple(name.split("/")): (shape, PartitionSpec(*axes))
             for name, (shape, axes) in all_param_specs(cfg).items()}
    depth = max(len(p) for p in table)

    def spec_for(path: tuple[Any, ...], leaf: Any) -> PartitionSpec:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        for n in range(min(depth, len(keys)), 0, -1):
            hit = table.get(keys[-n:])
            if hit is not None:
                shape, spec = hit
                return spec if tuple(leaf.shape) == shape else PartitionSpec()
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_for, state_shapes)


def shard_params(params: Mapping[str, Any], shardings: Any) -> Any:
    """Host numpy params (the full arrays, present on every host) → global sharded arrays.

    Each device receives only its own slice, so peak device memory is one shard per array.
    """
    def put(arr: Any, sharding: NamedSharding) -> jax.Array:
        arr = np.asarray(arr)
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

    return jax.tree_util.tree_map(put, params, shardings)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a `[batch, length]` input array: batch over the data axes."""
    return nn.logical_to_mesh_sharding(PartitionSpec("batch", None), mesh, list(rules))


def host_to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    """This host's slice of the global batch → global `jax.Array`s.

    Each host feeds `global_batch / process_count` rows (its seqio shard); the rows of process
    p land on the devices of process p along the data axis.
    """
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split (the global batch must be a multiple)."""
    spec = batch_sharding(mesh, rules).spec[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make `mesh` and `rules` current, so `nn.with_logical_constraint` in the model binds.

    Tracing (the first call of a jitted step) must happen inside this context; calls after
    that reuse the compiled program.
    """
    set_mesh = getattr(jax, "set_mesh", None)  # jax >= 0.7; older versions use `with mesh:`
    with contextlib.ExitStack() as stack:
        stack.enter_context(set_mesh(mesh) if set_mesh is not None else mesh)
        stack.enter_context(nn.logical_axis_rules(list(rules)))
        yield
