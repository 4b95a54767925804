r"""Ensembles from the command line.

    # one checkpoint, several phrasings of the instruction, fused
    python -m flanrec.ensemble templates --checkpoint runs/ml100k_seqrec \
        --data_dir data/ml-100k-h20 --templates 0,1,2 --method mean --out runs/ens

    # several runs' (or checkpoints') prediction files, fused
    python -m flanrec.ensemble fuse --predictions runs/a/infer runs/b/infer --method rrf \
        --out runs/ens_ab

Both write the inference output contract, so ``python -m flanrec.eval --predictions OUT``
reports members and ensemble side by side. Checkpoint averaging ("model soup") is a
conversion instead: ``python -m flanrec.convert --average CKPT ... --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from flanrec.ensemble import fusion
from flanrec.ensemble.files import fuse_prediction_dirs
from flanrec.files import outputs
from flanrec.frontend import jobs
from flanrec.frontend.argtypes import float_range, positive_int


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from e
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got "
                                         f"{text!r}")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from e
    if not values or not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers >= 0, not "
                                         f"all 0, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = jobs.JobArgumentParser(prog="python -m flanrec.ensemble", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs.add_verbose_flag(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=jobs.JobArgumentParser)
    t = sub.add_parser("templates", help="fuse one checkpoint's rankings over templates")
    jobs.add_verbose_flag(t)
    t.add_argument("--checkpoint", required=True, help="flanrec MODEL_DIR/checkpoint, HF, T5X")
    t.add_argument("--data_dir", required=True, help="the prepared dir the model was trained on")
    t.add_argument("--templates", type=_ints, required=True,
                   help="seq-family template indices, e.g. 0,1,2 (see flanrec.data.templates)")
    t.add_argument("--method", default="mean", choices=fusion.METHODS)
    t.add_argument("--split", default="test", choices=("validation", "test"))
    t.add_argument("--num_beams", type=positive_int, default=20)
    t.add_argument("--input_length", type=positive_int, default=512)
    t.add_argument("--target_length", type=positive_int, default=16)
    t.add_argument("--batch_size", type=positive_int, default=32)
    t.add_argument("--temperature", type=float_range(0, lo_open=True), default=None,
                   help="weighted: softmax temperature over validation NDCG@10 (default: "
                        "weights proportional to it)")
    t.add_argument("--out", required=True)
    f = sub.add_parser("fuse", help="fuse several runs' prediction files")
    jobs.add_verbose_flag(f)
    f.add_argument("--predictions", nargs="+", required=True, help="dirs or globs, >= 2")
    f.add_argument("--method", default="rrf", choices=fusion.METHODS)
    f.add_argument("--weights", type=_floats, default=None)
    f.add_argument("--top_k", type=positive_int, default=None,
                   help="items per fused list (default: the longest member list's length)")
    f.add_argument("--out", required=True)
    return p.parse_args(argv)


@outputs.releases_locks
def cli(argv: Sequence[str]) -> int:
    """The job: run the chosen ensemble and print its summary."""
    args = parse_args(argv)
    if args.command == "templates":
        # Lazy: JAX and TF (13.9 s to import here); `fuse` reads JSONL with numpy only.
        from flanrec.ensemble.templates import TemplateEnsembleOptions, run_template_ensemble

        opts = TemplateEnsembleOptions(
            templates=args.templates, method=args.method, split=args.split,
            num_beams=args.num_beams, input_length=args.input_length,
            target_length=args.target_length, batch_size=args.batch_size,
            temperature=args.temperature)
        summary = run_template_ensemble(args.checkpoint, args.data_dir, args.out, opts)
    else:

        paths = fuse_prediction_dirs(args.predictions, args.out, args.method, args.weights,
                                     args.top_k)
        summary = {"method": args.method, "paths": paths}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # ValueError / FileNotFoundError: the ensemble modules' diagnosed messages (file:line,
    # member, template index), reported as the user's since the CLI was written.
    return jobs.run("flanrec.ensemble", cli, argv,
                    user_errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
