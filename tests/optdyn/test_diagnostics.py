"""The per-step diagnostics equal hand-computed numpy values on a tiny case, and the logged
update norm is the measured parameter change."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.data.sampling import make_sampler
from sgdjax.engine.trajectory import Data, Recorder, make_trajectory
from sgdjax.models.moons_mlp import MoonsMLP, make_bce_loss
from sgdjax.optdyn.diagnostics import LogSpec, diagnostic_keys, logged_steps, make_step_extras
from sgdjax.optdyn.optimizers import OptimizerSpec, make_update_rule
from sgdjax.optdyn.runs import init_params


def test_logged_steps_follow_the_reference_schedule():
    s = logged_steps(2000, 10, 50)
    assert s[:11].tolist() == [*range(10), 50] and s[-1] == 1950 and s.size == 10 + 39
    assert logged_steps(1500, 10, 50)[-1] == 1450
    assert logged_steps(5, 10, 50).tolist() == [0, 1, 2, 3, 4]


def _numpy_step(w, x, y, vx, vy, lr, eps, thr):
    """One full-batch Adam step of the 2-3-1 ReLU MLP and every diagnostic, by hand."""
    W1, b1, W2, b2 = w[:6].reshape(3, 2), w[6:9], w[9:12], w[12]
    z1 = x @ W1.T + b1
    a1 = np.maximum(z1, 0)
    logit = a1 @ W2 + b2
    s = 1 / (1 + np.exp(-logit))
    loss = np.mean(np.logaddexp(0, logit) - y * logit)
    dl = (s - y) / len(y)  # d loss / d logit
    dz1 = np.outer(dl, W2) * (z1 > 0)
    g = np.concatenate([(dz1.T @ x).ravel(), dz1.sum(0), a1.T @ dl, [dl.sum()]])
    upd = -lr * g / (np.abs(g) + eps)  # Adam's first step: m̂ = g, v̂ = g²
    new = w + upd
    vlogit = np.maximum(vx @ new[:6].reshape(3, 2).T + new[6:9], 0) @ new[9:12] + new[12]
    n = np.linalg.norm
    parts = {"global": slice(0, 13), "fc1": slice(0, 9), "fc2": slice(9, 13)}
    out = {"train.loss": loss, "train.acc": np.mean((logit > 0) == y),
           "val.loss": np.mean(np.logaddexp(0, vlogit) - vy * vlogit),
           "val.acc": np.mean((vlogit > 0) == vy),
           "logits.mean": logit.mean(), "logits.std": logit.std(),
           "sat_rate": np.mean(np.abs(logit) > thr), "z1.mean": z1.mean(), "z1.std": z1.std(),
           "active_frac": np.mean(z1 > 0)}
    for k, sl in parts.items():
        out[f"grad.{k}"], out[f"param.{k}"], out[f"update.{k}"] = n(g[sl]), n(new[sl]), n(upd[sl])
        out[f"eff_step.{k}"] = n(upd[sl]) / (n(g[sl]) + 1e-12)
    return out, g, new


def test_diagnostics_equal_hand_computed_values():
    m = MoonsMLP(hidden=3)
    rng = np.random.default_rng(0)
    w = rng.normal(size=13) * np.r_[np.ones(9), 4 * np.ones(4)]  # large W2: saturation
    w[12] = 0.5  # logits between -12 and -7: two of six beyond the threshold 9
    x, vx = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    y, vy = np.array([0, 1, 1, 0, 1, 0]), np.array([1, 0, 1, 1, 0])
    spec = LogSpec(every=50, first=1, sat_logit_thr=9.0)
    lr, eps = 0.05, 1e-8
    traj = make_trajectory(
        make_bce_loss(m), make_sampler("full", 6, 6), 1, Recorder(),
        update_rule=make_update_rule(OptimizerSpec("adam", eps=eps)),
        step_extras=make_step_extras(m, spec))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    out = jax.jit(traj)(f32(w), {}, jax.random.key(0), jnp.float32(lr),
                        Data(f32(x), jnp.asarray(y, jnp.int32), f32(vx),
                             jnp.asarray(vy, jnp.int32)))
    w32 = np.asarray(f32(w), np.float64)
    want, _, new = _numpy_step(w32, np.asarray(f32(x), np.float64), y,
                               np.asarray(f32(vx), np.float64), vy, lr, eps, 9.0)
    assert set(out.records) == {"loss", *diagnostic_keys()}
    assert want["sat_rate"] == 2 / 6 and 0 < want["active_frac"] < 1  # the case exercises both
    for key in diagnostic_keys():
        np.testing.assert_allclose(np.asarray(out.records[key])[0], want[key], rtol=2e-5,
                                   atol=1e-6, err_msg=key)
    np.testing.assert_allclose(out.params, new, rtol=1e-5, atol=1e-6)


def test_diagnostics_are_nan_off_the_schedule():
    m = MoonsMLP(hidden=3)
    spec = LogSpec(every=4, first=2)
    traj = make_trajectory(make_bce_loss(m), make_sampler("full", 4, 4), 9, Recorder(),
                           update_rule=make_update_rule(OptimizerSpec("sgd")),
                           step_extras=make_step_extras(m, spec))
    x = jnp.ones((4, 2))
    out = jax.jit(traj)(jnp.full(13, 0.1), {}, jax.random.key(0), 0.1,
                        Data(x, jnp.array([0, 1, 0, 1]), x, jnp.array([0, 1, 0, 1])))
    logged = np.isfinite(np.asarray(out.records["grad.global"]))
    assert np.flatnonzero(logged).tolist() == [0, 1, 4, 8] == logged_steps(9, 2, 4).tolist()


@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.1), ("adam", 0.01)])
def test_logged_update_norm_is_the_measured_parameter_change(tiny_ctx, name, lr):
    """``update.*`` (the norm of the optax update) equals ‖θ_after − θ_before‖ taken from the
    recorded parameters, so eff_step = lr for SGD is a measurement, not an identity.

    θ_after = fl32(θ_before + u); the difference is taken exactly in float64, so it misses u
    only by the rounding of that addition, at most 2⁻²⁴ per coordinate relative to θ_after:
    |‖Δθ‖ − ‖u‖| ≤ 2⁻²⁴·‖θ_after‖. rtol 1e-5 on top covers the float32 norm of u itself."""
    steps, model = 30, tiny_ctx.model
    traj = make_trajectory(
        make_bce_loss(model), make_sampler("replacement", tiny_ctx.n_train, 32), steps,
        Recorder(params_every=1), update_rule=make_update_rule(OptimizerSpec(name)),
        step_extras=make_step_extras(model, LogSpec(every=50, first=steps)))
    w0 = init_params(model, jax.random.key(3))
    out = jax.jit(traj)(w0, {}, jax.random.key(4), jnp.float32(lr), tiny_ctx.data)
    assert int(out.diverged_at) == -1
    before = np.asarray(out.records["params"], np.float64)  # [T, P], θ before each step
    after = np.concatenate([before[1:], np.asarray(out.params, np.float64)[None]])
    for part, (a, b) in {"global": (0, w0.shape[0]), **model.layers}.items():
        measured = np.linalg.norm(after[:, a:b] - before[:, a:b], axis=1)
        logged = np.asarray(out.records[f"update.{part}"], np.float64)
        bound = 2.0**-24 * np.linalg.norm(after[:, a:b], axis=1) + 1e-5 * logged
        assert np.all(np.abs(measured - logged) <= bound), part
        if name == "sgd":  # the measured step over the logged gradient is the lr
            grad = np.asarray(out.records[f"grad.{part}"], np.float64)
            assert np.all(np.abs(measured - lr * grad) <= bound + 1e-5 * lr * grad), part
        else:  # Adam's step is not lr·‖g‖, so the check above would catch a mix-up
            grad = np.asarray(out.records[f"grad.{part}"], np.float64)
            assert np.abs(measured / (lr * grad) - 1).max() > 0.1
