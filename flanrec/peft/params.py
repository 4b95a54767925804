"""Which parameters train, and how adapter trees meet the backbone.

The trainer keeps a frozen backbone *outside* the train state: `split` gives the trainable
part (the adapters for 'prompt'/'lora', everything for 'full') and the frozen part; the step
differentiates only with respect to the trainable part, so no backbone-sized gradient or
optimizer statistic ever exists. `trainable_mask` / `masked_optimizer` give the same
guarantee to callers that keep one whole tree (optax.multi_transform with a stateless
`set_to_zero` branch for the frozen leaves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from flanrec.model import params as model_params
from flanrec.model.config import T5Config
from flanrec.peft.config import TUNINGS, base_config, lora_of, prompt_of
from flanrec.peft.specs import ADAPTER_KEYS, LORA_KEY, PROMPT_KEY, all_param_specs

Params = Mapping[str, Any]


def _check_tuning(tuning: str) -> None:
    if tuning not in TUNINGS:
        raise ValueError(f"TUNING must be one of {TUNINGS}, got {tuning!r}")


def trainable_keys(tuning: str) -> tuple[str, ...] | None:
    """Top-level keys that train under `tuning` (None: all of them)."""
    _check_tuning(tuning)
    return {"full": None, "prompt": (PROMPT_KEY,), "lora": (LORA_KEY,)}[tuning]


def split(params: Params, tuning: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable, frozen) subtrees by top-level key; `combine` puts them back together.

    'prompt' trains only `prompt/…`, 'lora' only `lora/…` (a prompt present in a LoRA run
    would stay frozen), 'full' trains everything (frozen is empty).
    """
    keys = trainable_keys(tuning)
    if keys is None:
        return dict(params), {}
    if not any(k in params for k in keys):
        raise ValueError(f"TUNING={tuning!r} but the model has no {'/'.join(keys)} "
                         "parameters (set the adapter config, e.g. PROMPT_LENGTH / LORA_RANK)")
    trainable = {k: v for k, v in params.items() if k in keys}
    frozen = {k: v for k, v in params.items() if k not in keys}
    return trainable, frozen


def combine(frozen: Params | None, trainable: Params) -> dict[str, Any]:
    """The model's full tree from its two halves (top-level keys must not overlap)."""
    frozen = frozen or {}
    overlap = sorted(set(frozen) & set(trainable))
    if overlap:
        raise ValueError(f"frozen and trainable parameters overlap at {overlap}")
    return {**frozen, **trainable}


def trainable_mask(params: Params, tuning: str) -> Any:
    """Boolean pytree shaped like `params`: True where the leaf trains."""
    keys = trainable_keys(tuning)
    return {k: jax.tree.map(lambda _, t=(keys is None or k in keys): t, v)
            for k, v in params.items()}


def masked_optimizer(tx: optax.GradientTransformation, params: Params,
                     tuning: str) -> optax.GradientTransformation:
    """`tx` on the trainable leaves, zero updates and *no state* on the frozen ones."""
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, tuning))
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def count(params: Params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


# -------------------------------------------------------------------------- checks / specs
def check_params(flat: Mapping[str, Any], cfg: T5Config, source: str) -> None:
    """`common.check_params` over backbone *and* adapters of `cfg` (names and shapes)."""
    specs = all_param_specs(cfg)
    missing = sorted(set(specs) - set(flat))
    unexpected = sorted(set(flat) - set(specs))
    problems = []
    if missing:
        problems.append(f"missing parameters {missing[:5]} ({len(missing)} in all)")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected[:5]} ({len(unexpected)} in all)")
    problems += [f"parameter {n} has shape {tuple(np.shape(flat[n]))}, expected {specs[n][0]}"
                 for n in sorted(set(specs) & set(flat))
                 if tuple(np.shape(flat[n])) != specs[n][0]]
    if problems:
        raise ValueError(f"{source}: parameters do not fit the model config: "
                         + "; ".join(problems))


def params_logical_specs(cfg: T5Config) -> dict[str, Any]:
    """Nested `PartitionSpec`s of logical names for backbone + adapters."""
    return model_params.unflatten({n: PartitionSpec(*axes)
                             for n, (_, axes) in all_param_specs(cfg).items()})


def state_logical_specs(state_shapes: Any, cfg: T5Config) -> Any:
    """`partitioning.state_logical_specs` with the adapters in the table: a leaf whose key
    path ends in a parameter's path and has its shape takes its spec; the rest replicate."""
    table = {tuple(n.split("/")): (shape, PartitionSpec(*axes))
             for n, (shape, axes) in all_param_specs(cfg).items()}
    depth = max(len(p) for p in table)

    def spec_for(path: tuple[Any, ...], leaf: Any) -> PartitionSpec:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        for n in range(min(depth, len(keys)), 0, -1):
            hit = table.get(keys[-n:])
            if hit is not None:
                return hit[1] if tuple(leaf.shape) == hit[0] else PartitionSpec()
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_for, state_shapes)


# ------------------------------------------------------------------------- LoRA merge, init
def merge_lora(cfg: T5Config, params: Params) -> tuple[T5Config, dict[str, Any]]:
    """Fold every adapter into its kernel, W + (alpha / rank) · A B, and drop `lora/…`.

    Returns a config without LoRA (a plain `T5Config` unless a prompt remains) and params
    that every exporter reads unchanged. Computed in float32 on the host.
    """
    lora = lora_of(cfg)
    if lora is None:
        return cfg, dict(params)
    flat = model_params.flatten(params)
    merged: dict[str, Any] = {}
    for name, value in flat.items():
        if name.startswith(LORA_KEY + "/"):
            continue
        merged[name] = value
    stems = sorted({n[len(LORA_KEY) + 1:].rsplit("/", 1)[0] for n in flat
                    if n.startswith(LORA_KEY + "/")})
    for stem in stems:
        kernel = f"{stem}/kernel"
        if kernel not in merged:
            raise ValueError(f"LoRA adapter {LORA_KEY}/{stem} has no kernel {kernel} to merge into")
        a = np.asarray(flat[f"{LORA_KEY}/{stem}/lora_a"], np.float32)
        b = np.asarray(flat[f"{LORA_KEY}/{stem}/lora_b"], np.float32)
        merged[kernel] = (np.asarray(merged[kernel], np.float32)
                          + np.float32(lora.scale) * (a @ b)).astype(np.float32)
    from flanrec.peft.config import with_adapters

    return with_adapters(base_config(cfg), prompt_of(cfg), None), model_params.unflatten(merged)


def init_prompt_from_vocab(cfg: T5Config, params: Params, rng: jax.Array) -> dict[str, Any]:
    """Prompt rows copied from the embeddings of random tokens of the first
    `init_vocab_size` ids (Lester et al.: better than random init), one draw per family."""
    prompt = prompt_of(cfg)
    table = params["token_embedder"]["embedding"]
    hi = min(prompt.init_vocab_size, table.shape[0])
    out = {}
    for i, family in enumerate(prompt.families):
        ids = jax.random.randint(jax.random.fold_in(rng, i), (prompt.length,), 3, max(hi, 4))
        out[family] = jnp.take(table, ids, axis=0).astype(jnp.float32)
    return {**params, PROMPT_KEY: out}


__all__ = ["ADAPTER_KEYS", "check_params", "combine", "count", "init_prompt_from_vocab",
           "masked_optimizer", "merge_lora", "params_logical_specs", "split",
           "state_logical_specs", "trainable_keys", "trainable_mask"]
