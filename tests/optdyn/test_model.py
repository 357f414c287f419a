"""The 2-128-1 MLP: layout, initialisations, forward pass and loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.models.moons_mlp import MoonsMLP, bce_with_logits, make_bce_loss, n_correct
from sgdjax.optdyn.runs import init_params, seed_keys


def test_parameter_count_and_torch_layout():
    m = MoonsMLP()
    assert m.num_params == 513
    assert m.offsets() == {"fc1.weight": (0, 256), "fc1.bias": (256, 384),
                           "fc2.weight": (384, 512), "fc2.bias": (512, 513)}
    assert m.layers == {"fc1": (0, 384), "fc2": (384, 513)}
    w = jnp.arange(513, dtype=jnp.float32)
    p = m.unflatten(w)
    assert p["fc1"]["weight"].shape == (128, 2) and p["fc2"]["weight"].shape == (1, 128)
    assert float(p["fc1"]["weight"][1, 0]) == 2.0  # row-major [out, in], as PyTorch


@pytest.mark.parametrize(("init", "expected_sq"), [
    # sum of variances: U(±1/√2) on 384 entries, U(±1/√128) on 129 entries
    ("torch_default", 384 / 6 + 129 / (3 * 128)),
    # N(0, 1) on 256 entries of W1, N(0, 1/128) on 128 entries of W2, zero biases
    ("he", 256 + 1.0),
])
def test_initial_norm(init, expected_sq):
    m = MoonsMLP(init_scheme=init)
    w = np.asarray(jax.vmap(lambda k: init_params(m, k))(seed_keys(0, 400)), np.float64)
    sq = (w**2).sum(1)
    np.testing.assert_allclose(sq.mean(), expected_sq, rtol=0.02)
    assert abs(np.sqrt(expected_sq) - (8.02 if init == "torch_default" else 16.03)) < 0.01
    if init == "he":
        assert np.all(w[:, 256:384] == 0) and np.all(w[:, 512] == 0)
    else:
        assert np.abs(w[:, :384]).max() <= 1 / np.sqrt(2) and np.abs(w[:, 384:]).max() <= 1 / 8


def test_forward_matches_the_linen_module_and_numpy():
    for act, f in (("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh),
                   ("leakyrelu", lambda z: np.where(z > 0, z, 0.01 * z))):
        m = MoonsMLP(hidden=5, activation=act)
        w = jax.random.normal(jax.random.key(1), (m.num_params,))
        x = jax.random.normal(jax.random.key(2), (7, 2))
        logit, z1, _ = m.forward(w, x)
        ref = m.apply(m.unflatten(w), {}, x, train=False)[0][:, 0]
        np.testing.assert_allclose(logit, ref, rtol=1e-6, atol=1e-6)
        wn, xn = np.asarray(w, np.float64), np.asarray(x, np.float64)
        z = xn @ wn[:10].reshape(5, 2).T + wn[10:15]
        np.testing.assert_allclose(z1, z, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logit, f(z) @ wn[15:20] + wn[20], rtol=1e-5, atol=1e-5)


def test_bce_with_logits_matches_the_direct_formula():
    logit = jnp.array([-3.0, -0.5, 0.0, 0.7, 4.0])
    y = jnp.array([0, 1, 1, 0, 1])
    s = 1 / (1 + np.exp(-np.asarray(logit, np.float64)))
    yn = np.asarray(y, np.float64)
    direct = -np.mean(yn * np.log(s) + (1 - yn) * np.log(1 - s))
    np.testing.assert_allclose(bce_with_logits(logit, y), direct, rtol=1e-6)
    # stable where the direct formula overflows: log(1 + e^100) = 100
    np.testing.assert_allclose(bce_with_logits(jnp.array([100.0]), jnp.array([0])), 100.0)
    assert int(n_correct(logit, y)) == 2  # predictions 0,0,0,1,1 vs labels 0,1,1,0,1


def test_loss_fn_signature():
    m = MoonsMLP(hidden=4)
    w = jnp.zeros(m.num_params)
    loss, (state, correct) = make_bce_loss(m)(w, {}, jnp.ones((3, 2)), jnp.array([0, 1, 1]))
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)  # zero logits
    assert state == {} and int(correct) == 1  # logit 0 predicts class 0


def test_bad_choices_are_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'relu'"):
        MoonsMLP(activation="rellu")
    with pytest.raises(ConfigError, match="torch_default"):
        MoonsMLP(init_scheme="kaiming")
