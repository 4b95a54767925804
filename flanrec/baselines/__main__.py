r"""`python -m flanrec.baselines`: popularity and SASRec top-K lists in the infer JSONL format.

    python -m flanrec.baselines --data_dir data/ml-100k --model all --out runs/baselines
    python -m flanrec.eval --predictions runs/x/infer --baselines runs/baselines \
        --data_dir data/ml-100k --out runs/x/eval

Writes `{model}-predict.jsonl-00000-of-00001` (task `popularity` / `sasrec`) per model for
the chosen split, plus `sasrec-train.json` (epochs, best validation NDCG@10, seconds) and
prints each model's metrics on that split. `--model families` (part of `all`) adds the
baselines of the other task families the prepared dir has (`flanrec.baselines.families`):
`bias-rating` (user + item biases), `popularity_binary-score` / `bias_binary-score` and
`popularity_direct-score`, with `families.json` recording the bias model's chosen shrinkage.

SASRec trains for at most `--max_epochs` with early stopping on validation NDCG@10: the same
seed gives the same numbers on any machine, however busy (`--max_train_seconds` exists for
interactive use only and makes the result depend on the machine's speed).
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: a caching malloc (flanrec.frontend.runtime)
    from flanrec.frontend import runtime

    runtime.reexec_with_tcmalloc()

import argparse
import sys
import time
from collections.abc import Sequence

from flanrec import metrics as metrics_lib
from flanrec.baselines import common, popularity
from flanrec.data import locations, prepared, splits
from flanrec.errors import ConfigError
from flanrec.files import outputs, storage
from flanrec.files.predictions import reporting_write_errors
from flanrec.frontend import jobs
from flanrec.frontend.argtypes import float_range, nonnegative_int, positive_int

MODELS = ("popularity", "sasrec", "families")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = jobs.JobArgumentParser(prog="python -m flanrec.baselines", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None,
                   help="a flanrec.prepare output directory (default: $FLANREC_DATA_DIR, else "
                   f"{locations.default_prepared_dir()})")
    p.add_argument("--model", default="all", choices=(*MODELS, "all"))
    p.add_argument("--out", required=True, help="directory for the JSONL predictions")
    p.add_argument("--split", default="test", choices=common.STAGES)
    p.add_argument("--k", type=positive_int, default=20, help="length of each top-K list")
    g = p.add_argument_group("sasrec")
    g.add_argument("--seed", type=nonnegative_int, default=0)
    g.add_argument("--max_epochs", type=positive_int, default=200)
    g.add_argument("--eval_every", type=positive_int, default=5)
    g.add_argument("--patience", type=positive_int, default=5)
    g.add_argument("--learning_rate", type=float_range(0, lo_open=True), default=1e-3)
    g.add_argument("--dropout", type=float_range(0, 0.99), default=0.2)
    g.add_argument("--batch_size", type=positive_int, default=128)
    g.add_argument("--num_heads", type=positive_int, default=1)
    g.add_argument("--max_train_seconds", type=float_range(0, lo_open=True), default=None,
                   help="wall-clock training budget (stops at the next epoch end, keeps the "
                        "best evaluated params)")
    jobs.add_verbose_flag(p)
    return p.parse_args(argv)


def _summary(name: str, examples: Sequence[splits.EvalExample],
             ranked: Sequence[Sequence[str]]) -> dict[str, float]:
    """Print one system's headline ranking metrics (raw lists, unmasked) and return them all."""
    m = metrics_lib.ranking_metrics(ranked, [e.target for e in examples])
    keys = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr@10")
    print(f"{name:10s} " + "  ".join(f"{k.upper()} {m[k]:.4f}" for k in keys), flush=True)
    return m


@outputs.releases_locks
def cli(argv: Sequence[str]) -> int:
    """The job: train/rank each baseline and write its predictions. Raises UserError."""
    args = parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    outputs.check_claimable(args.out, "baselines", what="--out")  # before training
    # One directory for every baseline: the family baselines read its TFRecords too.
    data_dir = args.data_dir or locations.default_data_dir()
    split = prepared.load_split(data_dir)
    models = MODELS if args.model == "all" else (args.model,)
    if "popularity" in models:

        examples, ranked, scores = popularity.recommend(split, args.split, args.k)
        path = common.write_predictions(args.out, "popularity", common.prediction_rows(
            "popularity", args.split, examples, ranked, scores))
        print(f"popularity: wrote {path}", flush=True)
        _summary("popularity", examples, ranked)
    if "sasrec" in models:
        # Lazy: JAX/Flax, 3.4 s to import here; popularity alone runs without them.
        from flanrec.baselines import sasrec

        cfg = sasrec.SASRecConfig(
            num_heads=args.num_heads, dropout=args.dropout, learning_rate=args.learning_rate,
            batch_size=args.batch_size, max_epochs=args.max_epochs,
            eval_every=args.eval_every, patience=args.patience, seed=args.seed,
            max_train_seconds=args.max_train_seconds)
        t0 = time.time()
        result = sasrec.train(split, cfg, progress=lambda msg: print(msg, flush=True))
        examples, ranked, scores = sasrec.recommend(result, split, args.split, args.k)
        path = common.write_predictions(args.out, "sasrec", common.prediction_rows(
            "sasrec", args.split, examples, ranked, scores))
        print(f"sasrec: best epoch {result.best_epoch} (valid NDCG@10 "
              f"{result.best_valid_ndcg10:.4f}), trained in {result.seconds:.0f}s; "
              f"wrote {path}", flush=True)
        m = _summary("sasrec", examples, ranked)
        info = {"config": vars(args), "best_epoch": result.best_epoch,
                "best_valid_ndcg@10": result.best_valid_ndcg10,
                "epochs_run": result.epochs_run, "train_seconds": result.seconds,
                "total_seconds": time.time() - t0, "history": result.history,
                f"{args.split}_metrics": m}
        _write_json(storage.join(args.out, "sasrec-train.json"), info)
    if "families" in models:
        # The family baselines read the prepared TFRecords: import TF through the front end
        # (quiet, off accelerators) rather than letting the first read print its start-up.
        jobs.load_tensorflow(args.verbose)
        from flanrec.baselines import families  # lazy: scipy and the data layer, 0.9 s

        rows, info = families.all_rows(split, data_dir, args.split)
        for task, (mode, records) in rows.items():
            path = common.write_predictions(args.out, task, records, mode)
            print(f"{task}: wrote {path}", flush=True)
        _write_json(storage.join(args.out, "families.json"), info)
    return 0


def _write_json(path: str, obj: object) -> None:

    with reporting_write_errors(path):  # a full disk: one line, the old file intact
        storage.write_json_atomic(path, obj, ensure_ascii=True)


def main(argv: Sequence[str] | None = None) -> int:
    return jobs.run("flanrec.baselines", cli, argv, tensorflow=False)


if __name__ == "__main__":
    sys.exit(main())
