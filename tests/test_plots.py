"""Figures: every plot function on tiny data (NaN included), the tube rank selection, and the
``python -m sgdjax.plot`` regeneration of a synthetic results directory."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from sgdjax import plots
from sgdjax.plot import main
from sgdjax.store import Store

NAN = float("nan")


def _render(fig: Figure) -> Figure:
    """Draw to PNG in memory: scale/limit problems only show up when rendering."""
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    return fig


def _logs(n: int, with_nan: bool = False) -> dict:
    t = np.linspace(0, 1, n)
    logs = {"train_losses": list(2.0 * np.exp(-3 * t) + 0.01),
            "val_losses": list(2.1 * np.exp(-2 * t) + 0.05),
            "val_accs": list(0.5 + 0.4 * t)}
    if with_nan:
        logs["train_losses"][n // 2] = NAN
        logs["val_accs"][-1] = NAN
    return logs


def test_training_curve_figures():
    """Every stage-1/2/3/5 curve builds, with and without NaNs (the CLI test below renders
    the same figures, with NaNs in their data, to PNG)."""
    g = np.geomspace(1.0, 1e-3, 50)
    for with_nan in (False, True):
        logs = _logs(12, with_nan)
        gn = g.copy()
        if with_nan:
            gn[10] = NAN
        assert isinstance(plots.loss_acc_sgd(logs), Figure)
        assert isinstance(plots.loss_acc_gd(logs), Figure)
        assert isinstance(plots.grad_norm_loglog(gn, "grad norm"), Figure)
        assert isinstance(plots.combined_curve(logs["train_losses"], gn[:20], [0.5, 0.4, NAN],
                                               0.01), Figure)
        fig = plots.gd_logs({**logs, "grad_norms": list(gn[:12])}, 0.05)
        assert len(fig.axes) == 3
        fig = plots.gd_logs({"train_losses": logs["train_losses"],
                             "grad_norms": list(gn[:12])}, 0.001)
        assert len(fig.axes) == 2  # exp2 stage-5 logs: loss and grad norm only
    empty = _render(plots.loss_acc_sgd({}))  # nothing logged: still a figure
    assert "no losses logged" in [t.get_text() for t in empty.axes[0].texts]


def test_loss_log_scale_only_when_positive():
    fig = plots.loss_acc_sgd(_logs(5))
    assert fig.axes[0].get_yscale() == "log"
    fig = plots.loss_acc_sgd({"train_losses": [1.0, -0.5, 0.2]})
    assert fig.axes[0].get_yscale() == "linear"


def test_combined_curve_has_boundaries():
    fig = plots.combined_curve([3, 2, 1], [1, 0.9], [0.8, 0.7], 0.1)
    ax = fig.axes[0]
    vlines = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
    assert vlines == [3.5, 5.5]
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_linestyle() == "-"])
    np.testing.assert_array_equal(xs, np.arange(1, 8))


def test_val_histogram_counts_diverged():
    v = np.r_[np.random.default_rng(0).normal(1.0, 0.1, 50), NAN, np.inf]
    fig = plots.val_histogram(v, 0.95, "validation loss", "end")
    ax = fig.axes[0]
    assert "2 of 52 runs excluded" in ax.get_title()
    assert sum(p.get_height() for p in ax.patches) == 50
    red = [ln for ln in ax.lines if ln.get_color() == "red"]
    assert len(red) == 1 and red[0].get_xdata()[0] == 0.95 and red[0].get_linestyle() == "--"
    _render(plots.val_histogram([NAN, NAN], None, "acc", "all diverged"))
    fig = plots.val_histogram([1.0, 2.0], NAN, "acc", "clean")
    assert "excluded" not in fig.axes[0].get_title()


def _tube_example() -> tuple[np.ndarray, np.ndarray]:
    """[T=4, P=8] spectra, given in scrambled order, whose descending-sorted rank means are
    known: ranks 0..2 positive significant, 3..5 below threshold, 6..7 negative."""
    base = np.array([10.0, 1.0, 2e-3, 5e-6, 0.0, -5e-6, -1e-2, -3.0])
    noise = np.array([[0, 0, 0, 0, 0, 0, 0, 0],
                      [1, -0.1, 1e-3, 0, 0, 0, 2e-3, 0.5],
                      [-1, 0.1, -1e-3, 0, 0, 0, -2e-3, -0.5],
                      [0, 0, 0, 0, 0, 0, 0, 0]])
    eigs = base + noise
    rng = np.random.default_rng(1)
    scrambled = np.stack([row[rng.permutation(8)] for row in eigs])
    return scrambled, base


def test_significant_ranks_selection():
    eigs, base = _tube_example()
    stats = plots.significant_ranks(eigs, threshold=1e-5)
    # negative ranks ascending (6, 7), then positive ranks ascending (0, 1, 2)
    np.testing.assert_array_equal(stats.ranks, [6, 7, 0, 1, 2])
    assert stats.n_negative == 2
    np.testing.assert_allclose(stats.mean, base[[6, 7, 0, 1, 2]])
    np.testing.assert_allclose(stats.std[0], np.std([-1e-2, -8e-3, -1.2e-2, -1e-2]))
    assert stats.n_steps_used == 4 and stats.n_steps_dropped == 0
    # a larger threshold drops rank 2 (2e-3) and rank 6 (-1e-2 > -0.05)
    np.testing.assert_array_equal(plots.significant_ranks(eigs, 0.05).ranks, [7, 0, 1])
    # a step with a NaN is dropped, not averaged in
    with_nan = np.vstack([eigs, np.full(8, NAN)])
    s2 = plots.significant_ranks(with_nan)
    assert s2.n_steps_dropped == 1
    np.testing.assert_array_equal(s2.ranks, stats.ranks)


def test_eigenvalue_tubes_plots_selected_ranks():
    eigs, base = _tube_example()
    fig = _render(plots.eigenvalue_tubes(eigs, lr=0.01))
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    mean_lines = [ln for ln in ax.lines if ln.get_label().startswith(("negative", "positive"))]
    xs = np.concatenate([ln.get_xdata() for ln in mean_lines])
    ys = np.concatenate([ln.get_ydata() for ln in mean_lines])
    np.testing.assert_array_equal(xs, np.arange(5))
    np.testing.assert_allclose(ys, base[[6, 7, 0, 1, 2]])
    separators = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
    assert separators == [1.5]
    np.testing.assert_array_equal(fig.tube_stats.ranks, [6, 7, 0, 1, 2])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "6" and labels[-1] == "2"
    _render(plots.eigenvalue_tubes(np.zeros((3, 4)), lr=0.1))  # nothing significant
    fig = plots.eigenvalue_tubes(np.abs(eigs), lr=0.1)  # positive only: no separator
    assert not [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert fig.tube_stats.n_negative == 0


def test_spectrum_and_comparison():
    e = np.r_[np.geomspace(5.0, 1e-4, 30), 0.0, 1e-12, -1e-3, -0.2, NAN]
    fig = _render(plots.spectrum(e, "averaged Hessian"))
    assert fig.axes[0].get_yscale() == "symlog"
    summ = plots.spectrum_summary(e)
    assert summ["count"] == 32 and summ["n_negative"] == 2 and summ["n_positive"] == 30
    assert summ["max"] == 5.0 and summ["min"] == -0.2
    assert summ["condition_number"] == pytest.approx(5.0 / 1e-4)
    assert summ["det_sign"] == 1.0
    _render(plots.spectrum([0.0, 1e-12], "empty"))
    fig = plots.hessian_comparison([0.01, 0.1, 0.001], [3, 2, 4], [-1, -2, 0],
                                   [10, 9, 12], [1e3, 1e2, 1e4])
    assert len(fig.axes) == 4
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert fig.axes[3].get_yscale() == "log"
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [0.001, 0.01, 0.1])


def test_ensemble_loss_excludes_diverged():
    rng = np.random.default_rng(0)
    losses = 0.1 + 0.01 * rng.random((6, 20))
    losses[2, 5:] = NAN  # diverged (non-finite)
    losses[4] = 1e6  # flagged by the caller
    flags = np.zeros(6, bool)
    flags[4] = True
    fig = _render(plots.ensemble_loss(losses, 0.05, flags))
    ax = fig.axes[0]
    assert "4 of 6 runs" in ax.get_title() and "2 diverged excluded" in ax.get_title()
    mean_line = [ln for ln in ax.lines if ln.get_label() == "mean over runs"][0]
    np.testing.assert_allclose(mean_line.get_ydata(), losses[[0, 1, 3, 5]].mean(axis=0))
    _render(plots.ensemble_loss(np.full((2, 3), NAN), 0.1, None))
    with pytest.raises(ValueError):
        plots.ensemble_loss(losses, 0.05, np.zeros(3, bool))


# --------------------------------------------------------------------------------------------
# python -m sgdjax.plot


def _synthetic_results(root) -> Store:
    s = Store(root)
    rng = np.random.default_rng(0)
    s.save_json("logs_sgd.json", _logs(8, with_nan=True))
    norms = np.geomspace(1, 1e-3, 10)
    norms[3] = NAN
    s.save_json("logs_gd.json", {**_logs(10, with_nan=True), "grad_norms": norms})
    s.save_json("logs_sgd_gd_plus_sgdEpochified_lr0.05.json", {
        "steps_per_epoch": 100, "sgd_train_losses": _logs(8)["train_losses"],
        "gd_train_losses": _logs(10)["train_losses"],
        "current_sgd_epochified_losses": [0.02, NAN, 0.021], "combined_train_losses": []})
    s.save_npy("hessian_eigs_lr1e-05.npy", _tube_example()[0].astype(np.float32))
    losses = 0.1 + 0.01 * rng.random((3, 7))
    losses[1, 4] = NAN
    s.save_json("sgd_logs_lr0.01.json", {"train_losses": losses.ravel(), "val_losses": [],
                                         "val_accs": [], "n_runs": 3, "n_steps": 7,
                                         "diverged_runs": [1]})
    s.save_json("gd_logs_lr0.01_dtypefloat64.json", _logs(9, with_nan=True))
    s.save_json("gd_logs_lr5e-05_dtypefloat32.json",
                {"train_losses": _logs(9)["train_losses"], "grad_norms": list(np.ones(9))})
    vdir = "val_analysis_lr0.01"
    prefix = "sgd_weights_lr0.01"
    for tag in ("start", "end"):
        rows = ["sample_idx,val_loss,val_acc"] + [
            f"{i},{0.3 + 0.01 * rng.random()},{0.9 + 0.01 * rng.random()}" for i in range(20)]
        rows.append("20,nan,nan")
        s.save_text(f"{vdir}/{prefix}__{tag}_val_metrics.csv", "\n".join(rows) + "\n")
    s.save_json(f"{vdir}/{prefix}__summary.json",
                {"start_mean_model_val_loss": 0.3, "start_mean_model_val_acc": 0.905,
                 "end_mean_model_val_loss": 0.29, "end_mean_model_val_acc": 0.91})
    for lr in ("0.1", "0.001"):
        a = rng.normal(size=(6, 6))
        s.save_npy(f"hessians_averaged_eigs_lr{lr}.npy", np.linalg.eigvalsh(a + a.T))
    s.save_npy("unrelated_lrX.npy", np.zeros(2))
    return s


EXPECTED = {
    "loss_acc_sgd.png", "loss_acc_gd.png", "grad_norm_loglog_gd.png",
    "loss_sgd_gd_plus_sgdEpochified_lr0.05.png", "significant_eigs_lr1e-05.png",
    "sgd_loss_ensemble_lr0.01.png",
    "gd_logs_lr0.01_dtypefloat64.png", "gd_logs_lr5e-05_dtypefloat32.png",
    "val_analysis_lr0.01/val_loss_distribution/sgd_weights_lr0.01__start_loss_hist.png",
    "val_analysis_lr0.01/val_loss_distribution/sgd_weights_lr0.01__start_acc_hist.png",
    "val_analysis_lr0.01/val_loss_distribution/sgd_weights_lr0.01__end_loss_hist.png",
    "val_analysis_lr0.01/val_loss_distribution/sgd_weights_lr0.01__end_acc_hist.png",
    "hessians_averaged_lr0.1_eigenvalues.png",
    "hessians_averaged_lr0.001_eigenvalues.png",
    "hessian_comparison.png",
}


def test_plot_cli_regenerates_everything(tmp_path, capsys):
    _synthetic_results(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr()
    printed = {str(p) for p in out.out.split("\n") if p}
    assert printed == {str(tmp_path / n) for n in EXPECTED}
    assert out.err == ""
    pngs = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert pngs == EXPECTED
    for name in EXPECTED:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.rglob(".*tmp*")]


def test_plot_cli_skips_absent_and_reports_broken(tmp_path, capsys):
    s = Store(tmp_path)
    assert main([str(tmp_path)]) == 0  # empty directory: nothing to do, not an error
    assert "nothing to plot" in capsys.readouterr().err
    s.save_json("logs_sgd.json", _logs(4))
    (tmp_path / "sgd_logs_lr0.1.json").write_text(json.dumps({"train_losses": [1, 2, 3]}))
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "loss_acc_sgd.png")
    assert "skipped sgd_logs_lr0.1.json" in out.err and len(out.err.strip().splitlines()) == 1


def test_plot_cli_missing_dir(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()
