"""Task samplers: shapes, truncation of live dims, and the moments each class implies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.looped.tasks import Task, sample_prompts, tree_predict

D, d = 6, 4


SPECS = {"linear": (Task("linear_regression", D), 2000, 12),
         "noisy": (Task("noisy_linear_regression", D, noise_std=0.1), 500, 40),
         "sparse": (Task("sparse_linear_regression", D, sparsity=3), 2000, 20),
         "relu": (Task("relu_2nn_regression", D), 3000, 8),
         "tree": (Task("decision_tree", D), 200, 30)}


KEY = jax.random.key(3, impl="rbg")


@jax.jit
def _all_tasks(key: jax.Array, live: jax.Array) -> dict:
    """Every task in one compiled call (one compilation for the module); ``live`` is traced."""
    return {name: sample_prompts(task, jax.random.fold_in(key, i), batch, n, live)
            for i, (name, (task, batch, n)) in enumerate(SPECS.items())}


@pytest.fixture(scope="module")
def draws() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # The samplers accept any key; an "rbg" key compiles about twice as fast on a CPU.
    out = _all_tasks(KEY, d)
    return {k: (np.asarray(x, np.float64), np.asarray(y, np.float64)) for k, (x, y) in
            out.items()}


def test_linear_shapes_truncation_and_second_moment(draws) -> None:
    xs, ys = draws["linear"]
    assert xs.shape == (2000, 12, 6) and ys.shape == (2000, 12)
    assert np.all(xs[..., d:] == 0) and np.all(xs[..., :d] != 0)
    # E[y^2] = E||w||^2 = d for x, w ~ N(0, I_d)
    per_prompt = np.mean(ys**2, axis=1)
    assert abs(per_prompt.mean() - d) < 4 * per_prompt.std() / np.sqrt(per_prompt.size)
    # noiseless and linear: d + 1 points determine every other label exactly
    w = np.linalg.lstsq(xs[0, :, :d], ys[0], rcond=None)[0]
    np.testing.assert_allclose(xs[0, :, :d] @ w, ys[0], atol=1e-4)


def test_live_dims_are_traced(draws) -> None:
    wider = _all_tasks(KEY, d + 1)
    assert _all_tasks._cache_size() == 1  # the dims curriculum never recompiles
    xs = np.asarray(wider["linear"][0])
    np.testing.assert_array_equal(xs[..., :d], draws["linear"][0][..., :d])
    assert np.all(xs[..., d] != 0) and np.all(xs[..., d + 1 :] == 0)


def test_noisy_linear_residual_variance(draws) -> None:
    xs, ys = draws["noisy"]
    resid = [np.sum((y - x[:, :d] @ np.linalg.lstsq(x[:, :d], y, rcond=None)[0]) ** 2) / (40 - d)
             for x, y in zip(xs, ys, strict=True)]  # unbiased estimates of the noise variance
    assert abs(np.mean(resid) - 0.01) < 0.001


def test_sparse_support_drawn_from_all_coordinates(draws) -> None:
    """3 of all 6 coordinates carry weight, but only 4 are live: the number of live support
    coordinates is hypergeometric, P(k) = C(4, k) C(2, 3-k) / C(6, 3) = (0, 4, 12, 4)/20."""
    xs, ys = draws["sparse"]
    live = np.array([int(np.sum(np.abs(np.linalg.lstsq(x[:, :d], y, rcond=None)[0]) > 1e-4))
                     for x, y in zip(xs, ys, strict=True)])
    freq = np.bincount(live, minlength=5) / live.size
    np.testing.assert_allclose(freq, [0, 0.2, 0.6, 0.2, 0], atol=0.035)


def test_relu_2nn_second_moment(draws) -> None:
    _, ys = draws["relu"]
    # y = sqrt(2/H) relu(x W1) W2: E[y^2] = 2/H * H * E[relu(z)^2] with z ~ N(0, d) -> d
    assert abs(np.mean(ys**2) / d - 1.0) < 0.06


def test_decision_tree_sampling(draws) -> None:
    xs, ys = draws["tree"]
    assert np.all(xs != 0)  # x is not truncated for trees
    for x, y in zip(xs, ys, strict=True):
        assert len(np.unique(y)) <= 16  # depth 4: at most 16 leaves
        # points with the same sign pattern follow the same path
        signs = [tuple(row) for row in (x > 0)]
        for pattern in set(signs):
            assert len(np.unique(y[[s == pattern for s in signs]])) == 1


def test_tree_predict_exact() -> None:
    """A hand-built depth-2 tree: root tests x[1], its children test x[0] and x[2]."""
    coords = jnp.asarray([[1, 0, 2, 0, 0, 0, 0]])
    values = jnp.asarray([[0.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0]])
    xs = jnp.asarray([[[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [0.0, 1.0, 2.0]]])
    got = jax.jit(tree_predict, static_argnums=3)(coords, values, xs, 2)
    np.testing.assert_array_equal(np.asarray(got), [[3.0, 4.0, 5.0, 6.0]])


@pytest.mark.parametrize("name,live,expected", [("linear_regression", 7, 7.0),
                                                ("sparse_linear_regression", 7, 3.0),
                                                ("decision_tree", 7, 1.0),
                                                ("relu_2nn_regression", 5, 5.0)])
def test_normaliser(name: str, live: int, expected: float) -> None:
    assert Task(name, 20).normaliser(live) == expected
