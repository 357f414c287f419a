"""The float64 polynomial exp against numpy, its derivative, and the non-float64 path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.models import fastmath


def test_exp_float64_within_an_ulp_or_two(x64) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-708, 709, 200_001), rng.normal(size=50_000) * 5,
                        [0.0, -0.0, 1.0, -1.0, np.log(2), 1e-300, -1e-300]])
    got = np.asarray(jax.jit(fastmath.exp)(jnp.asarray(x)))
    want = np.exp(x)
    assert got.dtype == np.float64
    assert np.max(np.abs(got - want) / want) < 4.5e-16
    assert got[-7] == 1.0  # exp(0) exactly
    # clipped outside the finite, normal range; NaN stays NaN
    edge = np.asarray(fastmath.exp(jnp.asarray([-800.0, 800.0, np.nan, -np.inf, np.inf])))
    np.testing.assert_allclose(edge[:2], np.exp([-708.0, 709.0]), rtol=1e-15)
    assert np.isnan(edge[2]) and 0 < edge[3] < 1e-307 and np.isfinite(edge[4])


def test_exp_derivative_and_silu(x64) -> None:
    x = jnp.linspace(-30.0, 30.0, 1001, dtype=jnp.float64)
    jit = jax.jit  # op by op, every small kernel compiles on its own: slower
    np.testing.assert_allclose(jit(jax.vmap(jax.grad(fastmath.exp)))(x), np.exp(np.asarray(x)),
                               rtol=5e-16)
    np.testing.assert_allclose(jit(fastmath.silu)(x), jax.nn.silu(x), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(jit(jax.vmap(jax.grad(fastmath.silu)))(x),
                               jit(jax.vmap(jax.grad(jax.nn.silu)))(x), rtol=1e-14, atol=1e-300)
    h = jit(jax.hessian(lambda v: jnp.sum(fastmath.silu(v))))(x[:50])
    h_ref = jit(jax.hessian(lambda v: jnp.sum(jax.nn.silu(v))))(x[:50])
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-15)


def test_float32_uses_xla_exp() -> None:
    x = jnp.linspace(-20.0, 20.0, 101, dtype=jnp.float32)
    got = fastmath.exp(x)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, jnp.exp(x))
