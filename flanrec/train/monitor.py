"""What the training loop watches: the metrics between two log lines (with the NaN check),
SIGTERM, and the record of the best checkpoint by ranked validation.

Split from `flanrec.train` so that `train()` keeps only the order of a run; each piece here
keeps a small state across steps and says why it stops or saves.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import jax
from etils import epath

log = logging.getLogger("flanrec.train")  # the job's own log lines, under the job's name


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; nothing from that step on is checkpointed."""


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.1f}s" if seconds < 60 else str(datetime.timedelta(seconds=int(seconds)))


class Preemption:
    """SIGTERM → stop at the next step boundary, after saving a checkpoint.

    Single process: our own handler sets a flag. Multi-process: jax's preemption sync
    manager (installed by `jax.distributed.initialize`) catches the signal on any host and
    makes every host agree on the same step; we leave its handler alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self.multi = jax.process_count() > 1
        self._previous = None if self.multi else signal.signal(signal.SIGTERM, self._handle)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        del frame
        log.warning("received signal %d: will save a checkpoint and stop at the next step",
                    signum)
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError as e:  # preemption service disabled in this jax config
                log.warning("no preemption sync across hosts: %s", e)
                self.multi = False
        return self.requested


class Window:
    """Averages of the step metrics between two log lines, with the NaN check."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last: dict[str, float] = {}

    def add(self, step: int, metrics: Mapping[str, Any]) -> float:
        values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["param_norm"])):
            raise NonFiniteLossError(
                f"non-finite training at step {step}: loss {values['loss']}, grad norm "
                f"{values['grad_norm']}, parameter norm after the update "
                f"{values['param_norm']}; stopping without checkpointing this or any later "
                "step. Lower LEARNING_RATE, enable clipping or check this step's data.")
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.last = values
        return values["target_tokens"]

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        out["learning_rate"] = self.last.get("learning_rate", float("nan"))
        self.sums, self.count = {}, 0
        return out


# -------------------------------------------------------------- the best checkpoint
BEST_METRIC = "ndcg@10"
BEST_FILE = "best_checkpoint.json"  # flanrec.checkpoints.BEST_FILE


def read_best(out: epath.Path, start_step: int) -> dict[str, Any]:
    """The best-checkpoint record of a resumed run (empty for a new one).

    Evaluations after `start_step` (the checkpoint resumed from) belong to a part of the run
    that is about to be redone: they are dropped, and the best is recomputed without them.
    """
    f = out / BEST_FILE
    if not f.exists():
        return {}
    try:
        doc = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f}: not valid JSON ({e}); move it aside to start the record "
                         "afresh") from None
    history = [h for h in doc.get("history", []) if h["step"] <= start_step]
    out_doc = {k: v for k, v in doc.items() if k not in ("history", "step", "value")}
    out_doc["history"] = history
    if history:
        top = max(history, key=lambda h: (h[BEST_METRIC], -h["step"]))
        out_doc.update(step=top["step"], value=top[BEST_METRIC])
    return out_doc


def rank_better(value: float, best: float | None) -> bool:
    """Strictly higher is better (a tie keeps the earlier checkpoint)."""
    return best is None or value > best


def format_metrics(metrics: Mapping[str, float], keys: Sequence[str]) -> str:
    """`keys` of `metrics` for one log line (`hr@10 0.1234 | ndcg@10 0.0567`); absent keys
    are left out, so a log line never fails on a metric a task does not have."""
    return " | ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Timers:
    """Wall seconds of a run by part (training steps, waiting for input, validation, rank
    validation, checkpoints), logged once at the end: where a run's time went beyond the
    steps, without a profiler."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> str:
        """`steps 81.2s | input 0.4s | ...` in the order the parts were first timed."""
        return " | ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
