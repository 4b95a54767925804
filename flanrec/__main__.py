"""`python -m flanrec`: version and a map of the jobs, so a new user knows where to start."""

from __future__ import annotations

import argparse
import sys

from flanrec.version import __version__

_JOBS = {
    "prepare": "python -m flanrec.prepare --dataset ml-100k --out DIR   (data, splits, tasks)",
    "train": "python -m flanrec.train --gin_file=runs/finetune.gin --gin.MODEL_DIR=...",
    "convert": "python -m flanrec.convert --from hf|t5x|flanrec --src DIR --out DIR "
    "[--to flanrec|hf|t5x]",
    "infer": "python -m flanrec.infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=... "
    "--gin.MIXTURE_OR_TASK_NAME=... --gin.INFER_OUTPUT_DIR=...",
    "baselines": "python -m flanrec.baselines --data_dir DIR --model all --out DIR",
    "eval": "python -m flanrec.eval --predictions DIR --baselines DIR --data_dir DIR --out DIR",
    "ensemble": "python -m flanrec.ensemble templates|fuse ...",
    "quickstart": "python -m flanrec.quickstart   (prepare, train, infer, baselines, eval)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flanrec",
        description="Instruction-tune Flan-T5 as a recommender with JAX/Flax, SeqIO and Orbax.",
        epilog="jobs:\n" + "\n".join(f"  {k:10s} {v}" for k, v in _JOBS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(f"flanrec {__version__}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
