"""seqio's offline cache, for real: Apache Beam's DirectRunner caches prepared flanrec tasks
and training reads the cache.

Beam lives in its own virtualenv (`tpu_scripts/make_cache_venv.sh`, which `.ci/run` builds):
it needs protobuf < 7, the main environment runs 7. The test prepares a small interaction log,
runs seqio's own `cache_tasks_main` in that venv, then checks from the main environment:

* the cache holds exactly the examples the uncached pipeline produces, feature by feature,
  for every task and split (the preprocessing before `CacheDatasetPlaceholder` is
  deterministic);
* a training stream read from the cache is deterministic and resumes exactly (skip k batches
  = the uncached stream's own resume rule), and one unshuffled epoch of model batches holds
  the same rows as the uncached epoch. The *order* differs by seqio's design: its cache
  writer reshuffles all examples globally before sharding ("should not be removed", in
  seqio/scripts/cache_tasks_main.py), so no cache can replay the uncached order;
* `python -m flanrec.train --gin.USE_CACHED_TASKS=True` trains from the cache with the
  source TFRecords moved away (so it cannot have read them), and without a cache it stops
  with a one-line error naming the command that builds one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BEAM_PYTHON = Path(os.environ.get("FLANREC_BEAM_PYTHON") or REPO / ".venv-cache/bin/python")
PREFIX = "toycache"
TASKS = (f"{PREFIX}_seq_seqidx", f"{PREFIX}_direct_seqidx")
LENGTHS = {"inputs": 256, "targets": 16}

pytestmark = pytest.mark.slow


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    from train_fixtures import FAST_COMPILE

    env = dict(os.environ)
    env.update({"FLANREC_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO),
                "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "XLA_FLAGS": FAST_COMPILE},
               **extra)
    env.pop("FLANREC_SEQIO_CACHE_DIRS", None)
    return env


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """(prepared dir, cache dir): a 40-user log prepared with two task families, cached by
    seqio's Beam pipeline in the cache venv."""
    if not BEAM_PYTHON.exists():
        pytest.fail(f"no Beam venv at {BEAM_PYTHON}: run tpu_scripts/make_cache_venv.sh "
                    "(or set FLANREC_BEAM_PYTHON)")
    from flanrec.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("seqio_cache")
    rows = ["user_id,item_id,timestamp"]
    for u in range(40):
        for t in range(10):
            rows.append(f"u{u},{1 + (u * 7 + t * 3) % 60},{1000 + 10 * t}")
    (root / "log.csv").write_text("\n".join(rows) + "\n")
    data = root / "data"
    prepare(PrepareOptions(dataset="csv", raw_dir=str(root / "log.csv"), out=str(data),
                           task_prefix=PREFIX, families=("seq", "direct"), train_vocab=True,
                           vocab_size=600, num_candidates=5, allow_download=False),
            log=lambda m: None, progress=lambda m: None)
    cache = root / "cache"
    proc = subprocess.run(
        [str(BEAM_PYTHON), "-m", "seqio.scripts.cache_tasks_main", f"--tasks={','.join(TASKS)}",
         f"--output_cache_dir={cache}", "--module_import=tasks", "--min_shards=2"],
        cwd=REPO, env=_env(data), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for task in TASKS:
        assert (cache / task / "COMPLETED").exists(), sorted(p.name for p in cache.iterdir())

    import seqio

    import tasks

    before = list(seqio.utils.get_global_cache_dirs())
    tasks.register_prepared(str(data))
    seqio.add_global_cache_dirs([str(cache)])
    yield data, cache
    seqio.utils.set_global_cache_dirs(before)
    tasks.unregister_prepared(PREFIX)


def _canonical(example: dict) -> tuple:
    """An example as comparable values: ints as Python ints (the cache stores int32/int64 as
    it likes), strings as bytes."""
    out = []
    for key in sorted(example):
        v = np.asarray(example[key])
        if v.dtype.kind in "iub":
            out.append((key, tuple(int(x) for x in v.reshape(-1)), v.shape))
        elif v.dtype.kind in "SO":
            out.append((key, tuple(bytes(x) for x in v.reshape(-1)), v.shape))
        else:
            out.append((key, tuple(float(x) for x in v.reshape(-1)), v.shape))
    return tuple(out)


def _examples(task_name: str, split: str, use_cached: bool) -> list[tuple]:
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(LENGTHS, split=split, use_cached=use_cached, shuffle=False,
                          num_epochs=1, try_in_mem_cache=False)
    return [_canonical(ex) for ex in ds.as_numpy_iterator()]


def test_cache_holds_exactly_the_uncached_examples(cached):
    import seqio

    for name in TASKS:
        task = seqio.get_mixture_or_task(name)
        assert task.supports_caching and task.cache_dir == str(cached[1] / name)
        for split in task.splits:
            fresh, from_cache = _examples(name, split, False), _examples(name, split, True)
            assert len(fresh) == task.num_input_examples(split) > 0, (name, split)
            assert {k for k, _, _ in fresh[0]} == {k for k, _, _ in from_cache[0]}
            assert sorted(fresh) == sorted(from_cache), (name, split)
            assert task.get_cached_stats(split)["examples"] == len(fresh)  # Beam's own count


def _batches(cfg, n: int, skip: int = 0) -> list[dict[str, np.ndarray]]:
    from flanrec.train import job as train

    it = train.train_batches(cfg, 4, skip)
    return [next(it) for _ in range(n)]


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True))


def test_training_stream_from_the_cache_is_deterministic_and_resumes(cached):
    from flanrec.train import inputs as train_inputs
    from flanrec.train import job as train

    cfg = train.DatasetConfig(mixture_or_task_name=f"{PREFIX}_rec_mix",
                              task_feature_lengths=LENGTHS, split="train", batch_size=4,
                              shuffle=True, seed=3, pack=False, use_cached=True)
    train.check_task(cfg, model_vocab=100_000)  # cached, not stale
    first = _batches(cfg, 6)
    assert _equal(first, _batches(cfg, 6))  # the same run twice
    assert _equal(first[3:], _batches(cfg, 3, skip=3))  # a resumed run sees the same batches
    uncached = _batches(dataclasses.replace(cfg, use_cached=False), 6)
    assert not _equal(first, uncached)  # seqio reshuffled the cache: other order, same data

    # One unshuffled epoch of model features, cached vs uncached: the same rows.
    def rows(use_cached: bool) -> list[bytes]:
        c = dataclasses.replace(cfg, use_cached=use_cached, shuffle=False,
                                mixture_or_task_name=TASKS[0])
        ds = train_inputs.seqio_dataset(c, repeat=False, shuffle=False)
        return sorted(b"|".join(np.asarray(ex[k]).tobytes() for k in sorted(ex))
                      for ex in ds.as_numpy_iterator())

    fresh = rows(False)
    assert len(fresh) > 100 and fresh == rows(True)


def _train_args(model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flanrec.train", "--gin_file=gin/models/tiny.gin",
            "--gin_file=gin/runs/finetune.gin", f"--gin.MODEL_DIR={model_dir}",
            f"--gin.MIXTURE_OR_TASK_NAME={PREFIX}_rec_mix",
            "--gin.MIXTURE_OR_TASK_MODULE=tasks",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 16}",
            "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.INITIAL_CHECKPOINT_PATH=None",
            "--gin.EVAL_PERIOD=0", "--gin.LOG_PERIOD=1", "--gin.PACK=False",
            "--gin.T5Config.vocab_size=1024", "--gin.USE_CACHED_TASKS=True", *extra]


def test_train_job_trains_from_the_cache_alone(cached, tmp_path):
    data, cache = cached
    # Without the cache dir: one line, exit 2, naming the task and how to build the cache.
    proc = subprocess.run(_train_args(tmp_path / "nocache"), cwd=REPO, env=_env(data),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "is not cached in any seqio cache dir" in err[0], proc.stderr
    assert "cache_tasks_main" in err[0] and "Traceback" not in proc.stderr

    # With it, and with the split the examples are rendered from moved away: training can
    # only read the cache.
    moved = tmp_path / "split.json"
    shutil.move(str(data / "split" / "split.json"), moved)
    try:
        proc = subprocess.run(
            _train_args(tmp_path / "run", f"--seqio_additional_cache_dirs={cache}"),
            cwd=REPO, env=_env(data), capture_output=True, text=True, timeout=1200)
    finally:
        shutil.move(str(moved), data / "split" / "split.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 2/2" in proc.stdout
    assert (tmp_path / "run" / "checkpoint_2").exists()


def test_bench_input_pipeline_times_the_cached_streams(cached, tmp_path):
    """`bench/input_pipeline.py --cached DIR` times the trainer's stream from the cache next to
    the uncached one (smoke size: this checks the plumbing, not speed)."""
    import json

    data, cache = cached
    results = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "bench/input_pipeline.py", "--module", "tasks", "--task",
         f"{PREFIX}_rec_mix", "--inputs", "256", "--targets", "16", "--cached", str(cache),
         "--smoke"], cwd=REPO, env=_env(data, FLANREC_BENCH_RESULTS=str(results)),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(results.read_text().splitlines()[-1])
    assert rec["cached_from"] == str(cache) and "loadavg_1m" in rec["machine"]
    assert set(rec["streams"]) == {"unpacked", "packed", "unpacked, cached", "packed, cached"}
    assert all(s["examples_per_s"] > 0 for s in rec["streams"].values())
