"""The training stream held in memory (`flanrec.train.inputs.repeated_task_dataset`) is the
stream seqio builds, batch for batch over several epochs, packed and unpacked; a tiny
`flanrec.train` run gives bitwise the same parameters and losses with it as without."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import gin
import numpy as np
import pytest
import train_fixtures as tfx

from flanrec.train import cli as train_cli
from flanrec.train import inputs


def _cached_task_module(task: dict[str, str]) -> dict[str, str]:
    """The fixture's data and vocabulary as a task with a `seqio.CacheDatasetPlaceholder`
    (what flanrec's own tasks have; the in-memory path needs it)."""
    name, module = task["task"] + "_placeholder", task["module"] + "_placeholder"
    root = Path(task["dir"])
    (root / f"{module}.py").write_text(f'''"""Test task (tests/test_train_inputs_cache.py)."""
import seqio
import tensorflow as tf

VOCAB = seqio.SentencePieceVocabulary({task["spm"]!r})


@seqio.map_over_dataset
def _parse(line):
    parts = tf.strings.split(line, "\\t")
    return {{"inputs": parts[0], "targets": parts[1]}}


seqio.TaskRegistry.add(
    {name!r},
    source=seqio.TextLineDataSource(
        {{"train": {str(root / "train.tsv")!r}, "validation": {str(root / "validation.tsv")!r}}},
        num_input_examples={{"train": 16, "validation": 8}}),
    preprocessors=[_parse, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                   seqio.preprocessors.append_eos_after_trim],
    output_features={{"inputs": seqio.Feature(VOCAB), "targets": seqio.Feature(VOCAB)}},
    metric_fns=[])
''')
    return {**task, "task": name, "module": module}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = _cached_task_module(tfx.make_task(tmp_path_factory.mktemp("cache") / "task"))
    sys.path.insert(0, t["dir"])
    __import__(t["module"])
    yield t
    sys.path.remove(t["dir"])


@pytest.mark.parametrize("pack", [False, True])
def test_in_memory_stream_equals_seqios_over_epochs(task, pack: bool):
    cfg = inputs.DatasetConfig(task["task"], {"inputs": 40, "targets": 8}, "train", 4,
                               shuffle=True, seed=3, pack=pack)
    assert inputs._epoch_invariant_task(cfg) is not None  # the in-memory path is taken
    fast = inputs.train_batches(cfg, 4, 2)
    slow = inputs.train_batches(dataclasses.replace(cfg, in_memory=False), 4, 2)
    for i in range(20):  # 16 examples, 4 a batch: five epochs
        a, b = next(fast), next(slow)
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), (i, k)


def test_tasks_whose_stream_could_change_keep_seqios_pipeline(task, tmp_path):
    plain = tfx.make_task(tmp_path / "plain")  # no CacheDatasetPlaceholder
    sys.path.insert(0, plain["dir"])
    try:
        __import__(plain["module"])
    finally:
        sys.path.remove(plain["dir"])
    cfg = inputs.DatasetConfig(plain["task"], {"inputs": 40, "targets": 8}, "train", 4)
    assert inputs._epoch_invariant_task(cfg) is None
    assert inputs._epoch_invariant_task(dataclasses.replace(
        cfg, mixture_or_task_name=task["task"], use_cached=True)) is None


def _run(task: dict[str, str], model_dir: Path, extra: tuple[str, ...]) -> None:
    args = tfx.train_args(task, model_dir, steps=12, batch=4, extra=(
        "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=6", *extra))
    try:
        assert train_cli.cli(args) == 0
    finally:
        gin.clear_config()


def test_tiny_run_is_bitwise_the_same_in_memory(task, tmp_path):
    _run(task, tmp_path / "memory", ())
    _run(task, tmp_path / "seqio", ("--gin.train/DatasetConfig.in_memory=False",))
    a, b = tfx.params_of(tmp_path / "memory"), tfx.params_of(tmp_path / "seqio")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    la = tfx.read_scalars(tmp_path / "memory" / "train", "loss")
    lb = tfx.read_scalars(tmp_path / "seqio" / "train", "loss")
    assert len(la) == 12 and la == lb
