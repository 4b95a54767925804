r"""The end-to-end CPU quickstart: prepare -> train -> constrained inference -> baselines -> eval.

    python -m flanrec.quickstart            # ML-100K
    python -m flanrec.quickstart --dataset csv \
        --prepare_args "--raw_dir my.csv --train_vocab --task_prefix mine"   # any log

The experiment takes everything that depends on the data from the prepared dir
(`flanrec.data.derived`): the task names, the feature lengths, the vocabulary size and the
budget (TRAIN_EPOCHS passes over the train task, early stopping on validation NDCG@10), so
the same command runs on any CSV/Parquet log or one-line-per-user sequence file; the train
stage prints each derived value and why, and inference uses the same values. On ML-100K the
budget is ml100k_seqrec.gin's full recipe (41 epochs: 7,870 steps). A busy machine only
takes longer: the budget is steps, not seconds.

The prepared data goes where every other job looks for it by default
(`$FLANREC_DATA_DIR`, else `~/.cache/flanrec/prepared/ml-100k`: `flanrec.data.locations`), so
`python -m flanrec.prepare --list_tasks` and `import tasks` find it afterwards.

Each stage is the same command a user would run by hand (printed before it runs), in its own
process, so gin state and memory never leak between stages and a failure names the stage.
Every stage resumes: prepare is skipped when its output exists, training continues from the
latest checkpoint, inference keeps finished chunks, and the baselines and evaluation are cheap
to redo. With ``--experiment`` and ``--gin.*`` bindings the same pipeline runs any gin
experiment, e.g. fine-tuning Flan-T5 from ``INITIAL_CHECKPOINT_PATH`` on an accelerator.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from flanrec.data import derived, families, layout, locations
from flanrec.data.prepared import read_prepare_json, stale_examples_warning
from flanrec.errors import UserError
from flanrec.files import outputs, storage
from flanrec.frontend import jobs
from flanrec.frontend.argtypes import positive_int

DEFAULT_EXPERIMENT = "gin/experiments/ml100k_quickstart.gin"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StageError(RuntimeError):
    """A stage's command exited non-zero (`returncode`: its exit code)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def _gin_value(experiment: str, macro: str) -> str | None:
    """A macro's literal value in a gin file, following its `include`s as gin does (a later
    binding wins): the pipeline's defaults follow the experiment (feature lengths, task)
    instead of being repeated here."""
    value = None
    with open(experiment, encoding="utf-8") as f:
        for line in f:
            code = line.split("#", 1)[0].strip()
            if code.startswith("include "):
                included = _resolve_include(code.split(None, 1)[1].strip().strip("'\""),
                                            experiment)
                if included is not None:
                    value = _gin_value(included, macro) or value
            elif code.startswith(f"{macro} ") or code.startswith(f"{macro}="):
                value = code.split("=", 1)[1].strip()
    return value


def _resolve_include(name: str, parent: str) -> str | None:
    """Where gin would find an included file: as given, then beside the repo's root (the
    search path the jobs use), then beside the including file."""
    for candidate in (name, os.path.join(REPO_ROOT, name),
                      os.path.join(os.path.dirname(os.path.abspath(parent)), name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _stage(name: str, argv: Sequence[str], env: dict[str, str], timings: list) -> None:
    print(f"\n=== {name}\n$ {shlex.join(argv)}", flush=True)
    t0 = time.time()
    rc = subprocess.call(list(argv), env=env, cwd=REPO_ROOT)
    timings.append((name, time.time() - t0))
    if rc != 0:
        raise StageError(f"stage {name!r} failed with exit code {rc}: {shlex.join(argv)}", rc)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = jobs.JobArgumentParser(prog="python -m flanrec.quickstart", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data_dir", default=None,
                   help="prepared data, made if missing (default: $FLANREC_DATA_DIR, else "
                   f"{locations.default_prepared_dir()})")
    p.add_argument("--model_dir", default="runs/quickstart", help="training run directory")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="gin experiment file")
    p.add_argument("--task", default=None,
                   help="task to rank on (default: the experiment's RANK_EVAL_TASK, with "
                   "{prefix} the prepared data's task prefix, else "
                   "{prefix}_seqrec_{indexing} of the prepared data when it has one, else "
                   "{prefix}_seq_{indexing})")
    p.add_argument("--split", default="test", choices=("validation", "test"))
    p.add_argument("--num_beams", type=positive_int, default=20)
    p.add_argument("--baselines", default="all", choices=("popularity", "sasrec", "all", "none"))
    p.add_argument("--sasrec_epochs", type=positive_int, default=50,
                   help="SASRec's budget in epochs (early stopping on validation NDCG@10 "
                   "may end it sooner): the same numbers on any machine, however busy")
    p.add_argument("--prepare_args", default="--train_vocab",
                   help="extra flags for flanrec.prepare")
    p.add_argument("--gin", action="append", default=[], metavar="MACRO=VALUE",
                   help="extra training binding, e.g. --gin TRAIN_STEPS=50 (repeatable)")
    jobs.add_verbose_flag(p)
    return p.parse_args(argv)


def cli(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    py = sys.executable
    experiment = (os.path.abspath(args.experiment) if os.path.exists(args.experiment)
                  else os.path.join(REPO_ROOT, args.experiment))
    if not os.path.exists(experiment):
        raise UserError(f"--experiment {args.experiment!r}: file not found")
    data_dir = storage.normalize(args.data_dir or locations.default_data_dir(args.dataset))
    model_dir = storage.normalize(args.model_dir)
    env = dict(os.environ, FLANREC_DATA_DIR=data_dir)
    if args.verbose:
        env[jobs.VERBOSE_ENV] = "1"  # every stage logs in full too
    timings: list[tuple[str, float]] = []
    prepared = storage.exists(storage.join(data_dir, layout.PREPARE_FILE))
    infer_dir = storage.join(model_dir, f"infer_{args.split}")
    baseline_dir = storage.join(model_dir, f"baselines_{args.split}")
    eval_dir = storage.join(model_dir, f"eval_{args.split}")
    problem = _output_problem([
        ("--data_dir", data_dir, None if prepared else "prepare"),
        ("--model_dir", model_dir, "train"),
        ("inference output", infer_dir, "infer"),
        ("baselines output", baseline_dir, None if args.baselines == "none" else "baselines"),
        ("evaluation output", eval_dir, "eval")])
    if problem:  # before any stage runs: a later stage would refuse it after minutes of work
        print(f"quickstart: error: {problem}", file=sys.stderr)
        return 2

    try:
        if prepared:
            print(f"=== prepare: {data_dir} exists, skipped", flush=True)
            doc = read_prepare_json(data_dir)
            stale = stale_examples_warning(doc, data_dir)
            if stale:
                print(f"quickstart: warning: {stale}", file=sys.stderr, flush=True)
            if "stats" not in doc:
                # Prepared by an older flanrec: measure what the 'auto' settings need.
                _stage("prepare: add data stats", [py, "-m", "flanrec.prepare",
                                                    "--add_stats", data_dir], env, timings)
        else:
            _stage("prepare", [py, "-m", "flanrec.prepare", "--dataset", args.dataset,
                               "--out", data_dir, *shlex.split(args.prepare_args)], env, timings)
        settings = _settings(data_dir, experiment, args.gin)
        task = args.task or _default_task(data_dir, settings)
        bindings = [f"--gin.{b}" for b in args.gin]
        _stage("train", [py, "-m", "flanrec.train", f"--gin_file={experiment}",
                         f"--gin.MODEL_DIR={model_dir}", *bindings], env, timings)
        # The unpacked lengths evaluation used while training (derived from the data exactly
        # as the train job did; the training lengths when it names none).
        lengths = settings.get("EVAL_TASK_FEATURE_LENGTHS")
        if not isinstance(lengths, dict):
            lengths = settings.get("TASK_FEATURE_LENGTHS")
        lengths = repr(lengths) if isinstance(lengths, dict) else None
        infer = [py, "-m", "flanrec.infer", "--gin_file=gin/runs/infer.gin",
                 f"--gin.CHECKPOINT_PATH={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                 f"--gin.INFER_OUTPUT_DIR={infer_dir}", f"--gin.DATA_DIR={data_dir}",
                 f"--gin.SPLIT='{args.split}'", f"--gin.NUM_BEAMS={args.num_beams}"]
        if lengths:
            ast.literal_eval(lengths)  # fail here, not inside the infer job
            infer.append(f"--gin.TASK_FEATURE_LENGTHS={lengths}")
        _stage("infer (trie-constrained beam search)", infer, env, timings)
        if args.baselines != "none":
            _stage("baselines", [py, "-m", "flanrec.baselines", "--data_dir", data_dir,
                                 "--model", args.baselines, "--out", baseline_dir,
                                 "--split", args.split, "--k", str(args.num_beams),
                                 "--max_epochs", str(args.sasrec_epochs)], env, timings)
        eval_cmd = [py, "-m", "flanrec.eval", "--predictions", infer_dir,
                    "--out", eval_dir, "--data_dir", data_dir]
        if args.baselines != "none":
            eval_cmd += ["--baselines", baseline_dir]
        _stage("eval", eval_cmd, env, timings)
    except StageError as e:
        # The stage printed its own one-line error; a user error there is one here too.
        print(f"\nflanrec.quickstart: error: {e}", file=sys.stderr)
        return 2 if e.returncode == 2 else 1
    print("\n=== stage times")
    for name, seconds in timings:
        print(f"  {name:<40s} {seconds:7.1f} s")
    print(f"  {'total':<40s} {sum(s for _, s in timings):7.1f} s")
    print(f"\nmetrics: {storage.join(eval_dir, 'metrics.json')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.run("flanrec.quickstart", cli, argv, tensorflow=False)


def _output_problem(dirs: Sequence[tuple[str, str, str | None]]) -> str | None:
    """The first output directory its stage would refuse (not flanrec's, or in use by
    another live run), as one line; None when every stage may write where it will."""
    for what, path, job in dirs:
        if job is None:
            continue
        why = outputs.ownership_problem(path, job)
        if why:
            return (f"{what} {path} {why}; the {job} stage would refuse to write into it: "
                    "choose a new or empty directory")
        busy = outputs.lock_problem(path, what=what) if storage.isdir(path) else None
        if busy:
            return busy
    return None


def _literal(text: str | None) -> object:
    """A gin value as the jobs read it: a Python literal, else the text itself (`--gin.X=V`
    quotes such a V: `gin_cli.as_binding`); None when absent or a gin reference."""
    if text is None or text.strip()[:1] in "@%":
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _settings(data_dir: str, experiment: str, bindings: Sequence[str]) -> dict[str, object]:
    """The experiment's data-dependent macros (`flanrec.data.derived.MACROS`) after the
    user's `--gin` bindings, with the ones it leaves to the data ('auto', `{prefix}` task
    names) derived from `data_dir` by the same function the train job calls, so the stages
    after training use the values it trained with."""
    values: dict[str, object] = {}
    for macro in derived.MACROS:
        value = _literal(_gin_value(experiment, macro))
        for b in bindings:
            if b.split("=", 1)[0].strip() == macro:
                value = _literal(b.split("=", 1)[1])
        if value is not None:
            values[macro] = value
    if derived.needs_data(values):
        doc = read_prepare_json(data_dir)
        values.update({m: v for m, (v, _) in derived.derive(values, doc, data_dir).items()})
    return values


def _default_task(data_dir: str, settings: dict[str, object]) -> str:
    """The task the experiment validates on (RANK_EVAL_TASK), else the prepared dir's seqrec
    task, else its seq task (as their families' fields say)."""

    given = settings.get("RANK_EVAL_TASK")
    if isinstance(given, str) and given:
        return given
    info = read_prepare_json(data_dir)
    prefix = info.get("task_prefix") or "ml100k"
    suffix = (info.get("index_suffixes") or ["seqidx"])[0]
    tasks = info.get("counts", {}).get("tasks", {})
    # Families that rank the catalogue (item targets, no candidate list), those whose
    # targets run item to item first; the first one the dir holds a task of.
    ranking = sorted((f for f in map(families.get, families.BUILTIN_FAMILIES)
                      if f.target_kind == "item" and f.indexed and not f.shows_candidates),
                     key=lambda f: f.target_layout != "item_sequence")
    dirnames = [f.task_dirname(suffix) for f in ranking]
    return f"{prefix}_{next((d for d in dirnames if d in tasks), dirnames[-1])}"


if __name__ == "__main__":
    sys.exit(main())
