"""The truncated-window objective: gradients flow only through the last T iterations, the loss
matches a step-by-step reference, and the loop count is traced (no recompilation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sgdjax.looped.config import LoopedConfig, TrainingConfig
from sgdjax.looped.curriculum import Counter, Curriculum
from sgdjax.looped.train import Flat, Prompts, make_losses
from sgdjax.models.looped import LoopedTransformer, interleave

T, K_MAX, N_MAX = 2, 3, 4
MODEL = LoopedTransformer(n_dims=3, n_positions=4, n_embd=16, n_head=2)


def _batch(n_live: int):
    kx, kw = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (3, N_MAX, 3))
    ys = jnp.einsum("bnd,bd->bn", xs, jax.random.normal(kw, (3, 3)))
    return xs, ys


def _reference_loss(params, xs, ys, n_live: int, k: int) -> jax.Array:
    """Run max(0, K-T) iterations, freeze the state, average the MSE of the rest."""
    p = MODEL.embed(params, interleave(xs, ys))
    z = jnp.zeros_like(p)
    t0 = max(0, k - T)
    for _ in range(t0):
        z = MODEL.backbone(params, z + p)
    z = jax.lax.stop_gradient(z)
    losses = []
    for _ in range(t0, k):
        z = MODEL.backbone(params, z + p)
        err = (MODEL.readout(params, z) - ys)[:, :n_live]
        losses.append(jnp.mean(err**2))
    return jnp.mean(jnp.stack(losses))


@pytest.fixture(scope="module")
def setup():
    cur = Curriculum(Counter(3, 3, 0, 1), Counter(2, N_MAX, 1, 1), Counter(1, K_MAX, 1, 1))
    cfg = LoopedConfig(model=MODEL, training=TrainingConfig(curriculum=cur, n_loop_window=T))
    params = MODEL.init(jax.random.key(0, impl="rbg"))
    w, unravel = ravel_pytree(params)
    train_loss, _ = make_losses(cfg, Flat(MODEL, unravel, int(w.size)))
    grad = jax.jit(jax.value_and_grad(lambda w, x, y: train_loss(w, {}, x, y)[0]))
    return w, unravel, grad


def test_truncated_window_loss_and_gradient(setup) -> None:
    """Against a step-by-step reference that runs K - T iterations, freezes the state and
    averages the rest: K = 1 < T (the window is padded; 3 of 4 points live) and K = 3 > T."""
    w, unravel, grad = setup
    xs, ys = _batch(N_MAX)
    cases = ((1, 3), (3, N_MAX))

    @jax.jit
    def references(w):
        return [jax.value_and_grad(
            lambda w, k=k, n=n: _reference_loss(unravel(w), xs, ys, n, k))(w) for k, n in cases]

    refs = references(w)
    for (k, n_live), (ref_loss, ref_g) in zip(cases, refs, strict=True):
        loss, g = grad(w, Prompts(xs, ys, jnp.int32(n_live), jnp.int32(k)), ys)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(g, ref_g, atol=1e-6, rtol=1e-4)
    # both loop counts and live lengths ran through one compiled program
    assert grad._cache_size() == 1


def test_state_before_the_window_gets_no_gradient(setup) -> None:
    """Z_0 only feeds the frozen iterations when K > T: its gradient is exactly zero."""
    w, unravel, _ = setup
    xs, ys = _batch(N_MAX)
    z0 = jnp.full((3, 2 * N_MAX, 16), 0.1)

    def window_loss(z0):
        preds, weights = MODEL.window_predictions(unravel(w), interleave(xs, ys), N_MAX, 3, T,
                                                  K_MAX, z0=z0)
        return jnp.sum(jnp.mean((preds - ys) ** 2, axis=(1, 2)) * weights) / jnp.sum(weights)

    value, g = jax.jit(jax.value_and_grad(window_loss))(z0)
    assert np.isfinite(float(value)) and float(jnp.max(jnp.abs(g))) == 0.0


def test_feed_block_window_schedules() -> None:
    """K = 30, T = 15, L = 2: the seed-003 code leaves 15 single-layer steps without gradient
    and back-propagates through 45; the scaled choice through 30 of 60."""
    m = LoopedTransformer(n_layer=2, feed_block=True)
    assert [int(v) for v in m.window_schedule(30, 15, fork_window=True)] == [15, 45]
    assert [int(v) for v in m.window_schedule(30, 15, fork_window=False)] == [30, 30]
    assert m.max_window_units(30, 15, True) == 45 and m.max_window_units(30, 15, False) == 30
    plain = LoopedTransformer(n_layer=2)
    assert [int(v) for v in plain.window_schedule(30, 15)] == [15, 15]
    assert [int(v) for v in plain.window_schedule(10, 15)] == [0, 10]
