r"""Score inference outputs (and baselines) with one metric code: `python -m flanrec.eval`.

    python -m flanrec.eval --predictions runs/x/infer --baselines runs/baselines \
        --data_dir data/ml-100k --out runs/x/eval
    python -m flanrec.eval --gin_file=gin/runs/eval.gin \
        --gin.INFER_OUTPUT_DIR=runs/x/infer --gin.EVAL_OUTPUT_DIR=runs/x/eval
    python -m flanrec.eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH=runs/x \
        --gin.MIXTURE_OR_TASK_NAME=ml100k_seq_seqidx --gin.EVAL_OUTPUT_DIR=runs/x/eval

The last form is T5X's eval role: a checkpoint in, metrics out. It runs `flanrec.infer` first
(every gin macro of gin/runs/infer.gin applies: SPLIT, NUM_BEAMS, TASK_FEATURE_LENGTHS, ...)
into INFER_OUTPUT_DIR (default EVAL_OUTPUT_DIR/infer; a rerun resumes it), then scores it.
The gin flags are train's and infer's: `--gin_file`, `--gin.NAME=VALUE`, `--gin_bindings`,
`--gin_search_paths` (comma-separated).

Reads the JSONL shards `flanrec.infer` writes (`{task}-{mode}.jsonl-{i:05d}-of-{n:05d}`, the
contract of `flanrec.files.predictions`; the baselines write the same format under task names
`popularity` / `sasrec`), computes per task and mode the metrics that fit it, and writes
into the output dir (each file to a temp name, then renamed, so a reader never sees half a
file):

* `metrics.json` — one flat object of floats: `hr@10`, `ndcg@10`, ... for the model when it
  has one task, else `{task}/hr@10` per task (plus flat keys for `--primary_task`);
  baselines always namespaced: `popularity/hr@10`, `sasrec/ndcg@10`;
* `metrics.md` — a Markdown table, one row per system (printed to stdout as well);
* `hr_ndcg_at_k.png` — HR@K and NDCG@K against K for every system.

What is computed (`flanrec.metrics` has the definitions):

* `predict` — the ranked `items` against `target_item`: HR/NDCG/MRR/Precision/Recall/F1@K,
  coverage@K, invalid and duplicate generations (the producer's counts plus any found here);
* `score` with `candidates` — the candidates ranked by `scores` (ties pessimistic), then
  the same ranking metrics; with `p_yes` and `label` (binary family) — AUC, accuracy,
  precision, recall, F1 at p_yes >= 0.5;
* `rating` — RMSE and MAE of `expected_rating` against `target_rating`;
* `decode` — free-decoded text, scored as T5X's infer-eval scores it: the task's own
  `postprocess_fn` on each target and prediction, then each of its `metric_fns`
  (`flanrec.eval.task_truth`; the targets are read again from the task, never from the
  file; `--task_module` imports the module that registers it, by default the
  MIXTURE_OR_TASK_MODULE the inference recorded). No prepared dir is needed for it.

A family whose answer is another item than the split's held-out one
(`Family.held_out_target` False) is ranked against its own examples' `target_item`, with no
seen items masked. `--unseen_predictions` (the same system on `SPLIT=test_unseen`: the test
queries phrased with held-out templates) adds each task's numbers on the unseen templates
beside `test`, with the relative difference and, for ranking tasks, a paired bootstrap over
users (`metrics.md`'s "Seen vs unseen templates"; keys `test_unseen/...` and
`unseen_vs_seen/...`).

Before anything is scored, each shard is checked against the manifest `flanrec.infer` wrote
beside it (its sha256, and the same run for every shard), a glob matching two runs' shards
of the same name is refused, and every record against the split (`flanrec.eval.truth`:
targets, users, and the candidates a score record ranks). A full-ranking and a candidate
task (HR@K among 20 candidates) get separate rows of axes in the plot.

With `--data_dir` (a `flanrec.prepare` output; default `$FLANREC_DATA_DIR`) the protocol's
masking is applied: each user's seen items (train items for validation; train + validation
items for test) are removed from the ranked list before cutting it to K, items outside the
catalogue count as invalid, and coverage@K is reported. Without it, lists are used as they
are (the infer job can mask at decode time) and coverage is not reported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import gin

from flanrec import metrics as M
from flanrec.data import locations, prepared
from flanrec.eval import paired, report, task_truth
from flanrec.eval import truth as eval_truth
from flanrec.files import outputs, storage
from flanrec.files.predictions import (
    PredictionsError,
    Record,
    find_prediction_files,
    read_records,
    reporting_write_errors,
    shard_digest,
)

EvalInputError = PredictionsError
"""A predictions file is missing, incomplete or malformed (the message names file:line).
The contract's own error (`flanrec.files.predictions`), under the name eval has always raised."""

NO_DATA_DIR = ("no prepared data dir (--data_dir, $FLANREC_DATA_DIR or gin FLANREC_DATA_DIR): "
               "each user's target is taken from its split, never from the predictions file")

METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
PLOT_FILE = "hr_ndcg_at_k.png"


# ------------------------------------------------------------------------------ context


@dataclasses.dataclass
class Catalogue:
    """What the prepared dir adds: the full-ranking catalogue and each user's seen items."""

    items: frozenset[str]
    seen: dict[str, dict[str, frozenset[str]]]  # stage -> user -> items to mask
    data_dir: str
    truth: eval_truth.SplitTruth | None = None  # every user's held-out targets

    @classmethod
    def load(cls, data_dir: str) -> Catalogue:

        split = prepared.load_split(data_dir)
        truth = eval_truth.SplitTruth.from_split(split, data_dir)
        return cls(truth.catalogue, truth.seen, data_dir, truth)

    def exclude_for(self, record: Record) -> frozenset[str]:
        stage = record.data["split"]
        if stage not in self.seen:
            return frozenset()
        user = record.data["user"]
        if user not in self.seen[stage]:
            raise EvalInputError(f"{record.where}: user {user!r} is not an evaluated user of "
                                 f"{self.data_dir} (wrong --data_dir?)")
        return self.seen[stage][user]


# ------------------------------------------------------------------------------ metrics


@dataclasses.dataclass
class Section:
    """The metrics of one (task, mode) of one system."""

    task: str
    mode: str
    kind: str  # "ranking" | "binary" | "rating" | "task" (the task's own metric fns)
    split: str
    metrics: dict[str, float]
    baseline: bool = False
    # user -> per-user ranking metrics (ranking sections only), for paired comparisons
    per_user: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    coverage: eval_truth.Coverage | None = None  # users scored vs in the split
    # ranking sections: eval_truth.FULL (the catalogue is ranked) or .CANDIDATES (a few
    # given items per query), whose HR@K is on another scale and never shares a plot
    layout: str = ""


PAIRED_METRICS = ("ndcg@10", "hr@10")


def per_user_ranking(records: Sequence[Record], ks: Sequence[int],
                     catalogue: Catalogue | None) -> dict[str, dict[str, float]]:
    """user -> HR/NDCG/MRR@K of a `predict` section, cleaned exactly as ranking_metrics
    cleans lists (seen items masked, unknown items and repeats dropped)."""
    out = {}
    for r in records:
        excl = catalogue.exclude_for(r) if catalogue else ()
        cleaned = M.clean_list(r.data["items"], excl, catalogue.items if catalogue else None)
        out[r.data["user"]] = M.user_ranking_metrics(cleaned.items, _targets(r), ks)
    return out


def _target_tied(record: Record) -> bool:
    """Whether a target's score equals another candidate's (the tie policy decides it)."""
    targets = set(_targets(record))
    scores = dict(zip(record.data["candidates"], record.data["scores"], strict=True))
    want = {scores[t] for t in targets if t in scores}
    return any(s in want for c, s in scores.items() if c not in targets)


def _targets(record: Record) -> list[str]:
    t = record.data["target_item"]
    return [t] if isinstance(t, str) else list(t)


def evaluate_records(records: Sequence[Record], mode: str, ks: Sequence[int] = M.DEFAULT_KS,
                     catalogue: Catalogue | None = None, ties: str = "pessimistic",
                     ) -> tuple[str, dict[str, float]]:
    """(kind, metrics) of one (task, mode)'s records (see the module docstring)."""
    excl = [catalogue.exclude_for(r) for r in records] if catalogue else None
    items_set = catalogue.items if catalogue else None
    if mode == "predict":
        return "ranking", M.ranking_metrics(
            [r.data["items"] for r in records], [_targets(r) for r in records], ks=ks,
            exclude=excl, catalogue=items_set,
            extra_invalid=sum(int(r.data.get("invalid", 0)) for r in records),
            extra_duplicates=sum(int(r.data.get("duplicates", 0)) for r in records))
    if mode == "score":
        binary = ["label" in r.data for r in records]
        if any(binary) and not all(binary):
            first = records[binary.index(not binary[0])]
            raise EvalInputError(f"{first.where}: binary (label/p_yes) and ranking records "
                                 "mixed in one task")
        if all(binary):
            labels = [int(r.data["label"]) for r in records]
            p_yes = [float(r.data["p_yes"]) for r in records]
            out = M.binary_metrics(labels, [int(p >= YES_AT) for p in p_yes], p_yes)
            out["yes_at_p_yes"] = YES_AT  # what accuracy/precision/recall/F1 count as yes
            return "binary", out
        lists = [M.ranking_from_scores(r.data["candidates"], r.data["scores"],
                                       set(_targets(r)), ties=ties) for r in records]
        out = M.ranking_metrics(lists, [_targets(r) for r in records], ks=ks, exclude=excl,
                                catalogue=items_set)
        out["target_not_in_candidates"] = float(sum(
            not set(_targets(r)) & set(r.data["candidates"]) for r in records))
        if ties != "pessimistic":
            tied = sum(_target_tied(r) for r in records)
            if tied:  # constant scores would rank every target first: say how often it did
                print(f"warning: {records[0].where.rsplit(':', 1)[0]}: the target ties with "
                      f"another candidate for {tied} of {len(records)} users; --ties {ties} "
                      "decides their rank (pessimistic is the protocol's)", file=sys.stderr)
        return "ranking", out
    if mode == "rating":
        return "rating", M.rating_metrics([float(r.data["target_rating"]) for r in records],
                                          [float(r.data["expected_rating"]) for r in records])
    raise ValueError(f"unknown mode {mode!r}")


def _own_targets(mode: str, facts: Mapping[str, Any]) -> bool:
    """Whether a (task, mode) is scored on the task's own targets (`task_truth`): decoded
    text, or a family whose answer is not the held-out item (as inference recorded it)."""
    info = facts.get("task_info") or {}
    return mode == "decode" or info.get("held_out_target") is False


def _own_target_section(spec: str, task: str, mode: str, records: Sequence[Record],
                        facts: Mapping[str, Any], ks: Sequence[int],
                        catalogue: Catalogue | None, baseline: bool, ties: str,
                        allow_partial: bool, task_modules: Sequence[str]) -> Section:
    """A (task, mode) scored on the task's own examples (`flanrec.eval.task_truth`)."""
    task_truth.import_modules([*task_modules, facts.get("task_module") or ""])
    split = records[0].data["split"]
    truth = task_truth.TaskExamples.load(task, split)
    coverage = task_truth.check_records(records, task, mode, truth, allow_partial, spec,
                                        item_targets=mode != "decode")
    if mode == "decode":
        values = task_truth.task_metrics(records, truth)
        kind, layout = "task", ""
    else:  # the answer may be an item the user has seen: nothing is masked
        unmasked = dataclasses.replace(catalogue, seen={}) if catalogue else None
        kind, values = evaluate_records(records, mode, ks, unmasked, ties)
        layout = _layout_of(records, mode) if kind == "ranking" else ""
    if coverage.partial:
        values["users_in_split"] = float(coverage.expected)
    return Section(task, mode, kind, split, values, baseline, {}, coverage, layout)


def evaluate_dir(spec: str, ks: Sequence[int] = M.DEFAULT_KS,
                 catalogue: Catalogue | None = None, baseline: bool = False,
                 ties: str = "pessimistic", allow_partial: bool = False,
                 task_modules: Sequence[str] = (), require_split: bool = False
                 ) -> list[Section]:
    """One Section per (task, mode) found under ``spec`` (a directory or a glob).

    With a catalogue (a prepared dir), every target comes from its split and the records
    are checked against it first (``flanrec.eval.truth.check_records``). Decoded text and
    families whose answer is not the held-out item take their targets from the task itself
    (``flanrec.eval.task_truth``; `task_modules` register it). `require_split`: without a
    catalogue, refuse what only the split can score (the job's rule)."""
    sections = []
    for (task, mode), paths in find_prediction_files(spec).items():
        facts = task_truth.manifest_facts(paths)
        own = _own_targets(mode, facts)
        records = read_records(paths, task, mode,
                               targets_required=catalogue is None and not own)
        if own:
            sections.append(_own_target_section(spec, task, mode, records, facts, ks,
                                                catalogue, baseline, ties, allow_partial,
                                                task_modules))
            continue
        if catalogue is None and require_split:
            raise EvalInputError(NO_DATA_DIR)
        coverage = None
        if catalogue is not None and catalogue.truth is not None:
            coverage = eval_truth.check_records(records, task, mode, catalogue.truth,
                                                allow_partial, source=spec)
        kind, values = evaluate_records(records, mode, ks, catalogue, ties)
        if coverage is not None and coverage.partial:
            values["users_in_split"] = float(coverage.expected)
        users = per_user_ranking(records, ks, catalogue) if mode == "predict" else {}
        layout = ""
        if kind == "ranking":
            layout = (coverage.layout if coverage is not None and coverage.layout
                      else _layout_of(records, mode))
        sections.append(Section(task, mode, kind, records[0].data["split"], values, baseline,
                                users, coverage, layout))
    return sections


def _layout_of(records: Sequence[Record], mode: str) -> str:
    """FULL or CANDIDATES without a split to tell (the library call without a catalogue):
    `predict` lists are top-K of the catalogue; scored lists that are all the same set
    are the catalogue, lists that differ per query are candidate sets."""
    if mode == "predict":
        return eval_truth.FULL
    first = set(records[0].data["candidates"])
    same = all(set(r.data["candidates"]) == first for r in records)
    return eval_truth.FULL if same else eval_truth.CANDIDATES


def check_distinct_runs(runs: Sequence[str]) -> None:
    """Refuse runs to be averaged that hold the same files: the same directory named twice,
    or a copy of one run under another name, would be reported as two runs (seeds) with a
    standard deviation of 0."""
    if len(runs) < 2:
        return
    seen: dict[tuple[tuple[str, str], ...], str] = {}
    for spec in runs:
        files = find_prediction_files(spec)
        key = tuple(sorted((storage.basename(p), shard_digest(p)[0])
                           for paths in files.values() for p in paths))
        if key in seen:
            raise EvalInputError(f"--predictions: {spec} holds the same files, byte for byte, "
                                 f"as {seen[key]}; averaging a run with itself would report "
                                 "two runs (name each run once)")
        seen[key] = spec


def mean_of_runs(runs: Sequence[Sequence[Section]]) -> list[Section]:
    """One section per (task, mode): the mean of each metric over runs (e.g. seeds), with
    `num_runs` and `{metric}_std`; per-user values are averaged too. Every run must hold
    the same (task, mode)s."""
    if len(runs) == 1:
        return list(runs[0])
    keys = [(s.task, s.mode) for s in runs[0]]
    out = []
    for key in keys:
        group = []
        for j, run in enumerate(runs):
            match = [s for s in run if (s.task, s.mode) == key]
            if not match:
                raise EvalInputError(f"run {j + 1} of --predictions has no {key[0]}-{key[1]} "
                                     "predictions (every run must hold the same tasks)")
            group.append(match[0])
        names = set.intersection(*(set(s.metrics) for s in group))
        metrics = {}
        for name in sorted(names):
            values = [s.metrics[name] for s in group]
            metrics[name] = float(sum(values) / len(values))
            if len(values) > 1 and "@" in name:
                mean = metrics[name]
                metrics[f"{name}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values)
                                                   / (len(values) - 1))
        metrics["num_runs"] = float(len(group))
        users: dict[str, dict[str, float]] = {}
        if all(s.per_user for s in group):
            try:
                per_metric = {m: paired.mean_over_runs([{u: v[m] for u, v in s.per_user.items()}
                                                        for s in group])
                              for m in PAIRED_METRICS}
            except ValueError as e:
                raise EvalInputError(f"{key[0]}-{key[1]}: {e}") from None
            users = {u: {m: per_metric[m][u] for m in PAIRED_METRICS}
                     for u in per_metric[PAIRED_METRICS[0]]}
        first = group[0]
        out.append(Section(first.task, first.mode, first.kind, first.split, metrics,
                           first.baseline, users, first.coverage, first.layout))
    return out


def paired_comparisons(model: Sequence[Section], baselines: Sequence[Section],
                       seed: int = 0) -> list[dict[str, Any]]:
    """Paired bootstrap of each model ranking section against each baseline one (same
    users): one row per (model, baseline, metric)."""
    rows = []
    names = section_names(model)
    base_names = section_names(baselines)
    for name, s in zip(names, model, strict=True):
        if not s.per_user:
            continue
        for bname, b in zip(base_names, baselines, strict=True):
            if not b.per_user or b.split != s.split:
                continue
            for metric in PAIRED_METRICS:
                res = paired.paired_bootstrap({u: v[metric] for u, v in s.per_user.items()},
                                              {u: v[metric] for u, v in b.per_user.items()},
                                              seed=seed)
                rows.append({"model": name, "baseline": bname, "metric": metric, **res})
    return rows


def section_names(sections: Sequence[Section]) -> list[str]:
    """Key prefix / table row name per section: task, or task/mode if a task has several."""
    modes: dict[str, int] = {}
    for s in sections:
        modes[s.task] = modes.get(s.task, 0) + 1
    return [s.task if modes[s.task] == 1 else f"{s.task}/{s.mode}" for s in sections]


def flat_metrics(model: Sequence[Section], baselines: Sequence[Section],
                 primary: str | None = None) -> dict[str, float]:
    """The metrics.json object (see the module docstring for the key scheme)."""
    out: dict[str, float] = {}
    names = section_names(model)
    if len(model) == 1:
        out.update(model[0].metrics)
    else:
        for name, s in zip(names, model, strict=True):
            out.update(M.prefix_keys(s.metrics, name))
        if primary is not None:
            matches = [s for name, s in zip(names, model, strict=True) if name == primary]
            if not matches:
                raise ValueError(f"--primary_task {primary!r} is not among {names}")
            out.update(matches[0].metrics)
    for name, s in zip(section_names(baselines), baselines, strict=True):
        out.update(M.prefix_keys(s.metrics, name))
    return out


def default_primary(model: Sequence[Section]) -> str | None:
    """With several sections: the only `predict` one, else the only ranking one, else None."""
    if len(model) < 2:
        return None
    names = section_names(model)
    for wanted in (lambda s: s.mode == "predict", lambda s: s.kind == "ranking"):
        picked = [n for n, s in zip(names, model, strict=True) if wanted(s)]
        if len(picked) == 1:
            return picked[0]
    return None


def _runs(predictions: str | Sequence[str]) -> list[str]:
    return [p for p in predictions.split(",") if p] if isinstance(predictions, str) else \
        list(predictions)


def _only_decode(predictions: str | Sequence[str], unseen: str | None) -> bool:
    """Whether every predictions file named is a `decode` one (scored on its task, so no
    prepared dir is needed)."""
    specs = _runs(predictions) + (_runs(unseen) if unseen else [])
    return bool(specs) and all(mode == "decode" for spec in specs
                               for _, mode in find_prediction_files(spec))


YES_AT = 0.5
"""A binary record answers yes when p_yes >= YES_AT (its accuracy, precision, recall and F1;
AUC ranks by p_yes). The binary baselines map their score so that 0.5 is their own yes."""

UNSEEN_METRICS = {"ranking": ("ndcg@10", "hr@10"), "rating": ("rmse", "mae"),
                  "binary": ("auc", "accuracy")}
"""What the seen/unseen comparison reports per kind ("task": every metric fn's value)."""
_NOT_COMPARED = {"num_examples", "empty_predictions", "num_runs", "users_in_split",
                 "yes_at_p_yes"}


def check_unseen(model: Sequence[Section], unseen: Sequence[Section]) -> None:
    """The unseen-template run must be the same tasks on `test_unseen`, beside `test`."""
    seen_keys = {(s.task, s.mode) for s in model}
    for s in unseen:
        if s.split != "test_unseen":
            raise EvalInputError(f"--unseen_predictions: {s.task}-{s.mode} is on split "
                                 f"{s.split!r}; infer it with SPLIT=test_unseen (the test "
                                 "queries phrased with held-out templates)")
        if (s.task, s.mode) not in seen_keys:
            raise EvalInputError(f"--unseen_predictions: {s.task}-{s.mode} has no "
                                 "counterpart in --predictions to compare with")
    for s in model:
        if s.split != "test" and any(u.task == s.task for u in unseen):
            raise EvalInputError(f"--predictions: {s.task}-{s.mode} is on split {s.split!r}; "
                                 "the unseen templates are compared with the test split")


def unseen_comparisons(model: Sequence[Section], unseen: Sequence[Section],
                       paired_test: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, metric): the seen (`test`) and unseen (`test_unseen`) values and
    the relative difference (unseen - seen) / seen; ranking tasks also a paired bootstrap
    over users (the same queries, phrased with other templates)."""
    rows = []
    seen_by = {(s.task, s.mode): (n, s) for n, s in zip(section_names(model), model,
                                                         strict=True)}
    for u in unseen:
        name, s = seen_by[(u.task, u.mode)]
        metrics = UNSEEN_METRICS.get(u.kind) or tuple(
            k for k in sorted(u.metrics) if k not in _NOT_COMPARED and "@" not in k
            and not k.endswith("_std"))
        for metric in metrics:
            a, b = s.metrics.get(metric), u.metrics.get(metric)
            if a is None or b is None or math.isnan(a) or math.isnan(b):
                continue
            row: dict[str, Any] = {"task": name, "metric": metric, "seen": a, "unseen": b,
                                   "diff": b - a, "relative": (b - a) / a if a else math.nan,
                                   "lo": None, "hi": None, "p_value": None}
            if paired_test and s.per_user and u.per_user and metric in PAIRED_METRICS:
                res = paired.paired_bootstrap({k: v[metric] for k, v in u.per_user.items()},
                                              {k: v[metric] for k, v in s.per_user.items()},
                                              seed=seed)
                row.update(lo=res["lo"], hi=res["hi"], p_value=res["p_value"],
                           num_users=res["num_users"])
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ writing


def _json_safe(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """NaN (e.g. AUC with one class) becomes null: strict JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in
            metrics.items()}


@outputs.releases_locks
def evaluate(predictions: str = gin.REQUIRED, out_dir: str = gin.REQUIRED,
             baselines: str | None = None, data_dir: str | None = None,
             ks: Sequence[int] = M.DEFAULT_KS, primary_task: str | None = None,
             ties: str = "pessimistic", plot: bool = True, echo: bool = True,
             paired_test: bool = True, allow_partial: bool = False,
             unseen_predictions: str | None = None,
             task_modules: str | Sequence[str] = ()) -> dict[str, float]:
    """Evaluate ``predictions`` (+ ``baselines``) and write metrics.json/.md/.png to out_dir.

    Returns the metrics.json object. Baselines must be on the model's split: comparing a
    test-split model with validation-split baselines would be meaningless, so it is refused.
    ``predictions`` may name several runs of one system, comma separated (e.g. seeds): the
    model row is then their mean (`num_runs`, `{metric}_std`). ``paired_test``: a paired
    bootstrap of the model against each baseline on the same users (`flanrec.eval.paired`),
    keys `paired/{model}_vs_{baseline}/{metric}_{diff,lo,hi,p}` and a table.
    Every target comes from the split of ``data_dir`` (required, except for predictions that
    are all `decode` records, whose targets come from their task); ``allow_partial`` scores
    a file covering only part of the split's users, and the table says how many.
    ``unseen_predictions``: the same system on `test_unseen` (held-out templates), reported
    beside the seen templates (`unseen_comparisons`). ``task_modules``: modules that register
    the tasks of decode runs (comma separated), imported before they are looked up.
    """
    outputs.check_claimable(out_dir, "eval", what="--out")  # before any work
    data_dir = data_dir or locations.env_data_dir()
    if not data_dir and (baselines or not _only_decode(predictions, unseen_predictions)):
        raise EvalInputError(NO_DATA_DIR)
    catalogue = None
    if data_dir:
        if not storage.is_url(data_dir):  # a gin value keeps "~/" (no shell expanded it)
            data_dir = os.path.expanduser(data_dir)
        catalogue = Catalogue.load(data_dir)
    modules = [m for m in (task_modules.split(",") if isinstance(task_modules, str)
                           else task_modules or ()) if m]
    runs = _runs(predictions)
    check_distinct_runs(runs)

    def score(spec: str, baseline: bool = False) -> list[Section]:
        return evaluate_dir(spec, ks, catalogue, baseline=baseline, ties=ties,
                            allow_partial=allow_partial, task_modules=modules,
                            require_split=True)

    model = mean_of_runs([score(p) for p in runs])
    base = score(baselines, baseline=True) if baselines else []
    unseen: list[Section] = []
    if unseen_predictions:
        unseen_runs = _runs(unseen_predictions)
        check_distinct_runs(unseen_runs)
        unseen = mean_of_runs([score(p) for p in unseen_runs])
        check_unseen(model, unseen)
    for s in [*model, *base, *unseen]:
        if s.coverage is not None and s.coverage.partial:
            missing = ", ".join(repr(u) for u in s.coverage.missing_examples)
            print(f"warning: {s.task}-{s.mode}: scored {s.coverage.scored} of "
                  f"{s.coverage.expected} users of the {s.split} split (--allow_partial)"
                  + (f"; missing e.g. {missing}" if missing else ""), file=sys.stderr)
    model_splits = {s.split for s in model}
    for s in base:
        if model_splits and s.split not in model_splits:
            raise EvalInputError(f"{baselines}: baseline {s.task!r} is on split {s.split!r} "
                                 f"but the predictions are on {sorted(model_splits)}")
    primary = primary_task if primary_task is not None else default_primary(model)
    flat = flat_metrics(model, base, primary)
    comparisons = paired_comparisons(model, base) if paired_test else []
    for row in comparisons:
        key = f"paired/{row['model']}_vs_{row['baseline']}/{row['metric']}"
        flat.update({f"{key}_diff": row["diff"], f"{key}_lo": row["lo"],
                     f"{key}_hi": row["hi"], f"{key}_p": row["p_value"]})
    unseen_rows = unseen_comparisons(model, unseen, paired_test) if unseen else []
    for name, s in zip(section_names(unseen), unseen, strict=True):
        flat.update(M.prefix_keys(s.metrics, f"{s.split}/{name}"))
    for row in unseen_rows:
        key = f"unseen_vs_seen/{row['task']}/{row['metric']}"
        flat[f"{key}_rel"] = row["relative"]
        if row.get("lo") is not None:
            flat.update({f"{key}_diff": row["diff"], f"{key}_lo": row["lo"],
                         f"{key}_hi": row["hi"]})
    out_dir = outputs.claim_dir(out_dir, "eval", what="--out")
    names = section_names(model) + section_names(base)
    systems = list(zip(names, [*model, *base], strict=True))
    table = report.markdown(systems, ks)
    if comparisons:
        table += "\n" + report.paired_markdown(comparisons)
    if unseen_rows:
        table += "\n" + report.unseen_markdown(unseen_rows)
    path = storage.join(out_dir, METRICS_FILE)
    with reporting_write_errors(path):
        storage.write_json_atomic(path, _json_safe(flat), sort_keys=True, ensure_ascii=True)
    path = storage.join(out_dir, TABLE_FILE)
    with reporting_write_errors(path):
        storage.write_atomic(path, table)
    if plot:
        path = storage.join(out_dir, PLOT_FILE)
        with reporting_write_errors(path):
            report.plot_at_k(systems, ks, path)
    if echo:
        print(table, end="")
    return flat
