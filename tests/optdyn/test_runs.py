"""Groups of runs: plain SGD's effective step is lr, a vmapped sweep equals separate runs (also
through the sweep stage with several seeds per lr), and a diverging run is recorded, not
raised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax import run as cli
from sgdjax.optdyn import load_config, make_context
from sgdjax.optdyn.diagnostics import diagnostic_keys, logged_steps
from sgdjax.optdyn.runs import compiled_group, histories, seed_keys
from sgdjax.optdyn.stages.sweep import analyse, dynamics_choice, lr_grid
from sgdjax.store import Store

LRS = (0.05, 0.3, 1e38)  # the last one overflows float32 within a few steps


def group(ctx, n_runs):
    cfg = ctx.cfg
    return compiled_group(ctx.model, cfg.optimizer("sgd"), ctx.log_spec, cfg.train.steps,
                          cfg.train.batch_size, ctx.n_train, ctx.n_val, n_runs)


@pytest.fixture(scope="module")
def sweep(tiny_ctx):
    keys = jnp.tile(seed_keys(tiny_ctx.cfg.seed, 1), len(LRS))
    traj = group(tiny_ctx, len(LRS))(keys, jnp.asarray(LRS, jnp.float32), tiny_ctx.data)
    return histories(traj, tiny_ctx.cfg.train.steps, tiny_ctx.log_spec)


def test_shapes(sweep, tiny_ctx):
    steps = tiny_ctx.cfg.train.steps
    n_logged = logged_steps(steps, 10, 20).size
    assert sweep["step"].tolist() == [*range(10), 20, 40]
    for key in diagnostic_keys():
        assert sweep[key].shape == (3, n_logged), key
    assert sweep["loss_per_step"].shape == (3, steps) and sweep["params"].shape == (3, 513)


def test_sgd_effective_step_is_the_learning_rate(sweep):
    for r, lr in enumerate(LRS[:2]):
        for part in ("global", "fc1", "fc2"):
            np.testing.assert_allclose(sweep[f"eff_step.{part}"][r], lr, rtol=1e-5,
                                       err_msg=part)
        np.testing.assert_allclose(sweep["update.global"][r], lr * sweep["grad.global"][r],
                                   rtol=1e-5)


def test_vmapped_sweep_equals_separate_runs(sweep, tiny_ctx):
    one = group(tiny_ctx, 1)
    keys = seed_keys(tiny_ctx.cfg.seed, 1)
    for r, lr in enumerate(LRS):
        alone = histories(one(keys, jnp.asarray([lr], jnp.float32), tiny_ctx.data),
                          tiny_ctx.cfg.train.steps, tiny_ctx.log_spec)
        assert alone["diverged_at"][0] == sweep["diverged_at"][r]
        for key in ("train.loss", "val.acc", "grad.fc1", "param.global", "sat_rate",
                    "loss_per_step", "params"):
            np.testing.assert_allclose(alone[key][0], sweep[key][r], rtol=2e-5, atol=1e-6,
                                       err_msg=f"lr={lr} {key}")


#: lr_sweep shrunk to the shapes of conftest.TINY_SGD (320 / 80 points, 60 steps, batch 32),
#: with 3 lrs x 2 seeds of SGD.
SWEEP_SEEDS = ("data.n=400", "train.batch_size=32", "log.every=20", "sweep.steps=60",
               "sweep.seeds=2", "sweep.num_lrs=3", "sweep.optimizers=sgd", "sweep.lr_min=0.01",
               "sweep.lr_max=1")


def test_sweep_stage_seeds_per_lr_equal_single_runs(tmp_path):
    """Entry [lr i, seed s] of the sweep stage's file is the single run at (lr i, seed s).

    The run axis is tile(seeds) / repeat(lrs) reshaped to [lrs, seeds]; with one seed any
    layout passes, so this uses two. Tolerance rtol 2e-5, atol 1e-6: the 6-run vmapped group
    and the 1-run group are different XLA programs (batched vs unbatched matmuls), which may
    order float32 sums differently (on the CPU build used here the two agree bitwise, but that
    is XLA's choice, not a guarantee); rounding differences grown over 60 steps stay far below
    the tolerance, itself far below the lr-to-lr and seed-to-seed differences checked last."""
    argv = ["optdyn", "lr_sweep", "--stages", "sweep", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv + [a for kv in SWEEP_SEEDS for a in ("--set", kv)]) == 0
    cfg = load_config("optdyn", "lr_sweep", SWEEP_SEEDS)
    ctx = make_context(cfg, Store(tmp_path / "single"), show_progress=False)
    one = compiled_group(ctx.model, cfg.sweep_spec("sgd"), ctx.log_spec, cfg.sweep.steps,
                         cfg.train.batch_size, ctx.n_train, ctx.n_val, 1)
    base = jax.random.fold_in(jax.random.key(cfg.seed), 1)  # seed s: fold_in(base, s)
    with np.load(tmp_path / "sweep_sgd.npz") as f:
        grid = {k: f[k] for k in f.files}
    np.testing.assert_allclose(grid["lrs"], [0.01, 0.1, 1.0], rtol=1e-6)
    assert grid["val.loss"].shape == (3, 2, 12) and grid["params"].shape == (3, 2, 513)
    for i, lr in enumerate(grid["lrs"]):
        for s in range(2):
            key = jax.random.fold_in(base, s)[None]
            alone = histories(one(key, jnp.asarray([lr], jnp.float32), ctx.data),
                              cfg.sweep.steps, ctx.log_spec)
            assert alone["diverged_at"][0] == grid["diverged_at"][i, s] == -1
            for k in ("train.loss", "val.loss", "grad.global", "update.fc1", "loss_per_step",
                      "params"):
                np.testing.assert_allclose(grid[k][i, s], alone[k][0], rtol=2e-5, atol=1e-6,
                                           err_msg=f"lr={lr} seed={s} {k}")
    # the check discriminates: seeds and lrs differ by far more than the tolerance
    params = grid["params"]
    assert np.abs(params[:, 0] - params[:, 1]).max(axis=1).min() > 0.1
    assert np.abs(params[0] - params[1]).max(axis=1).min() > 1e-2
    assert np.abs(params[1] - params[2]).max(axis=1).min() > 1e-2


def test_diverging_run_is_recorded(sweep):
    at = int(sweep["diverged_at"][2])
    assert 0 <= at < 10
    assert np.all(sweep["diverged_at"][:2] == -1)
    loss = sweep["loss_per_step"][2]
    assert np.all(np.isfinite(loss[:at])) and not np.isfinite(loss[at])
    assert np.all(np.isnan(loss[at + 1:]))  # masked after the step it happened
    assert np.all(np.isfinite(sweep["params"][2]))  # frozen at the last finite point
    assert np.isfinite(sweep["val.acc"][:2]).all()


def test_analyse_closed_form():
    lrs = np.array([0.01, 0.1, 1.0])
    acc = np.array([[0.80, 0.82], [0.95, 0.93], [0.94, 0.0]])
    loss = np.ones((3, 2))
    div = np.array([[-1, -1], [-1, -1], [-1, 7]])
    res = analyse(lrs, acc, loss, div, good_tol=0.3)
    # a diverged run scores chance (0.5): lr 1 has mean (0.94 + 0.5) / 2 = 0.72
    assert res["best_lr"] == 0.1 and res["best_val_acc"] == pytest.approx(0.94)
    assert res["good_lrs"] == [0.01, 0.1, 1.0] and res["good_at_grid_edge"]
    assert res["n_diverged"] == [0, 0, 1]
    assert res["final_val_acc_mean"][2] == pytest.approx(0.94)  # finite seeds only
    assert analyse(lrs, acc, loss, div, good_tol=0.05)["good_lrs"] == [0.1]


def test_lr_grid_and_dynamics_choice():
    grid = lr_grid(1e-4, 1.0, 9)
    np.testing.assert_allclose(grid, np.logspace(-4, 0, 9), rtol=1e-6)
    assert grid.dtype == np.float32
    assert dynamics_choice(grid, 6) == [0, 4, 6, 8]  # best 0.316: 0.0316, 0.316, 1 (edge)
