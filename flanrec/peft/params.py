"""Which parameters train, and how adapter trees meet the backbone.

The trainer keeps a frozen backbone *outside* the train state: `split` gives the trainable
part (the adapters for 'prompt'/'lora', everything for 'full') and the frozen part; the step
differentiates only with respect to the trainable part, so no backbone-sized gradient or
optimizer statistic ever exists. `trainable_mask` / `masked_optimizer` give the same
guarantee to callers that keep one whole tree (optax.multi_transform with a stateless
`set_to_zero` branch for the frozen leaves).

What the adapters are (config, parameter names/shapes/axes, LoRA merge) belongs to the model:
`flanrec.model.adapters`; how their train state is sharded: `flanrec.partitioning`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flanrec.model.adapters import LORA_KEY, PROMPT_KEY, TUNINGS, prompt_of
from flanrec.model.config import T5Config

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


# ------------------------------------------------------------------------- prompt init
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


__all__ = ["combine", "count", "init_prompt_from_vocab", "masked_optimizer", "split",
           "trainable_keys", "trainable_mask"]
