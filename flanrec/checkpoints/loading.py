"""Loading any checkpoint flanrec reads, in one place: a Hugging Face directory, a T5X
checkpoint, a flanrec checkpoint, or the adapters of a TUNING='prompt'|'lora' run together
with their frozen backbone; on a local disk or any file system `flanrec.files.storage` reaches.

`load_params_any` (config, params) and `load_checkpoint` (plus which directory was read) are
what the notebook API (`flanrec.api.load`), training's INITIAL_CHECKPOINT_PATH, inference,
ensembles and `flanrec.convert` call; the format-specific readers stay with their formats
(`flanrec.interop.hf`, `flanrec.interop.t5x`, `flanrec.checkpoints.store`).

Adapter checkpoints: a TUNING='prompt'|'lora' run writes ordinary flanrec step directories
whose `params` item holds only the adapter subtree (`prompt/…` or `lora/…`) and whose `meta`
adds `tuning`, `peft` (the adapter config) and `backbone` (INITIAL_CHECKPOINT_PATH, absolute).
Loading one loads its backbone the same way as any checkpoint (so a backbone may be HF, T5X
or flanrec) and puts the two back into one usable parameter tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flanrec.checkpoints.integrity import BEST_FILE, META, resolve_checkpoint
from flanrec.checkpoints.store import inference_item, load_params
from flanrec.files import storage
from flanrec.interop import hf, t5x
from flanrec.model import adapters
from flanrec.model.config import T5Config
from flanrec.model.params import check_params, flatten, unflatten
from flanrec.peft import params as peft_params


# ------------------------------------------------------------------------ any format
def _t5x_step_dir(path: str) -> bool:
    # Legacy T5X: msgpack file `checkpoint`; newer T5X: Orbax item `state/`. A flanrec step
    # dir has `params/` and `meta/` instead.
    return storage.isfile(storage.join(path, "checkpoint")) or \
        storage.isdir(storage.join(path, "state"))


def _step_children(path: str) -> list[tuple[int, str]]:
    """(step, name) of the `checkpoint_N` directories in `path`, highest step first."""
    steps = [(int(m.group(1)), n) for n in storage.listdir(path)
             if (m := _STEP_NAME.fullmatch(n))]
    return sorted(steps, reverse=True)


def _is_t5x_checkpoint(path: str) -> bool:
    if _t5x_step_dir(path):
        return True
    return any(_t5x_step_dir(storage.join(path, n)) for _, n in _step_children(path))


_STEP_NAME = re.compile(r"checkpoint_(\d+)")
_COMMITTED = ("checkpoint", "state", "commit_success.txt", "_CHECKPOINT_METADATA")


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """Which checkpoint a path named: exactly what `load_checkpoint` read.

    `path` is the path as given (normalized), `resolved` the directory the parameters came
    from (a MODEL_DIR resolves to its best, else latest complete `checkpoint_N`), `step` the
    N of that directory (None for HF and params-only checkpoints).
    """

    path: str
    resolved: str
    format: str  # "flanrec" | "hf" | "t5x"
    step: int | None


def checkpoint_format(path: str | os.PathLike[str]) -> str:
    """'hf' (config.json), 't5x' (a `checkpoint` file or `state/`, or such checkpoint_N
    dirs) or 'flanrec' (everything else, checked when it is read)."""
    p = storage.fspath(path)
    if not storage.isdir(p):
        return "flanrec"
    if storage.isfile(storage.join(p, "config.json")):
        return "hf"
    return "t5x" if _is_t5x_checkpoint(p) else "flanrec"


def _step_of(directory: str) -> int | None:
    m = _STEP_NAME.fullmatch(storage.basename(directory))
    return int(m.group(1)) if m else None


def load_checkpoint(path: str | os.PathLike[str], *, merge_lora: bool = True,
                    backbone: str | os.PathLike[str] | None = None
                    ) -> tuple[CheckpointRef, T5Config, Any]:
    """(what was read, T5Config, params) from an HF directory, a T5X checkpoint or a flanrec
    checkpoint, on a local disk or any file system `flanrec.files.storage` reaches.

    HF: a directory with config.json. T5X: a directory with a `checkpoint` file or `state/`,
    or holding such `checkpoint_N` dirs. Anything else is a flanrec checkpoint
    (`flanrec.checkpoints.store.load_params`), or an adapter checkpoint (prompt/LoRA runs):
    backbone + adapters via `load_adapter_checkpoint` (config then a `PeftT5Config` if a prompt
    remains). Orbax reads flanrec checkpoints on gs:// in place; everything else on a URL
    (HF, T5X, or any checkpoint on ram://) is read from a local copy of the one directory
    needed (the latest committed `checkpoint_N` of a model dir).
    """
    given = storage.normalize(path)
    if not storage.exists(given):
        raise FileNotFoundError(f"{given}: no such checkpoint")
    fmt = checkpoint_format(given)
    if _needs_local_copy(given, fmt):
        with local_checkpoint(given) as local:
            ref, cfg, params = load_checkpoint(local, merge_lora=merge_lora, backbone=backbone)
            rel = ref.resolved[len(local):].lstrip("/")
        return (CheckpointRef(given, storage.join(given, rel) if rel else given, ref.format,
                              ref.step), cfg, params)
    if fmt == "hf":

        cfg, params = hf.import_hf(given)
        return CheckpointRef(given, given, fmt, None), cfg, params
    if fmt == "t5x":

        resolved = os.fspath(t5x.find_t5x_checkpoint(given))
        cfg, params = t5x.import_t5x(resolved)
        return CheckpointRef(given, resolved, fmt, _step_of(resolved)), cfg, params
    resolved = str(resolve_checkpoint(given))
    if is_adapter_checkpoint(resolved):
        cfg, params = load_adapter_checkpoint(resolved, merge_lora=merge_lora, backbone=backbone)
    else:
        cfg, params = load_params(resolved)
    return CheckpointRef(given, resolved, fmt, _step_of(resolved)), cfg, params


def _needs_local_copy(path: str, fmt: str) -> bool:
    return storage.is_url(path) and not (fmt == "flanrec"
                                         and storage.scheme(path) in storage.ORBAX_SCHEMES)


@contextlib.contextmanager
def local_checkpoint(path: str | os.PathLike[str]) -> Iterator[str]:
    """A path the checkpoint readers can open: `path` itself when local (or a flanrec
    checkpoint on gs://, which Orbax reads in place), else a temporary local copy of the one
    directory needed (a model dir's latest committed `checkpoint_N`, not all of them)."""
    given = storage.normalize(path)
    if not _needs_local_copy(given, checkpoint_format(given)):
        yield given
        return
    only = None
    if storage.isdir(given) and not _t5x_step_dir(given) and not \
            storage.isdir(storage.join(given, "params")):
        only = _best_step_name(given) or next(
            (n for _, n in _step_children(given)
             if any(storage.exists(storage.join(given, n, m)) for m in _COMMITTED)), None)
    with storage.local_copy(given, only=only) as local:
        yield local


def _best_step_name(model_dir: str) -> str | None:
    """`checkpoint_N` of the step a flanrec MODEL_DIR's best_checkpoint.json names (what
    `resolve_checkpoint` prefers), if that directory is there."""
    path = storage.join(model_dir, BEST_FILE)
    try:
        name = f"checkpoint_{int(storage.read_json(path)['step'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if storage.isdir(storage.join(model_dir, name)) else None


def load_params_any(path: str | os.PathLike[str], *, merge_lora: bool = True,
                    backbone: str | os.PathLike[str] | None = None) -> tuple[T5Config, Any]:
    """(T5Config, params) of `load_checkpoint` (HF, T5X or flanrec; local, gs://, ...)."""
    _, config, params = load_checkpoint(path, merge_lora=merge_lora, backbone=backbone)
    return config, params


# -------------------------------------------------------------------- adapter checkpoints
def _restore(item_dir: Any, handler: Any, args: Any) -> Any:
    # One item through its own handler, as `flanrec.checkpoints.store` reads items.
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
        cfg = adapters.adapters_from_dict(base, meta["peft"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{ckpt}/{META}: bad model_config/peft entry: {e}") from e
    item = inference_item(ckpt, meta)  # the adapters' moving average under EMA_DECAY
    handler = ocp.PyTreeCheckpointHandler()
    try:
        stored = handler.metadata(ckpt / item)
    finally:
        handler.close()
    stored = stored.tree if hasattr(stored, "tree") else stored
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    tree = _restore(ckpt / item, ocp.PyTreeCheckpointHandler(),
                    ocp.args.PyTreeRestore(item=stored, restore_args=restore_args))
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(tree).items()}
    want = set(adapters.adapters_to_dict(cfg))  # {'prompt', 'lora'}
    stray = sorted(k for k in flat if k.split("/", 1)[0] not in want)
    if stray:
        raise ValueError(f"{ckpt}/{item}: adapter checkpoint holds non-adapter "
                         f"parameters {stray[:5]}")
    return cfg, unflatten(flat), meta


def load_adapter_checkpoint(path: str | os.PathLike[str], *, merge_lora: bool = True,
                            backbone: str | os.PathLike[str] | None = None
                            ) -> tuple[T5Config, dict[str, Any]]:
    """(config, full float32 params): the backbone named in the checkpoint (or `backbone`,
    e.g. after moving it) combined with the adapters; LoRA folded in when `merge_lora`."""
    cfg, adapter_params, meta = read_adapters(path)
    source = backbone if backbone is not None else meta.get("backbone")
    if not source:
        raise ValueError(f"{path}: adapter checkpoint without a 'backbone' path in its meta; "
                         "pass backbone=")
    try:
        _, base_params = load_params_any(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: its frozen backbone {source} is gone ({e}); pass "
                                "backbone= (flanrec.api.load(..., backbone=...))") from e
    check_params(flatten(base_params), adapters.base_config(cfg), f"backbone {source} of {path}")
    params = peft_params.combine(base_params, adapter_params)
    adapters.check_all_params(flatten(params), cfg, str(path))
    if merge_lora:
        cfg, params = adapters.merge_lora(cfg, params)
    return cfg, params


__all__ = ["CheckpointRef", "checkpoint_format", "is_adapter_checkpoint",
           "load_adapter_checkpoint", "load_checkpoint", "load_params_any", "local_checkpoint",
           "read_adapters", "read_meta"]
