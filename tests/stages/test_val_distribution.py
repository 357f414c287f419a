"""Stage 6 on tiny synthetic stage-4 results: per-run and mean-model numbers against direct
evaluations, diverged runs, recorded BatchNorm statistics, and the exp2 variant."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.config import SetupConfig
from sgdjax.engine.trajectory import evaluate
from sgdjax.stages import many_runs
from sgdjax.stages import val_distribution as vd
from sgdjax.stages.common import Context
from sgdjax.store import Store

LR = 0.01
N_VAL = 300  # not a multiple of the evaluation slice: exercises the tail


def _image_splits(seed: int = 0):
    rng = np.random.default_rng(seed)

    def split(n):
        return SimpleNamespace(x=rng.random((n, 1, 28, 28), dtype=np.float32),
                               y=rng.integers(0, 10, n).astype(np.int64))

    return split(64), split(N_VAL)


def _token_splits(seed: int = 0):
    rng = np.random.default_rng(seed)

    def split(n):
        return SimpleNamespace(x=rng.integers(0, 25, (n, 16)).astype(np.int64),
                               y=rng.integers(0, 25, (n, 16)).astype(np.int64))

    return split(64), split(40)


def _context(tmp_path, monkeypatch, splits, **cfg) -> Context:
    monkeypatch.setattr(Context, "splits", property(lambda self: splits))
    values = {"lrs": (LR,), "many_runs_samples": 5, "many_runs_steps": 20, "val_every": 10}
    config = SetupConfig(**{**values, **cfg})
    return Context(config, Store(tmp_path / "results"), show_progress=False)


def _write_ensemble(ctx: Context, diverged: dict[int, int], seed: int = 1) -> dict:
    """Synthetic stage-4 files: init + noise; run r diverging at step s has NaN records from
    step s + 1 on (the engine's convention)."""
    cfg, model = ctx.cfg, ctx.model
    rng = np.random.default_rng(seed)
    params, state = model.init(jax.random.key(0), jnp.float32)
    w0 = np.asarray(model.flatten(params))
    n_runs, n_rec = cfg.many_runs_samples, cfg.many_runs_steps // cfg.record_every
    steps = np.arange(n_rec) * cfg.record_every
    weights = (w0 + 0.05 * rng.standard_normal((n_runs, n_rec, w0.size))).astype(np.float32)
    leaves = []
    for name, leaf in zip(many_runs.state_names(ctx), jax.tree.leaves(state), strict=True):
        leaf = np.asarray(leaf)
        shape = (n_runs, n_rec, *leaf.shape)
        # running statistics that differ per run and step, far from the fresh 0 / 1
        if "var" in name:
            leaves.append((0.02 + 0.05 * rng.random(shape)).astype(leaf.dtype))
        elif np.issubdtype(leaf.dtype, np.floating):
            leaves.append((0.5 * rng.standard_normal(shape)).astype(leaf.dtype))
        else:
            leaves.append(np.broadcast_to(steps.reshape(1, -1, *[1] * leaf.ndim) + 1,
                                          shape).astype(leaf.dtype))
    diverged_at = np.full(n_runs, -1, np.int32)
    for r, s in diverged.items():
        diverged_at[r] = s
        bad = steps > s
        weights[r, bad] = np.nan
        for a in leaves:
            if np.issubdtype(a.dtype, np.floating):
                a[r, bad] = np.nan
    names = many_runs.files(ctx, LR)
    ctx.store.save_npy(names["params"], weights)
    ctx.store.save_npy(names["diverged_at"], diverged_at)
    for name, a in zip(many_runs.state_names(ctx), leaves, strict=True):
        ctx.store.save_npy(names[f"state/{name}"], a)
    return {"weights": weights, "leaves": leaves, "diverged_at": diverged_at, "state": state}


def _direct(ctx: Context, w: np.ndarray, leaves: list[np.ndarray], state_template) -> tuple:
    """One evaluation of one point, outside the stage's vmapped chunks (other slice size)."""
    if "_direct" not in ctx.__dict__:
        _, eval_loss = ctx.loss_fns()
        ctx.__dict__["_direct"] = jax.jit(
            lambda w, s, x, y: evaluate(eval_loss, w, s, x, y, 128))
    data = ctx.data()
    state = jax.tree.unflatten(jax.tree.structure(state_template),
                               [jnp.asarray(a) for a in leaves])
    loss, acc = ctx.__dict__["_direct"](jnp.asarray(w, jnp.float32), state, data.val_x,
                                        data.val_y)
    return float(loss), float(acc)


def _skip_png(monkeypatch, ctx: Context) -> list[str]:
    """Record figure names instead of rendering PNGs (slow; the MLP test renders them)."""
    import matplotlib.pyplot as plt

    names: list[str] = []

    def save(name, fig):
        names.append(name)
        plt.close(fig)

    monkeypatch.setattr(ctx.store, "save_figure", save)
    return names


def _read_csv(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_mlp_runs_mean_model_and_divergence(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, _image_splits(), model="mlp", record_every=2)
    # run 3 diverges at step 12: finite at the start, excluded (NaN) at the end (step 18)
    ens = _write_ensemble(ctx, {3: 12})
    info = vd.run(ctx)
    store = ctx.store
    assert all(store.exists(n) for n in vd.outputs(ctx))
    summary = store.load_json(vd.summary_file(LR))
    for key in ("weights_file", "n_samples", "n_steps", "n_params", "n_diverged"):
        assert key in summary
    for tag in vd.TAGS:
        for key in ("val_loss_mean", "val_loss_std", "val_acc_mean", "val_acc_std",
                    "mean_model_val_loss", "mean_model_val_acc", "csv"):
            assert f"{tag}_{key}" in summary
        for metric in ("loss", "acc"):
            assert store.exists(vd.hist_file(LR, tag, metric))
    assert (summary["n_samples"], summary["n_steps"], summary["n_diverged"]) == (5, 10, 1)
    assert summary["end_step"] == 18 and summary["n_params"] == ctx.model.num_params

    start = _read_csv(store.path(vd.csv_file(LR, "start")))
    end = _read_csv(store.path(vd.csv_file(LR, "end")))
    assert list(start["sample_idx"]) == [0, 1, 2, 3, 4]
    for r in (0, 3):  # per-run numbers equal a direct single evaluation
        loss, acc = _direct(ctx, ens["weights"][r, 0], [], ens["state"])
        assert start["val_loss"][r] == pytest.approx(loss, rel=1e-5)
        assert start["val_acc"][r] == pytest.approx(acc, abs=1e-7)
    loss, _ = _direct(ctx, ens["weights"][2, -1], [], ens["state"])
    assert end["val_loss"][2] == pytest.approx(loss, rel=1e-5)

    # the diverged run is NaN at the end and excluded from the means and stds
    assert np.isnan(end["val_loss"][3]) and np.isnan(end["val_acc"][3])
    assert np.isfinite(start["val_loss"]).all()
    healthy = end["val_loss"][[0, 1, 2, 4]]
    assert summary["end_val_loss_mean"] == pytest.approx(healthy.mean(), rel=1e-6)
    assert summary["end_val_loss_std"] == pytest.approx(healthy.std(), rel=1e-5)
    assert summary["end_n_excluded"] == 1 and summary["start_n_excluded"] == 0

    # the mean model is the average of the healthy runs
    mean_w = ens["weights"][[0, 1, 2, 4], -1].astype(np.float64).mean(axis=0)
    loss, acc = _direct(ctx, mean_w, [], ens["state"])
    assert summary["end_mean_model_val_loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["end_mean_model_val_acc"] == pytest.approx(acc, abs=1e-7)
    mean_w = ens["weights"][:, 0].astype(np.float64).mean(axis=0)
    loss, _ = _direct(ctx, mean_w, [], ens["state"])
    assert summary["start_mean_model_val_loss"] == pytest.approx(loss, rel=1e-5)

    lr_info = info[f"lr{LR}"]
    assert lr_info["end_val_loss_mean"] == summary["end_val_loss_mean"]
    assert info["evaluations"] == 2 * (5 + 1) and info["throughput_evals_per_s"] > 0


def test_chunking_does_not_change_results(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, _image_splits(), model="mlp")
    ens = _write_ensemble(ctx, {})
    params = ens["weights"][:, 5]
    a = vd.Evaluator(ctx, chunk=2)(params, [])  # 3 chunks, the last one padded
    b = vd.Evaluator(ctx, chunk=8)(params, [])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])


def test_cnn_uses_recorded_batchnorm_statistics(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, _image_splits(), model="cnn", many_runs_samples=3)
    figures = _skip_png(monkeypatch, ctx)
    ens = _write_ensemble(ctx, {})
    vd.run(ctx)
    assert sorted(figures) == sorted(vd.hist_file(LR, t, m) for t in vd.TAGS
                                     for m in ("loss", "acc"))
    store = ctx.store
    end = _read_csv(store.path(vd.csv_file(LR, "end")))
    fresh = [np.asarray(a) for a in jax.tree.leaves(ens["state"])]  # mean 0, var 1 (bug 4)
    for r in (0, 2):
        recorded = [a[r, -1] for a in ens["leaves"]]
        loss, acc = _direct(ctx, ens["weights"][r, -1], recorded, ens["state"])
        assert end["val_loss"][r] == pytest.approx(loss, rel=1e-5)
        assert end["val_acc"][r] == pytest.approx(acc, abs=1e-7)
        # other statistics give another result: the recorded ones are what the stage used
        other, _ = _direct(ctx, ens["weights"][r, -1], fresh, ens["state"])
        assert abs(other - end["val_loss"][r]) > 1e-3, "fresh"
        shifted = [a + 0.5 if a.dtype.kind == "f" else a for a in recorded]
        other, _ = _direct(ctx, ens["weights"][r, -1], shifted, ens["state"])
        assert abs(other - end["val_loss"][r]) > 1e-3, "shifted"
    # the mean model carries the run-averaged statistics
    summary = store.load_json(vd.summary_file(LR))
    mean_leaves = [a[:, -1].astype(np.float64).mean(0).astype(a.dtype)
                   if np.issubdtype(a.dtype, np.floating) else a[0, -1] for a in ens["leaves"]]
    loss, _ = _direct(ctx, ens["weights"][:, -1].mean(0), mean_leaves, ens["state"])
    assert summary["end_mean_model_val_loss"] == pytest.approx(loss, rel=1e-5)


def test_cnn_missing_statistics_is_a_clear_error(tmp_path, monkeypatch):
    from sgdjax.errors import SgdjaxError

    ctx = _context(tmp_path, monkeypatch, _image_splits(), model="cnn", many_runs_samples=2)
    _write_ensemble(ctx, {})
    name = many_runs.state_names(ctx)[0]
    ctx.store.path(many_runs.files(ctx, LR)[f"state/{name}"]).unlink()
    with pytest.raises(SgdjaxError, match="BatchNorm running statistics"):
        vd.run(ctx)


def test_exp2_variant_first_run_evenly_spaced(tmp_path, monkeypatch):
    ctx = _context(tmp_path, monkeypatch, _token_splits(), experiment="exp2",
                   dataset_train="shakespeare", dataset_val="shakespeare", model="nanogpt",
                   many_runs_samples=3, many_runs_steps=40, val_dist_points=25)
    figures = _skip_png(monkeypatch, ctx)
    ens = _write_ensemble(ctx, {0: 35})  # run 0 diverges: its last points are NaN
    vd.run(ctx)
    store = ctx.store
    assert all(store.exists(n) for n in vd.outputs(ctx))
    assert len(figures) == 8
    assert vd.exp2_dir(LR) + "/val_loss_distribution/sgd_weights_lr0.01_end_acc_hist.png" in figures
    assert vd.exp2_file(LR, "summary.json") in vd.outputs(ctx)
    idx = np.rint(np.linspace(0, 39, 25)).astype(int)
    start = _read_csv(store.path(vd.exp2_file(LR, "start_val_metrics.csv")))
    end = _read_csv(store.path(vd.exp2_file(LR, "end_val_metrics.csv")))
    assert list(start) == ["steps", "val_losses", "val_accs"]
    np.testing.assert_array_equal(start["steps"], idx[:10])
    np.testing.assert_array_equal(end["steps"], idx[-10:])
    for j in (0, 7):
        loss, acc = _direct(ctx, ens["weights"][0, idx[j]], [], ens["state"])
        assert start["val_losses"][j] == pytest.approx(loss, rel=1e-5)
        assert start["val_accs"][j] == pytest.approx(acc, abs=1e-7)
    bad = idx[-10:] >= 35
    assert np.isnan(end["val_losses"][bad]).all() and np.isfinite(end["val_losses"][~bad]).all()
    summary = store.load_json(vd.exp2_file(LR, "summary.json"))
    assert summary["start_val_loss_mean"] == pytest.approx(start["val_losses"].mean(), rel=1e-6)
    assert summary["end_val_loss_mean"] == pytest.approx(
        end["val_losses"][~bad].mean(), rel=1e-6)
    assert summary["end_val_acc_std"] == pytest.approx(end["val_accs"][~bad].std(), abs=1e-7)
    # the exp1-style analysis is written for exp2 too
    assert store.exists(vd.summary_file(LR))


def test_outputs_follow_existing_weights(tmp_path, monkeypatch):
    from sgdjax.errors import SgdjaxError

    ctx = _context(tmp_path, monkeypatch, _image_splits(), model="mlp")
    assert vd.outputs(ctx) == [vd.summary_file(LR)]
    with pytest.raises(SgdjaxError, match="Run stage 4 first"):
        vd.run(ctx)
