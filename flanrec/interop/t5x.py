"""Read T5X checkpoints into flanrec parameters, and write flanrec parameters as T5X checkpoints.

T5X stores no model config next to its weights, so the config is inferred from the array
shapes and then checked against the model's one parameter table
(`flanrec.model.params.param_specs`): a checkpoint that is not exactly a T5 v1.1 / Flan-T5
encoder-decoder is refused with the reason, never half-loaded.

Two on-disk layouts exist, both under `MODEL_DIR/checkpoint_N/`:

* Legacy (what the public Flan-T5 checkpoints use): a msgpack file named `checkpoint` holding
  `{'version': 3, 'optimizer': {'target': params, 'state': optimizer state}}`. Every
  partitioned array is replaced in that tree by the JSON of a TensorStore spec whose kvstore
  path is *relative* to the checkpoint dir (a gzip zarr array named like
  `target.encoder.layers_0.attention.query.kernel`); small unpartitioned values are inlined
  in the msgpack itself (flax's msgpack extension types).
* Orbax (what newer T5X writes with its Orbax checkpoint manager): an Orbax PyTree item named
  `state` (`checkpoint_N/state/`) holding `{'target': params, 'state': ...}` without the
  version/optimizer wrapper. It is read through Orbax itself (OCDBT or one zarr dir per
  array); item dirs from Orbax versions before its `_METADATA` file (tree in a msgpack
  `checkpoint` file with `PLACEHOLDER://name` leaves) are read directly.

Only `target` (the model parameters) is read. Optimizer state (Adafactor moments) is ignored
on purpose: flanrec starts its own optimizer state, and its arrays are never opened. The step
is read (`checkpoint_step`): as in T5X, training that starts from a T5X checkpoint continues
its step count (`flanrec.train`).

Writing (`write_t5x_checkpoint`) produces the legacy layout with the whole T5X train state:
`target` plus `state/step` and `state/param_states` in the shape of T5X's Adafactor
(`flanrec.interop.t5x_adafactor`), so T5X's stock fine-tuning (`RestoreCheckpointConfig(
mode='specific')`) restores it as it restores a checkpoint of its own.

Which step T5X resumes from: T5X's `latest_step` takes the highest `checkpoint_N` *by
directory name* (complete or not), and the train state then gets the `state/step` stored
inside. flanrec takes the highest complete `checkpoint_N` (one with its msgpack file or
Orbax item), so a half-copied directory is never picked; writers keep N and the stored step
equal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flanrec.interop import t5x_adafactor
from flanrec.interop.exports import make_readable
from flanrec.interop.t5x_adafactor import AdafactorLayout, stored_inline
from flanrec.model.config import PRESETS, T5Config
from flanrec.model.params import LOGITS_KERNEL, check_params, flatten, unflatten

log = logging.getLogger(__name__)

_MSGPACK_FILE = "checkpoint"  # name T5X gives the msgpack state file
_ORBAX_ITEM = "state"  # name of the Orbax item newer T5X writes
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_T5X_VERSION = 3  # legacy format version: native bfloat16 in TensorStore (since 2021-06)
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X keeps zarr chunks under 64 MiB


# ----------------------------------------------------------------------------------------------
# Locating a checkpoint


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / _MSGPACK_FILE).is_file() or (p / _ORBAX_ITEM).is_dir()


def find_t5x_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve `path` to one `checkpoint_N` directory.

    Accepts the `checkpoint_N` dir itself, the msgpack `checkpoint` file inside it, or a model
    dir holding several `checkpoint_N` dirs: the highest *complete* N wins (T5X itself would
    take the highest N by directory name, even one still being copied).
    """
    p = Path(path)
    if str(path).startswith("gs://"):
        raise ValueError(f"{path}: reading T5X checkpoints straight from GCS is not supported; "
                         f"copy it first (gsutil -m cp -r {path} LOCAL_DIR)")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such T5X checkpoint (file or directory)")
    if p.is_file():
        if p.name == _MSGPACK_FILE:
            return p.parent
        raise ValueError(f"{p}: expected a T5X checkpoint_N directory or its '{_MSGPACK_FILE}' "
                         "msgpack file")
    if _is_checkpoint_dir(p):
        return p
    steps = sorted((int(m.group(1)), c) for c in p.iterdir()
                   if c.is_dir() and (m := _STEP_DIR.match(c.name)))
    complete = [(s, c) for s, c in steps if _is_checkpoint_dir(c)]
    if complete:
        return complete[-1][1]
    flanrec_hint = " (it looks like a flanrec checkpoint: use --from flanrec / load_params)"
    if steps:
        step, c = steps[-1]
        hint = flanrec_hint if (c / "params").is_dir() else ""
        raise ValueError(f"{c}: T5X checkpoint for step {step} is incomplete: it has no "
                         f"'{_MSGPACK_FILE}' msgpack file (legacy layout) and no "
                         f"'{_ORBAX_ITEM}/' item (Orbax layout){hint}")
    hint = flanrec_hint if (p / "params").is_dir() else ""
    raise ValueError(f"{p}: not a T5X checkpoint: no '{_MSGPACK_FILE}' msgpack file, no "
                     f"'{_ORBAX_ITEM}/' Orbax item and no checkpoint_N subdirectories{hint}")


# ----------------------------------------------------------------------------------------------
# Legacy layout: msgpack + TensorStore zarr arrays


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, Mapping) and "driver" in x and "kvstore" in x


def _flatten_target(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Like `flanrec.model.params.flatten`, but a TensorStore spec dict is a leaf, not a subtree."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping) and not _is_ts_spec(value):
            flat.update(_flatten_target(value, name))
        else:
            flat[name] = value
    return flat


def _read_zarr(ckpt_dir: Path, name: str, spec: Mapping[str, Any], version: int) -> np.ndarray:
    """Read one array; `spec` is the (relative) TensorStore spec stored for it."""
    import tensorstore as ts

    kvstore = spec.get("kvstore", {})
    rel = kvstore.get("path", spec.get("path"))  # tensorstore >= 0.1.14 puts it in kvstore
    if not rel:
        raise ValueError(f"{ckpt_dir / _MSGPACK_FILE}: TensorStore spec of {name} has no path: "
                         f"{dict(spec)}")
    rel = str(rel).rstrip("/")
    if os.path.isabs(rel):  # never written by T5X, but keep a moved checkpoint readable
        rel = os.path.basename(rel)
    array_dir = ckpt_dir / rel
    if not array_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: array directory '{rel}' for parameter {name} is "
                                f"missing (referenced by the msgpack '{_MSGPACK_FILE}' file)")
    # Only driver + path: chunks/compressor come from the array's own .zarray, so checkpoints
    # written with other chunkings or codecs open too.
    store = ts.open({"driver": spec.get("driver", "zarr"),
                     "kvstore": {"driver": "file", "path": str(array_dir)}},
                    open=True, read=True).result()
    arr = np.asarray(store.read().result())
    want = tuple(spec.get("metadata", {}).get("shape", arr.shape))
    if tuple(arr.shape) != want:
        raise ValueError(f"{array_dir}: array of {name} has shape {arr.shape} but the msgpack "
                         f"spec says {want}")
    if arr.dtype == np.uint16 and version < 3:
        # Format version 2 stored bfloat16 as raw uint16 bits.
        import ml_dtypes

        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def _read_legacy(ckpt_dir: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    msgpack_path = ckpt_dir / _MSGPACK_FILE
    raw = msgpack_path.read_bytes()
    if raw.startswith(b"model_checkpoint_path"):
        raise ValueError(f"{msgpack_path}: this is a TensorFlow (Mesh TF) checkpoint index, not a "
                         "T5X checkpoint; convert it with T5X first")
    try:
        contents = serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"{msgpack_path}: not a readable T5X msgpack state file ({e})") from e
    if not isinstance(contents, Mapping):
        raise ValueError(f"{msgpack_path}: expected a dict at the top level, got "
                         f"{type(contents).__name__}")
    version = int(contents.get("version", 0))
    state = contents["optimizer"] if version >= 1 and "optimizer" in contents else contents
    if "target" not in state:
        raise ValueError(f"{msgpack_path}: no 'target' (model parameters) in the checkpoint; "
                         f"top-level keys: {sorted(state)}")
    flat: dict[str, np.ndarray] = {}
    for name, leaf in _flatten_target(state["target"]).items():
        if _is_ts_spec(leaf):
            flat[name] = _read_zarr(ckpt_dir, name, leaf, version)
        elif isinstance(leaf, np.ndarray | np.generic):
            flat[name] = np.asarray(leaf)
        else:
            raise ValueError(f"{msgpack_path}: parameter {name} is neither an array nor a "
                             f"TensorStore spec (got {type(leaf).__name__})")
    return flat


# ----------------------------------------------------------------------------------------------
# Orbax layout (newer T5X): checkpoint_N/state/ is an Orbax PyTree item


_PLACEHOLDER = "PLACEHOLDER://"  # how Orbax marks, in its msgpack, a leaf stored elsewhere


def _read_orbax_aggregate(item_dir: Path) -> dict[str, np.ndarray]:
    """Old Orbax (no `_METADATA`): the tree lives in a msgpack `checkpoint` file whose leaves
    are either inline values or placeholders naming a zarr array dir next to it."""
    from flax import serialization

    tree = serialization.msgpack_restore((item_dir / _MSGPACK_FILE).read_bytes())
    if not isinstance(tree, Mapping) or "target" not in tree:
        raise ValueError(f"{item_dir / _MSGPACK_FILE}: no 'target' (model parameters) in the "
                         "Orbax item")
    flat: dict[str, np.ndarray] = {}
    for name, leaf in flatten(tree["target"]).items():
        if isinstance(leaf, str) and leaf.startswith(_PLACEHOLDER):
            rel = leaf[len(_PLACEHOLDER):]
            spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": rel}}
            flat[name] = _read_zarr(item_dir, name, spec, _T5X_VERSION)
        elif isinstance(leaf, np.ndarray | np.generic):
            flat[name] = np.asarray(leaf)
        else:
            raise ValueError(f"{item_dir / _MSGPACK_FILE}: parameter {name} is neither an array "
                             f"nor an Orbax placeholder (got {type(leaf).__name__})")
    return flat


def _read_orbax(ckpt_dir: Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    item_dir = (ckpt_dir / _ORBAX_ITEM).absolute()
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
        meta = checkpointer.metadata(item_dir)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
    except Exception as e:
        raise ValueError(f"{item_dir}: not a readable Orbax PyTree checkpoint ({e})") from e
    if tree is None and (item_dir / _MSGPACK_FILE).is_file():
        return _read_orbax_aggregate(item_dir)
    if not isinstance(tree, Mapping) or "target" not in tree:
        keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"{item_dir}: no 'target' (model parameters) in the Orbax item; "
                         f"top-level keys: {keys}")
    target = tree["target"]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    try:
        restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
            item={"target": target}, restore_args={"target": restore_args},
            partial_restore=True))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{item_dir}: an array of the checkpoint is missing ({e})") from e
    return {k: np.asarray(v) for k, v in flatten(restored["target"]).items()}


# ----------------------------------------------------------------------------------------------
# Config inference


_SHAPE_FIELDS = ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers",
                 "num_decoder_layers", "relative_attention_num_buckets", "logits_via_embedding")


def match_preset(cfg: T5Config) -> str:
    """Name of the preset with exactly these shapes (e.g. 'flan-t5-base'), else 'custom'.

    Only the parameter tree counts (shapes, and tying, which drops a parameter): dropout or
    dtype settings do not make a checkpoint another model.
    """
    for name, preset in PRESETS.items():
        if all(getattr(preset, f) == getattr(cfg, f) for f in _SHAPE_FIELDS):
            return name
    return "custom"


def _layer_count(flat: Mapping[str, Any], stack: str, source: str) -> int:
    idx = {int(m.group(1)) for k in flat if (m := re.match(rf"^{stack}/layers_(\d+)/", k))}
    if not idx:
        raise ValueError(f"{source}: no {stack}/layers_N parameters found")
    if idx != set(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise ValueError(f"{source}: {stack} layers are not numbered 0..N-1 "
                         f"(missing layers_{missing[0]})")
    return len(idx)


def infer_config(flat: Mapping[str, Any], source: str) -> T5Config:
    """Infer a T5 v1.1 config from T5X parameter shapes, refusing other architectures by name.

    The relative-attention max distance is not stored in any shape; the T5 v1.1 value (128) is
    assumed, as for every published Flan-T5 checkpoint. A checkpoint without
    `decoder/logits_dense/kernel` is a tied one (T5X's `logits_via_embedding = True`): the
    config gets `logits_via_embedding=True`.
    """
    names = set(flat)
    if not names:
        raise ValueError(f"{source}: the checkpoint's 'target' (model parameters) is empty: no "
                         "arrays to load (a T5X checkpoint saved without its parameters, or "
                         "only the optimizer state was copied)")
    if not any(n.startswith("encoder/") for n in names):
        groups = sorted({n.split("/")[0] for n in names})
        kind = ("decoder-only checkpoint" if groups == ["decoder"] or "decoder" in groups
                else "not an encoder-decoder checkpoint")
        raise ValueError(f"{source}: {kind}: no encoder/* parameters (top-level groups in "
                         f"'target': {groups}); flanrec supports T5 v1.1 / Flan-T5 "
                         "encoder-decoder checkpoints only")
    v10 = sorted(n for n in names if re.search(r"/mlp/wi/kernel$", n))
    if v10:
        raise ValueError(f"{source}: T5 v1.0 checkpoint (single ReLU MLP '{v10[0]}'); flanrec "
                         "supports the T5 v1.1 / Flan-T5 gated-GELU MLP (wi_0/wi_1) only")
    # T5X's `logits_via_embedding`: a tied decoder has no output kernel of its own.
    tied = LOGITS_KERNEL not in names

    def need(name: str, ndim: int) -> tuple[int, ...]:
        if name not in flat:
            raise ValueError(f"{source}: missing parameter {name}")
        shape = tuple(np.shape(flat[name]))
        if len(shape) != ndim:
            raise ValueError(f"{source}: parameter {name} has shape {shape}, expected {ndim} dims")
        return shape

    vocab, d_model = need("token_embedder/embedding", 2)
    num_heads, num_buckets = need("encoder/relpos_bias/rel_embedding", 2)
    inner = need("encoder/layers_0/attention/query/kernel", 2)[1]
    d_ff = need("encoder/layers_0/mlp/wi_0/kernel", 2)[1]
    if inner % num_heads:
        raise ValueError(f"{source}: attention width {inner} is not a multiple of the "
                         f"{num_heads} heads given by encoder/relpos_bias/rel_embedding")
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_ff=d_ff, num_heads=num_heads,
                   d_kv=inner // num_heads,
                   num_encoder_layers=_layer_count(flat, "encoder", source),
                   num_decoder_layers=_layer_count(flat, "decoder", source),
                   relative_attention_num_buckets=num_buckets, logits_via_embedding=tied)
    cfg = cfg.replace(name=match_preset(cfg))
    check_params(flat, cfg, source)
    return cfg


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of the T5X checkpoint at `path` (`find_t5x_checkpoint`), or None when `path`
    is not a T5X checkpoint.

    The step stored in a legacy checkpoint (`optimizer/state/step`, what T5X's train state
    gets on restore) wins; otherwise (Orbax layout, or no step stored) the directory name's N.
    """
    try:
        ckpt_dir = find_t5x_checkpoint(path)
    except (ValueError, FileNotFoundError):
        return None
    m = _STEP_DIR.match(ckpt_dir.name)
    by_name = int(m.group(1)) if m else None
    if (ckpt_dir / _MSGPACK_FILE).is_file():
        from flax import serialization

        try:
            contents = serialization.msgpack_restore((ckpt_dir / _MSGPACK_FILE).read_bytes())
            stored = contents["optimizer"]["state"]["step"]
            return int(np.asarray(stored))
        except Exception:  # noqa: BLE001 - any unreadable/missing step falls back to the name
            pass
    return by_name


def import_t5x(path: str | os.PathLike) -> tuple[T5Config, dict[str, Any]]:
    """Load a T5X checkpoint (legacy msgpack+TensorStore or Orbax layout) as flanrec params.

    `path` is a `checkpoint_N` dir (or its msgpack file), or a model dir whose highest
    complete `checkpoint_N` is taken. Returns `(config, nested dict of float32 numpy arrays)`
    keyed by the T5X names of `flanrec.model.params.param_specs`. Optimizer state in the
    checkpoint is ignored (params only). Raises ValueError/FileNotFoundError naming the
    problem for a missing msgpack file or array dir, T5 v1.0, decoder-only or mis-shaped
    checkpoints. A tied checkpoint (no `decoder/logits_dense/kernel`) gives a config with
    `logits_via_embedding=True`.
    """
    ckpt_dir = find_t5x_checkpoint(path)
    if (ckpt_dir / _MSGPACK_FILE).is_file():
        flat = _read_legacy(ckpt_dir)
    else:
        flat = _read_orbax(ckpt_dir)
    cfg = infer_config(flat, str(ckpt_dir))
    params = {name: np.asarray(arr, dtype=np.float32) for name, arr in flat.items()}
    return cfg, unflatten(params)


# ----------------------------------------------------------------------------------------------
# Writing the legacy layout


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
    """Largest chunk that divides `shape` evenly and stays under 64 MiB.

    Shrinks the currently largest chunk dimension to its next smaller divisor until the chunk
    fits, so big embeddings split along vocab and small arrays stay one chunk.
    """
    chunk = list(shape)
    while chunk and int(np.prod(chunk)) * itemsize > _CHUNK_BYTES:
        i = int(np.argmax(chunk))
        n = shape[i]
        chunk[i] = max(d for d in range(1, chunk[i]) if n % d == 0)
    return [max(c, 1) for c in chunk]


def write_t5x_checkpoint(params: Mapping[str, Any], model_dir: str | os.PathLike,
                         step: int, opt_state: Any = None,
                         layout: AdafactorLayout | None = None) -> Path:
    """Write `params` as T5X writes a legacy checkpoint: `model_dir/checkpoint_{step}/`.

    Each array becomes a gzip zarr array written with TensorStore; the msgpack `checkpoint`
    file (version 3) holds the relative TensorStore spec in its place. Beside the parameters
    (`optimizer/target`) it holds T5X's Adafactor state (`optimizer/state`: `step` and
    `param_states`, shaped by `layout`, T5X's defaults unless told otherwise): the moments of
    `opt_state` (a restored flanrec optax Adafactor state) where they fit, zeros elsewhere
    (`t5x_adafactor.param_states`). T5X's stock fine-tuning restores it with
    `RestoreCheckpointConfig(mode='specific')` unchanged. The params must fit a T5 v1.1
    config (it is inferred and checked first). Written to a temp dir, then renamed: a crash
    leaves no `checkpoint_N` behind. Returns the checkpoint dir; how many moments were copied
    is logged.
    """

    if isinstance(step, bool) or not isinstance(step, int | np.integer) or not \
            0 <= int(step) <= np.iinfo(np.int32).max:
        raise ValueError(f"step: expected an integer in [0, 2**31-1] for checkpoint_N (T5X "
                         f"stores it as int32), got {step!r}")
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    infer_config(flat, "params to write")
    moments = t5x_adafactor.optax_moments(opt_state) if opt_state is not None else {}
    states, report = t5x_adafactor.param_states(flat, layout or AdafactorLayout(), moments)
    log.info("T5X Adafactor state for step %d: %s", step, report.describe())
    if report.mismatched:
        log.warning("T5X Adafactor state: %s", report.describe())
    state = {"step": np.int32(step), "param_states": unflatten(states)}
    return write_legacy_layout(flat, model_dir, step, state)


def write_legacy_layout(flat: Mapping[str, Any], model_dir: str | os.PathLike,
                        step: int, state: Mapping[str, Any] | None = None) -> Path:
    """The writer behind `write_t5x_checkpoint`, without the architecture check (tests use it
    to build malformed checkpoints that the reader must refuse). `state` is the T5X
    optimizer state tree (default: the step only); its arrays are stored like the params."""
    import tensorstore as ts
    from flax import serialization

    final = Path(model_dir) / f"checkpoint_{int(step)}"
    if final.exists():
        raise FileExistsError(f"{final}: already exists; refusing to overwrite a checkpoint")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{int(time.time())}-{os.getpid()}")
    tmp.mkdir()

    def store(prefix: str, tree_flat: Mapping[str, Any],
              inline: Any = lambda name, arr: False) -> dict[str, Any]:
        specs: dict[str, Any] = {}
        for name, value in tree_flat.items():
            arr = np.ascontiguousarray(value, dtype=np.float32)
            if inline(name, arr):  # kept in the msgpack itself, as T5X does for such arrays
                specs[name] = arr
                continue
            rel = f"{prefix}." + name.replace("/", ".")  # T5X names arrays by state-dict path
            spec = {"driver": "zarr", "dtype": "float32",
                    "kvstore": {"driver": "file", "path": rel},
                    "metadata": {"compressor": {"id": "gzip"}, "shape": list(arr.shape),
                                 "chunks": _chunk_shape(arr.shape, arr.itemsize)}}
            on_disk = dict(spec, kvstore={"driver": "file", "path": str(tmp / rel)})
            written = ts.open(on_disk, create=True, open=True).result()
            written.write(arr).result()
            # The msgpack keeps the relative spec, normalised as tensorstore prints it.
            specs[name] = ts.Spec(spec).to_json()
        return specs

    try:
        target = store("target", flat)
        opt_state: dict[str, Any] = {"step": np.int32(step)}
        if state is not None:
            opt_state["step"] = np.int32(state.get("step", step))
            if "param_states" in state:
                opt_state["param_states"] = unflatten(store(
                    "state.param_states", flatten(state["param_states"]),
                    lambda name, arr: stored_inline(name.rsplit("/", 1)[-1], arr.shape)))
        contents = {"version": _T5X_VERSION,
                    "optimizer": {"target": unflatten(target), "state": opt_state}}
        (tmp / _MSGPACK_FILE).write_bytes(serialization.msgpack_serialize(contents))
        make_readable(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = ["checkpoint_step", "find_t5x_checkpoint", "import_t5x", "infer_config",
           "match_preset", "write_t5x_checkpoint"]
