"""The command line of `python -m flanrec.infer` (its text is `flanrec.infer.job`'s doc)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from flanrec.files import outputs
from flanrec.frontend import jobs
from flanrec.frontend.gin_cli import (
    add_gin_job_flags,
    configure_gin,
    parse_gin_job_args,
    refusing_unset_macros,
)
from flanrec.infer import job

log = logging.getLogger("flanrec.infer")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = jobs.JobArgumentParser(prog="python -m flanrec.infer", description=job.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gin_job_flags(parser, job="infer")
    args, bindings = parse_gin_job_args(parser, argv)
    if not args.gin_file:
        args.gin_file = ["runs/infer.gin"]  # flanrec's own, found on the gin search path
    return args, bindings


@outputs.releases_locks
def cli(argv: Sequence[str]) -> int:
    """The job: parse, configure gin, infer. Raises UserError for what the user can fix."""
    args, bindings = parse_args(argv)
    # Every job's configurables (T5Config, ...): a gin/models/*.gin file, which
    # tpu_scripts/launch.sh passes to every job, must parse here as it does for train.
    # Imported here, after parsing: they import TensorFlow (the data layer), which `--help`
    # skips and `jobs.run` loads quietly first.
    from flanrec import configurables

    configure_gin(args.gin_file, bindings, args.gin_search_paths)
    jobs.init_distributed(args)
    with refusing_unset_macros():
        summaries = configurables.infer()
    for s in summaries:
        rate = s.get("users_per_sec")
        log.info("%s: %s (%s examples, %d computed now%s)", s["task"], s["path"],
                 s["examples"] if s["examples"] is not None else "all",
                 s["computed"], f", {rate:.1f} users/s" if rate and rate == rate else "")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # FileNotFoundError: a CHECKPOINT_PATH or data file the user named does not exist.
    return jobs.run("flanrec.infer", cli, argv, user_errors=(FileNotFoundError,))
