"""flanrec checkpoints on Orbax: per-step training state, and params-only checkpoints.

Layout (one job writes a MODEL_DIR; any number of readers):

    MODEL_DIR/checkpoint_{step}/params      Orbax PyTree (sharded arrays, OCDBT)
                               /opt_state   Orbax PyTree (optional)
                               /meta        JSON: model_config, step, rng, data_position, version
    PARAMS_DIR/params, PARAMS_DIR/meta      params-only checkpoint (what `flanrec.convert` writes)

Orbax does the heavy lifting: async writes, multi-host coordination (every process writes its
own shards, the primary host writes the JSON and commits), atomic finalisation (temp dir then
rename locally, a `commit_success.txt` marker on GCS). What flanrec adds is a strict notion of
"complete": a step counts only when its directory carries Orbax's commit marker, so a job killed
mid-save (or a directory copied half-way) is never resumed from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flanrec import __version__
from flanrec.convert.common import check_params, flatten, unflatten
from flanrec.model.config import T5Config

log = logging.getLogger(__name__)

STEP_PREFIX = "checkpoint"
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
_COMMIT_FILE = "commit_success.txt"  # written by Orbax when it finalises a checkpoint
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax step metadata (commit timestamp)

PathLike = str | os.PathLike


def _as_path(path: PathLike) -> epath.Path:
    """An epath for `path`, made absolute when local: Orbax's OCDBT writer refuses relative
    directories, and users type `--gin.MODEL_DIR=runs/x`. Remote URLs (gs://…) pass as they are.
    """
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


# ----------------------------------------------------------------------------------------------
# Completeness and path resolution (read-only: safe for any number of readers)


def step_dir(model_dir: PathLike, step: int) -> epath.Path:
    """`MODEL_DIR/checkpoint_{step}`."""
    return _as_path(model_dir) / f"{STEP_PREFIX}_{int(step)}"


def is_complete(ckpt_dir: PathLike) -> bool:
    """True when Orbax finished this checkpoint: its commit marker (or commit time) is there.

    A directory without it is a save that was interrupted, still in flight (GCS writes in
    place), or a partial copy; it must never be resumed from.
    """
    p = _as_path(ckpt_dir)
    if not p.is_dir():
        return False
    if (p / _COMMIT_FILE).exists():
        return True
    md = p / _STEP_METADATA_FILE
    if md.exists():
        try:
            return bool(json.loads(md.read_text()).get("commit_timestamp_nsecs"))
        except (ValueError, OSError):
            return False
    return False


def _step_dirs(model_dir: PathLike) -> list[tuple[int, epath.Path]]:
    p = _as_path(model_dir)
    if not p.is_dir():
        return []
    return sorted((int(m.group(1)), c) for c in p.iterdir()
                  if (m := _STEP_DIR.match(c.name)) and c.is_dir())


def complete_steps(model_dir: PathLike) -> list[int]:
    """Steps of MODEL_DIR whose checkpoint is complete, ascending."""
    return [s for s, d in _step_dirs(model_dir) if is_complete(d)]


def latest_complete_step(model_dir: PathLike) -> int | None:
    """Highest complete step in MODEL_DIR, or None."""
    steps = complete_steps(model_dir)
    return steps[-1] if steps else None


BEST_FILE = "best_checkpoint.json"
"""MODEL_DIR/best_checkpoint.json: the step training's rank validation chose (see train.py)."""


def best_step(model_dir: PathLike) -> int | None:
    """The step `best_checkpoint.json` names, if that checkpoint is complete, else None."""
    f = _as_path(model_dir) / BEST_FILE
    if not f.exists():
        return None
    try:
        step = int(json.loads(f.read_text())["step"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        log.warning("%s: unreadable (%s); using the latest checkpoint", f, e)
        return None
    if not is_complete(step_dir(model_dir, step)):
        log.warning("%s names step %d, which is not a complete checkpoint; using the latest",
                    f, step)
        return None
    return step


def resolve_checkpoint(path: PathLike, prefer_best: bool = True) -> epath.Path:
    """A MODEL_DIR (→ the step its `best_checkpoint.json` names, else its latest complete
    step), a checkpoint_N dir or a params-only dir → the directory holding the `params` and
    `meta` items. Clear errors otherwise. `prefer_best=False`: always the latest."""
    p = _as_path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such flanrec checkpoint")
    if not p.is_dir():
        raise ValueError(f"{p}: a flanrec checkpoint is a directory, got a file")
    if (p / PARAMS).is_dir() or (p / META).is_dir():
        if not is_complete(p):
            raise ValueError(f"{p}: incomplete checkpoint (no Orbax '{_COMMIT_FILE}' marker); "
                             "it was interrupted while being written")
        for item in (PARAMS, META):
            if not (p / item).is_dir():
                raise ValueError(f"{p}: flanrec checkpoint without its '{item}' item")
        return p
    steps = _step_dirs(p)
    if steps:
        best = best_step(p) if prefer_best else None
        if best is not None:
            log.info("%s: using checkpoint %d, the best by validation (%s)", p, best, BEST_FILE)
            return step_dir(p, best)
        done = [(s, d) for s, d in steps if is_complete(d)]
        if not done:
            raise ValueError(f"{p}: MODEL_DIR has no complete checkpoint (found only incomplete "
                             f"{[d.name for _, d in steps]})")
        return done[-1][1]
    hint = ""
    if (p / "config.json").exists():
        hint = " (it looks like a Hugging Face model: use flanrec.api.load_params_any or " \
               "`python -m flanrec.convert --from hf`)"
    elif (p / "checkpoint").is_file() or (p / "state").is_dir():
        hint = " (it looks like a T5X checkpoint: use `python -m flanrec.convert --from t5x`)"
    raise ValueError(f"{p}: not a flanrec checkpoint: expected a MODEL_DIR with "
                     f"{STEP_PREFIX}_N/ subdirectories, a {STEP_PREFIX}_N dir or a params-only "
                     f"dir, each holding '{PARAMS}/' and '{META}/' items{hint}")


# ----------------------------------------------------------------------------------------------
# Helpers


def _json_meta(meta: Mapping[str, Any] | None, step: int | None) -> dict[str, Any]:
    """Normalise run metadata to plain JSON, failing before any byte is written."""
    out: dict[str, Any] = dict(meta or {})
    cfg = out.get("model_config")
    if isinstance(cfg, T5Config):
        out["model_config"] = cfg.to_dict()
    rng = out.get("rng")
    if rng is not None:
        if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        out["rng"] = [int(v) for v in np.asarray(rng).ravel().tolist()]
    out["step"] = None if step is None else int(step)
    out["version"] = __version__
    try:
        json.dumps(out)
    except TypeError as e:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    return out


def _numpy_restore_args(tree: Any) -> Any:
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)


def _tree_of(item_metadata: Any) -> Any:
    return item_metadata.tree if hasattr(item_metadata, "tree") else item_metadata


def _path_str(path: tuple[Any, ...]) -> str:
    # Orbax stores namedtuples (optax states) as dicts and tuples as lists, so compare paths
    # by their plain tokens, not by key kind.
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _check_shapes(stored: Any, abstract: Any, where: str) -> None:
    """Refuse a checkpoint whose arrays do not match the expected tree, naming them, before
    Orbax gets to restore into it."""
    got = {_path_str(k): tuple(v.shape)
           for k, v in jax.tree_util.tree_leaves_with_path(stored) if hasattr(v, "shape")}
    want = {_path_str(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(abstract) if hasattr(v, "shape")}
    problems = [f"{k}: missing in checkpoint" for k in sorted(set(want) - set(got))]
    problems += [f"{k}: checkpoint {got[k]} vs expected {want[k]}"
                 for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if problems:
        raise ValueError(f"{where}: checkpoint does not fit the expected tree: "
                         + "; ".join(problems[:5]) + (" …" if len(problems) > 5 else ""))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------
# Training checkpoints


class TrainCheckpointer:
    """Save/resume the training state of one MODEL_DIR (the one writer of that directory).

    Call on every process of a multi-host run: each writes its shards, Orbax coordinates and
    the primary host writes `meta`. At start the primary host renames any incomplete
    `checkpoint_N` (e.g. left by a killed job on GCS) to `checkpoint_N.incomplete-<time>`, so
    Orbax neither counts it toward `max_to_keep` nor collides with it when step N is saved
    again; nothing is deleted.
    """

    def __init__(self, model_dir: PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True, save_interval_steps: int = 1,
                 best_metric: str | None = None) -> None:
        self.model_dir = _as_path(model_dir)
        if jax.process_index() == 0:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            for _, d in _step_dirs(self.model_dir):
                if not is_complete(d):
                    aside = d.parent / f"{d.name}.incomplete-{int(time.time())}"
                    log.warning("moving incomplete checkpoint %s aside to %s", d, aside)
                    d.rename(aside)
        _sync(f"flanrec_ckpt_init:{self.model_dir}")
        # With `best_metric`, the step with the highest value of that metric (passed to
        # `save(metrics=...)`) is kept besides the `max_to_keep` latest ones: it is the
        # checkpoint inference picks, so rotation must never delete it.
        policy = None
        if best_metric is not None:
            from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

            latest = pp.PreserveAll() if max_to_keep is None else pp.LatestN(n=max_to_keep)
            policy = pp.AnyPreservationPolicy([latest, pp.BestN(
                get_metric_fn=lambda m: float(m[best_metric]), reverse=False, n=1,
                keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if policy is not None else max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, step_prefix=STEP_PREFIX,
            cleanup_tmp_directories=True, create=True, preservation_policy=policy)
        self._manager = ocp.CheckpointManager(self.model_dir, options=options)

    def save(self, step: int, params: Any, opt_state: Any = None,
             meta: Mapping[str, Any] | None = None, force: bool = False,
             metrics: Mapping[str, float] | None = None) -> bool:
        """Save (asynchronously if enabled) unless `save_interval_steps` says skip or the step
        is already saved; returns whether a save was started. `meta` gets `step` and `version`
        filled in; a jax PRNG key under `rng` is stored as its list of ints. `metrics` (e.g.
        validation NDCG@10) rank the step for the `best_metric` preservation rule."""
        items: dict[str, Any] = {PARAMS: ocp.args.StandardSave(params)}
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardSave(opt_state)
        items[META] = ocp.args.JsonSave(_json_meta(meta, step))
        try:
            return bool(self._manager.save(
                int(step), args=ocp.args.Composite(**items), force=force,
                metrics=dict(metrics) if metrics is not None else None))
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            # As T5X: a step is written once (e.g. the final save right after a periodic one).
            log.info("checkpoint for step %d already exists; not saving it again", step)
            return False

    def should_save(self, step: int) -> bool:
        return bool(self._manager.should_save(int(step)))

    def reached_preemption(self, step: int) -> bool:
        """True when the job was told to stop (e.g. TPU maintenance): save now, then exit."""
        return bool(self._manager.reached_preemption(int(step)))

    def all_steps(self) -> list[int]:
        """Complete steps on disk (a save still in flight is not one)."""
        return complete_steps(self.model_dir)

    def latest_step(self) -> int | None:
        """Highest complete step, or None: where a restarted job resumes."""
        return latest_complete_step(self.model_dir)

    def restore(self, step: int | None = None, *, abstract_params: Any,
                abstract_opt_state: Any = None) -> tuple[Any, Any, dict[str, Any]]:
        """Restore `(params, opt_state, meta)` of `step` (default: latest complete).

        Arrays land directly in the shardings of the abstract trees (`jax.ShapeDtypeStruct`
        with `.sharding`), so no host ever holds a full copy. `abstract_params=None` restores
        host numpy arrays; `abstract_opt_state=None` skips the optimizer state (returns None).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.model_dir}: no complete checkpoint to restore")
        d = step_dir(self.model_dir, step)
        if not is_complete(d):
            raise FileNotFoundError(f"{d}: no complete checkpoint for step {step} "
                                    f"(complete: {self.all_steps()})")
        return _restore_items(d, abstract_params, abstract_opt_state, restore_opt=True)

    def wait(self) -> None:
        """Block until an async save is committed (call before reading it or exiting)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _item_tree_metadata(item_dir: epath.Path) -> Any:
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return _tree_of(handler.metadata(item_dir))
    finally:
        handler.close()


def _restore_item(item_dir: epath.Path, handler: Any, args: Any) -> Any:
    # One item at a time through its own handler: works for any set of items on disk and
    # needs no handler registry from the run that wrote them.
    checkpointer = ocp.Checkpointer(handler)
    try:
        return checkpointer.restore(item_dir, args=args)
    finally:
        checkpointer.close()


def _restore_items(ckpt: epath.Path, abstract_params: Any, abstract_opt_state: Any,
                   restore_opt: bool) -> tuple[Any, Any, dict[str, Any]]:
    meta = _restore_item(ckpt / META, ocp.JsonCheckpointHandler(), ocp.args.JsonRestore())
    stored_params = _item_tree_metadata(ckpt / PARAMS)
    if abstract_params is None:
        params = _restore_item(ckpt / PARAMS, ocp.PyTreeCheckpointHandler(), ocp.args.PyTreeRestore(
            item=stored_params, restore_args=_numpy_restore_args(stored_params)))
    else:
        _check_shapes(stored_params, abstract_params, f"{ckpt}/{PARAMS}")
        params = _restore_item(ckpt / PARAMS, ocp.StandardCheckpointHandler(),
                               ocp.args.StandardRestore(abstract_params))
    opt = None
    if restore_opt and abstract_opt_state is not None:
        if not (ckpt / OPT_STATE).is_dir():
            raise ValueError(f"{ckpt}: has no '{OPT_STATE}' item, but an optimizer state was "
                             "asked for (a params-only checkpoint? restore with "
                             "abstract_opt_state=None and start a fresh optimizer)")
        _check_shapes(_item_tree_metadata(ckpt / OPT_STATE), abstract_opt_state,
                      f"{ckpt}/{OPT_STATE}")
        opt = _restore_item(ckpt / OPT_STATE, ocp.StandardCheckpointHandler(),
                            ocp.args.StandardRestore(abstract_opt_state))
    return params, opt, meta


# ----------------------------------------------------------------------------------------------
# Params-only checkpoints and loading


def save_params_checkpoint(cfg: T5Config, params: Mapping[str, Any], out_dir: PathLike,
                           *, overwrite: bool = False) -> epath.Path:
    """Write a params-only flanrec checkpoint (`out_dir/params`, `out_dir/meta`).

    What `python -m flanrec.convert` writes and what INITIAL_CHECKPOINT_PATH accepts. Params
    are checked against `cfg` first and stored as float32. Single-process (host arrays); Orbax
    writes to a temp dir and renames, so a crash leaves no half checkpoint. Refuses an existing
    non-empty `out_dir` unless `overwrite`.
    """
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
    check_params(flat, cfg, "params to save")
    out = _as_path(out_dir)
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif not overwrite:
            raise FileExistsError(f"{out}: already exists and is not empty (pass overwrite=True)")
    meta = _json_meta({"model_config": cfg.to_dict(), "kind": "params"}, None)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        checkpointer.save(out, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(unflatten(flat)), META: ocp.args.JsonSave(meta)}),
            force=overwrite)
    finally:
        checkpointer.close()
    return out


def _config_from_meta(meta: Mapping[str, Any], where: epath.Path) -> T5Config:
    if "model_config" not in meta:
        raise ValueError(f"{where}/{META}: no 'model_config' in the checkpoint metadata")
    try:
        return T5Config.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}/{META}: bad model_config: {e}") from e


def load_params(path: PathLike) -> tuple[T5Config, dict[str, Any]]:
    """`(config, float32 numpy params)` from a MODEL_DIR (latest complete step), a
    checkpoint_N dir or a params-only dir. Optimizer state is not read."""
    ckpt = resolve_checkpoint(path)
    params, _, meta = _restore_items(ckpt, None, None, restore_opt=False)
    cfg = _config_from_meta(meta, ckpt)
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
    check_params(flat, cfg, str(ckpt))
    return cfg, unflatten(flat)


def restore_params(path: PathLike, abstract_params: Any) -> tuple[T5Config, Any]:
    """Like `load_params`, but arrays go straight into the shardings of `abstract_params`
    (for INITIAL_CHECKPOINT_PATH on a pod: no host holds the whole model)."""
    ckpt = resolve_checkpoint(path)
    params, _, meta = _restore_items(ckpt, abstract_params, None, restore_opt=False)
    return _config_from_meta(meta, ckpt), params


def load_optimizer_state(path: PathLike) -> tuple[int | None, Any]:
    """`(step, optimizer state as host numpy arrays)` of a flanrec checkpoint, for exporters
    (`convert --to t5x` carries Adafactor's moments). The state is the stored tree as Orbax
    gives it back untyped (optax NamedTuples as dicts, chains as lists); None for a
    params-only checkpoint."""
    ckpt = resolve_checkpoint(path)
    meta = _restore_item(ckpt / META, ocp.JsonCheckpointHandler(), ocp.args.JsonRestore())
    step = meta.get("step")
    if not (ckpt / OPT_STATE).is_dir():
        return step, None
    stored = _item_tree_metadata(ckpt / OPT_STATE)
    opt = _restore_item(ckpt / OPT_STATE, ocp.PyTreeCheckpointHandler(), ocp.args.PyTreeRestore(
        item=stored, restore_args=_numpy_restore_args(stored)))
    return step, opt


__all__ = ["TrainCheckpointer", "complete_steps", "is_complete", "latest_complete_step",
           "load_optimizer_state", "load_params", "resolve_checkpoint", "restore_params",
           "save_params_checkpoint", "step_dir"]
