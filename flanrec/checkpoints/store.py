"""Writing and reading flanrec checkpoints with Orbax: the training state of a MODEL_DIR
(`TrainCheckpointer`) and params-only checkpoints (what `flanrec.convert` writes).

Orbax does the heavy lifting: async writes, multi-host coordination (every process writes its
own shards, the primary host writes the JSON and commits), atomic finalisation (temp dir then
rename locally, a `commit_success.txt` marker on GCS). Which directory is complete and intact
enough to be read is decided before any array is touched, by `flanrec.checkpoints.integrity`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flanrec.checkpoints.integrity import (
    EMA_PARAMS,
    INFERENCE_PARAMS_KEY,
    META,
    OPT_STATE,
    PARAMS,
    STEP_PREFIX,
    DamagedCheckpointError,
    PathLike,
    as_path,
    complete_steps,
    is_complete,
    latest_complete_step,
    newest_verified,
    record_checksums,
    resolve_checkpoint,
    step_dir,
    step_dirs,
    verify_checkpoint,
)
from flanrec.errors import DISK_ERRNOS, DiskError
from flanrec.model.config import T5Config
from flanrec.model.params import check_params, flatten, unflatten
from flanrec.version import __version__

log = logging.getLogger(__name__)


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


def _refuse_on_all_hosts(message: str) -> None:
    """Raise DamagedCheckpointError on every process when process 0 refused (`message`), so
    no host waits forever in the next barrier."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flag = int(multihost_utils.broadcast_one_to_all(np.int32(1 if message else 0)))
        if flag and not message:
            raise DamagedCheckpointError("process 0 refused a damaged checkpoint of this "
                                         "MODEL_DIR (its log names the files)")
    if message:
        raise DamagedCheckpointError(message)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


_OS_ERROR_CODE = re.compile(r"os_error_code=\\?'?(\d+)")  # also inside a repr: =\'27\'

_ORBAX_TMP = ".orbax-checkpoint-tmp"


def disk_errno(error: BaseException) -> int | None:
    """The errno when `error` (or what caused it) is the disk refusing a write (full, over
    quota, file too large, read-only), else None. TensorStore reports these as ValueError
    with `[os_error_code='28']` in the text, Python as OSError."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno
        m = _OS_ERROR_CODE.search(str(e))
        if m and int(m.group(1)) in DISK_ERRNOS:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


class _DiskNoise(logging.Filter):
    """Drops Orbax's own log records about a write the disk refused (one per array and
    thread, each with a traceback): the job reports that failure once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if record.exc_info and record.exc_info[1] is not None and \
                disk_errno(record.exc_info[1]) is not None:
            return False
        m = _OS_ERROR_CODE.search(text)
        return not (m and int(m.group(1)) in DISK_ERRNOS)


_ASYNCIO_DISK_NOISE = _DiskNoise()


def _quiet_abandoned_writes() -> None:
    """When a write is refused, Orbax closes that save's event loop at the first error while
    TensorStore still completes the save's other writes and calls back into the closed
    loop: one "Event loop is closed" report per array, each with a traceback, printed from
    background threads before the job hears of the failure. They say nothing the job's one
    error line does not, so from a checkpointer's creation on this process drops exactly
    those (every other unraisable exception is still reported)."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_flanrec_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._flanrec_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    # The same abandoned writes surface once more when their asyncio tasks are collected
    # ("Task exception was never retrieved", with a traceback), possibly after the
    # checkpointer is closed: the asyncio logger drops those records for the process's life.
    logging.getLogger("asyncio").addFilter(_ASYNCIO_DISK_NOISE)


def remove_orbax_scratch(model_dir: epath.Path, note: bool = True) -> None:
    """Remove Orbax's `*.orbax-checkpoint-tmp*` directories from a MODEL_DIR: never a
    committed checkpoint (Orbax renames a finished save to checkpoint_N), only the remains of
    a save that failed or was killed, which would otherwise keep filling the disk."""
    for child in model_dir.iterdir() if model_dir.is_dir() else ():
        if _ORBAX_TMP in child.name:
            if note:
                log.warning("removing %s: the unfinished save of a run that failed or was "
                            "killed (never a committed checkpoint)", child)
            with contextlib.suppress(OSError):
                child.rmtree() if child.is_dir() else child.unlink()


# ----------------------------------------------------------------------------------------------
# Training checkpoints


class TrainCheckpointer:
    """Save/resume the training state of one MODEL_DIR (the one writer of that directory).

    Call on every process of a multi-host run: each writes its shards, Orbax coordinates and
    the primary host writes `meta`. At start the primary host renames any incomplete
    `checkpoint_N` (e.g. left by a killed job on GCS) to `checkpoint_N.incomplete-<time>`, so
    Orbax neither counts it toward `max_to_keep` nor collides with it when step N is saved
    again; nothing is deleted. Likewise a complete checkpoint newer than the newest one that
    verifies against its checksums goes to `checkpoint_N.damaged-<time>` (with a warning
    naming the files), so the run resumes from the newest intact step and can save step N
    again; if no checkpoint verifies, the constructor refuses with one error.

    After each save is committed the primary host records the checksums of its files (a
    background thread notices the commit of an async save; `wait`/`close` make sure).
    """

    def __init__(self, model_dir: PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True, save_interval_steps: int = 1,
                 best_metric: str | None = None) -> None:
        self.model_dir = as_path(model_dir)
        self._started: list[int] = []
        self._broken = False
        self._noise = _DiskNoise()
        _quiet_abandoned_writes()
        if jax.process_index() == 0:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            remove_orbax_scratch(self.model_dir)
            for _, d in step_dirs(self.model_dir):
                if not is_complete(d):
                    aside = d.parent / f"{d.name}.incomplete-{int(time.time())}"
                    log.warning("moving incomplete checkpoint %s aside to %s", d, aside)
                    d.rename(aside)
        refusal = self._set_aside_damaged() if jax.process_index() == 0 else ""
        _refuse_on_all_hosts(refusal)
        self._recorders: dict[int, threading.Thread] = {}
        self._stop_recorders = threading.Event()
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
        logging.getLogger("absl").addFilter(self._noise)  # removed by `close`
        self._manager = ocp.CheckpointManager(self.model_dir, options=options)

    def save(self, step: int, params: Any, opt_state: Any = None,
             meta: Mapping[str, Any] | None = None, force: bool = False,
             metrics: Mapping[str, float] | None = None, ema_params: Any = None) -> bool:
        """Save (asynchronously if enabled) unless `save_interval_steps` says skip or the step
        is already saved; returns whether a save was started. `meta` gets `step` and `version`
        filled in; a jax PRNG key under `rng` is stored as its list of ints. `metrics` (e.g.
        validation NDCG@10) rank the step for the `best_metric` preservation rule.
        `ema_params` (the moving average of the weights) is saved as its own item, and the
        meta then names it as the parameters inference uses (`INFERENCE_PARAMS_KEY`)."""
        items: dict[str, Any] = {PARAMS: ocp.args.StandardSave(params)}
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardSave(opt_state)
        meta = dict(meta or {})
        if ema_params is not None:
            items[EMA_PARAMS] = ocp.args.StandardSave(ema_params)
            meta[INFERENCE_PARAMS_KEY] = EMA_PARAMS
        items[META] = ocp.args.JsonSave(_json_meta(meta, step))
        if self._broken:
            raise DiskError(f"MODEL_DIR {self.model_dir}: an earlier save failed; not saving "
                            f"checkpoint {step}")
        try:
            with self._disk_errors(int(step)):
                started = bool(self._manager.save(
                    int(step), args=ocp.args.Composite(**items), force=force,
                    metrics=dict(metrics) if metrics is not None else None))
        except ocp.checkpoint_manager.StepAlreadyExistsError:
            # As T5X: a step is written once (e.g. the final save right after a periodic one).
            log.info("checkpoint for step %d already exists; not saving it again", step)
            return False
        if started:
            self._started.append(int(step))
            self._record_when_committed(int(step))
        return started

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None = None) -> Any:
        """A save the disk refused (full, quota, file too large, read-only; raised here by a
        synchronous save or by the wait for an async one): stop Orbax, remove the unfinished
        save so nothing is left filling the disk, and raise one DiskError naming the last
        committed checkpoint, which is untouched (Orbax commits by rename). Any other
        failure propagates as it is."""
        try:
            yield
        except Exception as e:
            code = disk_errno(e)
            if code is None:
                raise
            self._broken = True
            with contextlib.suppress(Exception):
                self._manager.close()  # let its threads finish before the scratch goes
            self._stop_recorders.set()
            if jax.process_index() == 0:
                remove_orbax_scratch(self.model_dir, note=False)
            committed = latest_complete_step(self.model_dir)
            failed = [s for s in [*self._started, *([step] if step is not None else [])]
                      if committed is None or s > committed]
            what = f"checkpoint {min(failed)}" if failed else "a checkpoint"
            kept = (f"checkpoint {committed}, the last committed, is intact"
                    if committed is not None else "no checkpoint had been committed yet")
            name = errno.errorcode.get(code, str(code))
            raise DiskError(f"MODEL_DIR {self.model_dir}: cannot save {what}: "
                            f"{os.strerror(code)} [{name}]; its unfinished files were "
                            f"removed and {kept}: free space on that disk (or raise the "
                            "quota / the file size limit) and rerun the same command to "
                            "resume") from None

    def _set_aside_damaged(self) -> str:
        """Primary host, at start: move complete checkpoints newer than the newest intact one
        aside; returns the refusal message when none is intact ("" otherwise)."""
        done = [d for _, d in step_dirs(self.model_dir) if is_complete(d)]
        if not done:
            return ""
        try:
            keep = newest_verified(self.model_dir, done, None)
        except DamagedCheckpointError as e:
            return str(e)
        for d in done[done.index(keep) + 1:]:
            aside = d.parent / f"{d.name}.damaged-{int(time.time())}"
            log.warning("moving damaged checkpoint %s aside to %s (kept for inspection); "
                        "resuming from %s", d, aside, keep.name)
            d.rename(aside)
        return ""

    def _record_when_committed(self, step: int) -> None:
        """Record the step's checksums as soon as Orbax has committed it."""
        if jax.process_index() != 0:
            return
        d = step_dir(self.model_dir, step)
        if is_complete(d):  # a synchronous save
            record_checksums(d)
            return

        def poll() -> None:
            while True:
                try:
                    if is_complete(d):
                        record_checksums(d)
                        return
                except OSError as e:  # e.g. removed by keep-N meanwhile: `wait` retries
                    log.debug("recording checksums of %s: %s", d, e)
                    return
                if self._stop_recorders.wait(0.2):
                    return

        thread = threading.Thread(target=poll, name=f"flanrec-checksums-{step}", daemon=True)
        self._recorders[step] = thread
        thread.start()

    def _finish_recording(self) -> None:
        """After Orbax finished: stop the pollers and record every committed step they
        missed (a thread may have stopped before the commit became visible)."""
        self._stop_recorders.set()
        for step, thread in list(self._recorders.items()):
            thread.join()
            d = step_dir(self.model_dir, step)
            if d.exists():
                record_checksums(d)
        self._recorders.clear()
        self._stop_recorders.clear()

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
        refusal = ""
        if jax.process_index() == 0:  # the others read what process 0 verified
            items = (PARAMS, META) + ((OPT_STATE,) if abstract_opt_state is not None else ())
            try:
                verify_checkpoint(d, items)
            except DamagedCheckpointError as e:
                refusal = str(e)
        _refuse_on_all_hosts(refusal)
        return _restore_items(d, abstract_params, abstract_opt_state, restore_opt=True)

    def restore_ema(self, step: int, abstract_ema_params: Any) -> Any:
        """The `ema_params` item of `step`, in the shardings of `abstract_ema_params`, or
        None when that checkpoint has none (saved by a run without EMA_DECAY)."""
        d = step_dir(self.model_dir, step)
        if not (d / EMA_PARAMS).is_dir():
            return None
        refusal = ""
        if jax.process_index() == 0:
            try:
                verify_checkpoint(d, (EMA_PARAMS,))
            except DamagedCheckpointError as e:
                refusal = str(e)
        _refuse_on_all_hosts(refusal)
        _check_shapes(_item_tree_metadata(d / EMA_PARAMS), abstract_ema_params,
                      f"{d}/{EMA_PARAMS}")
        return _restore_item(d / EMA_PARAMS, ocp.StandardCheckpointHandler(),
                             ocp.args.StandardRestore(abstract_ema_params))

    def wait(self) -> None:
        """Block until an async save is committed (call before reading it or exiting).
        After a failed save (already reported) there is nothing left to wait for."""
        if self._broken:
            return
        with self._disk_errors():
            self._manager.wait_until_finished()
            self._finish_recording()

    def close(self) -> None:
        try:
            if not self._broken:
                with self._disk_errors():
                    self._manager.close()
                    self._finish_recording()
        finally:
            logging.getLogger("absl").removeFilter(self._noise)

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


def inference_item(ckpt: epath.Path, meta: Mapping[str, Any]) -> str:
    """The item holding the parameters to infer with: `ema_params` for a run trained with
    EMA_DECAY (its meta says so), else `params`; the item is checked to be there and intact
    (`params` was verified when the checkpoint was resolved)."""
    item = str(meta.get(INFERENCE_PARAMS_KEY) or PARAMS)
    if item not in (PARAMS, EMA_PARAMS):
        raise ValueError(f"{ckpt}/{META}: {INFERENCE_PARAMS_KEY} is {item!r}, expected "
                         f"{PARAMS!r} or {EMA_PARAMS!r}")
    if item != PARAMS:
        if not (ckpt / item).is_dir():
            raise ValueError(f"{ckpt}: its meta names {item!r} as the parameters to infer "
                             "with, but the checkpoint has no such item")
        verify_checkpoint(ckpt, (item,))
    return item


def _restore_items(ckpt: epath.Path, abstract_params: Any, abstract_opt_state: Any,
                   restore_opt: bool, item: str | None = PARAMS
                   ) -> tuple[Any, Any, dict[str, Any]]:
    """(params, optimizer state, meta); `item`: which parameters (None: those inference
    uses, see `inference_item`)."""
    meta = _restore_item(ckpt / META, ocp.JsonCheckpointHandler(), ocp.args.JsonRestore())
    item = inference_item(ckpt, meta) if item is None else item
    stored_params = _item_tree_metadata(ckpt / item)
    if abstract_params is None:
        params = _restore_item(ckpt / item, ocp.PyTreeCheckpointHandler(), ocp.args.PyTreeRestore(
            item=stored_params, restore_args=_numpy_restore_args(stored_params)))
    else:
        _check_shapes(stored_params, abstract_params, f"{ckpt}/{item}")
        params = _restore_item(ckpt / item, ocp.StandardCheckpointHandler(),
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
    out = as_path(out_dir)
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
    record_checksums(out)
    return out


def _config_from_meta(meta: Mapping[str, Any], where: epath.Path) -> T5Config:
    if "model_config" not in meta:
        raise ValueError(f"{where}/{META}: no 'model_config' in the checkpoint metadata")
    try:
        return T5Config.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}/{META}: bad model_config: {e}") from e


def load_params(path: PathLike, item: str | None = None) -> tuple[T5Config, dict[str, Any]]:
    """`(config, float32 numpy params)` from a MODEL_DIR (latest complete step), a
    checkpoint_N dir or a params-only dir. Optimizer state is not read.

    The parameters are those the checkpoint names for inference: the moving average of a run
    trained with EMA_DECAY, else the trained weights; `item='params'` reads the trained
    weights of an EMA run."""
    ckpt = resolve_checkpoint(path)
    params, _, meta = _restore_items(ckpt, None, None, restore_opt=False, item=item)
    cfg = _config_from_meta(meta, ckpt)
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
    check_params(flat, cfg, str(ckpt))
    return cfg, unflatten(flat)


def restore_params(path: PathLike, abstract_params: Any) -> tuple[T5Config, Any]:
    """Like `load_params`, but arrays go straight into the shardings of `abstract_params`
    (for INITIAL_CHECKPOINT_PATH on a pod: no host holds the whole model)."""
    ckpt = resolve_checkpoint(path)
    params, _, meta = _restore_items(ckpt, abstract_params, None, restore_opt=False, item=None)
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


__all__ = ["TrainCheckpointer", "inference_item", "load_optimizer_state", "load_params",
           "restore_params", "save_params_checkpoint"]
