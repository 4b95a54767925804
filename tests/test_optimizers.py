"""Schedules and optimizers: T5X's formulas and defaults, checked numerically."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flanrec.train import optimizers


def test_rsqrt_schedule_is_t5x_constant_times_rsqrt_decay():
    sched = optimizers.rsqrt_schedule(base_learning_rate=1.0, warmup_steps=100)
    # Flat at 1/sqrt(warmup) during warm-up, then 1/sqrt(step).
    for step, want in [(0, 0.1), (50, 0.1), (100, 0.1), (400, 0.05), (10_000, 0.01)]:
        assert float(sched(step)) == pytest.approx(want, rel=1e-6)
    ramp = optimizers.rsqrt_schedule(base_learning_rate=1.0, warmup_steps=100,
                                     linear_warmup=True)
    assert float(ramp(0)) == 0.0
    assert float(ramp(50)) == pytest.approx(0.05, rel=1e-6)
    assert float(ramp(400)) == pytest.approx(0.05, rel=1e-6)


def test_linear_and_cosine_schedules_hit_their_endpoints():
    lin = optimizers.linear_schedule(peak_value=1.0, warmup_steps=10, total_steps=110,
                                     end_value=0.0)
    assert [float(lin(s)) for s in (0, 5, 10, 60, 110, 200)] == pytest.approx(
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], abs=1e-6)
    cos = optimizers.cosine_schedule(peak_value=2.0, warmup_steps=10, total_steps=110,
                                     end_value=0.2)
    assert float(cos(0)) == 0.0
    assert float(cos(10)) == pytest.approx(2.0, rel=1e-6)
    mid = 0.2 + (2.0 - 0.2) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert float(cos(60)) == pytest.approx(mid, rel=1e-5)
    assert float(cos(110)) == pytest.approx(0.2, rel=1e-6)
    assert float(optimizers.constant_schedule(3e-4)(12345)) == pytest.approx(3e-4)


def test_adafactor_defaults_factor_large_matrices_and_keep_no_momentum():
    tx, sched = optimizers.make_optimizer(optimizers.adafactor)
    assert float(sched(0)) == pytest.approx(1e-3)  # T5X fine-tuning default
    params = {"big": jnp.ones((256, 512)), "small": jnp.ones((16, 8)), "vec": jnp.ones((300,))}
    state = tx.init(params)
    factored = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(
        x, "v_row")) if hasattr(s, "v_row")]
    assert len(factored) == 1
    fs = factored[0]
    # Factored second moments: a row and a column vector instead of a 256×512 matrix.
    assert fs.v_row["big"].shape == (256,) and fs.v_col["big"].shape == (512,)
    assert fs.v["big"].shape == (1,)
    # Below min_dim_size_to_factor (128) the full second moment is kept.
    assert fs.v["small"].shape == (16, 8) and fs.v["vec"].shape == (300,)
    # No first moment anywhere (momentum=None): optimizer memory ≈ rows + cols.
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(state))
    assert n_state < 256 + 512 + 16 * 8 + 300 + 10


def test_adafactor_update_is_clipped_and_scaled_by_parameter_rms():
    tx, _ = optimizers.make_optimizer(optimizers.adafactor,
                                      optimizers.constant_schedule(1.0))
    p = {"w": jnp.full((4, 4), 3.0)}
    g = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)}
    updates, _ = tx.update(g, tx.init(p), p)
    u = np.asarray(updates["w"])
    # clipping_threshold=1: RMS of the normalised update ≤ 1; parameter scale RMS(p)=3.
    assert np.sqrt(np.mean(u ** 2)) == pytest.approx(3.0, rel=1e-3)


def test_global_norm_clipping_and_adamw():
    tx, _ = optimizers.make_optimizer(optimizers.adamw, optimizers.constant_schedule(0.1),
                                      grad_clip_norm=1.0)
    p = {"w": jnp.zeros((3,))}
    g = {"w": jnp.asarray([30.0, 40.0, 0.0])}
    state = tx.init(p)
    clip_state, _ = state
    clipped, _ = optax.clip_by_global_norm(1.0).update(g, clip_state)
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6)
    updates, _ = tx.update(g, state, p)
    # Adam's first step moves each coordinate by ≈ lr·sign(g).
    np.testing.assert_allclose(np.asarray(updates["w"])[:2], [-0.1, -0.1], rtol=1e-4)
