"""`flanrec.train` refuses what it would otherwise accept silently (issue 13).

Real runs of the job in-process on the tiny SeqIO task of `train_fixtures`: bad TRAIN_STEPS
values fail before anything is built, TASK_FEATURE_LENGTHS that would cut the targets are
refused with the p99 length, an INITIAL_CHECKPOINT_PATH with NaN weights is refused by
parameter name, and a resume whose newest checkpoint is damaged continues exactly from the
newest intact one.
"""

from __future__ import annotations

import sys

import gin
import numpy as np
import pytest
import train_fixtures as tfx

from flanrec.checkpoints import load_params, save_params_checkpoint
from flanrec.errors import UserError
from flanrec.model.config import get_preset
from flanrec.model.params import NonFiniteParamsError, flatten, param_specs, unflatten
from flanrec.train import cli as train


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("trust") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


def _main(args: list[str]) -> int:
    try:
        return train.cli(args)  # raises; main turns it into one line + exit 2
    finally:
        gin.clear_config()


@pytest.mark.parametrize("value,expect", [
    ("-5", "TRAIN_STEPS must be a positive integer .*got -5"),
    ("0", "TRAIN_STEPS must be a positive integer .*got 0"),
    ("abc", "TRAIN_STEPS must be a positive integer .*got 'abc'"),
    ("2.5", "TRAIN_STEPS must be a positive integer .*got 2.5"),
])
def test_bad_train_steps_are_refused_before_anything_is_built(task, tmp_path, value, expect):
    args = tfx.train_args(task, tmp_path / "run", steps=1) + [f"--gin.TRAIN_STEPS={value}"]
    with pytest.raises(UserError, match=expect):
        _main(args)
    assert not (tmp_path / "run").exists()  # not even MODEL_DIR was created


def test_bad_train_steps_refused_even_when_a_schedule_reads_them(task, tmp_path):
    # linear_schedule.total_steps = %TRAIN_STEPS is evaluated by gin before train() runs.
    args = tfx.train_args(task, tmp_path / "run", steps=1) + [
        "--gin.make_optimizer.schedule=@linear_schedule()",
        "--gin.linear_schedule.total_steps=%TRAIN_STEPS", "--gin.TRAIN_STEPS=abc"]
    with pytest.raises(UserError, match="TRAIN_STEPS must be a positive integer"):
        _main(args)


@pytest.mark.parametrize("binding,expect", [
    ("--gin.BATCH_SIZE=0", "BATCH_SIZE must be a positive integer"),
    ("--gin.LOG_PERIOD=0", "LOG_PERIOD must be a positive integer"),
    ("--gin.CHECKPOINT_PERIOD=-1", "CHECKPOINT_PERIOD must be an integer >= 0"),
    ("--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 'x'}", "TASK_FEATURE_LENGTHS must"),
    ("--gin.LEARNING_RATE=fast", "LEARNING_RATE must be a number"),
])
def test_other_bad_settings_are_refused_by_name(task, tmp_path, binding, expect):
    with pytest.raises(UserError, match=expect):
        _main(tfx.train_args(task, tmp_path / "run", steps=1) + [binding])
    assert not (tmp_path / "run").exists()


def test_feature_lengths_that_cut_targets_are_refused_with_the_p99(task, tmp_path):
    args = tfx.train_args(task, tmp_path / "run", steps=1) + [
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 2}"]
    with pytest.raises(UserError, match=r"TASK_FEATURE_LENGTHS\['targets'\] = 2 would "
                                        r"truncate 100.0% of the train examples of "
                                        rf"{task['task']} \(sampled 16; targets p99 \d+ "
                                        "tokens"):
        _main(args)
    assert not list((tmp_path / "run").glob("checkpoint_*"))


def test_feature_lengths_that_cut_inputs_are_refused(task, tmp_path):
    args = tfx.train_args(task, tmp_path / "run", steps=1) + [
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]  # 1 of 16 is 36 tokens
    with pytest.raises(UserError, match=r"TASK_FEATURE_LENGTHS\['inputs'\] = 32 would "
                                        r"truncate 6.2% .*inputs p99 35 tokens, longest 36"):
        _main(args)


def test_feature_lengths_check_can_be_tuned_in_gin(task):
    import importlib

    from flanrec.data import length_check

    importlib.import_module(task["module"])  # registers the task, as MIXTURE_OR_TASK_MODULE
    lengths = {"inputs": 40, "targets": 2}
    gin.parse_config(["length_check_settings.max_cut = {'targets': 1.0, 'inputs': 1.0}"])
    try:  # the user accepted any truncation: reported, not refused
        reports = length_check.check_feature_lengths(task["task"], lengths)
        assert [r.cut for r in reports if r.feature == "targets"] == [16]
        gin.parse_config(["length_check_settings.sample = 0"])
        assert length_check.check_feature_lengths(task["task"], lengths) == []  # off
    finally:
        gin.clear_config()


def test_nan_initial_checkpoint_is_refused_by_name_before_training(task, tmp_path):
    cfg = get_preset("tiny")
    rng = np.random.default_rng(0)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in
            param_specs(cfg).items()}
    flat["decoder/layers_1/self_attention/query/kernel"][3, :7] = np.nan
    save_params_checkpoint(cfg, unflatten(flat), tmp_path / "init")
    args = tfx.train_args(task, tmp_path / "run", steps=2, extra=(
        f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'init'}",))
    with pytest.raises(NonFiniteParamsError, match=r"INITIAL_CHECKPOINT_PATH .*init: 1 "
                       r"parameter\(s\) hold non-finite values: decoder/layers_1/"
                       r"self_attention/query/kernel \(7 NaN, 0 inf"):
        _main(args)
    assert not list((tmp_path / "run").glob("checkpoint_*"))


@pytest.mark.slow
def test_resume_skips_a_damaged_newest_checkpoint_and_stays_exact(task, tmp_path):
    model_dir = tmp_path / "run"
    args = tfx.train_args(task, model_dir, steps=2, extra=("--gin.CHECKPOINT_PERIOD=1",))
    assert _main(args) == 0
    original = flatten(load_params(model_dir / "checkpoint_2")[1])
    data = max((model_dir / "checkpoint_2" / "params").rglob("*"),
               key=lambda p: p.stat().st_size if p.is_file() else -1)
    raw = bytearray(data.read_bytes())
    raw[100:356] = bytes(256)
    data.write_bytes(bytes(raw))
    assert _main(args) == 0  # resumes from step 1 and trains step 2 again
    aside = [p.name for p in model_dir.iterdir() if p.name.startswith("checkpoint_2.damaged-")]
    assert len(aside) == 1
    again = flatten(load_params(model_dir / "checkpoint_2")[1])
    for k in original:  # the input position and RNG came from step 1: bitwise the same
        np.testing.assert_array_equal(again[k], original[k], err_msg=k)
