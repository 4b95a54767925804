"""Run settings derived from the prepared data: what an experiment leaves to the data.

A shipped experiment names the values that depend on the log, not one log's numbers:

    MIXTURE_OR_TASK_NAME = '{prefix}_seqrec_{indexing}'   # the data's own task prefix
    PACK = 'auto'                     # pack train rows when examples fill them poorly
    TASK_FEATURE_LENGTHS = 'auto'     # from the token lengths prepare measured
    EVAL_TASK_FEATURE_LENGTHS = 'auto'  # unpacked evaluation (= TASK_FEATURE_LENGTHS unpacked)
    VOCAB_SIZE = 'auto'               # the vocabulary's ids, padded to a multiple of 128
    BATCH_SIZE = 'auto'               # EXAMPLES_PER_UPDATE examples per update: that
                                      # many rows unpacked, that many examples' worth of
                                      # packed rows when packing
    TRAIN_STEPS = 'auto'              # TRAIN_EPOCHS over the train task, in batches (of
                                      # packed rows when packing)
    EVAL_PERIOD = 'auto'              # NUM_EVALS validations per run
    CHECKPOINT_PERIOD = 'auto'        # = EVAL_PERIOD

`derive` turns those into values from prepare.json's ``stats`` and ``counts``
(`flanrec.data.data_stats`); the train and infer jobs call it after parsing gin and before
the config is locked (`flanrec.frontend.gin_cli.configure_gin`), and the quickstart calls it
with the same inputs, so every stage uses the same numbers. Anything a user binds to a
concrete value (a T5X user's `--gin.TASK_FEATURE_LENGTHS={...}`) is left alone: only the
string 'auto' and `{prefix}`/`{indexing}` templates are resolved. Each derived value comes
with a one-line reason, which the jobs print.

Packing (PACK = 'auto'). An unpacked example is padded to the longest example of the task;
when the train examples fill those rows poorly (on Amazon Beauty a seqrec example fills ~4
of its 40 target slots), most of every step is padding. The rule: pack when the train
split's mean example (inputs + targets tokens, EOS included) fills less than `PACK_BELOW` of
the unpacked row (the two padded lengths together): then rows of that size could carry
more than twice the examples, tokens for tokens. Packed rows are `PACK_EXAMPLES` mean
examples long per feature (never shorter than the longest example, a multiple of 8), and
TRAIN_STEPS counts packed rows: the examples one row holds are estimated by replaying
seqio's packer
(`seqio.utils.trim_and_pack_dataset`: next-fit over groups of `max(lengths)` shuffled
examples) on the train split's recorded (input, target) length pairs. Evaluation and
inference read unpacked examples: `EVAL_TASK_FEATURE_LENGTHS` = 'auto' is the unpacked
lengths when training packs, else TASK_FEATURE_LENGTHS itself.

Batch (BATCH_SIZE = 'auto'). A packed row carries several examples, so a batch of packed
rows is a much larger update than the same number of unpacked rows: on Amazon Beauty 32
packed rows are ~210 examples, and 41 epochs are then ~4,800 updates where unpacked ML-100K
gets ~7,900 of 32 examples. On a generated log whose optimum is known (bench/oracle_log.py)
32 packed rows per update validated at 0.38 of the optimum and 4 rows (~28 examples) at
0.69, at the same epochs and about the same CPU time. So the experiment names the update it
wants, EXAMPLES_PER_UPDATE, and the batch is that many unpacked rows, or the whole number of
packed rows (at least 1) that carries at most that many examples as the packer replay
counts them.

Pure Python (no TF, no seqio): the light jobs and the quickstart call it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from flanrec.errors import ConfigError

AUTO = "auto"
TEMPLATE_MACROS = ("MIXTURE_OR_TASK_NAME", "RANK_EVAL_TASK")
# (`derive` resolves PACK first, then the lengths: its own order, not this list's.)
AUTO_MACROS = ("TASK_FEATURE_LENGTHS", "VOCAB_SIZE", "TRAIN_STEPS", "EVAL_PERIOD",
               "CHECKPOINT_PERIOD", "PACK", "EVAL_TASK_FEATURE_LENGTHS", "BATCH_SIZE")
# Read by `derive` only (no gin binding references them): gin_cli.DRIVER_MACROS lists them
# so `--gin.TRAIN_EPOCHS=5` is not refused as a misspelling.
INPUT_MACROS = ("TRAIN_EPOCHS", "NUM_EVALS", "EXAMPLES_PER_UPDATE")
DEFAULT_NUM_EVALS = 8
VOCAB_MULTIPLE = 128  # embedding rows: a multiple of 128 keeps the matmuls tile-aligned
LENGTH_MULTIPLE = 8
PACK_BELOW = 0.5  # pack when the mean example fills less than this share of an unpacked row
PACK_EXAMPLES = 8  # a packed row's length per feature: this many mean examples
PACK_SAMPLE = 20_000  # examples replayed through the packer's rule (milliseconds)
PACK_SEED = 0
# Examples per packed row relative to the token bound, for stats without length pairs
# (prepared before they were recorded): next-fit leaves the tail of each row empty.
PACK_EFFICIENCY_GUESS = 0.85
MACROS = (*TEMPLATE_MACROS, *AUTO_MACROS, *INPUT_MACROS)
_LENGTHS_OF = {"TASK_FEATURE_LENGTHS", "EVAL_TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "PACK",
               "BATCH_SIZE"}


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


def add_stats_command(source: str) -> str:
    """The command that measures a prepared dir's stats in place (`flanrec.prepare.stats`)."""
    return f"python -m flanrec.prepare --add_stats {source}"


def _require_stats(doc: Mapping[str, Any], source: str, macros: Sequence[str]) -> None:
    """A dir prepared before prepare recorded ``stats``: one line naming the dir and the
    command that adds them (seconds; the dir is not prepared again)."""
    if macros and "stats" not in doc:
        raise ConfigError(f"{', '.join(macros)} = 'auto' are derived from the data stats, but "
                          f"{source} was prepared by an older flanrec and records none: run "
                          f"`{add_stats_command(source)}` (seconds), or set those macros")


def _token_stats(doc: Mapping[str, Any], source: str, macro: str) -> dict[str, Any]:
    stats = ((doc.get("stats") or {}).get("tasks") or {})
    if not stats:
        why = (doc.get("stats") or {}).get("tokens_skipped_because") or (
            "it was prepared by an older flanrec: prepare it again, or measure them in "
            f"place: `{add_stats_command(source)}`")
        raise ConfigError(f"{macro} = 'auto': {source} records no token lengths ({why}); "
                          "set TASK_FEATURE_LENGTHS, e.g. {'inputs': 512, 'targets': 16}, "
                          "and PACK")
    return stats


def _lengths(dirs: Sequence[str], doc: Mapping[str, Any], name: str, source: str,
             macro: str = "TASK_FEATURE_LENGTHS") -> tuple[dict[str, int], str]:
    """The unpacked lengths: every example of every split fits, a multiple of 8."""
    stats = _token_stats(doc, source, macro)
    longest: dict[str, int] = {"inputs": 0, "targets": 0}
    p99: dict[str, int] = {"inputs": 0, "targets": 0}
    for d in dirs:
        for split in (stats.get(d) or {}).values():
            for feature in longest:
                longest[feature] = max(longest[feature], split[feature]["max"])
                p99[feature] = max(p99[feature], split[feature]["p99"])
    if not longest["targets"]:
        raise ConfigError(f"{macro} = 'auto': {source} has no token lengths for "
                          f"{name}; set TASK_FEATURE_LENGTHS")
    out = {f: round_up(n, LENGTH_MULTIPLE) for f, n in longest.items()}
    why = (f"longest of {name} (all splits, EOS included): inputs {longest['inputs']} "
           f"(p99 {p99['inputs']}), targets {longest['targets']} (p99 {p99['targets']}); "
           f"rounded up to a multiple of {LENGTH_MULTIPLE}")
    return out, why


class TrainProfile:
    """The train split of the task(s) trained on, as packing sees it: example count, mean
    tokens per feature (`basis` says whether they are means or, for stats recorded before
    means were, medians) and the (input, target) length pairs with their weights (None
    when not recorded)."""

    def __init__(self, dirs: Sequence[str], doc: Mapping[str, Any], name: str, source: str):
        stats = _token_stats(doc, source, "PACK")
        tasks = (doc.get("counts") or {}).get("tasks") or {}
        self.examples = 0
        sums = {"inputs": 0.0, "targets": 0.0}
        self.basis = "mean"
        pairs: list[tuple[int, int]] = []
        weights: list[float] = []
        have_pairs = True
        self.measured = 0
        for d in dirs:
            train = (stats.get(d) or {}).get("train")
            n = int((tasks.get(d) or {}).get("train", 0) or (train or {}).get("examples", 0))
            if not n:
                continue
            if not train:
                raise ConfigError(f"PACK = 'auto': {source} records no token lengths for the "
                                  f"train split of {name}; set PACK (and "
                                  "TASK_FEATURE_LENGTHS)")
            self.examples += n
            for f in sums:
                value = train[f].get("mean")
                if value is None:
                    value, self.basis = train[f]["p50"], "median"
                sums[f] += n * float(value)
            recorded = train.get("pairs")
            if not recorded:
                have_pairs = False
                continue
            measured = sum(int(c) for _, _, c in recorded) or 1
            self.measured += measured
            for i, t, c in recorded:
                pairs.append((int(i), int(t)))
                weights.append(int(c) * n / measured)
        if not self.examples:
            raise ConfigError(f"PACK = 'auto': {name} has no train examples in {source}; "
                              "set PACK")
        self.mean = {f: v / self.examples for f, v in sums.items()}
        self.pairs = (pairs, weights) if have_pairs and pairs else None


def packed_lengths(unpacked: Mapping[str, int], profile: TrainProfile) -> dict[str, int]:
    """A packed row per feature: `PACK_EXAMPLES` mean examples, at least the longest
    example (which must fit whole), a multiple of 8."""
    return {f: round_up(max(unpacked[f], math.ceil(PACK_EXAMPLES * profile.mean[f])),
                        LENGTH_MULTIPLE) for f in ("inputs", "targets")}


def pack_rows(lengths: Sequence[tuple[int, int]], row: Mapping[str, int]) -> int:
    """Rows seqio's packer (`trim_and_pack_dataset`, its TF-ops path the train input uses)
    makes of examples of these (input, target) lengths, in this order: it reads groups of
    max(row lengths) examples, appends each example to the open row while both features
    fit, else starts a new row, and closes the open row at the end of each group."""
    cap_in, cap_tg = int(row["inputs"]), int(row["targets"])
    group = max(cap_in, cap_tg)
    rows = 0
    for lo in range(0, len(lengths), group):
        used_in = used_tg = 0
        opened = False
        for i, t in lengths[lo:lo + group]:
            i, t = min(i, cap_in), min(t, cap_tg)
            if opened and (used_in + i > cap_in or used_tg + t > cap_tg):
                rows += 1
                used_in = used_tg = 0
            used_in, used_tg, opened = used_in + i, used_tg + t, True
        rows += int(opened)
    return rows


def examples_per_row(profile: TrainProfile, row: Mapping[str, int]) -> tuple[float, str]:
    """(mean examples per packed row, how it was found): replayed through `pack_rows` on a
    shuffled sample of the recorded length pairs, else estimated from the mean tokens."""
    if profile.pairs is not None:
        pairs, weights = profile.pairs
        rng = random.Random(PACK_SEED)
        n = min(PACK_SAMPLE, max(profile.examples, 1))
        sample = rng.choices(pairs, weights=weights, k=n)
        rows = pack_rows(sample, row)
        tokens = {f: sum(p[k] for p in sample) / (rows * row[f])
                  for k, f in enumerate(("inputs", "targets"))}
        return n / rows, (f"estimated by replaying seqio's packer (its own rule) on {n:,} "
                          "shuffled train examples drawn from the lengths prepare recorded "
                          f"of {profile.measured:,}: "
                          f"{n / rows:.2f} examples per row, rows "
                          f"{tokens['inputs']:.0%} / {tokens['targets']:.0%} full "
                          "(inputs / targets)")
    bound = max(profile.mean[f] / row[f] for f in ("inputs", "targets"))
    per_row = max(1.0, PACK_EFFICIENCY_GUESS / bound)
    return per_row, (f"estimated: {PACK_EFFICIENCY_GUESS:.0%} of the {1 / bound:.1f} "
                     f"{profile.basis} examples a row's tokens hold ({per_row:.2f} per row; "
                     "this dir records no length pairs: prepare it again to measure)")


def _decide_pack(unpacked: Mapping[str, int], profile: TrainProfile, name: str
                 ) -> tuple[bool, str]:
    mean_in, mean_tg = profile.mean["inputs"], profile.mean["targets"]
    fill = (mean_in + mean_tg) / (unpacked["inputs"] + unpacked["targets"])
    pack = fill < PACK_BELOW
    return pack, (f"the {profile.basis} train example of {name} ({mean_in:.1f} input + "
                  f"{mean_tg:.1f} target tokens) fills {fill:.0%} of an unpacked row "
                  f"({unpacked['inputs']} + {unpacked['targets']}); packing when below "
                  f"{PACK_BELOW:.0%}")


def _batch_size(current: Mapping[str, Any], dirs: Sequence[str], doc: Mapping[str, Any],
                name: str, source: str, packing: bool, profile: TrainProfile | None
                ) -> tuple[int, str]:
    """BATCH_SIZE = 'auto': rows carrying EXAMPLES_PER_UPDATE examples (module docstring)."""
    wanted = current.get("EXAMPLES_PER_UPDATE")
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise ConfigError(f"BATCH_SIZE = 'auto' needs EXAMPLES_PER_UPDATE, a positive integer "
                          f"(train examples per update), got {wanted!r}; or set BATCH_SIZE")
    if not packing:
        return wanted, (f"EXAMPLES_PER_UPDATE={wanted} unpacked rows (training does not "
                        "pack)")
    lengths = current.get("TASK_FEATURE_LENGTHS")
    if not _is_lengths(lengths):
        raise ConfigError("BATCH_SIZE = 'auto' with PACK = True counts the examples of packed "
                          f"rows of TASK_FEATURE_LENGTHS, got {lengths!r}; set BATCH_SIZE")
    profile = profile or TrainProfile(dirs, doc, name, source)
    per_row, how = examples_per_row(profile, lengths)
    batch = max(1, math.floor(wanted / per_row))
    return batch, (f"packed rows carrying about EXAMPLES_PER_UPDATE={wanted} examples: "
                   f"{batch} rows of ~{per_row:.2f} examples ({batch * per_row:.0f} per "
                   f"update; rows {how})")


def _is_lengths(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(value.get(f), int) and not isinstance(value.get(f), bool)
        for f in ("inputs", "targets"))


def derive(values: Mapping[str, Any], doc: Mapping[str, Any], source: str
           ) -> dict[str, tuple[Any, str]]:
    """macro -> (value, why) for each macro of `values` the data fills in.

    `values` holds the run's current macro values (any of `MACROS`; absent ones are not
    derived); `doc` is prepare.json of the data dir `source` names. Raises ConfigError,
    naming the macro, when a value cannot be derived (and what to set instead).
    """
    out: dict[str, tuple[Any, str]] = {}
    current = dict(values)
    _require_stats(doc, source, [m for m in AUTO_MACROS if is_auto(current.get(m))])
    for macro in TEMPLATE_MACROS:
        v = current.get(macro)
        if is_template(v):
            current[macro] = fill_template(v, doc)
            out[macro] = (current[macro], f"{v!r} with the task prefix of {source}")
    name = current.get("MIXTURE_OR_TASK_NAME")
    if isinstance(name, str) and name and any(is_auto(current.get(m)) for m in _LENGTHS_OF):
        dirs = task_dirs(name, doc)
        if not dirs:
            raise ConfigError(f"MIXTURE_OR_TASK_NAME {name!r} is not a task of {source} (its "
                              f"tasks start with {doc.get('task_prefix')!r}): 'auto' settings "
                              "are derived from the data of the task trained on; name a task "
                              "of that dir or set the 'auto' macros")
    else:
        dirs = []
    unpacked: tuple[dict[str, int], str] | None = None
    profile: TrainProfile | None = None
    if is_auto(current.get("PACK")):
        unpacked = _lengths(dirs, doc, str(name), source, "PACK")
        profile = TrainProfile(dirs, doc, str(name), source)
        pack, why = _decide_pack(unpacked[0], profile, str(name))
        current["PACK"] = pack
        out["PACK"] = (pack, why)
    packing = current.get("PACK") is True
    if is_auto(current.get("TASK_FEATURE_LENGTHS")):
        unpacked = unpacked or _lengths(dirs, doc, str(name), source)
        lengths, why = unpacked
        if packing:
            profile = profile or TrainProfile(dirs, doc, str(name), source)
            lengths = packed_lengths(unpacked[0], profile)
            why = (f"packed rows of {PACK_EXAMPLES} {profile.basis} train examples "
                   f"({profile.mean['inputs']:.1f} input + {profile.mean['targets']:.1f} "
                   f"target tokens each), at least the unpacked {unpacked[0]} "
                   f"({unpacked[1]})")
        current["TASK_FEATURE_LENGTHS"] = lengths
        out["TASK_FEATURE_LENGTHS"] = (lengths, why)
    if is_auto(current.get("EVAL_TASK_FEATURE_LENGTHS")):
        given = current.get("TASK_FEATURE_LENGTHS")
        if packing:
            unpacked = unpacked or _lengths(dirs, doc, str(name), source,
                                            "EVAL_TASK_FEATURE_LENGTHS")
            value, why = unpacked[0], f"unpacked, as evaluation reads examples: {unpacked[1]}"
        elif _is_lengths(given):
            value, why = dict(given), "= TASK_FEATURE_LENGTHS (training does not pack)"
        else:
            raise ConfigError("EVAL_TASK_FEATURE_LENGTHS = 'auto' follows "
                              f"TASK_FEATURE_LENGTHS, got {given!r}; set "
                              "EVAL_TASK_FEATURE_LENGTHS")
        current["EVAL_TASK_FEATURE_LENGTHS"] = value
        out["EVAL_TASK_FEATURE_LENGTHS"] = (value, why)
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
    if is_auto(current.get("BATCH_SIZE")):
        batch, why = _batch_size(current, dirs, doc, str(name), source, packing, profile)
        current["BATCH_SIZE"] = batch
        out["BATCH_SIZE"] = (batch, why)
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
        if packing:
            lengths = current.get("TASK_FEATURE_LENGTHS")
            if not _is_lengths(lengths):
                raise ConfigError("TRAIN_STEPS = 'auto' with PACK = True counts packed rows "
                                  f"of TASK_FEATURE_LENGTHS, got {lengths!r}; set "
                                  "TRAIN_STEPS")
            profile = profile or TrainProfile(dirs, doc, str(name), source)
            per_row, how = examples_per_row(profile, lengths)
            rows = math.ceil(examples / per_row)
            steps = max(1, math.ceil(epochs * rows / batch))
            why = (f"TRAIN_EPOCHS={epochs:g} over the {examples:,} train examples of {name} "
                   f"packed into ~{rows:,} rows of {lengths} at BATCH_SIZE={batch} "
                   f"({math.ceil(rows / batch):,} steps per epoch; rows {how})")
        else:
            steps = max(1, math.ceil(epochs * examples / batch))
            why = (f"TRAIN_EPOCHS={epochs:g} over the {examples:,} train examples of {name} "
                   f"at BATCH_SIZE={batch} ({math.ceil(examples / batch):,} steps per epoch)")
        current["TRAIN_STEPS"] = steps
        out["TRAIN_STEPS"] = (steps, why)
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
           "TrainProfile", "add_stats_command", "data_dir_for", "derive",
           "examples_per_row", "fill_template", "format_line", "is_auto", "is_template",
           "needs_data", "pack_rows", "packed_lengths", "round_up", "task_dirs"]
