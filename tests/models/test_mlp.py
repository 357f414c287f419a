from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.models import MLP, adaptive_avg_pool2d, adaptive_avg_pool_matrix


def pool_loop(x: np.ndarray, out: int) -> np.ndarray:
    """PyTorch's adaptive average pooling written as the plain floor/ceil window rule."""
    h, w = x.shape[-2:]
    res = np.zeros(x.shape[:-2] + (out, out))
    for i in range(out):
        r0, r1 = math.floor(h * i / out), math.ceil(h * (i + 1) / out)
        for j in range(out):
            c0, c1 = math.floor(w * j / out), math.ceil(w * (j + 1) / out)
            res[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return res


def test_param_count_and_layout() -> None:
    m = MLP()
    assert m.num_params == 386
    assert m.offsets() == {
        "fc1.weight": (0, 288),
        "fc1.bias": (288, 296),
        "fc2.weight": (296, 376),
        "fc2.bias": (376, 386),
    }
    p, _ = m.init(jax.random.key(0))
    assert p["fc1"]["weight"].shape == (8, 36)
    assert p["fc2"]["weight"].shape == (10, 8)


def test_pool_windows_28_to_6() -> None:
    p = adaptive_avg_pool_matrix(28, 6)
    windows = [tuple(np.flatnonzero(row)[[0, -1]] + [0, 1]) for row in p]
    assert windows == [(0, 5), (4, 10), (9, 14), (14, 19), (18, 24), (23, 28)]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1, 4:10], 1 / 6)


@pytest.mark.parametrize(("n_in", "n_out"), [(28, 6), (28, 7), (10, 3), (5, 5), (7, 4)])
def test_pool_matches_loop(n_in: int, n_out: int) -> None:
    x = np.random.default_rng(0).normal(size=(3, 2, n_in, n_in))
    got = np.asarray(adaptive_avg_pool2d(jnp.asarray(x, jnp.float32), n_out))
    np.testing.assert_allclose(got, pool_loop(x, n_out), rtol=1e-5, atol=1e-6)


def test_featurize_matches_loop_and_flattens_row_major() -> None:
    x = np.random.default_rng(1).uniform(size=(5, 1, 28, 28)).astype(np.float32)
    feats = np.asarray(MLP().featurize(x))
    assert feats.shape == (5, 36)
    ref = pool_loop(x.astype(np.float64), 6)[:, 0]
    np.testing.assert_allclose(feats, ref.reshape(5, 36), rtol=1e-5, atol=1e-6)
    # index 6*row + col
    np.testing.assert_allclose(feats[:, 6 * 2 + 3], ref[:, 2, 3], rtol=1e-5)


def test_featurize_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).normal(size=(4, 1, 28, 28))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 6).flatten(1).numpy()
    got = np.asarray(MLP().featurize(x.astype(np.float32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_apply_on_images_equals_apply_on_features() -> None:
    m = MLP()
    p, s = m.init(jax.random.key(3))
    x = jax.random.uniform(jax.random.key(4), (7, 1, 28, 28))
    a, _ = m.apply(p, s, x, train=True)
    b, _ = m.apply(p, s, m.featurize(x), train=False)
    assert a.shape == (7, 10)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # hand computation of the forward pass
    f = np.asarray(m.featurize(x), np.float64)
    w1, b1 = np.asarray(p["fc1"]["weight"]), np.asarray(p["fc1"]["bias"])
    w2, b2 = np.asarray(p["fc2"]["weight"]), np.asarray(p["fc2"]["bias"])
    h = f @ w1.T + b1
    h = h / (1 + np.exp(-h))
    np.testing.assert_allclose(a, h @ w2.T + b2, rtol=1e-5, atol=1e-6)


def test_init_distribution(check_uniform) -> None:
    m = MLP()
    keys = jax.random.split(jax.random.key(5), 200)
    params, _ = jax.jit(jax.vmap(lambda k: m.init(k)))(keys)
    check_uniform(np.asarray(params["fc1"]["weight"]), 1 / 6)
    check_uniform(np.asarray(params["fc1"]["bias"]), 1 / 6)
    check_uniform(np.asarray(params["fc2"]["weight"]), 1 / math.sqrt(8))
    check_uniform(np.asarray(params["fc2"]["bias"]), 1 / math.sqrt(8))
    # different keys, different params; same key, same params
    a, _ = m.init(jax.random.key(0))
    b, _ = m.init(jax.random.key(0))
    np.testing.assert_array_equal(a["fc1"]["weight"], b["fc1"]["weight"])
    assert not np.allclose(params["fc1"]["weight"][0], params["fc1"]["weight"][1])


def test_configurable_sizes() -> None:
    m = MLP(hidden=5, downsample=4, n_classes=3)
    assert m.num_params == 16 * 5 + 5 + 5 * 3 + 3
    p, s = m.init(jax.random.key(0))
    logits, _ = m.apply(p, s, jnp.ones((2, 1, 28, 28)), train=False)
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("hidden, downsample, batch", [(8, 6, 64), (5, 3, 7)])
def test_closed_form_hessian_equals_autodiff(x64, hidden, downsample, batch) -> None:
    """The closed-form Hessian of the mean cross-entropy equals jax.hessian to rounding, in the
    flat PyTorch order, away from init (large logits, SiLU curvature both signs)."""
    from sgdjax.models.objective import make_loss_fn

    model = MLP(hidden=hidden, downsample=downsample)
    params, state = model.init(jax.random.key(3), jnp.float64)
    w = 3.0 * model.flatten(params)
    x = jax.random.normal(jax.random.key(4), (batch, model.in_features), jnp.float64)
    y = jax.random.randint(jax.random.key(5), (batch,), 0, 10)
    loss = make_loss_fn(model, train=True)
    want = jax.jit(jax.hessian(lambda v: loss(v, state, x, y)[0]))(w)
    got = jax.jit(model.loss_hessian)(w, state, x, y)
    assert got.shape == (model.num_params, model.num_params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-13)
    assert float(jnp.max(jnp.abs(want))) > 0.05
