"""Baselines against their closed forms and exact tiny cases; bootstrap bands."""

from __future__ import annotations

import jax
import numpy as np

from sgdjax.looped import baselines
from sgdjax.looped.evaluate import bootstrap_band
from sgdjax.looped.tasks import Task, sample_prompts

D, N, P = 5, 12, 6000


def _prompts() -> tuple[np.ndarray, np.ndarray]:
    # the sampler takes any key; an "rbg" key compiles about twice as fast on a CPU
    draw = jax.jit(sample_prompts, static_argnums=(0, 2, 3, 4))
    xs, ys = draw(Task("linear_regression", D), jax.random.key(11, impl="rbg"), P, N, D)
    return np.asarray(xs), np.asarray(ys)


def _check(err: np.ndarray, closed: np.ndarray, ks: np.ndarray) -> None:
    mean, sem = err.mean(axis=0), err.std(axis=0) / np.sqrt(err.shape[0])
    for k in ks:
        assert abs(mean[k] - closed[k]) < 4 * sem[k] + 1e-9, (k, mean[k], closed[k], sem[k])


def test_least_squares_and_averaging_closed_forms() -> None:
    xs, ys = _prompts()
    k = np.arange(N)
    ls = (baselines.least_squares(xs, ys) - ys) ** 2 / D
    _check(ls, np.where(k < D, (D - k) / D, 0.0), np.arange(1, D))
    assert np.max(ls[:, D:]) < 1e-5  # k >= d: exact recovery (up to conditioning)
    avg = (baselines.averaging(xs, ys) - ys) ** 2 / D
    _check(avg, (D + 1) / np.maximum(k, 1), np.arange(1, N))
    # k = 0: every baseline predicts 0, whose error is |w|^2/d on average 1
    assert np.all(baselines.least_squares(xs, ys)[:, 0] == 0)
    assert abs(avg[:, 0].mean() - 1.0) < 0.05


def test_nearest_neighbours_exact_tiny_case() -> None:
    xs = np.array([[[0.0], [10.0], [1.0], [9.0], [0.5]]])
    ys = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    got = baselines.nearest_neighbours(xs, ys, m=2)
    # k=1: only x=0 -> 1; k=2: both earlier -> 1.5; k=3 (x=9): nearest 10, 1 -> (2+3)/2;
    # k=4 (x=0.5): nearest 0, 1 -> (1+3)/2
    np.testing.assert_allclose(got[0], [0.0, 1.0, 1.5, 2.5, 2.0])


def test_lasso_kkt_and_limits() -> None:
    rng = np.random.default_rng(0)
    x, w_true = rng.normal(size=(50, 8, 6)), np.zeros((50, 6))
    w_true[:, :2] = rng.normal(size=(50, 2))
    y = np.einsum("pkd,pd->pk", x, w_true)
    alpha = 0.05
    w = baselines.lasso_fit(x, y, alpha, np.zeros((50, 6)))
    grad = np.einsum("pkd,pk->pd", x, y - np.einsum("pkd,pd->pk", x, w)) / 8
    active = np.abs(w) > 1e-10
    # KKT of 1/(2k)|y - Xw|^2 + alpha |w|_1
    np.testing.assert_allclose(grad[active], alpha * np.sign(w[active]), atol=1e-5)
    assert np.all(np.abs(grad[~active]) <= alpha + 1e-5)
    # a huge penalty predicts 0; a tiny one on an over-determined prefix matches least squares
    xs = np.concatenate([x, x[:, :1]], axis=1)
    ys = np.concatenate([y, y[:, :1]], axis=1)
    assert np.all(baselines.lasso(xs, ys, alpha=1e6) == 0)
    np.testing.assert_allclose(baselines.lasso(xs, ys, alpha=1e-9)[:, -1],
                               baselines.least_squares(xs, ys)[:, -1], atol=1e-4)


def test_bootstrap_band() -> None:
    err = np.random.default_rng(1).exponential(size=(400, 3))
    band = bootstrap_band(err, jax.random.key(0, impl="rbg"), 500)
    np.testing.assert_allclose(band[0], err.mean(axis=0))
    assert np.all(band[1] < band[0]) and np.all(band[0] < band[2])
    # 5-95% of the mean of 400 exponentials: about +-1.645 / sqrt(400)
    assert np.all(np.abs((band[2] - band[1]) / 2 - 1.645 / 20) < 0.02)
    flat = bootstrap_band(np.ones((10, 2)), jax.random.key(1, impl="rbg"), 50)
    np.testing.assert_array_equal(flat, np.ones((3, 2)))
