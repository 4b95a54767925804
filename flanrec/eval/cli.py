"""The command line of `python -m flanrec.eval` (its text is `flanrec.eval.job`'s doc): the
flags form (`--predictions ... --out ...`) and the gin form (`--gin_file=runs/eval.gin`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gin

from flanrec import metrics as M
from flanrec.data import locations
from flanrec.errors import ConfigError
from flanrec.eval import job
from flanrec.files import outputs, storage
from flanrec.frontend import jobs
from flanrec.frontend.gin_cli import (
    add_gin_job_flags,
    configure_gin,
    parse_gin_job_args,
    refusing_unset_macros,
)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = jobs.JobArgumentParser(prog="python -m flanrec.eval", description=job.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", help="directory or glob of {task}-{mode}.jsonl-* "
                        "shards (INFER_OUTPUT_DIR); several runs of one system (seeds), "
                        "comma separated, are averaged")
    parser.add_argument("--baselines", default=None,
                        help="directory of baseline shards (python -m flanrec.baselines)")
    parser.add_argument("--out", help="output directory (EVAL_OUTPUT_DIR)")
    parser.add_argument("--data_dir", default=None,
                        help="prepared dir for masking and coverage (default $FLANREC_DATA_DIR)")
    parser.add_argument("--ks", default=",".join(map(str, M.DEFAULT_KS)),
                        help="comma-separated K values (default 1,5,10,20)")
    parser.add_argument("--primary_task", default=None,
                        help="task whose metrics also get flat keys when there are several")
    parser.add_argument("--ties", default="pessimistic", choices=M.TIE_POLICIES,
                        help="tie policy when ranking scored candidates")
    parser.add_argument("--no_plot", action="store_true")
    parser.add_argument("--no_paired", action="store_true",
                        help="skip the paired bootstrap against each baseline")
    parser.add_argument("--unseen_predictions", default=None,
                        help="the same system's predictions on SPLIT=test_unseen (held-out "
                             "templates), reported beside --predictions' test split")
    parser.add_argument("--task_module", default="",
                        help="modules that register the tasks of decode predictions, comma "
                             "separated (default: the MIXTURE_OR_TASK_MODULE inference "
                             "recorded)")
    parser.add_argument("--allow_partial", action="store_true",
                        help="score a predictions file that covers only part of the split's "
                             "users (an error otherwise); the table says how many were scored")
    add_gin_job_flags(parser, job="evaluate")
    args, bindings = parse_gin_job_args(parser, argv)
    if not args.gin_file and not bindings and (args.predictions is None or args.out is None):
        parser.error("--predictions and --out are required (or --gin_file=gin/runs/eval.gin)")
    return args, bindings


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--ks: expected comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks: expected comma-separated integers >= 1 (cut-offs such as "
                          f"5,10,20), got {text!r}")
    return ks


_UNSET = object()


def _macro(name: str, default: Any = None) -> Any:
    """A gin macro's value, `default` when no gin file defines it."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


@outputs.releases_locks
def evaluate_from_gin(files: Sequence[str], bindings: Sequence[str],
                      search_paths: Sequence[str] = (), verbose: bool = False,
                      allow_partial: bool = False,
                      distributed: argparse.Namespace | None = None) -> dict[str, float]:
    """The gin form of the job, with T5X's eval role: CHECKPOINT_PATH set → infer, then score.

    Configured exactly as `flanrec.train` / `flanrec.infer` are (`gin_cli.configure_gin`:
    same search paths, task module import, misspelled-macro check), so one set of gin files
    serves all three. `distributed`: the parsed multi-process flags, for the inference.
    """
    jobs.load_tensorflow(verbose)  # the task module and inference read data through TF
    # Here, not at the top: the flags form stays free of JAX and TF (importing flanrec.eval.cli
    # took 0.3 s, the configurables 6.9 s more, measured on this 2-core machine).
    from flanrec import configurables  # `infer`, whose bindings eval.gin holds, and the model's

    configure_gin(files, bindings, search_paths)
    if distributed is not None:
        jobs.init_distributed(distributed)
    partial = {"allow_partial": True} if allow_partial else {}  # else gin's binding holds
    checkpoint = _macro("CHECKPOINT_PATH")
    if not checkpoint:
        if _macro("INFER_OUTPUT_DIR", _UNSET) is None:
            raise ConfigError("INFER_OUTPUT_DIR (the predictions to score) or CHECKPOINT_PATH "
                              "(infer with it first, then score) is required")
        return configurables.evaluate(**partial)
    out_dir = _macro("EVAL_OUTPUT_DIR")
    if not out_dir:
        raise ConfigError("EVAL_OUTPUT_DIR is required (where metrics.json is written)")
    predictions = _macro("INFER_OUTPUT_DIR")
    if not predictions:  # T5X's layout: the inferences inside the eval dir, which eval owns
        predictions = storage.join(outputs.claim_dir(str(out_dir), "eval",
                                                     what="EVAL_OUTPUT_DIR"), "infer")
    if not _macro("MIXTURE_OR_TASK_NAME"):
        raise ConfigError("CHECKPOINT_PATH is set: MIXTURE_OR_TASK_NAME (the task to infer "
                          "and score) is required too")
    configurables.infer(output_dir=predictions)
    return configurables.evaluate(predictions=predictions, **partial)


@outputs.releases_locks
def cli(argv: Sequence[str]) -> int:
    """The job: parse, then evaluate (gin form or flags). Raises UserError on bad input."""
    args, bindings = parse_args(argv)
    if args.gin_file or bindings:
        with refusing_unset_macros():
            evaluate_from_gin(args.gin_file, bindings, args.gin_search_paths, args.verbose,
                              allow_partial=args.allow_partial, distributed=args)
    else:
        job.evaluate(predictions=args.predictions, out_dir=args.out, baselines=args.baselines,
                 data_dir=args.data_dir or locations.env_data_dir(),
                 ks=_parse_ks(args.ks), primary_task=args.primary_task, ties=args.ties,
                 plot=not args.no_plot, paired_test=not args.no_paired,
                 allow_partial=args.allow_partial,
                 unseen_predictions=args.unseen_predictions, task_modules=args.task_module)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # FileNotFoundError: a predictions, baselines or data path the user named does not exist.
    return jobs.run("flanrec.eval", cli, argv, tensorflow=False,
                    user_errors=(FileNotFoundError,))

