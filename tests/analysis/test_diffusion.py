"""SGD as a diffusion: the OU prediction, gradient-noise covariances, and the driver."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.analysis.diffusion import (
    analyze_diffusion,
    ensemble_mean_vs_gd,
    full_batch_hessian,
    gradient_noise_covariance,
    log_agreement,
    loglog_fit,
    ou_covariance,
    ou_variance,
    per_example_gradients,
    projected_covariance,
    small_lr_stationary,
    spread_vs_lr,
    variance_vs_time,
)


def random_orthogonal(rng: np.random.Generator, p: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((p, p)))
    return q * np.sign(np.diag(r))


def random_psd(rng: np.random.Generator, p: int) -> np.ndarray:
    m = rng.standard_normal((p, p))
    return m @ m.T / p


# --------------------------------------------------------------------------------------------
# acceptance: linear regression with a fixed design, where the OU prediction is exact


def quadratic_loss(a: jax.Array):
    """Per-example loss ½ (w − z_i)ᵀ A (w − z_i), in the engine's loss signature."""

    def loss_fn(w, state, x, y):
        d = w[None, :] - x
        return 0.5 * jnp.mean(jnp.einsum("np,pq,nq->n", d, a, d)), (state, jnp.int32(0))

    return loss_fn


def sgd_ensemble(a, z, w0, lr, batch, steps, snap_at, n_runs, key):
    """``n_runs`` SGD runs of ``steps`` steps with i.i.d. replacement batches (float64); returns
    the weights after ``snap_at`` steps and after ``steps`` steps, each [R, P]."""

    def one(k):
        def step(carry, inputs):
            w, snap = carry
            i, kk = inputs
            snap = jnp.where(i == snap_at, w, snap)  # w is the point after i updates
            idx = jax.random.randint(kk, (batch,), 0, z.shape[0])
            return (w - lr * (a @ (w - z[idx].mean(axis=0))), snap), None

        (w, snap), _ = jax.lax.scan(step, (w0, w0),
                                    (jnp.arange(steps), jax.random.split(k, steps)))
        return snap, w

    return jax.jit(jax.vmap(one))(jax.random.split(key, n_runs))


def check_within_sampling_error(samples_eig: np.ndarray, predicted: np.ndarray,
                                n_sigma: float) -> tuple[float, float]:
    """Every entry of the empirical covariance of ``samples_eig`` [R, P] lies within
    ``n_sigma`` standard errors of ``predicted`` [P, P]. The standard error of entry ij is
    estimated from the samples themselves, sqrt(Var(z_i z_j) / R), which holds for the
    non-Gaussian SGD noise too (for a Gaussian the diagonal would be sqrt(2/R) relative).
    Returns (max |z-score|, max relative deviation of the diagonal)."""
    r = samples_eig.shape[0]
    z = samples_eig - samples_eig.mean(axis=0)
    emp = z.T @ z / (r - 1)
    prods = z[:, :, None] * z[:, None, :]
    se = prods.std(axis=0, ddof=1) / np.sqrt(r)
    score = np.abs(emp - predicted) / se
    assert score.max() < n_sigma, (score, emp, predicted)
    rel = np.abs(np.diag(emp) / np.diag(predicted) - 1.0)
    return float(score.max()), float(rel.max())


def test_ou_prediction_matches_linear_regression_ensemble(capsys):
    rng = np.random.default_rng(0)
    p, n, batch, lr, n_runs = 4, 16, 4, 0.1, 10000
    lam = np.array([0.2, 0.9, 3.0, 8.0])  # lr·λ = 0.02 ... 0.8 (far from the small-lr regime)
    u = random_orthogonal(rng, p)
    a = u @ np.diag(lam) @ u.T
    z = rng.standard_normal((n, p)) * np.array([1.0, 0.5, 2.0, 1.5])
    w0 = np.full(p, 0.3)
    with jax.enable_x64(True):
        aj, zj, w0j = (jnp.asarray(v, jnp.float64) for v in (a, z, w0))
        # gradient noise from per-example gradients (any w: the noise is additive here)
        grads = np.asarray(per_example_gradients(quadratic_loss(aj), w0j, {}, zj,
                                                 jnp.zeros(n, jnp.int32), chunk=5))
        early, stationary = sgd_ensemble(aj, zj, w0j, lr, batch, 300, 10, n_runs,
                                         jax.random.key(1))
        stationary, early = np.asarray(stationary), np.asarray(early)
    assert stationary.dtype == np.float64
    cov_z = np.cov(z.T, bias=True)
    c = gradient_noise_covariance(grads, batch, "replacement")
    np.testing.assert_allclose(c, a @ cov_z @ a / batch, rtol=1e-12, atol=1e-14)

    pred_inf = ou_covariance(a, c, lr, None)
    assert pred_inf.stationary_exists and not pred_inf.unstable.any()
    u_h = pred_inf.eigvecs  # ascending eigenvalues
    np.testing.assert_allclose(pred_inf.eigvals, lam, rtol=1e-12)
    # 300 steps: the slowest direction has relaxed to (1 − lr·λ)^600 ≈ 5e-6 of its start
    score_inf, rel_inf = check_within_sampling_error(stationary @ u_h, pred_inf.sigma, 5.0)

    pred_10 = ou_covariance(a, c, lr, 10)
    score_10, rel_10 = check_within_sampling_error(early @ u_h, pred_10.sigma, 5.0)
    # at t = 10 the flat direction is far from stationary: the two predictions differ a lot
    assert pred_inf.sigma[0, 0] > 2.5 * pred_10.sigma[0, 0]  # 1/(1 − 0.98^20) ≈ 3

    # the exact discrete formula vs the small-lr approximation lr·C̃_ii/(2λ_i)
    c_diag = np.diag(u_h.T @ c @ u_h)
    approx = small_lr_stationary(lam, c_diag, lr)
    exact = ou_variance(lam, c_diag, lr, None)
    np.testing.assert_allclose(exact, np.diag(pred_inf.sigma), rtol=1e-12)
    np.testing.assert_allclose(exact / approx, 2.0 / (2.0 - lr * lam), rtol=1e-12)
    measured = projected_covariance(stationary, u_h)
    assert measured[-1] / approx[-1] > 1.5  # lr·λ = 0.8: the small-lr form is 40 % low
    assert abs(measured[0] / approx[0] - 1) < 0.05  # lr·λ = 0.02: both agree
    with capsys.disabled():
        print(f"\n[OU acceptance] stationary: max z = {score_inf:.2f}, max rel dev of variances "
              f"= {rel_inf:.4f}; t=10: max z = {score_10:.2f}, max rel dev = {rel_10:.4f}; "
              f"sqrt(2/R) = {np.sqrt(2 / n_runs):.4f}; sharp direction measured/small-lr = "
              f"{measured[-1] / approx[-1]:.3f} (exact {2 / (2 - lr * lam[-1]):.3f})")


# --------------------------------------------------------------------------------------------
# gradient noise


def test_gradient_noise_covariance_equals_enumeration_over_all_batches():
    rng = np.random.default_rng(1)
    n, b, p = 5, 2, 3
    g = rng.standard_normal((n, p)) * 3 + 1
    full = g.mean(axis=0)

    def second_moment(batches):
        devs = np.array([g[list(bt)].mean(axis=0) - full for bt in batches])
        return devs.T @ devs / len(devs)

    with_repl = second_moment(itertools.product(range(n), repeat=b))  # 25 ordered batches
    without = second_moment(itertools.combinations(range(n), b))  # 10 subsets
    np.testing.assert_allclose(gradient_noise_covariance(g, b, "replacement"), with_repl,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(gradient_noise_covariance(g, b, "reshuffle"), without,
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(gradient_noise_covariance(g, b, "default"), without, atol=1e-12)
    assert np.abs(gradient_noise_covariance(g, n, "reshuffle")).max() == 0.0  # B = N: no noise
    with pytest.raises(ValueError, match="sampler"):
        gradient_noise_covariance(g, b, "bogus")
    with pytest.raises(ValueError, match="batch_size"):
        gradient_noise_covariance(g, n + 1, "replacement")


def test_per_example_gradients_chunked_equal_one_at_a_time():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((7, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, 7), jnp.int32)
    w = jnp.asarray(rng.standard_normal(3), jnp.float32)

    def loss_fn(w, state, xb, yb):
        logits = xb @ w
        return jnp.mean((jax.nn.sigmoid(logits) - yb) ** 2) + 0.1 * jnp.sum(w**4), (state, 0)

    got = per_example_gradients(loss_fn, w, None, x, y, chunk=3)  # 3 chunks, last padded
    one = jax.jit(jax.grad(lambda v, xi, yi: loss_fn(v, None, xi, yi)[0]))
    want = jnp.stack([one(w, x[i:i + 1], y[i:i + 1]) for i in range(7)])
    assert got.shape == (7, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_full_batch_hessian_equals_jax_hessian():
    from sgdjax.models import build_model
    from sgdjax.models.objective import make_loss_fn

    model = build_model("mlp", hidden=3, downsample=2)
    rng = np.random.default_rng(3)
    state = {}  # the MLP has no BatchNorm state
    with jax.enable_x64(True):
        w = jnp.asarray(rng.normal(0, 0.5, model.num_params), jnp.float64)
        x = jnp.asarray(rng.standard_normal((13, 4)), jnp.float64)
        y = jnp.asarray(rng.integers(0, 10, 13), jnp.int32)
        loss_fn = make_loss_fn(model, train=True)
        got = full_batch_hessian(loss_fn, w, state, x, y, chunk=5, block=8)
        want = np.asarray(jax.jit(jax.hessian(lambda v: loss_fn(v, state, x, y)[0]))(w))
    assert got.shape == (w.size, w.size)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# the OU covariance


def test_ou_covariance_one_step_is_lr_squared_c():
    rng = np.random.default_rng(4)
    h, c, lr = random_psd(rng, 5), random_psd(rng, 5), 0.3
    one = ou_covariance(h, c, lr, 1, basis="original")
    np.testing.assert_allclose(one.sigma, lr**2 * c, rtol=1e-12, atol=1e-15)
    zero = ou_covariance(h, c, lr, 0, basis="original")
    assert np.abs(zero.sigma).max() == 0.0


def test_ou_covariance_long_time_is_stationary():
    rng = np.random.default_rng(5)
    h = random_psd(rng, 5) + 0.5 * np.eye(5)
    c, lr = random_psd(rng, 5), 0.2
    assert lr * np.linalg.eigvalsh(h).max() < 2
    stat = ou_covariance(h, c, lr, None, basis="original")
    late = ou_covariance(h, c, lr, 100_000, basis="original")
    assert stat.stationary_exists
    np.testing.assert_allclose(late.sigma, stat.sigma, rtol=1e-10, atol=1e-14)
    # the stationary covariance solves Σ = A Σ A + lr² C
    a = np.eye(5) - lr * h
    np.testing.assert_allclose(a @ stat.sigma @ a + lr**2 * c, stat.sigma, rtol=1e-10,
                               atol=1e-14)


def test_ou_covariance_matches_recursion_with_flat_negative_and_oscillating_directions():
    rng = np.random.default_rng(6)
    lam = np.array([-0.5, 0.0, 1e-9, 0.7, 6.0, 9.5])  # lr·λ: -0.05, 0, ~0, 0.07, 0.6, 0.95
    u = random_orthogonal(rng, 6)
    h = u @ np.diag(lam) @ u.T
    c, lr = random_psd(rng, 6), 0.1
    a = np.eye(6) - lr * h
    sig = np.zeros((6, 6))
    steps = np.arange(0, 31)
    stack = ou_covariance(h, c, lr, steps, basis="original").sigma
    assert stack.shape == (31, 6, 6)
    for t in steps:
        np.testing.assert_allclose(stack[t], sig, rtol=1e-9, atol=1e-14)
        sig = a @ sig @ a + lr**2 * c
    # the diagonal helper agrees with the eigen-basis matrices
    eig = ou_covariance(h, c, lr, steps)
    c_diag = np.diag(eig.eigvecs.T @ c @ eig.eigvecs)
    np.testing.assert_allclose(ou_variance(eig.eigvals, c_diag, lr, steps), eig.variances(),
                               rtol=1e-12)
    np.testing.assert_allclose(ou_covariance(h, c, lr, steps, basis="original").variances(),
                               eig.variances(), rtol=1e-9, atol=1e-14)


def test_zero_curvature_direction_grows_linearly_and_has_no_stationary_state():
    h = np.diag([0.0, 2.0])
    c = np.array([[0.5, 0.1], [0.1, 0.3]])
    lr = 0.05
    steps = np.array([1, 10, 100, 1000, 10_000])
    var = ou_covariance(h, c, lr, steps).variances()  # eigh is ascending: 0 is the flat one
    np.testing.assert_allclose(var[:, 0], steps * lr**2 * 0.5, rtol=1e-12)
    stat = ou_covariance(h, c, lr, None)
    assert not stat.stationary_exists and stat.unstable.tolist() == [True, False]
    assert np.isinf(stat.sigma[0, 0]) and np.isfinite(stat.sigma[1, 1])
    np.testing.assert_allclose(stat.sigma[1, 1], lr * 0.3 / (2.0 * (2 - lr * 2.0)), rtol=1e-12)
    # negative curvature: geometric growth (1 − lr·λ)^2t
    grow = ou_variance(np.array([-1.0]), np.array([1.0]), 0.1, np.array([100, 200]))
    assert grow[1, 0] / grow[0, 0] > 1.1**200 / 1.1**100 * 0.9
    assert np.isinf(ou_variance(np.array([-1.0]), np.array([1.0]), 0.1, None)[0])


# --------------------------------------------------------------------------------------------
# projections, spreads, fits


def test_projected_covariance_and_variance_vs_time():
    rng = np.random.default_rng(7)
    u = random_orthogonal(rng, 4)
    scales = np.array([3.0, 1.0, 0.3, 0.1])
    ens = (rng.standard_normal((4000, 4)) * scales) @ u.T + 5.0
    var, full = projected_covariance(ens, u, full=True)
    np.testing.assert_allclose(var, np.diag(full))
    np.testing.assert_allclose(full, u.T @ np.cov(ens.T) @ u, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, scales**2, rtol=0.1)
    stack = np.stack([ens, 2 * ens, 3 * ens], axis=1)  # [R, 3, P]
    vt = variance_vs_time(stack, u[:, :2], indices=[0, 2])
    np.testing.assert_allclose(vt, np.stack([var[:2], 9 * var[:2]]), rtol=1e-12)
    runs = np.arange(4000) < 2000
    np.testing.assert_allclose(variance_vs_time(stack, u, runs=runs)[1],
                               projected_covariance(2 * ens[:2000], u), rtol=1e-12)


def test_spread_vs_lr_recovers_exponent():
    rng = np.random.default_rng(8)
    lrs = np.geomspace(1e-4, 1e-1, 7)
    spreads = 3.0 * lrs**0.5 * np.exp(rng.normal(0, 0.01, lrs.size))
    fit = spread_vs_lr(lrs, spreads)
    assert abs(fit["alpha"] - 0.5) < 0.02 and abs(fit["prefactor"] / 3.0 - 1) < 0.1
    assert fit["r2"] > 0.999 and fit["n"] == 7
    two = spread_vs_lr(lrs, np.stack([lrs**0.5, 2 * lrs**1.0], axis=1), ["stationary", "diffuse"])
    assert abs(two["groups"]["stationary"]["alpha"] - 0.5) < 1e-12
    assert abs(two["groups"]["diffuse"]["alpha"] - 1.0) < 1e-12
    assert abs(two["groups"]["diffuse"]["prefactor"] - 2.0) < 1e-9
    assert np.isnan(loglog_fit([1e-3], [1.0])["alpha"])


def test_log_agreement():
    p = np.array([1e-6, 1e-4, 1e-2, 1.0])
    agr = log_agreement(p, 2 * p)
    assert agr["pearson_r_log"] == pytest.approx(1.0)
    assert agr["median_ratio"] == pytest.approx(2.0) and agr["within_factor_2"] == 1.0
    assert log_agreement(p, p, mask=[True, True, False, False])["n"] == 2


def test_ensemble_mean_vs_gd_exact_distance_and_time_axis():
    rng = np.random.default_rng(9)
    t_gd, p, k = 21, 3, 4
    slope = rng.standard_normal(p)
    gd = np.arange(t_gd)[:, None] * slope[None, :]  # linear in the step: interpolation is exact
    offset = np.array([0.3, -0.4, 0.0])  # ‖offset‖ = 0.5
    e = np.array([0.1, 0.2, 0.2])  # two runs at mean ± e: variance 2e² per coordinate
    steps = np.arange(6) * k
    mean = gd[steps] + offset
    ens = np.stack([mean + e, mean - e])
    res = ensemble_mean_vs_gd(ens, gd, k)
    np.testing.assert_allclose(res["distance"], 0.5, rtol=1e-12)
    np.testing.assert_allclose(res["spread_total"], np.sqrt(2 * (e**2).sum()), rtol=1e-12)
    np.testing.assert_allclose(res["spread_rms"], np.sqrt(2 * (e**2).mean()), rtol=1e-12)
    np.testing.assert_allclose(res["relative"], 0.5 / np.sqrt(2 * (e**2).sum()), rtol=1e-12)
    np.testing.assert_allclose(res["noise_floor"], res["spread_total"] / np.sqrt(2))
    # GD ran with lr scaled by 2: SGD step t sits at GD step t/2 (fractional -> interpolated)
    ens_half = np.stack([gd[steps] * 0.5 + offset + e, gd[steps] * 0.5 + offset - e])
    half = ensemble_mean_vs_gd(ens_half, gd, k, gd_step_ratio=0.5)
    np.testing.assert_allclose(half["distance"], 0.5, rtol=1e-12)
    # GD ran with lr/2: SGD step t needs GD step 2t, available only up to step 20
    double = ensemble_mean_vs_gd(ens, gd, k, gd_step_ratio=2.0)
    assert np.isfinite(double["distance"][:3]).all() and np.isnan(double["distance"][3:]).all()


# --------------------------------------------------------------------------------------------
# the driver on a tiny synthetic results directory


def build_results(root: Path, mp: pytest.MonkeyPatch, lrs=(0.2, 0.1), averaged_for=(0.2,)):
    """A results directory of a tiny MLP (55 parameters, 64 random images) with a polished
    checkpoint, SGD ensembles (one diverged run), GD trajectories and one averaged Hessian."""
    from sgdjax.config import SetupConfig
    from sgdjax.data.types import ArraySplit
    from sgdjax.stages.common import Context
    from sgdjax.store import Store, lr_tag

    rng = np.random.default_rng(10)
    y = rng.integers(0, 10, 64)
    # constant 14x14 quadrants: the 2x2 pooled features are O(1) and not collinear
    quads = rng.standard_normal((64, 1, 2, 2)) + (y % 3)[:, None, None, None] * 0.5
    x = np.kron(quads, np.ones((14, 14)))
    train = ArraySplit(x.astype(np.float32), y.astype(np.int64))
    mp.setattr(Context, "splits", property(lambda self: (train, train)))
    cfg = SetupConfig(experiment="exp1", setup="tiny", hidden=3, input_downsample=2,
                      batch_size=8, lrs=tuple(lrs), many_runs_steps=40, many_runs_samples=40,
                      record_every=2, dtype="float64", dataloader="replacement")
    store = Store(root)
    store.update_manifest(config=cfg.to_dict())
    ctx = Context(cfg, store, show_progress=False)
    model = ctx.model
    with jax.enable_x64(True):
        data = ctx.data("float64")
        loss_fn, _ = ctx.loss_fns()
        state = {}  # no BatchNorm
        w = jnp.asarray(rng.normal(0, 0.5, model.num_params), jnp.float64)

        def full_loss(v):
            return loss_fn(v, state, data.train_x, data.train_y)[0]

        grad = jax.jit(jax.grad(full_loss))

        def gd(w, lr, steps):
            def step(v, _):
                return v - lr * grad(v), v

            return jax.lax.scan(step, w, None, length=steps)

        gd40 = jax.jit(lambda v, lr: gd(v, lr, 40))  # one compiled call, reused
        for _ in range(60):  # polish with 2400 GD steps: near a minimum
            w, _ = gd40(w, 0.3)
        ctx.save_checkpoint("initial_after_sgd_and_gd.npz", w, state)
        h = np.asarray(jax.jit(jax.hessian(full_loss))(w))

        def sgd_run(key, lr):
            def step(v, k):
                idx = jax.random.randint(k, (8,), 0, 64)
                g = jax.grad(lambda u: loss_fn(u, state, data.train_x[idx],
                                               data.train_y[idx])[0])(v)
                return v - lr * g, v

            return jax.lax.scan(step, w, jax.random.split(key, 40))[1]

        ensemble = jax.jit(jax.vmap(sgd_run, in_axes=(0, None)))
        for lr in lrs:
            tag = lr_tag(lr)
            runs = np.asarray(ensemble(jax.random.split(jax.random.key(1), 40), lr))
            runs = runs[:, ::2].astype(np.float32)  # record_every = 2, stored as float32
            diverged = np.full(40, -1, np.int32)
            runs[3, 6:] = np.nan  # run 3 "diverged" at step 12
            diverged[3] = 12
            store.save_npy(f"sgd_weights_lr{tag}.npy", runs)
            store.save_npy(f"sgd_diverged_at_lr{tag}.npy", diverged)
            _, traj = gd40(w, lr)
            store.save_npy(f"gd_weights_lr{tag}_dtypefloat64.npy", np.asarray(traj))
            store.save_json(f"gd_logs_lr{tag}_dtypefloat64.json", {"effective_lr": lr})
            if lr in averaged_for:
                store.save_npy(f"hessians_averaged_lr{tag}.npy",
                               h.astype(np.float32).astype(np.float64))
    return cfg, h


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("diffusion") / "res"
    build_results(root, mp)
    yield root, mp
    mp.undo()


def test_driver_writes_summary_and_figures(results_dir):
    root, _ = results_dir
    summary = analyze_diffusion(root)
    out = root / "diffusion"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["lrs"] == [0.2, 0.1] == summary["lrs"]
    assert {"per_lr", "spread_vs_lr", "figures", "noise_trace", "sampler", "n_params",
            "checkpoint_full_grad_norm", "notes"} <= set(on_disk)
    assert on_disk["sampler"] == "replacement" and on_disk["n_params"] == 55
    trace = on_disk["noise_trace"]
    assert trace["reshuffle"] == pytest.approx(trace["replacement"] * (64 - 8) / 63)
    lr02, lr01 = on_disk["per_lr"]["lr0.2"], on_disk["per_lr"]["lr0.1"]
    assert lr02["hessian"]["source"] == "averaged" and lr01["hessian"]["source"] == "checkpoint"
    for entry in (lr02, lr01):
        assert entry["n_runs"] == 40 and entry["n_used"] == 39 and entry["n_excluded"] == 1
        assert entry["step"] == 38 and entry["step_index"] == 19
        assert {"finite_t", "stationary", "small_lr", "finite_t_top"} <= set(
            entry["comparison"]["replacement"])
        assert set(entry["comparison"]) == {"replacement", "reshuffle"}
        agr = entry["comparison"]["replacement"]["finite_t"]
        assert agr["n"] > 10 and np.isfinite(agr["pearson_r_log"])
        assert agr["pearson_r_log"] > 0.5  # the OU picture holds near this minimum
        assert entry["mean_vs_gd"]["available"]
        assert entry["mean_vs_gd"]["n_compared"] == 20  # every recorded step has a GD point
        assert entry["by_time"] and entry["by_time"][-1]["step"] == 38
        assert entry["spread"]["rms"] > 0
    fit = on_disk["spread_vs_lr"]["measured"]
    assert np.isfinite(fit["alpha"]) and set(fit["groups"]) == {"all", "sharp", "flat",
                                                                "nonpositive"}
    for name in ("pred_vs_measured_lr0.2.png", "variance_vs_time_lr0.1.png", "mean_vs_gd.png",
                 "spread_vs_lr.png"):
        assert (out / name).stat().st_size > 5000, name
    arrays = np.load(out / "arrays_lr0.1.npz")
    assert arrays["measured"].shape == (55,) and arrays["var_time"].shape[0] == 20
    assert np.all(np.diff(arrays["eigvals"]) <= 0)  # sharpest first


def test_driver_forced_checkpoint_hessian_and_step(results_dir):
    root, _ = results_dir
    summary = analyze_diffusion(root, lrs=[0.2], hessian="checkpoint", step=5, out="diff_ck",
                                figures=False)
    entry = summary["per_lr"]["lr0.2"]
    assert entry["hessian"]["source"] == "checkpoint" and entry["step"] == 10
    assert (root / "diff_ck" / "summary.json").is_file()
    assert summary["figures"] == [] and not list((root / "diff_ck").glob("*.png"))


def test_driver_errors_name_the_stage(results_dir, tmp_path):
    from sgdjax.errors import SgdjaxError

    root, _ = results_dir
    with pytest.raises(SgdjaxError, match="does not exist"):
        analyze_diffusion(tmp_path / "nowhere")
    with pytest.raises(SgdjaxError, match="stage 4"):
        analyze_diffusion(root, lrs=[0.05])
    with pytest.raises(SgdjaxError, match="out of range"):
        analyze_diffusion(root, lrs=[0.2], step=50)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SgdjaxError, match="manifest"):
        analyze_diffusion(tmp_path / "empty")
