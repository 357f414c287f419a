"""The scan engine against plain Python loops, single runs, dense and finite-difference results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.data.sampling import make_sampler
from sgdjax.engine.ensemble import run_keys, vmapped
from sgdjax.engine.trajectory import Data, Recorder, evaluate, make_trajectory
from sgdjax.models import build_model
from sgdjax.models.objective import make_loss_fn


@pytest.fixture(scope="module")
def problem():
    """A tiny MLP problem: 128 random 'images', 64 validation images, batch 16."""
    model = build_model("mlp")
    rng = np.random.default_rng(0)
    x = rng.random((192, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 192).astype(np.int32)
    feats = model.featurize(jnp.asarray(x))
    data = Data(feats[:128], jnp.asarray(y[:128]), feats[128:], jnp.asarray(y[128:]))
    params, state = model.init(jax.random.key(1), jnp.float32)
    w0 = model.flatten(params)
    return model, data, w0, state


def python_sgd(model, data, w0, state, sampler, key, lr, steps):
    """The reference: a Python loop over steps with jax.grad, no scan."""
    loss_fn = make_loss_fn(model, train=True)
    grad = jax.jit(jax.value_and_grad(lambda w, x, y: loss_fn(w, state, x, y)[0]))
    w, losses, ws = w0, [], []
    for t in range(steps):
        idx = sampler.batch(key, t)
        loss, g = grad(w, data.train_x[idx], data.train_y[idx])
        losses.append(float(loss))
        ws.append(np.asarray(w))
        w = w - lr * g
    return np.asarray(ws), np.asarray(losses), np.asarray(w)


@pytest.mark.parametrize("kind", ["default", "replacement"])
def test_scan_equals_python_loop(problem, kind):
    model, data, w0, state = problem
    sampler = make_sampler(kind, 128, 16)
    key = jax.random.key(3)
    run = jax.jit(make_trajectory(make_loss_fn(model, train=True), sampler, 25,
                                  Recorder(params_every=1)))
    out = run(w0, state, key, jnp.float32(0.1), data)
    ws, losses, w_end = python_sgd(model, data, w0, state, sampler, key, 0.1, 25)
    np.testing.assert_allclose(np.asarray(out.records["loss"]), losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.records["params"]), ws, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.params), w_end, rtol=1e-5, atol=1e-6)
    assert int(out.diverged_at) == -1


def test_gd_is_full_batch_engine(problem):
    """GD = the engine with the full-batch sampler = w <- w - lr * grad(mean loss over all)."""
    model, data, w0, state = problem
    loss_fn = make_loss_fn(model, train=True)
    run = jax.jit(make_trajectory(loss_fn, make_sampler("full", 128, 16), 7,
                                  Recorder(grad_norm=True)))
    out = run(w0, state, jax.random.key(0), jnp.float32(0.5), data)
    grad = jax.jit(jax.grad(lambda w: loss_fn(w, state, data.train_x, data.train_y)[0]))
    w, norms = w0, []
    for _ in range(7):
        g = grad(w)
        norms.append(float(jnp.linalg.norm(g)))
        w = w - 0.5 * g
    np.testing.assert_allclose(np.asarray(out.params), np.asarray(w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.records["grad_norm"]), norms, rtol=1e-5)


def test_vmapped_ensemble_equals_single_runs(problem):
    """Run r of a vmapped ensemble is the run alone with key r and lr r.

    Not asserted bitwise: the vmapped and the single run are different XLA programs (batched
    vs unbatched matmuls), and whether they order float32 sums alike depends on the CPU's
    kernels (bitwise on an AVX-512 machine, 1 ulp apart on an AVX2 one). Bitwise identity is
    promised, and tested, across device counts, where every device runs the same program. The
    tolerance is far below the run-to-run differences checked last."""
    model, data, w0, state = problem
    traj = make_trajectory(make_loss_fn(model, train=True), make_sampler("default", 128, 16), 30,
                           Recorder(params_every=1, val_every=10),
                           eval_loss=make_loss_fn(model, train=False))
    keys = run_keys(42, "many_runs", 4)
    lrs = jnp.asarray([0.1, 0.1, 0.05, 0.01], jnp.float32)
    ens = vmapped(traj)(w0, state, keys, lrs, data)
    single = jax.jit(traj)
    for r in range(4):
        one = single(w0, state, keys[r], lrs[r], data)
        for name in ("loss", "params", "val_loss", "val_acc"):
            np.testing.assert_allclose(np.asarray(ens.records[name][r]),
                                       np.asarray(one.records[name]), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        np.testing.assert_allclose(np.asarray(ens.params[r]), np.asarray(one.params),
                                   rtol=1e-5, atol=1e-6)
    # the runs themselves differ (keys 0 and 1 at the same lr; lrs 2 and 3), by far more
    ends = np.asarray(ens.params)
    assert np.abs(ends[0] - ends[1]).max() > 1e-3
    assert np.abs(ends[2] - ends[3]).max() > 1e-3


def test_segments_equal_one_call(problem):
    """A run split into calls with `start` offsets equals one uninterrupted call."""
    model, data, w0, state = problem
    loss_fn = make_loss_fn(model, train=True)
    sampler = make_sampler("default", 128, 16)
    key = jax.random.key(5)
    whole = jax.jit(make_trajectory(loss_fn, sampler, 40, Recorder(params_every=1)))(
        w0, state, key, jnp.float32(0.1), data)
    part = jax.jit(make_trajectory(loss_fn, sampler, 20, Recorder(params_every=1)))
    a = part(w0, state, key, jnp.float32(0.1), data, 0)
    b = part(a.params, a.state, key, jnp.float32(0.1), data, 20)
    np.testing.assert_array_equal(
        np.concatenate([a.records["params"], b.records["params"]]), whole.records["params"])


def test_recording_cadence_and_thinning(problem):
    model, data, w0, state = problem
    traj = jax.jit(make_trajectory(
        make_loss_fn(model, train=True), make_sampler("replacement", 128, 16), 23,
        Recorder(params_every=5, val_every=10), eval_loss=make_loss_fn(model, train=False)))
    full = jax.jit(make_trajectory(make_loss_fn(model, train=True),
                                   make_sampler("replacement", 128, 16), 23,
                                   Recorder(params_every=1)))
    key = jax.random.key(9)
    out = traj(w0, state, key, jnp.float32(0.1), data)
    ref = full(w0, state, key, jnp.float32(0.1), data)
    assert out.records["loss"].shape == (23,)
    assert out.records["params"].shape == (5, w0.shape[0])  # steps 0, 5, 10, 15, 20
    np.testing.assert_array_equal(out.records["params"], ref.records["params"][::5])
    # validation after steps 10 and 20 = at the pre-update parameters of steps 10 and 20
    assert out.records["val_loss"].shape == (2,)
    eval_loss = make_loss_fn(model, train=False)
    for j, t in enumerate((10, 20)):
        vl, va = evaluate(eval_loss, ref.records["params"][t], state, data.val_x, data.val_y, 1024)
        np.testing.assert_allclose(out.records["val_loss"][j], vl, rtol=1e-6)
        np.testing.assert_allclose(out.records["val_acc"][j], va)



def test_run_shorter_than_the_validation_cadence_has_empty_validation_records(problem):
    """7 steps with validation every 10: no validation, but the records exist with no rows
    (stage 4 writes its files from them), and the steps are those of a run without validation."""
    model, data, w0, state = problem
    sampler = make_sampler("replacement", 128, 16)
    short = jax.jit(make_trajectory(
        make_loss_fn(model, train=True), sampler, 7, Recorder(params_every=1, val_every=10),
        eval_loss=make_loss_fn(model, train=False)))
    plain = jax.jit(make_trajectory(make_loss_fn(model, train=True), sampler, 7,
                                    Recorder(params_every=1)))
    key = jax.random.key(2)
    out, ref = short(w0, state, key, jnp.float32(0.1), data), plain(w0, state, key,
                                                                     jnp.float32(0.1), data)
    assert out.records["val_loss"].shape == out.records["val_acc"].shape == (0,)
    assert out.records["val_loss"].dtype == w0.dtype
    assert out.records["params"].shape == (7, w0.shape[0])
    np.testing.assert_array_equal(out.records["loss"], ref.records["loss"])
    np.testing.assert_array_equal(out.params, ref.params)

def test_recorded_batchnorm_state_is_thinned_with_the_params():
    model = build_model("cnn")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((64, 1, 28, 28), dtype=np.float32))
    data = Data(model.featurize(x), jnp.asarray(rng.integers(0, 10, 64).astype(np.int32)))
    params, state = model.init(jax.random.key(2), jnp.float32)
    w0 = model.flatten(params)
    loss_fn = make_loss_fn(model, train=True)
    sampler = make_sampler("replacement", 64, 8)
    key = jax.random.key(4)
    every = jax.jit(make_trajectory(loss_fn, sampler, 9, Recorder(params_every=1)))(
        w0, state, key, jnp.float32(0.05), data)
    thin = jax.jit(make_trajectory(loss_fn, sampler, 9, Recorder(params_every=3)))(
        w0, state, key, jnp.float32(0.05), data)
    assert thin.records["params"].shape == (3, w0.shape[0])  # steps 0, 3, 6
    np.testing.assert_array_equal(thin.records["params"], every.records["params"][::3])
    leaves, leaves_every = jax.tree.leaves(thin.records["state"]), jax.tree.leaves(
        every.records["state"])
    assert leaves and all(a.shape[0] == 3 for a in leaves)
    for a, b in zip(leaves, leaves_every, strict=True):
        np.testing.assert_array_equal(a, b[::3])
    # row 0 is the initial state; later rows moved with the running statistics
    for a, s0 in zip(jax.tree.leaves(every.records["state"]), jax.tree.leaves(state),
                     strict=True):
        np.testing.assert_array_equal(a[0], s0)
    assert any(not np.array_equal(a[1], a[0]) for a in jax.tree.leaves(every.records["state"]))


def test_evaluate_is_example_weighted(problem):
    model, data, w0, state = problem
    eval_loss = make_loss_fn(model, train=False)
    whole = evaluate(eval_loss, w0, state, data.val_x, data.val_y, 1024)
    sliced = evaluate(eval_loss, w0, state, data.val_x, data.val_y, 24)  # 64 = 2*24 + 16
    np.testing.assert_allclose(whole[0], sliced[0], rtol=1e-6)
    np.testing.assert_allclose(whole[1], sliced[1])


def test_hessian_symmetric_fd_and_eigvals(problem):
    model, data, w0, state = problem
    jax.config.update("jax_enable_x64", True)
    try:
        loss_fn = make_loss_fn(model, train=True)
        w = w0.astype(jnp.float64)
        d = Data(data.train_x.astype(jnp.float64), data.train_y)
        traj = jax.jit(make_trajectory(loss_fn, make_sampler("default", 128, 16), 3,
                                       Recorder(params_every=1, hessian=True, eigvals=True)))
        key = jax.random.key(2)
        out = traj(w, state, key, jnp.float64(0.1), d)
        h = np.asarray(out.records["hessian"][1])
        np.testing.assert_allclose(h, h.T, atol=1e-12)
        # finite differences of the gradient of the same minibatch at the same point
        idx = make_sampler("default", 128, 16).batch(key, 1)
        wt = out.records["params"][1]
        g = jax.jit(jax.grad(lambda v: loss_fn(v, state, d.train_x[idx], d.train_y[idx])[0]))
        eps = 1e-5
        for j in (0, 37, 290, 385):
            e = jnp.zeros_like(wt).at[j].set(eps)
            fd = (g(wt + e) - g(wt - e)) / (2 * eps)
            np.testing.assert_allclose(h[:, j], np.asarray(fd), atol=1e-7, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out.records["eigvals"][1]),
                                   np.linalg.eigvalsh(h), atol=1e-10)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_diverging_run_is_frozen_and_reported(problem):
    model, data, w0, state = problem
    traj = make_trajectory(make_loss_fn(model, train=True), make_sampler("default", 128, 16), 40,
                           Recorder(params_every=1, val_every=10),
                           eval_loss=make_loss_fn(model, train=False))
    keys = run_keys(0, "many_runs", 2)
    out = vmapped(traj)(w0, state, keys, jnp.asarray([0.1, 1e30], jnp.float32), data)
    assert int(out.diverged_at[0]) == -1
    t = int(out.diverged_at[1])
    assert 0 <= t < 40
    loss = np.asarray(out.records["loss"][1])
    assert np.all(np.isfinite(loss[:t])) and np.all(np.isnan(loss[t + 1:]))
    assert np.all(np.isfinite(np.asarray(out.params[1])))  # frozen at the last finite point
    params = np.asarray(out.records["params"][1])  # the point of step t is still finite
    assert np.all(np.isfinite(params[:t + 1])) and np.all(np.isnan(params[t + 1:]))
    assert np.all(np.isfinite(np.asarray(out.records["params"][0])))
    assert np.all(np.isfinite(np.asarray(out.records["loss"][0])))


def test_curvature_tracking_matches_dense_spectra(problem):
    """λ_max, top-k and the trace recorded every C steps inside the scan equal the dense
    spectrum of the same minibatch Hessian at the same (pre-update) point."""
    model, data, w0, state = problem
    jax.config.update("jax_enable_x64", True)
    loss_fn = make_loss_fn(model, train=True)
    w = w0.astype(jnp.float64)
    d = Data(data.train_x.astype(jnp.float64), data.train_y, data.val_x.astype(jnp.float64),
             data.val_y)
    sampler = make_sampler("default", 128, 16)
    rec = Recorder(params_every=1, val_every=5, curvature_every=10, curvature_k=3,
                   curvature_iters=120, curvature_probes=400)
    key = jax.random.key(4)
    out = jax.jit(make_trajectory(loss_fn, sampler, 25, rec,
                                  eval_loss=make_loss_fn(model, train=False)))(
        w, state, key, jnp.float64(0.2), d)
    assert out.records["curv_eigs"].shape == (2, 3)  # steps 0 and 10 (20 + 5 is a tail)
    assert out.records["val_loss"].shape == (5,)
    assert out.records["params"].shape == (25, 386)
    for j, t in enumerate((0, 10)):
        idx = sampler.batch(key, t)
        xb, yb = d.train_x[idx], d.train_y[idx]
        h = jax.jit(jax.hessian(lambda v, xb=xb, yb=yb: loss_fn(v, state, xb, yb)[0]))(
            out.records["params"][t])
        dense = np.linalg.eigvalsh(np.asarray(h))
        np.testing.assert_allclose(out.records["curv_eigs"][j], dense[::-1][:3], rtol=1e-8)
        trace = float(np.trace(np.asarray(h)))
        # Rademacher Hutchinson: loose bound, the estimator's std is ~ ||H||_F * sqrt(2/400)
        assert abs(float(out.records["curv_trace"][j]) - trace) < 5 * np.linalg.norm(h) * (
            2 / 400) ** 0.5


def test_run_segments_equals_one_call(problem):
    """A run driven as compiled calls of 7 steps (with a shorter last one) equals one call."""
    from sgdjax.engine.segments import run_segments, segment_length

    model, data, w0, state = problem
    loss_fn = make_loss_fn(model, train=True)
    sampler = make_sampler("default", 128, 16)
    key = jax.random.key(6)
    whole = jax.jit(make_trajectory(loss_fn, sampler, 30, Recorder(params_every=1)))(
        w0, state, key, jnp.float32(0.1), data)
    pieces = []
    w, _, diverged, _ = run_segments(
        lambda n: make_trajectory(loss_fn, sampler, n, Recorder(params_every=1)),
        w0, state, key, jnp.float32(0.1), data, start=0, total=30, seg=7,
        on_segment=lambda first, n, rec, w, s: pieces.append((first, rec["params"])))
    assert [p[0] for p in pieces] == [0, 7, 14, 21, 28] and diverged == -1
    np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]),
                                  whole.records["params"])
    np.testing.assert_array_equal(w, whole.params)
    assert segment_length(100_000, 100, 0) == 100_000
    assert segment_length(500, 1, 30) == 480 and segment_length(5, 10) == 10
    # Adam's moments are carried across calls: segments still equal one call.
    import optax

    adam = lambda lr: optax.adam(lr)  # noqa: E731
    whole = jax.jit(make_trajectory(loss_fn, sampler, 30, update_rule=adam))(
        w0, state, key, jnp.float32(0.01), data)
    w, _, _, opt_state = run_segments(
        lambda n: make_trajectory(loss_fn, sampler, n, update_rule=adam),
        w0, state, key, jnp.float32(0.01), data, start=0, total=30, seg=7,
        on_segment=lambda *a: None)
    np.testing.assert_allclose(np.asarray(w), np.asarray(whole.params), rtol=1e-6, atol=1e-7)
    assert int(opt_state[0].count) == 30


def _linear_loss(w, state, x, y):
    err = x @ w - y
    return jnp.mean(err**2), (state, jnp.int32(0))


def test_batch_fn_generates_each_step_from_key_and_step():
    """On-device batches: step t sees batch_fn(fold_in(key, t), t), whatever the segmenting."""
    w_true = jnp.arange(1.0, 4.0)

    def batch_fn(k, t):
        x = jax.random.normal(k, (8, 3)) * (1.0 + 0.0 * t)
        return x, x @ w_true

    key, lr, steps = jax.random.key(5), 0.05, 12
    run = jax.jit(make_trajectory(_linear_loss, None, steps, Recorder(params_every=1),
                                  batch_fn=batch_fn))
    out = run(jnp.zeros(3), {}, key, jnp.float32(lr), Data(None, None))
    w, losses = np.zeros(3, np.float32), []
    for t in range(steps):
        x, y = batch_fn(jax.random.fold_in(key, t), t)
        x, y = np.asarray(x), np.asarray(y)
        err = x @ w - y
        losses.append(np.mean(err**2))
        w = w - lr * (2 * x.T @ err / len(y))
    np.testing.assert_allclose(np.asarray(out.records["loss"]), losses, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.params), w, rtol=1e-5)
    # Two segments draw the same batches as one call.
    half = jax.jit(make_trajectory(_linear_loss, None, steps // 2, Recorder(),
                                   batch_fn=batch_fn))
    a = half(jnp.zeros(3), {}, key, jnp.float32(lr), Data(None, None))
    b = half(a.params, {}, key, jnp.float32(lr), Data(None, None), start=steps // 2)
    np.testing.assert_allclose(np.asarray(b.params), np.asarray(out.params), rtol=1e-6)
    with pytest.raises(ValueError, match="sampler or a batch_fn"):
        make_trajectory(_linear_loss, None, 3)


def test_step_extras_see_the_step(problem):
    """Extras get the pre-update point, the gradient and the optimiser's update of each step."""
    model, data, w0, state = problem
    lr = 0.1

    def extras(info):
        return {"g_norm": jnp.linalg.norm(info.grad), "u_norm": jnp.linalg.norm(info.updates),
                "moved": jnp.linalg.norm(info.new_params - info.params - info.updates),
                "t": info.step}

    run = jax.jit(make_trajectory(make_loss_fn(model, train=True), make_sampler("default", 128, 16),
                                  10, Recorder(grad_norm=True), step_extras=extras))
    out = run(w0, state, jax.random.key(0), jnp.float32(lr), data, start=20)
    r = {k: np.asarray(v) for k, v in out.records.items()}
    np.testing.assert_allclose(r["g_norm"], r["grad_norm"], rtol=1e-6)
    np.testing.assert_allclose(r["u_norm"] / r["g_norm"], lr, rtol=1e-6)
    assert np.all(r["moved"] < 1e-6) and list(r["t"]) == list(range(20, 30))
