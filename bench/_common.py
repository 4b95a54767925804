"""Shared plumbing of the bench/ scripts: machine description, A/B timing, peak memory,
the printed table and the results file.

Why a shared module: every script must report the same way (ratios from *alternating* runs,
because the development machines are shared and noisy; one results file a reader can diff
across commits), and a smoke test (tests/test_bench_scripts.py) runs each script with
`--smoke` so none of this can rot unnoticed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The curated, tracked record (a line is copied in by hand when a result is kept).
RESULTS = REPO / "bench" / "results.jsonl"
# Where runs append by default: untracked (/runs/ is gitignored), so a benchmark run never
# dirties the checkout. $FLANREC_BENCH_RESULTS names another file.
RUN_RESULTS = REPO / "runs" / "bench" / "results.jsonl"


def results_path(path: Path | str | None = None) -> Path:
    """The file a run appends to: `path`, else $FLANREC_BENCH_RESULTS, else `RUN_RESULTS`."""
    return Path(path or os.environ.get("FLANREC_BENCH_RESULTS") or RUN_RESULTS)


# ----------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, load), for the results file."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
           "host": platform.node()}
    try:
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return out


# ---------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so a later `peak_rss_bytes` covers only what
    runs from now on (Linux >= 4.0: writing 5 to /proc/self/clear_refs). Returns success.

    Freed heap is first handed back to the OS (glibc `malloc_trim`): otherwise memory the
    compiler or the weight import used once and freed stays resident and would be charged
    to the training step.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last `reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: lifetime peak from getrusage (kB on Linux, bytes on macOS)
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb if sys.platform == "darwin" else kb * 1024
    return kb * 1024


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return (kb or 0) * 1024


# ---------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (which must block until its work is done)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def alternate(runners: dict[str, Callable[[int], list[float]]], rounds: int,
              repeats: int) -> dict[str, list[float]]:
    """Run each side `repeats` times per round, alternating sides (A B A B ..., starting side
    flipped every round), so background load on a shared machine hits both sides alike."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            times[n].extend(runners[n](repeats))
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """'min–max' of a list of seconds, in ms, to show how noisy a median is."""
    return f"{min(xs) * 1e3:.0f}-{max(xs) * 1e3:.0f}"


# ---------------------------------------------------------------------------- output
def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a GitHub-markdown table, so output pastes into docs unchanged."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def append_result(record: dict[str, Any], path: Path | None = None) -> Path:
    """Append one JSON line to the results file (`results_path`), atomically
    (`flanrec.files.storage.write_atomic`), so an interrupted run never leaves a half-written line
    behind."""
    path = results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine(), **record}
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    from flanrec.files import storage

    storage.write_atomic(path, old + json.dumps(record, sort_keys=True) + "\n")
    return path


def last_result(bench: str, path: Path | None = None, **match: Any) -> dict[str, Any] | None:
    """The newest record of `bench` whose top-level fields equal `match` (or None): from the
    results file a run appends to (`results_path`); by default, when that has none, from the
    tracked `RESULTS`."""
    explicit = path or os.environ.get("FLANREC_BENCH_RESULTS")
    for candidate in [results_path(path)] if explicit else [RUN_RESULTS, RESULTS]:
        if not candidate.exists():
            continue
        found = None
        for line in candidate.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("bench") == bench and all(rec.get(k) == v for k, v in match.items()):
                found = rec
        if found is not None:
            return found
    return None


def quiet_logs() -> None:
    """Silence TF/absl chatter so the printed table is the output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    for name in ("absl", "jax", "tensorflow", "seqio", "orbax"):
        logging.getLogger(name).setLevel(logging.ERROR)


def experiment_settings(gin_file: str) -> dict[str, Any]:
    """What a gin experiment trains: model config, task, module, lengths, batch, packing.

    Parsed with gin itself (includes resolved, bindings the bench does not know skipped),
    so a bench run is exactly the experiment's shapes; values the experiment leaves to the
    data ('auto', `{prefix}` task names) are derived from $FLANREC_DATA_DIR's prepared dir
    as the train job derives them (`flanrec.frontend.gin_cli.resolve_derived`).
    """
    import gin

    from flanrec import configurables  # noqa: F401  (registers the gin configurables)
    from flanrec.frontend.gin_cli import resolve_derived
    from flanrec.model.config import T5Config

    gin.clear_config()
    for p in (os.getcwd(), str(REPO)):
        gin.add_config_file_search_path(p)
    gin.parse_config_files_and_bindings([gin_file], [], skip_unknown=True,
                                        finalize_config=False)
    try:
        resolve_derived(log=lambda line: print(f"  {line}", file=sys.stderr))
        cfg = gin.get_configurable(T5Config)()
        out = {"model": cfg, "task": gin.query_parameter("%MIXTURE_OR_TASK_NAME"),
               "module": gin.query_parameter("%MIXTURE_OR_TASK_MODULE") or "tasks",
               "lengths": dict(gin.query_parameter("%TASK_FEATURE_LENGTHS")),
               "batch": int(gin.query_parameter("%BATCH_SIZE")),
               "pack": bool(gin.query_parameter("%PACK"))}
    finally:
        gin.clear_config()
    return out
