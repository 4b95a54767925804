"""The moving average of the weights (EMA_DECAY): exact updates, exact resume, and the
checkpoint naming the average as the parameters inference reads."""

from __future__ import annotations

import sys

import gin
import jax
import numpy as np
import optax
import pytest
import train_fixtures as tfx

import flanrec.configurables  # noqa: F401 - the names the gin files bind
from flanrec import partitioning
from flanrec.errors import ConfigError
from flanrec.model.config import get_preset
from flanrec.model.params import flatten
from flanrec.train import cli as train_cli
from flanrec.train import ema as ema_lib
from flanrec.train import losses, optimizers
from flanrec.train import steps as trainer


def _ema_reference(ema: np.ndarray, params: np.ndarray, decay: float) -> np.ndarray:
    """float32 `decay * ema + (1 - decay) * params`, correctly rounded, as numpy computes
    it; where XLA contracts a product and the sum into one fused multiply-add (XLA:CPU does,
    per element, as LLVM chooses) the result is rounded once instead of twice, so an element
    may instead equal that single-rounding value. Any other value fails."""
    keep, take = np.float32(decay), np.float32(1.0 - decay)
    a, b = keep * ema, take * params
    plain = a + b
    fused_a = (keep.astype(np.float64) * ema + b.astype(np.float64)).astype(np.float32)
    fused_b = (a.astype(np.float64) + take.astype(np.float64) * params).astype(np.float32)
    return plain, fused_a, fused_b


def _assert_ema(got: np.ndarray, ema: np.ndarray, params: np.ndarray, decay: float,
                name: str) -> np.ndarray:
    plain, fused_a, fused_b = _ema_reference(ema, params, decay)
    ok = (got == plain) | (got == fused_a) | (got == fused_b)
    assert got.dtype == np.float32 and ok.all(), (name, got[~ok][:5], plain[~ok][:5])
    return got


def test_ema_follows_a_numpy_reference_exactly():
    """Four Adam steps with EMA_DECAY 0.9: after each, every leaf of the average is the
    correctly rounded float32 `0.9 * ema + 0.1 * params` of the step's own params (see
    `_ema_reference`), and the average starts as an exact copy of the initial params."""
    from flanrec.model.network import Transformer

    cfg = get_preset("tiny", dropout_rate=0.0)
    model = Transformer(cfg)
    mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    sched = optimizers.constant_schedule(0.01)
    tx = optax.adam(sched)
    sh = trainer.state_shardings(trainer.abstract_state(model, tx, ema=True), cfg, mesh, rules)
    bsh = partitioning.batch_sharding(mesh, rules)
    state = trainer.init_state(model, tx, jax.random.PRNGKey(0), sh, mesh, rules, ema=True)
    step = trainer.make_train_step(model, tx, sched, losses.LossConfig(), sh, bsh, mesh, rules,
                                   ema_decay=0.9)
    ref = {k: np.asarray(v) for k, v in flatten(jax.device_get(state.params)).items()}
    got = flatten(jax.device_get(state.ema_params))
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    rng = np.random.default_rng(1)
    for _ in range(4):
        tg = rng.integers(2, 128, (4, 6)).astype(np.int32)
        batch = {"encoder_input_tokens": rng.integers(2, 128, (4, 9)).astype(np.int32),
                 "decoder_target_tokens": tg,
                 "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32),
                                                         tg[:, :-1]], 1)}
        state, _ = step(state, partitioning.host_to_global(batch, bsh), jax.random.PRNGKey(1))
        params = flatten(jax.device_get(state.params))
        got = flatten(jax.device_get(state.ema_params))
        # The next reference starts from the checked values, so rounding never accumulates.
        ref = {k: _assert_ema(got[k], ref[k], params[k], 0.9, k) for k in ref}
    moved = [k for k in ref if not np.array_equal(ref[k], params[k])]
    assert moved  # the average lags the weights: not a copy of them


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "x"])
def test_bad_decays_are_refused(bad):
    with pytest.raises(ConfigError, match="EMA_DECAY must be"):
        ema_lib.check_decay(bad)
    assert ema_lib.check_decay(0) == 0.0 and ema_lib.check_decay(0.999) == 0.999


# ------------------------------------------------------------------- the job, in-process
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    t = tfx.make_task(tmp_path_factory.mktemp("ema") / "task", n_train=16, n_val=8)
    sys.path.insert(0, t["dir"])
    yield t
    sys.path.remove(t["dir"])


def _main(args: list[str]) -> int:
    try:
        return train_cli.cli(args)
    finally:
        gin.clear_config()


def _run(task, model_dir, steps: int, *extra: str) -> None:
    args = tfx.train_args(task, model_dir, steps=steps, extra=(
        "--gin.EMA_DECAY=0.8", "--gin.CHECKPOINT_PERIOD=3", "--gin.LOG_PERIOD=3",
        "--gin.EVAL_PERIOD=3", *extra))
    assert _main(args) == 0


def test_resume_continues_the_average_bit_for_bit_and_inference_reads_it(task, tmp_path):
    """6 steps straight vs 3 steps, then the same command resumed to 6 (dropout on, so the
    resume must also replay the dropout keys): the same params and the same average at step
    6, bit for bit. The checkpoint names the average for inference, and every loader that
    serves inference (load_params, load_checkpoint) returns it."""
    from flanrec.checkpoints import (
        EMA_PARAMS,
        INFERENCE_PARAMS_KEY,
        PARAMS,
        load_checkpoint,
        load_params,
        read_meta,
    )

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(task, straight, 6)
    _run(task, resumed, 3)
    _run(task, resumed, 6)
    for item in (PARAMS, EMA_PARAMS):
        a = flatten(load_params(str(straight / "checkpoint_6"), item=item)[1])
        b = flatten(load_params(str(resumed / "checkpoint_6"), item=item)[1])
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{item}/{k}")
    meta = read_meta(str(straight / "checkpoint_6"))
    assert meta[INFERENCE_PARAMS_KEY] == EMA_PARAMS and meta["ema_decay"] == 0.8
    raw = flatten(load_params(str(straight), item=PARAMS)[1])
    avg = flatten(load_params(str(straight), item=EMA_PARAMS)[1])
    served = flatten(load_params(str(straight))[1])
    ref, _, via_any = load_checkpoint(str(straight))
    assert ref.step == 6
    via_any = flatten(via_any)
    assert any(not np.array_equal(raw[k], avg[k]) for k in raw)
    for k in avg:
        np.testing.assert_array_equal(served[k], avg[k])
        np.testing.assert_array_equal(via_any[k], avg[k])


def test_a_run_without_ema_resumed_with_it_starts_the_average_from_its_weights(task, tmp_path):
    from flanrec.checkpoints import EMA_PARAMS, PARAMS, load_params, read_meta

    run = tmp_path / "run"
    args = tfx.train_args(task, run, steps=3, extra=("--gin.CHECKPOINT_PERIOD=3",))
    assert _main(args) == 0
    assert "inference_params" not in read_meta(str(run / "checkpoint_3"))
    _run(task, run, 4, "--gin.CHECKPOINT_PERIOD=4")
    at3 = flatten(load_params(str(run / "checkpoint_3"), item=PARAMS)[1])
    at4 = flatten(load_params(str(run / "checkpoint_4"), item=PARAMS)[1])
    avg = flatten(load_params(str(run / "checkpoint_4"), item=EMA_PARAMS)[1])
    for k in avg:  # one update of an average that started at step 3's weights
        _assert_ema(avg[k], at3[k], at4[k], 0.8, k)
