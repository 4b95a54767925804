"""Which flanrec checkpoint directories may be read: complete, intact, and which one a path
names.

"Complete": a step counts only when its directory carries Orbax's commit marker, so a job
killed mid-save (or a directory copied half-way) is never resumed from. "Intact": once a step
is committed the primary host records the sha256 of each of its files (`checksums.json`,
`flanrec.files.checksums`), and every reader verifies the files it reads. Reading a MODEL_DIR falls
back to the newest checkpoint that verifies, warning about each damaged one; a checkpoint
named explicitly must verify itself. Checkpoints from before checksums load with a warning.

Read-only (but for `record_checksums`, which the writer calls after a commit), so safe for
any number of readers; the writer and the readers of the arrays are `flanrec.checkpoints.store`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any

import jax
from etils import epath

from flanrec.errors import UserError
from flanrec.files import checksums as checksums_lib
from flanrec.files import storage

log = logging.getLogger(__name__)

STEP_PREFIX = "checkpoint"
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"
# A run that keeps an exponential moving average of its weights (EMA_DECAY > 0) saves it as
# this item beside `params`, and its meta names it under INFERENCE_PARAMS_KEY: the item that
# inference, export and validation read (`params` when the key is absent).
EMA_PARAMS = "ema_params"
INFERENCE_PARAMS_KEY = "inference_params"
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
_COMMIT_FILE = "commit_success.txt"  # written by Orbax when it finalises a checkpoint
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax step metadata (commit timestamp)

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    """An epath for `path`, made absolute when local: Orbax's OCDBT writer refuses relative
    directories, and users type `--gin.MODEL_DIR=runs/x`. gs:// URLs pass as they are; other
    schemes are refused by name (`flanrec.files.storage.orbax_path`)."""

    return storage.orbax_path(path)


# ----------------------------------------------------------------------------------------------
# Completeness and path resolution (read-only: safe for any number of readers)


def step_dir(model_dir: PathLike, step: int) -> epath.Path:
    """`MODEL_DIR/checkpoint_{step}`."""
    return as_path(model_dir) / f"{STEP_PREFIX}_{int(step)}"


def is_complete(ckpt_dir: PathLike) -> bool:
    """True when Orbax finished this checkpoint: its commit marker (or commit time) is there.

    A directory without it is a save that was interrupted, still in flight (GCS writes in
    place), or a partial copy; it must never be resumed from.
    """
    p = as_path(ckpt_dir)
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


def step_dirs(model_dir: PathLike) -> list[tuple[int, epath.Path]]:
    p = as_path(model_dir)
    if not p.is_dir():
        return []
    return sorted((int(m.group(1)), c) for c in p.iterdir()
                  if (m := _STEP_DIR.match(c.name)) and c.is_dir())


def complete_steps(model_dir: PathLike) -> list[int]:
    """Steps of MODEL_DIR whose checkpoint is complete, ascending."""
    return [s for s, d in step_dirs(model_dir) if is_complete(d)]


def latest_complete_step(model_dir: PathLike) -> int | None:
    """Highest complete step in MODEL_DIR, or None."""
    steps = complete_steps(model_dir)
    return steps[-1] if steps else None


BEST_FILE = "best_checkpoint.json"
"""MODEL_DIR/best_checkpoint.json: the step training's rank validation chose (see train.py)."""


def best_step(model_dir: PathLike) -> int | None:
    """The step `best_checkpoint.json` names, if that checkpoint is complete, else None."""
    f = as_path(model_dir) / BEST_FILE
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
    p = as_path(path)
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
        verify_checkpoint(p, (PARAMS, META))
        return p
    steps = step_dirs(p)
    if steps:
        best = best_step(p) if prefer_best else None
        if best is not None:
            d = step_dir(p, best)
            problems = check_integrity(d, (PARAMS, META))
            if not problems:
                if problems is None:
                    _warn_unverified(d)
                # A job resolves its MODEL_DIR several times (vocabulary, config, params):
                # say which checkpoint it uses once.
                if f"best:{d}" not in _warned:
                    _warned.add(f"best:{d}")
                    log.info("%s: using checkpoint %d, the best by validation (%s)", p, best,
                             BEST_FILE)
                return d
            _warn_once(f"damaged:{d}:best", "%s: the best checkpoint %s (%s) is damaged (%s); "
                       "using the newest checkpoint that verifies instead", p, d.name, BEST_FILE,
                       _describe(problems))
        done = [(s, d) for s, d in steps if is_complete(d)]
        if not done:
            raise ValueError(f"{p}: MODEL_DIR has no complete checkpoint (found only incomplete "
                             f"{[d.name for _, d in steps]})")
        if steps[-1][0] != done[-1][0]:
            _warn_once(f"incomplete:{steps[-1][1]}", "%s: skipping incomplete %s (no Orbax "
                       "commit marker: interrupted while being written)", p, steps[-1][1].name)
        return newest_verified(p, [d for _, d in done], (PARAMS, META))
    hint = ""
    if (p / "config.json").exists():
        hint = " (it looks like a Hugging Face model: use flanrec.checkpoints.load_params_any or " \
               "`python -m flanrec.convert --from hf`)"
    elif (p / "checkpoint").is_file() or (p / "state").is_dir():
        hint = " (it looks like a T5X checkpoint: use `python -m flanrec.convert --from t5x`)"
    raise ValueError(f"{p}: not a flanrec checkpoint: expected a MODEL_DIR with "
                     f"{STEP_PREFIX}_N/ subdirectories, a {STEP_PREFIX}_N dir or a params-only "
                     f"dir, each holding '{PARAMS}/' and '{META}/' items{hint}")


# ----------------------------------------------------------------------------------------------
# Integrity: checksums recorded after the commit, verified before a read


class DamagedCheckpointError(UserError, ValueError):
    """A checkpoint's files differ from the checksums recorded when it was saved (or no
    checkpoint of a MODEL_DIR verifies). The message names the checkpoint and the files."""


_warned: set[str] = set()
_verify_cache: dict[tuple[str, tuple[str, ...] | None], tuple[Any, list[str] | None]] = {}
_cache_lock = threading.Lock()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def _signature(ckpt: epath.Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """What the verification cache is keyed on: every file's size and (local) ns change
    times. None (never cached) for remote paths, whose stat has only whole seconds."""
    if "://" in os.fspath(ckpt):
        return None
    out = []
    for rel, f in checksums_lib.walk(ckpt):
        st = os.stat(os.fspath(f))
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def check_integrity(ckpt_dir: PathLike, items: tuple[str, ...] | None = (PARAMS, META)
                    ) -> list[str] | None:
    """Problems of `ckpt_dir`'s `items` against its checksums.json ([] = intact), or None when
    it has none. Cached per process while no file changes, so resolving a checkpoint and then
    restoring it hashes its files once."""
    p = as_path(ckpt_dir)
    key = (os.fspath(p), items)
    sig = _signature(p)
    with _cache_lock:
        hit = _verify_cache.get(key)
    if sig is not None and hit is not None and hit[0] == sig:
        return hit[1]
    result = checksums_lib.verify(p, items)
    with _cache_lock:
        _verify_cache[key] = (sig, result)
    return result


def _describe(problems: list[str]) -> str:
    return "; ".join(problems[:3]) + (f"; … ({len(problems) - 3} more)" if len(problems) > 3
                                      else "")


def _warn_unverified(ckpt: epath.Path) -> None:
    _warn_once(f"unverified:{ckpt}", "%s has no %s (saved before flanrec recorded checksums, "
               "or the job stopped right after the commit): it cannot be verified and is "
               "read as it is", ckpt, checksums_lib.CHECKSUMS_FILE)


def verify_checkpoint(ckpt_dir: PathLike, items: tuple[str, ...] | None = (PARAMS, META)
                      ) -> None:
    """Raise DamagedCheckpointError when a file of `items` is missing, truncated or changed;
    warn once when the checkpoint has no checksums (back-compat: it is still read)."""
    p = as_path(ckpt_dir)
    problems = check_integrity(p, items)
    if problems is None:
        _warn_unverified(p)
    elif problems:
        raise DamagedCheckpointError(
            f"checkpoint {p} is damaged: {_describe(problems)}. It was named explicitly, so no "
            "other checkpoint is tried; give its MODEL_DIR to use the newest checkpoint that "
            "verifies")


def newest_verified(model_dir: PathLike, candidates: list[epath.Path],
                    items: tuple[str, ...] | None = (PARAMS, META)) -> epath.Path:
    """The newest of `candidates` (complete step dirs, ascending) whose files verify.

    Each damaged one skipped is warned about by name; if none verifies, one
    DamagedCheckpointError lists them all. A checkpoint without checksums (older flanrec)
    counts as usable, with a warning."""
    damaged = []
    for d in reversed(candidates):
        problems = check_integrity(d, items)
        if problems:
            _warn_once(f"damaged:{d}:{items}", "%s is damaged (%s); falling back to an older "
                       "checkpoint", d, _describe(problems))
            damaged.append(f"{d.name}: {_describe(problems)}")
            continue
        if problems is None:
            _warn_unverified(d)
        if damaged:
            _warn_once(f"fallback:{d}:{items}", "%s: using %s, the newest checkpoint that "
                       "verifies", model_dir, d.name)
        return d
    raise DamagedCheckpointError(
        f"{as_path(model_dir)}: no checkpoint verifies against its recorded checksums: "
        + " | ".join(damaged) + ". Restore the files (or move the damaged checkpoints out of "
        "the directory to start over)")


def record_checksums(ckpt_dir: PathLike) -> None:
    """Write checksums.json for a committed checkpoint (primary host only; idempotent)."""
    if jax.process_index() != 0:
        return
    p = as_path(ckpt_dir)
    if is_complete(p) and not checksums_lib.has_checksums(p):
        checksums_lib.record(p)
