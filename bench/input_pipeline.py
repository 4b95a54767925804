"""Input-pipeline throughput: the seqio stream `flanrec.train` feeds, against step consumption.

    FLANREC_DATA_DIR=data/ml-100k python bench/input_pipeline.py            # ml100k_rec_mix
    FLANREC_DATA_DIR=data/ml-100k python bench/input_pipeline.py \
        --experiment gin/experiments/ml100k_seqrec.gin                       # its task/shapes
    python bench/input_pipeline.py --module my_tasks --task my_task --smoke  # any seqio task
    python bench/input_pipeline.py --cached /data/seqio_cache   # + the same streams from
                                                                # seqio's offline cache

Builds the training stream exactly as the trainer does (`flanrec.train.inputs.train_batches`: seqio
`get_dataset` with the `EncDecFeatureConverter`, shuffle, repeat, batch, prefetch), by default
at the shape train_throughput.py measures (batch 16, 128 input / 8 target tokens; the CPU
experiment gin uses 256 / 16: pass --inputs/--targets), packed and unpacked, and times how
fast batches come out after a warm-up (startup, i.e. building the mixture and filling the
shuffle buffer, is reported separately).
Examples/s counts source examples (packed rows hold several: one per segment id). The
consumption side is the newest non-smoke `train_throughput` record of each preset in the
results file (examples/s of the train step); goal: the pipeline is >= 10x faster.

`--cached DIR` adds the same two streams read from seqio's offline cache in DIR
(`seqio.scripts.cache_tasks_main`, see README "Cache the preprocessing"): what the cache buys
is the tokenization the uncached stream does per batch, so compare `CPU ms/batch`. Numbers
are only worth recording on an idle machine; the record carries the load average.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common  # noqa: E402


def _examples_in(batch: dict[str, Any], packed: bool) -> int:
    import numpy as np

    if packed:
        return int(np.sum(np.max(batch["encoder_segment_ids"], axis=1)))
    return int(np.sum(np.any(batch["decoder_target_tokens"] > 0, axis=1)))


def measure(task: str, lengths: dict[str, int], batch: int, pack: bool, batches: int,
            warmup: int, use_cached: bool = False) -> dict[str, float]:
    """Batches/s and source examples/s of the trainer's own stream after `warmup` batches."""
    from flanrec.train import job as train

    cfg = train.DatasetConfig(mixture_or_task_name=task, task_feature_lengths=lengths,
                              split="train", batch_size=batch, shuffle=True, seed=0, pack=pack,
                              use_cached=use_cached)
    if use_cached:
        train.check_task(cfg, model_vocab=1 << 30)  # refuses a missing or stale cache
    t0 = time.perf_counter()
    it = train.train_batches(cfg, batch, 0)
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - t0
    examples, start = 0, time.perf_counter()
    cpu0 = time.process_time()
    for _ in range(batches):
        examples += _examples_in(next(it), pack)
    dt = time.perf_counter() - start
    return {"batches_per_s": batches / dt, "examples_per_s": examples / dt,
            "rows_per_s": batches * batch / dt, "examples_per_row": examples / (batches * batch),
            "cpu_s_per_batch": (time.process_time() - cpu0) / batches, "startup_s": first}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", default="tasks.movielens", help="module registering the task")
    ap.add_argument("--task", default="ml100k_rec_mix")
    ap.add_argument("--inputs", type=int, default=128)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=100, help="timed batches per setting")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--experiment", default=None, metavar="GIN_FILE",
                    help="take task, module, lengths and batch from a gin experiment and "
                    "compare with the train_throughput record of that experiment")
    ap.add_argument("--smoke", action="store_true", help="few batches: seconds")
    ap.add_argument("--cached", metavar="CACHE_DIR", default=None,
                    help="also time the streams read from this seqio cache dir")
    ap.add_argument("--no_record", action="store_true")
    args = ap.parse_args(argv)
    if args.experiment:
        exp = _common.experiment_settings(args.experiment)
        args.module, args.task, args.batch = exp["module"], exp["task"], exp["batch"]
        args.inputs, args.targets = exp["lengths"]["inputs"], exp["lengths"]["targets"]
    if args.smoke:
        args.batches, args.warmup, args.batch = 3, 1, 4
    _common.quiet_logs()
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    importlib.import_module(args.module)
    lengths = {"inputs": args.inputs, "targets": args.targets}
    if args.cached:
        import seqio

        seqio.add_global_cache_dirs([args.cached])
    results = {}
    for cached in (False, True) if args.cached else (False,):
        for pack in (False, True):
            name = ("packed" if pack else "unpacked") + (", cached" if cached else "")
            results[name] = measure(args.task, lengths, args.batch, pack, args.batches,
                                    args.warmup, use_cached=cached)

    consumers = {}
    presets: tuple[str, ...] = ("tiny", "flan-t5-small")
    for preset in presets:
        rec = _common.last_result("train_throughput", preset=preset, smoke=False)
        if rec:
            consumers[preset] = (rec["sides"]["flanrec"]["examples_per_s"],
                                 f"{rec['batch']}x{rec['enc_len']}/{rec['dec_len']}")
    if args.experiment:
        rec = _common.last_result("train_throughput", experiment=args.experiment, smoke=False)
        name = os.path.basename(args.experiment)
        presets = (name,)
        consumers = {name: (rec["sides"]["flanrec"]["examples_per_s"],
                            f"{rec['batch']}x{rec['enc_len']}/{rec['dec_len']}")} if rec else {}
    rows = []
    for name, r in results.items():
        row = [name, r["startup_s"], r["batches_per_s"], r["examples_per_s"],
               r["examples_per_row"], r["cpu_s_per_batch"] * 1e3]
        for preset in presets:
            c = consumers.get(preset)
            row.append(f"{r['examples_per_s'] / c[0]:.1f}x" if c else "n/a")
        rows.append(row)
    header = ["stream", "startup s", "batches/s", "examples/s", "examples/row", "CPU ms/batch",
              *(f"vs {p} step" for p in presets)]
    _common.print_table(f"seqio input pipeline, {args.task}, batch {args.batch}, "
                        f"{args.inputs}/{args.targets} tokens, {os.cpu_count()} cores", header,
                        rows)
    for preset, (eps, shape) in consumers.items():
        print(f"train step consumption ({preset}, {shape}, from the results file): "
              f"{eps:.3g} examples/s")
    record = {"bench": "input_pipeline", "task": args.task, "lengths": lengths,
              "experiment": args.experiment,
              "batch": args.batch, "smoke": args.smoke, "streams": results,
              "cached_from": args.cached,
              "consumers_examples_per_s": {k: v[0] for k, v in consumers.items()}}
    if not args.no_record:
        print(f"appended to {_common.append_result(record)}")
    return record


if __name__ == "__main__":
    main()
