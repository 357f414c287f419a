"""The optax update rules follow PyTorch's SGD / momentum / Nesterov / Adam formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdjax.errors import ConfigError
from sgdjax.optdyn.optimizers import OptimizerSpec, clip_global_norm, make_update_rule

# A toy quadratic f(θ) = ½ θᵀAθ − bᵀθ with an ill-conditioned A.
A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.1]])
B = np.array([1.0, -2.0, 0.5])
THETA0 = np.array([0.3, -0.7, 1.1])
STEPS = 25


def grad(theta):
    return A @ theta - B


def optax_path(spec: OptimizerSpec, lr: float) -> np.ndarray:
    opt = make_update_rule(spec)(jnp.float64(lr) if jax.config.jax_enable_x64 else lr)

    @jax.jit
    def run(theta):
        def step(carry, _):
            th, st = carry
            g = jnp.asarray(A, th.dtype) @ th - jnp.asarray(B, th.dtype)
            upd, st = opt.update(g, st, th)
            th = optax.apply_updates(th, upd)
            return (th, st), th
        return jax.lax.scan(step, (theta, opt.init(theta)), None, length=STEPS)[1]

    return np.asarray(run(jnp.asarray(THETA0, jnp.float32)), np.float64)


def heavy_ball(lr: float, mu: float, nesterov: bool) -> np.ndarray:
    """PyTorch's SGD step (dampening 0): buf = g at step 1, else mu·buf + g."""
    theta, buf, path = THETA0.copy(), None, []
    for _ in range(STEPS):
        g = grad(theta)
        buf = g.copy() if buf is None else mu * buf + g
        theta = theta - lr * ((g + mu * buf) if nesterov else buf)
        path.append(theta.copy())
    return np.array(path)


@pytest.mark.parametrize(("mu", "nesterov"), [(0.9, False), (0.9, True), (0.5, True)])
def test_momentum_is_pytorch_heavy_ball(mu, nesterov):
    got = optax_path(OptimizerSpec("sgd_momentum", momentum=mu, nesterov=nesterov), 0.1)
    np.testing.assert_allclose(got, heavy_ball(0.1, mu, nesterov), rtol=1e-5, atol=1e-6)


def test_nesterov_differs_from_heavy_ball():
    a = optax_path(OptimizerSpec("sgd_momentum", momentum=0.9), 0.1)
    b = optax_path(OptimizerSpec("sgd_momentum", momentum=0.9, nesterov=True), 0.1)
    assert np.abs(a - b).max() > 1e-2


def test_momentum_zero_is_plain_sgd_exactly():
    a = optax_path(OptimizerSpec("sgd_momentum", momentum=0.0), 0.2)
    b = optax_path(OptimizerSpec("sgd"), 0.2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(b, heavy_ball(0.2, 0.0, False), rtol=1e-5, atol=1e-6)


def test_adam_first_step_is_sign_times_lr():
    # m̂ = g and v̂ = g² after one step: update = −lr·g/(|g| + eps)
    got = optax_path(OptimizerSpec("adam"), 0.01)[0]
    np.testing.assert_allclose(got, THETA0 - 0.01 * np.sign(grad(THETA0)), rtol=1e-6)


def test_against_torch():
    torch = pytest.importorskip("torch")
    cases = [(OptimizerSpec("sgd_momentum", momentum=0.9, nesterov=True), 0.05,
              lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
             (OptimizerSpec("adam"), 0.05, lambda p: torch.optim.Adam(p, lr=0.05)),
             (OptimizerSpec("adamw", weight_decay=0.1), 0.05,
              lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
             (OptimizerSpec("adam", weight_decay=0.1), 0.05,
              lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1))]
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    for spec, lr, make in cases:
        theta = torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)
        opt = make([theta])
        path = []
        for _ in range(STEPS):
            opt.zero_grad()
            (0.5 * theta @ a @ theta - b @ theta).backward()
            opt.step()
            path.append(theta.detach().numpy().copy())
        np.testing.assert_allclose(optax_path(spec, lr), np.array(path), rtol=2e-5, atol=2e-6,
                                   err_msg=spec.name)


def test_clip_formula_matches_optax():
    g = jnp.array([3.0, 4.0])  # norm 5
    np.testing.assert_allclose(clip_global_norm(g, 2.5), [1.5, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(clip_global_norm(g, 10.0), g)
    opt = make_update_rule(OptimizerSpec("sgd", clip_norm=2.5))(1.0)
    upd, _ = opt.update(g, opt.init(g))
    np.testing.assert_allclose(-upd, clip_global_norm(g, 2.5), rtol=1e-6)


def test_invalid_specs():
    with pytest.raises(ConfigError, match="Did you mean 'adam'"):
        OptimizerSpec("adma")
    with pytest.raises(ConfigError, match="nesterov applies to sgd_momentum"):
        OptimizerSpec("sgd", nesterov=True)
    with pytest.raises(ConfigError, match="momentum"):
        OptimizerSpec("sgd_momentum", momentum=1.0)
    assert OptimizerSpec("sgd_momentum", momentum=0.9, nesterov=True).label == "nesterov0.9"
