"""The command line of `python -m flanrec.train` (its text is `flanrec.train.job`'s doc)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import jax

from flanrec.data import seqio_cache
from flanrec.files import outputs
from flanrec.frontend import jobs
from flanrec.frontend.gin_cli import (
    add_gin_job_flags,
    configure_gin,
    parse_gin_job_args,
    refusing_unset_macros,
    split_search_paths,
)
from flanrec.train import job
from flanrec.train.monitor import NonFiniteLossError
from flanrec.train.settings import check_gin_settings

log = logging.getLogger("flanrec.train")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = jobs.JobArgumentParser(prog="python -m flanrec.train", description=job.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gin_job_flags(parser, job="train")
    parser.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                        help="directories holding seqio caches (seqio.scripts.cache_tasks_main "
                             "output), searched when USE_CACHED_TASKS = True (comma-separated "
                             "or repeated; T5X's flag)")
    return parse_gin_job_args(parser, argv)


@outputs.releases_locks
def cli(argv: Sequence[str]) -> int:
    """The job: parse, configure gin, train. Raises UserError (one line via `main`) for what
    the user can fix."""
    args, bindings = parse_args(argv)
    # Here, after parsing: the configurables import TensorFlow (the data layer), which
    # `--help` skips and `jobs.run` loads quietly first.
    from flanrec import configurables

    configure_gin(args.gin_file, bindings, args.gin_search_paths)  # before any jax backend use
    check_gin_settings()
    seqio_cache.add_cache_dirs(split_search_paths(args.seqio_additional_cache_dirs))
    jobs.init_distributed(args)
    if jax.process_count() > 1:
        log.info("process %d of %d", jax.process_index(), jax.process_count())
    try:
        with refusing_unset_macros():
            result = configurables.train()
    except NonFiniteLossError as e:
        log.error("%s", e)
        return 1
    if result["preempted"]:
        log.info("stopped early at step %d after SIGTERM; rerun the same command to resume",
                 result["step"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.run("flanrec.train", cli, argv)
