r"""The end-to-end CPU quickstart: prepare -> train -> constrained inference -> baselines -> eval.

    python -m flanrec.quickstart            # ML-100K, ~15 min on 2 CPU cores

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

from flanrec import jobs
from flanrec.data import locations
from flanrec.errors import UserError

DEFAULT_EXPERIMENT = "gin/experiments/ml100k_tiny_cpu.gin"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StageError(RuntimeError):
    """A stage's command exited non-zero (`returncode`: its exit code)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def _gin_value(experiment: str, macro: str) -> str | None:
    """A macro's literal value in a gin file (no includes): the pipeline's defaults follow the
    experiment (feature lengths, task) instead of being repeated here."""
    with open(experiment, encoding="utf-8") as f:
        for line in f:
            code = line.split("#", 1)[0].strip()
            if code.startswith(f"{macro} ") or code.startswith(f"{macro}="):
                return code.split("=", 1)[1].strip()
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
                   help="task to rank on (default: {prefix}_seq_seqidx of the prepared data)")
    p.add_argument("--split", default="test", choices=("validation", "test"))
    p.add_argument("--num_beams", type=int, default=20)
    p.add_argument("--baselines", default="all", choices=("popularity", "sasrec", "all", "none"))
    p.add_argument("--sasrec_seconds", type=float, default=300.0,
                   help="wall-clock budget for SASRec training")
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
    data_dir = os.path.abspath(args.data_dir or locations.default_data_dir(args.dataset))
    model_dir = os.path.abspath(args.model_dir)
    env = dict(os.environ, FLANREC_DATA_DIR=data_dir)
    if args.verbose:
        env[jobs.VERBOSE_ENV] = "1"  # every stage logs in full too
    timings: list[tuple[str, float]] = []

    try:
        if os.path.exists(os.path.join(data_dir, "prepare.json")):
            print(f"=== prepare: {data_dir} exists, skipped", flush=True)
        else:
            _stage("prepare", [py, "-m", "flanrec.prepare", "--dataset", args.dataset,
                               "--out", data_dir, *shlex.split(args.prepare_args)], env, timings)
        task = args.task or _default_task(data_dir)
        bindings = [f"--gin.{b}" for b in args.gin]
        _stage("train", [py, "-m", "flanrec.train", f"--gin_file={experiment}",
                         f"--gin.MODEL_DIR={model_dir}", *bindings], env, timings)
        lengths = _gin_value(experiment, "TASK_FEATURE_LENGTHS")
        for b in args.gin:
            if b.startswith("TASK_FEATURE_LENGTHS="):
                lengths = b.split("=", 1)[1]
        infer_dir = os.path.join(model_dir, f"infer_{args.split}")
        infer = [py, "-m", "flanrec.infer", "--gin_file=gin/runs/infer.gin",
                 f"--gin.CHECKPOINT_PATH={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                 f"--gin.INFER_OUTPUT_DIR={infer_dir}", f"--gin.DATA_DIR={data_dir}",
                 f"--gin.SPLIT='{args.split}'", f"--gin.NUM_BEAMS={args.num_beams}"]
        if lengths:
            ast.literal_eval(lengths)  # fail here, not inside the infer job
            infer.append(f"--gin.TASK_FEATURE_LENGTHS={lengths}")
        _stage("infer (trie-constrained beam search)", infer, env, timings)
        baseline_dir = os.path.join(model_dir, f"baselines_{args.split}")
        if args.baselines != "none":
            _stage("baselines", [py, "-m", "flanrec.baselines", "--data_dir", data_dir,
                                 "--model", args.baselines, "--out", baseline_dir,
                                 "--split", args.split, "--k", str(args.num_beams),
                                 "--max_train_seconds", str(args.sasrec_seconds)], env, timings)
        eval_cmd = [py, "-m", "flanrec.eval", "--predictions", infer_dir,
                    "--out", os.path.join(model_dir, f"eval_{args.split}"),
                    "--data_dir", data_dir]
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
    print(f"\nmetrics: {os.path.join(model_dir, f'eval_{args.split}', 'metrics.json')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.run("flanrec.quickstart", cli, argv, tensorflow=False)


def _default_task(data_dir: str) -> str:
    from flanrec.data.prepared import read_prepare_json

    info = read_prepare_json(data_dir)
    prefix = info.get("task_prefix") or "ml100k"
    suffix = (info.get("index_suffixes") or ["seqidx"])[0]
    return f"{prefix}_seq_{suffix}"


if __name__ == "__main__":
    sys.exit(main())
