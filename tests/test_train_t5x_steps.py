"""TRAIN_STEPS as T5X means it: from a T5X INITIAL_CHECKPOINT_PATH the step count continues
from the checkpoint's own step (T5X restores it), TRAIN_STEPS includes it, TRAIN_STEPS_RELATIVE
counts past it, the log line says which, and a resumed run keeps the same anchor."""

from __future__ import annotations

import json
import sys

import gin
import numpy as np
import pytest
import train_fixtures as tfx

from flanrec.errors import UserError
from flanrec.frontend import jobs
from flanrec.interop.t5x import checkpoint_step, write_t5x_checkpoint
from flanrec.model.config import get_preset
from flanrec.model.params import param_specs, unflatten
from flanrec.train import cli as train

T5X_STEP = 1000


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("t5xsteps") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


@pytest.fixture(scope="module")
def t5x_ckpt(tmp_path_factory):
    rng = np.random.default_rng(0)
    params = unflatten({k: rng.standard_normal(s).astype(np.float32) * 0.1
                        for k, (s, _) in param_specs(get_preset("tiny")).items()})
    return write_t5x_checkpoint(params, tmp_path_factory.mktemp("t5x"), T5X_STEP)


def _main(args: list[str]) -> int:
    try:
        jobs.setup_logging(verbose=False)  # what train.main does before the body
        return train.cli(args)  # raises UserError; main prints it as one line
    finally:
        gin.clear_config()


def _args(task, model_dir, t5x_ckpt, *extra):
    return tfx.train_args(task, model_dir, steps=T5X_STEP + 2, extra=(
        f"--gin.INITIAL_CHECKPOINT_PATH={t5x_ckpt}", "--gin.CHECKPOINT_PERIOD=1", *extra))


def test_step_of_a_t5x_checkpoint(t5x_ckpt, tmp_path):
    assert checkpoint_step(t5x_ckpt) == T5X_STEP
    assert checkpoint_step(t5x_ckpt.parent) == T5X_STEP  # a model dir: its latest step
    assert checkpoint_step(tmp_path) is None  # not a T5X checkpoint


def test_train_steps_include_the_t5x_step_and_resume_keeps_them(task, t5x_ckpt, tmp_path,
                                                                capsys):
    run = tmp_path / "run"
    assert _main(_args(task, run, t5x_ckpt)) == 0
    out = capsys.readouterr().out
    assert (f"training from step {T5X_STEP} to {T5X_STEP + 2} (TRAIN_STEPS counts the "
            f"{T5X_STEP} steps of the T5X initial checkpoint, as in T5X") in out
    assert sorted(p.name for p in run.glob("checkpoint_*")) == [
        f"checkpoint_{T5X_STEP + 1}", f"checkpoint_{T5X_STEP + 2}"]
    meta = json.loads((run / f"checkpoint_{T5X_STEP + 2}" / "meta" / "metadata").read_text())
    assert meta["initial_step"] == T5X_STEP and meta["data_position"]["train_batches"] == 2
    # Resume with a later total: continues at T5X_STEP + 2, skipping the 2 batches it saw.
    assert _main(tfx.train_args(task, run, steps=T5X_STEP + 3, extra=(
        f"--gin.INITIAL_CHECKPOINT_PATH={t5x_ckpt}",))) == 0
    out = capsys.readouterr().out
    assert f"at step {T5X_STEP + 2} (skipping 2 input batches)" in out
    assert (run / f"checkpoint_{T5X_STEP + 3}").is_dir()


def test_train_steps_relative(task, t5x_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    assert _main(_args(task, run, t5x_ckpt, "--gin.TRAIN_STEPS=None",
                       "--gin.TRAIN_STEPS_RELATIVE=1")) == 0
    assert (f"training from step {T5X_STEP} to {T5X_STEP + 1} (TRAIN_STEPS_RELATIVE=1 steps "
            f"after step {T5X_STEP}") in capsys.readouterr().out
    assert [p.name for p in run.glob("checkpoint_*")] == [f"checkpoint_{T5X_STEP + 1}"]


def test_train_steps_below_the_t5x_step_say_what_to_set(task, t5x_ckpt, tmp_path):
    args = tfx.train_args(task, tmp_path / "run", steps=2, extra=(
        f"--gin.INITIAL_CHECKPOINT_PATH={t5x_ckpt}",))
    with pytest.raises(UserError, match=rf"TRAIN_STEPS=2 is not above step {T5X_STEP}.*"
                                        rf"TRAIN_STEPS={T5X_STEP + 2} \(or "
                                        r"TRAIN_STEPS_RELATIVE=2\)"):
        _main(args)
    assert not list((tmp_path / "run").glob("checkpoint_*"))
