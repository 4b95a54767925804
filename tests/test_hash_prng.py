"""The dropout PRNG (`flanrec.model.hash_prng`): deterministic, uniform, uncorrelated, and
usable by flax and jax.random exactly like the default one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flanrec.model import hash_prng


def test_bits_are_uniform_and_uncorrelated():
    key = hash_prng.wrap(np.array([123, 456], np.uint32))
    u = np.asarray(jax.random.uniform(key, (512, 1024)), np.float64).ravel()
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.var() - 1 / 12) < 1e-3
    # Neighbouring elements (flat index i, i+1, and i, i+1024 one row down) are uncorrelated.
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5e-3
    assert abs(np.corrcoef(u[:-1024], u[1024:])[0, 1]) < 5e-3
    hist = np.histogram(u, bins=16, range=(0, 1))[0] / len(u)
    assert np.all(np.abs(hist - 1 / 16) < 2e-3)


def test_fold_in_and_split_give_independent_streams():
    key = hash_prng.wrap(np.array([7, 9], np.uint32))
    a = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.8, (200_000,))
    b = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.8, (200_000,))
    c = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.8, (200_000,))
    assert np.array_equal(a, c)  # deterministic
    agree = float(np.mean(np.asarray(a) == np.asarray(b)))
    assert abs(agree - (0.8 ** 2 + 0.2 ** 2)) < 5e-3  # independent masks
    k1, k2 = jax.random.split(key)
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    x1 = jax.random.uniform(k1, (10_000,))
    x2 = jax.random.uniform(k2, (10_000,))
    assert abs(np.corrcoef(x1, x2)[0, 1]) < 0.03


def test_flax_dropout_uses_it_and_keeps_the_rate():
    key = hash_prng.wrap(np.array([1, 2], np.uint32))
    x = jnp.ones((64, 4096))
    y = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    kept = np.asarray(y) > 0
    assert abs(kept.mean() - 0.7) < 3e-3
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
    # Under jit and with a different key, another mask.
    y2 = jax.jit(lambda k: nn.Dropout(0.3).apply({}, x, deterministic=False,
                                                  rngs={"dropout": k}))(
        jax.random.fold_in(key, 5))
    assert not np.array_equal(np.asarray(y2) > 0, kept)
