"""Adapter checkpoints: read (and write) the adapters of a prompt/LoRA run with the pointer to
their frozen backbone, and turn them back into one usable parameter tree.

A TUNING='prompt'|'lora' run writes ordinary flanrec step directories whose `params` item
holds only the adapter subtree (`prompt/…` or `lora/…`) and whose `meta` adds
`tuning`, `peft` (the adapter config) and `backbone` (INITIAL_CHECKPOINT_PATH, absolute).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flanrec.checkpoints import META, PARAMS, resolve_checkpoint
from flanrec.model.config import T5Config
from flanrec.model.params import check_params, flatten, unflatten
from flanrec.peft import config as peft_config
from flanrec.peft import params as peft_params


def _restore(item_dir: Any, handler: Any, args: Any) -> Any:
    checkpointer = ocp.Checkpointer(handler)
    try:
        return checkpointer.restore(item_dir, args=args)
    finally:
        checkpointer.close()


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`meta` of a flanrec checkpoint (MODEL_DIR → latest complete step)."""
    ckpt = resolve_checkpoint(path)
    return dict(_restore(ckpt / META, ocp.JsonCheckpointHandler(), ocp.args.JsonRestore()))


def is_adapter_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True for a flanrec checkpoint written by a TUNING='prompt'|'lora' run."""
    try:
        return bool(read_meta(path).get("peft"))
    except (ValueError, FileNotFoundError):
        return False


def read_adapters(path: str | os.PathLike[str]) -> tuple[T5Config, dict[str, Any], dict]:
    """(config with adapters, adapter params as float32 numpy, meta) — no backbone loaded."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    if not meta.get("peft"):
        raise ValueError(f"{ckpt}: not an adapter checkpoint (no 'peft' in its meta)")
    try:
        base = T5Config.from_dict(meta["model_config"])
        cfg = peft_config.adapters_from_dict(base, meta["peft"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{ckpt}/{META}: bad model_config/peft entry: {e}") from e
    handler = ocp.PyTreeCheckpointHandler()
    try:
        stored = handler.metadata(ckpt / PARAMS)
    finally:
        handler.close()
    stored = stored.tree if hasattr(stored, "tree") else stored
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    tree = _restore(ckpt / PARAMS, ocp.PyTreeCheckpointHandler(),
                    ocp.args.PyTreeRestore(item=stored, restore_args=restore_args))
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(tree).items()}
    want = set(peft_config.adapters_to_dict(cfg))  # {'prompt', 'lora'}
    stray = sorted(k for k in flat if k.split("/", 1)[0] not in want)
    if stray:
        raise ValueError(f"{ckpt}/{PARAMS}: adapter checkpoint holds non-adapter "
                         f"parameters {stray[:5]}")
    return cfg, unflatten(flat), meta


def load(path: str | os.PathLike[str], *, merge_lora: bool = True,
         backbone: str | os.PathLike[str] | None = None) -> tuple[T5Config, dict[str, Any]]:
    """(config, full float32 params): the backbone named in the checkpoint (or `backbone`,
    e.g. after moving it) combined with the adapters; LoRA folded in when `merge_lora`."""
    from flanrec.api import load_params_any

    cfg, adapters, meta = read_adapters(path)
    source = backbone if backbone is not None else meta.get("backbone")
    if not source:
        raise ValueError(f"{path}: adapter checkpoint without a 'backbone' path in its meta; "
                         "pass backbone=")
    try:
        _, base_params = load_params_any(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: its frozen backbone {source} is gone ({e}); pass "
                                "backbone= (flanrec.api.load(..., backbone=...))") from e
    check_params(flatten(base_params), peft_config.base_config(cfg),
                        f"backbone {source} of {path}")
    params = peft_params.combine(base_params, adapters)
    peft_params.check_params(flatten(params), cfg, str(path))
    if merge_lora:
        cfg, params = peft_params.merge_lora(cfg, params)
    return cfg, params
