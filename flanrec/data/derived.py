"""Run settings derived from the prepared data: what an experiment leaves to the data.

A shipped experiment names the values that depend on the log, not one log's numbers:

    MIXTURE_OR_TASK_NAME = '{prefix}_seqrec_{indexing}'   # the data's own task prefix
    TASK_FEATURE_LENGTHS = 'auto'     # from the token lengths prepare measured
    VOCAB_SIZE = 'auto'               # the vocabulary's ids, padded to a multiple of 128
    TRAIN_STEPS = 'auto'              # TRAIN_EPOCHS over the train task, in batches
    EVAL_PERIOD = 'auto'              # NUM_EVALS validations per run
    CHECKPOINT_PERIOD = 'auto'        # = EVAL_PERIOD

`derive` turns those into values from prepare.json's ``stats`` and ``counts``
(`flanrec.data.data_stats`); the train and infer jobs call it after parsing gin and before
the config is locked (`flanrec.frontend.gin_cli.configure_gin`), and the quickstart calls it
with the same inputs, so every stage uses the same numbers. Anything a user binds to a
concrete value (a T5X user's `--gin.TASK_FEATURE_LENGTHS={...}`) is left alone: only the
string 'auto' and `{prefix}`/`{indexing}` templates are resolved. Each derived value comes
with a one-line reason, which the jobs print.

Pure Python (no TF, no seqio): the light jobs and the quickstart call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.errors import ConfigError

AUTO = "auto"
TEMPLATE_MACROS = ("MIXTURE_OR_TASK_NAME", "RANK_EVAL_TASK")
AUTO_MACROS = ("TASK_FEATURE_LENGTHS", "VOCAB_SIZE", "TRAIN_STEPS", "EVAL_PERIOD",
               "CHECKPOINT_PERIOD")
# Read by `derive` only (no gin binding references them): gin_cli.DRIVER_MACROS lists them
# so `--gin.TRAIN_EPOCHS=5` is not refused as a misspelling.
INPUT_MACROS = ("TRAIN_EPOCHS", "NUM_EVALS")
DEFAULT_NUM_EVALS = 8
VOCAB_MULTIPLE = 128  # embedding rows: a multiple of 128 keeps the matmuls tile-aligned
LENGTH_MULTIPLE = 8
MACROS = (*TEMPLATE_MACROS, *AUTO_MACROS, *INPUT_MACROS, "BATCH_SIZE")


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-int(n) // multiple) * multiple)


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{prefix}" in value or "{indexing}" in value)


def needs_data(values: Mapping[str, Any]) -> list[str]:
    """The macros among `values` that only the prepared data can fill in."""
    return [m for m in (*TEMPLATE_MACROS, *AUTO_MACROS) if m in values and
            (is_template(values[m]) if m in TEMPLATE_MACROS else is_auto(values[m]))]


def fill_template(template: str, doc: Mapping[str, Any]) -> str:
    prefix = doc.get("task_prefix") or ""
    suffixes = doc.get("index_suffixes") or [""]
    return template.replace("{prefix}", str(prefix)).replace("{indexing}", str(suffixes[0]))


def task_dirs(name: str, doc: Mapping[str, Any]) -> list[str]:
    """The task dirs (prepare.json's task names without the prefix) that task or mixture
    `name` reads: the one task itself, or for a mixture of this dir (`{prefix}_rec_mix`,
    any other `{prefix}_...` name that is no task) every task of the dir."""
    prefix = f"{doc.get('task_prefix')}_"
    tasks = (doc.get("counts") or {}).get("tasks") or {}
    if not name.startswith(prefix):
        return []
    rest = name[len(prefix):]
    return [rest] if rest in tasks else list(tasks)


def _lengths(dirs: Sequence[str], doc: Mapping[str, Any], name: str, source: str
             ) -> tuple[dict[str, int], str]:
    stats = ((doc.get("stats") or {}).get("tasks") or {})
    if not stats:
        why = (doc.get("stats") or {}).get("tokens_skipped_because") or (
            "it was prepared by an older flanrec: prepare it again")
        raise ConfigError(f"TASK_FEATURE_LENGTHS = 'auto': {source} records no token "
                          f"lengths ({why}); set TASK_FEATURE_LENGTHS, e.g. "
                          "{'inputs': 512, 'targets': 16}")
    longest: dict[str, int] = {"inputs": 0, "targets": 0}
    p99: dict[str, int] = {"inputs": 0, "targets": 0}
    for d in dirs:
        for split in (stats.get(d) or {}).values():
            for feature in longest:
                longest[feature] = max(longest[feature], split[feature]["max"])
                p99[feature] = max(p99[feature], split[feature]["p99"])
    if not longest["targets"]:
        raise ConfigError(f"TASK_FEATURE_LENGTHS = 'auto': {source} has no token lengths for "
                          f"{name}; set TASK_FEATURE_LENGTHS")
    out = {f: round_up(n, LENGTH_MULTIPLE) for f, n in longest.items()}
    why = (f"longest of {name} (all splits, EOS included): inputs {longest['inputs']} "
           f"(p99 {p99['inputs']}), targets {longest['targets']} (p99 {p99['targets']}); "
           f"rounded up to a multiple of {LENGTH_MULTIPLE}")
    return out, why


def derive(values: Mapping[str, Any], doc: Mapping[str, Any], source: str
           ) -> dict[str, tuple[Any, str]]:
    """macro -> (value, why) for each macro of `values` the data fills in.

    `values` holds the run's current macro values (any of `MACROS`; absent ones are not
    derived); `doc` is prepare.json of the data dir `source` names. Raises ConfigError,
    naming the macro, when a value cannot be derived (and what to set instead).
    """
    out: dict[str, tuple[Any, str]] = {}
    current = dict(values)
    for macro in TEMPLATE_MACROS:
        v = current.get(macro)
        if is_template(v):
            current[macro] = fill_template(v, doc)
            out[macro] = (current[macro], f"{v!r} with the task prefix of {source}")
    name = current.get("MIXTURE_OR_TASK_NAME")
    if isinstance(name, str) and name and (is_auto(current.get("TASK_FEATURE_LENGTHS"))
                                           or is_auto(current.get("TRAIN_STEPS"))):
        dirs = task_dirs(name, doc)
        if not dirs:
            raise ConfigError(f"MIXTURE_OR_TASK_NAME {name!r} is not a task of {source} (its "
                              f"tasks start with {doc.get('task_prefix')!r}): 'auto' settings "
                              "are derived from the data of the task trained on; name a task "
                              "of that dir or set the 'auto' macros")
    else:
        dirs = []
    if is_auto(current.get("TASK_FEATURE_LENGTHS")):
        lengths, why = _lengths(dirs, doc, str(name), source)
        current["TASK_FEATURE_LENGTHS"] = lengths
        out["TASK_FEATURE_LENGTHS"] = (lengths, why)
    if is_auto(current.get("VOCAB_SIZE")):
        vocab = (doc.get("stats") or {}).get("vocab") or {}
        if not vocab.get("size"):
            raise ConfigError(f"VOCAB_SIZE = 'auto': {source} records no vocabulary size "
                              "(prepare it again, with --train_vocab or a vocabulary "
                              "available); set VOCAB_SIZE")
        size = round_up(vocab["size"], VOCAB_MULTIPLE)
        current["VOCAB_SIZE"] = size
        out["VOCAB_SIZE"] = (size, f"the vocabulary of {source}: {vocab['size']} ids, padded "
                                   f"to a multiple of {VOCAB_MULTIPLE}")
    if is_auto(current.get("TRAIN_STEPS")):
        epochs, batch = current.get("TRAIN_EPOCHS"), current.get("BATCH_SIZE")
        if not isinstance(epochs, int | float) or isinstance(epochs, bool) or epochs <= 0:
            raise ConfigError(f"TRAIN_STEPS = 'auto' needs TRAIN_EPOCHS, a positive number of "
                              f"passes over the train split, got {epochs!r}; or set "
                              "TRAIN_STEPS")
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"TRAIN_STEPS = 'auto' needs BATCH_SIZE, a positive integer, "
                              f"got {batch!r}")
        tasks = (doc.get("counts") or {}).get("tasks") or {}
        examples = sum(int((tasks.get(d) or {}).get("train", 0)) for d in dirs)
        if not examples:
            raise ConfigError(f"TRAIN_STEPS = 'auto': {name} has no train examples in "
                              f"{source}; set TRAIN_STEPS")
        steps = max(1, math.ceil(epochs * examples / batch))
        current["TRAIN_STEPS"] = steps
        out["TRAIN_STEPS"] = (steps, f"TRAIN_EPOCHS={epochs:g} over the {examples:,} train "
                                     f"examples of {name} at BATCH_SIZE={batch} "
                                     f"({math.ceil(examples / batch):,} steps per epoch)")
    steps = current.get("TRAIN_STEPS")
    if is_auto(current.get("EVAL_PERIOD")):
        evals = current.get("NUM_EVALS", DEFAULT_NUM_EVALS)
        if not isinstance(evals, int) or isinstance(evals, bool) or evals < 1:
            raise ConfigError(f"NUM_EVALS must be a positive integer (validations per run), "
                              f"got {evals!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"EVAL_PERIOD = 'auto' needs TRAIN_STEPS, got {steps!r}; set "
                              "EVAL_PERIOD")
        period = max(1, math.ceil(steps / evals))
        current["EVAL_PERIOD"] = period
        out["EVAL_PERIOD"] = (period, f"{evals} validations over the {steps:,} steps "
                                      "(NUM_EVALS)")
    if is_auto(current.get("CHECKPOINT_PERIOD")):
        period = current.get("EVAL_PERIOD")
        if not isinstance(period, int) or isinstance(period, bool):
            raise ConfigError(f"CHECKPOINT_PERIOD = 'auto' follows EVAL_PERIOD, got "
                              f"{period!r}; set CHECKPOINT_PERIOD")
        current["CHECKPOINT_PERIOD"] = period
        out["CHECKPOINT_PERIOD"] = (period, "= EVAL_PERIOD (every validated step is a "
                                            "candidate for the best checkpoint)")
    return out


def data_dir_for(dirs: Sequence[str], values: Mapping[str, Any],
                 read: Any) -> tuple[str, dict[str, Any]]:
    """(dir, its prepare.json) among the configured prepared `dirs` the run's settings are
    derived from: the one whose prefix starts MIXTURE_OR_TASK_NAME, else the only one.
    `read(dir)` returns a prepare.json dict (or raises)."""
    docs = []
    for d in dirs:
        try:
            docs.append((d, read(d)))
        except Exception as e:  # noqa: BLE001 - said below, naming each dir
            docs.append((d, e))
    ok = [(d, doc) for d, doc in docs if isinstance(doc, dict)]
    name = values.get("MIXTURE_OR_TASK_NAME")
    if isinstance(name, str) and not is_template(name):
        match = [(d, doc) for d, doc in ok if name.startswith(f"{doc.get('task_prefix')}_")]
        if match:
            return match[0]
    if len(ok) == 1:
        return ok[0]
    wanted = ", ".join(needs_data(values))
    if not ok:
        why = "; ".join(f"{d}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        for d, e in docs) or "none is configured"
        raise ConfigError(f"{wanted} are derived from the prepared data dir, but none could "
                          f"be read ({why}); set FLANREC_DATA_DIR (or DATA_DIR) to the dir "
                          "`flanrec.prepare` wrote, or set those macros")
    raise ConfigError(f"{wanted} are derived from one prepared data dir, but "
                      f"{len(ok)} are configured ({', '.join(d for d, _ in ok)}); name the "
                      "task (MIXTURE_OR_TASK_NAME) or set those macros")


def format_line(macro: str, value: Any, why: str) -> str:
    """The one line a job prints for a derived value."""
    return f"derived {macro} = {value!r}  ({why})"


__all__ = ["AUTO", "AUTO_MACROS", "INPUT_MACROS", "MACROS", "TEMPLATE_MACROS",
           "data_dir_for", "derive", "fill_template", "format_line", "is_auto",
           "is_template", "needs_data", "round_up", "task_dirs"]
