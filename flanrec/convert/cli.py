"""The command line of `python -m flanrec.convert` (the conversions are `flanrec.convert.job`)."""

from __future__ import annotations

import logging

from flanrec.convert.job import SOURCES, TARGETS, average, convert, summary
from flanrec.files import outputs
from flanrec.frontend import jobs
from flanrec.frontend.argtypes import int_range


@outputs.releases_locks
def cli(argv: list[str]) -> int:
    """The job: convert or average checkpoints, then print a one-line summary."""
    parser = jobs.JobArgumentParser(
        prog="python -m flanrec.convert",
        description="Convert Flan-T5 weights between Hugging Face, T5X and flanrec checkpoints.")
    parser.add_argument("--from", dest="src_kind", choices=SOURCES,
                        help="source format (not with --average: sources are auto-detected)")
    parser.add_argument("--src",
                        help="HF model dir | T5X checkpoint_N or model dir | flanrec checkpoint")
    parser.add_argument("--average", nargs="+", metavar="CKPT",
                        help="write the elementwise mean of these checkpoints (model soup; any "
                             "format load_params_any reads, one shared config)")
    parser.add_argument("--merge_lora", action="store_true",
                        help="--from flanrec of a LoRA run: fold W + alpha/r·A B into the "
                             "backbone so the output is a plain Flan-T5 checkpoint")
    parser.add_argument("--out", required=True, help="output directory (must not exist or be "
                        "empty, unless --overwrite)")
    parser.add_argument("--to", dest="dst_kind", default="flanrec", choices=TARGETS,
                        help="output format (default: flanrec params-only checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (only once the new output is complete)")
    parser.add_argument("--step", type=int_range(0, 2**31 - 1), default=None,
                        help="step of the written T5X checkpoint_N (--to t5x; default: the "
                             "flanrec checkpoint's own step, else 0). T5X continues counting "
                             "from it: TRAIN_STEPS there includes it")
    parser.add_argument("--vocab", default=None,
                        help="vocabulary to ship (--to hf/flanrec): a prepared data dir, a "
                             "dir with spiece.model, or a .model file (default: the one the "
                             "source carries, e.g. MODEL_DIR/spiece.model)")
    jobs.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    # What an export carried over (optimizer moments, tokenizer caveats) goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("flanrec.convert").setLevel(logging.INFO)
    if args.average and (args.src or args.src_kind or args.merge_lora):
        parser.error("--average takes the checkpoints itself: no --from/--src/--merge_lora")
    if not args.average and not (args.src and args.src_kind):
        parser.error("--from and --src are required (or --average CKPT CKPT ...)")
    if args.average:
        cfg, out = average(args.average, args.out, args.dst_kind, overwrite=args.overwrite,
                           step=args.step, vocab=args.vocab)
    else:
        cfg, out = convert(args.src_kind, args.src, args.out, args.dst_kind,
                           overwrite=args.overwrite, step=args.step,
                           merge_lora=args.merge_lora, vocab=args.vocab)
    src_desc = f"average of {len(args.average)}" if args.average else args.src_kind
    print(summary(cfg, src_desc, args.dst_kind, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError / FileNotFoundError / FileExistsError: the converters' diagnosed messages
    # (missing files, parameter shapes, refused formats), the user's since the CLI existed.
    return jobs.run("flanrec.convert", cli, argv, tensorflow=False,
                    user_errors=(ValueError, FileNotFoundError, FileExistsError))
