"""Matplotlib figures, one function per figure.

Every function takes NumPy arrays / dicts as the store holds them and returns a
:class:`matplotlib.figure.Figure`; nothing here touches the disk (save with
``Store.save_figure``). Figures are created directly (not through ``pyplot``), so they do not
depend on the active backend, are not kept alive by pyplot's figure registry and render with Agg
when saved. Non-finite values (diverged runs) are shown as gaps or excluded and counted, never
silently averaged in.

File names used by the stages and by ``python -m sgdjax.plot``:

=================================  ============================================================
function                           file
=================================  ============================================================
:func:`loss_acc_sgd`               ``loss_acc_sgd.png``
:func:`loss_acc_gd`                ``loss_acc_gd.png``
:func:`grad_norm_loglog`           ``grad_norm_loglog_gd.png``
:func:`combined_curve`             ``loss_sgd_gd_plus_sgdEpochified_lr{lr}.png``
:func:`eigenvalue_tubes`           ``significant_eigs_lr{lr}.png``
:func:`ensemble_loss`              ``sgd_loss_ensemble_lr{lr}.png``
:func:`gd_logs`                    ``gd_logs_lr{lr}_dtype{dtype}.png``
:func:`val_histogram`              ``val_analysis_lr{lr}/val_loss_distribution/...hist.png``
:func:`spectrum`                   ``{base}_eigenvalues.png``
:func:`hessian_comparison`         ``hessian_comparison.png``
=================================  ============================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

__all__ = [
    "DPI",
    "TubeStats",
    "combined_curve",
    "eigenvalue_tubes",
    "ensemble_loss",
    "gd_logs",
    "grad_norm_loglog",
    "hessian_comparison",
    "loss_acc_gd",
    "loss_acc_sgd",
    "significant_ranks",
    "spectrum",
    "spectrum_summary",
    "val_histogram",
]

DPI = 120
_PANEL = (5.6, 4.0)  # inches per panel


# --------------------------------------------------------------------------------------------
# helpers


def _figure(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = _PANEL,
            ) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _arr(values: Any) -> np.ndarray:
    """A float64 1-D copy of a list/array (``None`` entries, i.e. JSON nulls, become NaN)."""
    if values is None:
        return np.zeros(0)
    return np.array(values, dtype=np.float64).ravel()


def _log_if_positive(ax: Axes, *series: np.ndarray, axis: str = "y") -> None:
    """Log scale on ``axis`` when every finite value of every series is positive."""
    finite = [s[np.isfinite(s)] for s in series if s.size]
    finite = [s for s in finite if s.size]
    if finite and all((s > 0).all() for s in finite):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _finish(ax: Axes, *, xlabel: str, ylabel: str, title: str | None = None,
            legend: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if legend and ax.get_legend_handles_labels()[0]:
        # "best" tests every plotted point against each candidate spot: seconds (and a
        # matplotlib warning) for the long per-step eigenvalue series
        points = sum(len(line.get_xdata()) for line in ax.get_lines())
        ax.legend(loc="best" if points <= 20_000 else "upper right", frameon=True,
                  framealpha=0.85, edgecolor="0.85", fontsize="small")


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else str(x)


# --------------------------------------------------------------------------------------------
# stage 1 / 2 training curves


def _loss_acc(logs: Mapping[str, Any], xlabel: str, title: str) -> Figure:
    train = _arr(logs.get("train_losses"))
    val = _arr(logs.get("val_losses"))
    acc = _arr(logs.get("val_accs"))
    fig, (ax_loss, ax_acc) = _figure(2)
    for series, label, color in ((train, "train", "C0"), (val, "validation", "C1")):
        if series.size:
            ax_loss.plot(np.arange(1, series.size + 1), series, color=color, lw=1.2, label=label)
    if not (train.size or val.size):
        _empty(ax_loss, "no losses logged")
    _log_if_positive(ax_loss, train, val)
    _finish(ax_loss, xlabel=xlabel, ylabel="loss", title="loss", legend=True)
    if acc.size:
        ax_acc.plot(np.arange(1, acc.size + 1), acc, color="C2", lw=1.2)
        if np.isfinite(acc[-1]):
            ax_acc.set_title(f"validation accuracy (final {_fmt(acc[-1])})")
    else:
        _empty(ax_acc, "no validation accuracy logged")
    if not ax_acc.get_title():
        ax_acc.set_title("validation accuracy")
    _finish(ax_acc, xlabel=xlabel, ylabel="accuracy")
    fig.suptitle(title)
    return fig


def loss_acc_sgd(logs: Mapping[str, Any], title: str = "Stage 1: SGD from random init") -> Figure:
    """Stage-1 curves (``loss_acc_sgd.png``): train and validation loss vs epoch (log-y when
    positive) and validation accuracy vs epoch. ``logs`` has keys train_losses, val_losses,
    val_accs (one value per epoch; missing keys are skipped)."""
    return _loss_acc(logs, "epoch", title)


def loss_acc_gd(logs: Mapping[str, Any],
                title: str = "Stage 2: full-batch GD from the SGD endpoint") -> Figure:
    """Stage-2 curves (``loss_acc_gd.png``): as :func:`loss_acc_sgd` with GD steps on x."""
    return _loss_acc(logs, "GD step", title)


def grad_norm_loglog(grad_norms: Any, title: str = "Stage 2: full-batch gradient norm") -> Figure:
    """Gradient norm vs step (1-based) on log-log axes (``grad_norm_loglog_gd.png``)."""
    g = _arr(grad_norms)
    fig, (ax,) = _figure(1)
    steps = np.arange(1, g.size + 1)
    ok = np.isfinite(g) & (g > 0)
    if ok.any():
        ax.plot(steps, np.where(ok, g, np.nan), color="C3", lw=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{title}\nfinal {_fmt(g[ok][-1])}, min {_fmt(g[ok].min())}")
    else:
        _empty(ax, "no positive finite gradient norms")
        ax.set_title(title)
    _finish(ax, xlabel="step", ylabel=r"$\|\nabla L\|_2$")
    return fig


def sharpness(steps: Any, eigs: Any, lr: float, title: str) -> Figure:
    """Top Hessian eigenvalues measured along training against the stability threshold 2/lr
    (the "edge of stability" picture): GD on a quadratic diverges once λ_max > 2/lr."""
    t = _arr(steps)
    e = np.atleast_2d(_arr(eigs).reshape(len(t), -1))
    fig, (ax,) = _figure(1)
    for j in range(e.shape[1]):
        ax.plot(t, e[:, j], lw=1.3 if j == 0 else 0.9, color=f"C{j % 10}",
                label=r"$\lambda_{\max}$" if j == 0 else rf"$\lambda_{{{j + 1}}}$")
    ax.axhline(2.0 / lr, color="k", ls="--", lw=1, label=f"2/lr = {_fmt(2.0 / lr)}")
    finite = e[np.isfinite(e)]
    if finite.size:
        ax.set_ylim(min(0.0, finite.min()) * 1.05, max(finite.max(), 2.0 / lr) * 1.1)
    _finish(ax, xlabel="step", ylabel="Hessian eigenvalue", title=title, legend=True)
    return fig


# --------------------------------------------------------------------------------------------
# stage 3: concatenated curve and Hessian eigenvalue tubes


def combined_curve(sgd_epochs: Any, gd_steps: Any, sgd_epochified: Any, lr: float) -> Figure:
    """The concatenated train-loss curve SGD (per epoch) -> GD (per step) -> SGD continued at
    ``lr`` (epochified), with dashed vertical lines at the end of SGD and the end of GD
    (``loss_sgd_gd_plus_sgdEpochified_lr{lr}.png``)."""
    parts = [_arr(sgd_epochs), _arr(gd_steps), _arr(sgd_epochified)]
    labels = ["stage 1 SGD (epoch means)", "stage 2 GD (steps)",
              f"stage 3 SGD lr={lr:g} (epoch means)"]
    fig, (ax,) = _figure(1, panel=(9.0, 4.5))
    start = 0
    for i, (part, label) in enumerate(zip(parts, labels, strict=True)):
        if part.size:
            x = np.arange(start + 1, start + part.size + 1)
            ax.plot(x, part, color=f"C{i}", lw=1.2, label=label,
                    marker="o" if part.size <= 30 else None, ms=3)
        start += part.size
    ends = np.cumsum([p.size for p in parts])[:2]
    for end, what in zip(ends, ("end of SGD", "end of GD"), strict=True):
        ax.axvline(end + 0.5, color="0.3", ls="--", lw=1)
        ax.annotate(what, xy=(end + 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -12), textcoords="offset points", fontsize=8, color="0.3")
    if not any(p.size for p in parts):
        _empty(ax, "no losses")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _log_if_positive(ax, *parts)
    _finish(ax, xlabel="index in concatenated log (epochs, then GD steps, then epochs)",
            ylabel="train loss", title=f"SGD -> GD -> SGD (epochified), lr={lr:g}", legend=True)
    return fig


class TubeStats(NamedTuple):
    """Rank-wise statistics of per-step spectra (see :func:`significant_ranks`).

    ``ranks`` are indices into the descending-sorted spectrum (rank 0 = largest eigenvalue) in
    plotting order: significant negative ranks ascending, then significant positive ranks
    ascending; ``mean`` / ``std`` are the statistics of those ranks in the same order;
    ``n_negative`` is how many of them come first; ``n_steps_used`` / ``n_steps_dropped`` count
    the steps whose spectrum was finite / not."""

    ranks: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_negative: int
    n_steps_used: int
    n_steps_dropped: int


def significant_ranks(eigs: Any, threshold: float = 1e-5) -> TubeStats:
    """Select the ranks plotted by :func:`eigenvalue_tubes` (spec §8 item 1).

    ``eigs`` is [T, P] (eigenvalues of each step's Hessian, any order). Each step's spectrum is
    sorted descending; mean and std (population) are taken over steps per rank; ranks with
    ``|mean| > threshold`` are kept, negative-mean ranks first (ascending rank), then
    positive-mean ranks (ascending rank). Steps with any non-finite eigenvalue are dropped.
    """
    e = np.asarray(eigs, dtype=np.float64)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2:
        raise ValueError(f"eigs must be [T, P], got shape {e.shape}")
    finite = np.isfinite(e).all(axis=1)
    e = e[finite]
    if e.shape[0] == 0:
        empty = np.zeros(0)
        return TubeStats(np.zeros(0, dtype=int), empty, empty, 0, 0, int((~finite).sum()))
    desc = -np.sort(-e, axis=1)
    mean = desc.mean(axis=0)
    std = desc.std(axis=0)
    neg = np.flatnonzero(mean < -threshold)
    pos = np.flatnonzero(mean > threshold)
    ranks = np.concatenate([neg, pos]).astype(int)
    return TubeStats(ranks, mean[ranks], std[ranks], int(neg.size), int(e.shape[0]),
                     int((~finite).sum()))


def eigenvalue_tubes(eigs: Any, lr: float, threshold: float = 1e-5) -> Figure:
    """Significant Hessian eigenvalues along the stage-3 trajectory
    (``significant_eigs_lr{lr}.png``, spec §8 item 1).

    x: significant negative ranks (ascending) then significant positive ranks (ascending),
    one position each, separated by a dashed line; tick labels give the rank in the
    descending-sorted spectrum. y: symlog (linear threshold 1e-3). Line: mean over steps per
    rank; band: mean ± std. The statistics are attached to the figure as ``fig.tube_stats``.
    """
    stats = significant_ranks(eigs, threshold)
    n_ranks = int(np.asarray(eigs).shape[-1]) if np.asarray(eigs).ndim else 0
    fig, (ax,) = _figure(1, panel=(9.0, 4.8))
    fig.tube_stats = stats  # type: ignore[attr-defined]
    k = stats.ranks.size
    if k:
        x = np.arange(k)
        nn = stats.n_negative
        for sl, color, label in ((slice(0, nn), "C3", "negative"), (slice(nn, k), "C0",
                                                                    "positive")):
            if sl.stop > sl.start:
                xs, m, s = x[sl], stats.mean[sl], stats.std[sl]
                ax.fill_between(xs, m - s, m + s, color=color, alpha=0.25, lw=0)
                ax.plot(xs, m, color=color, lw=1.2, marker="." if k <= 60 else None,
                        label=f"{label} ({sl.stop - sl.start} ranks): mean ± std over steps")
        if 0 < nn < k:
            ax.axvline(nn - 0.5, color="0.3", ls="--", lw=1)
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlim(-0.5, k - 0.5)
        ticks = np.unique(np.linspace(0, k - 1, min(k, 12)).round().astype(int))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _p: str(stats.ranks[int(round(v))])
                          if 0 <= round(v) < k else ""))
    else:
        _empty(ax, f"no rank with |mean eigenvalue| > {threshold:g}")
    dropped = (f"; {stats.n_steps_dropped} non-finite steps dropped"
               if stats.n_steps_dropped else "")
    title = (f"Significant Hessian eigenvalues, lr={lr:g}: {k} of {n_ranks} ranks with "
             f"|mean| > {threshold:g}\n(over {stats.n_steps_used} steps{dropped})")
    _finish(ax, xlabel="rank in descending spectrum (negative ranks, then positive ranks)",
            ylabel="eigenvalue (symlog)", title=title, legend=True)
    return fig


# --------------------------------------------------------------------------------------------
# stage 4 / 5 / val distribution


def ensemble_loss(steps_losses: Any, lr: float, diverged: Any | None = None) -> Figure:
    """Stage-4 minibatch train loss over the ensemble: mean ± std across runs vs step.

    ``steps_losses`` is [R, T] (pre-update loss of run r at step t). Runs flagged in
    ``diverged`` (bool [R]) and runs with any non-finite loss are excluded and counted in the
    title. Also draws the min-max envelope lightly."""
    losses = np.asarray(steps_losses, dtype=np.float64)
    if losses.ndim == 1:
        losses = losses[None, :]
    n_runs, n_steps = losses.shape
    bad = ~np.isfinite(losses).all(axis=1)
    if diverged is not None:
        flags = np.asarray(diverged, dtype=bool).ravel()
        if flags.size != n_runs:
            raise ValueError(f"diverged has {flags.size} entries for {n_runs} runs")
        bad |= flags
    kept = losses[~bad]
    fig, (ax,) = _figure(1, panel=(8.0, 4.5))
    steps = np.arange(n_steps)
    if kept.shape[0]:
        mean, std = kept.mean(axis=0), kept.std(axis=0)
        ax.fill_between(steps, kept.min(axis=0), kept.max(axis=0), color="C0", alpha=0.08,
                        lw=0, label="min-max over runs")
        ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.3, lw=0,
                        label="mean ± std over runs")
        ax.plot(steps, mean, color="C0", lw=1.2, label="mean over runs")
        _log_if_positive(ax, kept.min(axis=0), mean - std)
    else:
        _empty(ax, "every run diverged")
    excl = f", {int(bad.sum())} diverged excluded" if bad.any() else ""
    _finish(ax, xlabel="step", ylabel="minibatch train loss (pre-update)",
            title=f"SGD ensemble, lr={lr:g}: {kept.shape[0]} of {n_runs} runs{excl}",
            legend=True)
    return fig


def gd_logs(logs: Mapping[str, Any], lr: float, title: str | None = None) -> Figure:
    """Stage-5 curves (``gd_logs_lr{lr}_dtype{dtype}.png``): train loss (and validation loss)
    vs step, validation accuracy when logged, gradient norm on log-log axes when logged."""
    train = _arr(logs.get("train_losses"))
    val = _arr(logs.get("val_losses"))
    acc = _arr(logs.get("val_accs"))
    gn = _arr(logs.get("grad_norms"))
    n_panels = 1 + int(acc.size > 0) + int(gn.size > 0)
    fig, axes = _figure(n_panels)
    ax = axes[0]
    for series, label, color in ((train, "train (full batch, pre-update)", "C0"),
                                 (val, "validation (post-update)", "C1")):
        if series.size:
            ax.plot(np.arange(series.size), series, color=color, lw=1.2, label=label)
    if not (train.size or val.size):
        _empty(ax, "no losses logged")
    _log_if_positive(ax, train, val)
    _finish(ax, xlabel="GD step", ylabel="loss", title="loss", legend=True)
    i = 1
    if acc.size:
        axes[i].plot(np.arange(acc.size), acc, color="C2", lw=1.2)
        _finish(axes[i], xlabel="GD step", ylabel="accuracy", title="validation accuracy")
        i += 1
    if gn.size:
        ok = np.isfinite(gn) & (gn > 0)
        if ok.any():
            axes[i].plot(np.arange(1, gn.size + 1), np.where(ok, gn, np.nan), color="C3", lw=1.2)
            axes[i].set_xscale("log")
            axes[i].set_yscale("log")
        else:
            _empty(axes[i], "no positive finite gradient norms")
        _finish(axes[i], xlabel="step", ylabel=r"$\|\nabla L\|_2$", title="gradient norm")
    fig.suptitle(title or f"Stage 5: GD continuation, lr={lr:g}")
    return fig


def val_histogram(values: Any, mean_model_value: float | None, xlabel: str,
                  title: str) -> Figure:
    """40-bin histogram of a per-run validation metric with a red dashed line at the value of
    the mean model (parameters averaged over runs). Non-finite values (diverged runs) are
    excluded and counted in the title."""
    v = _arr(values)
    ok = np.isfinite(v)
    fig, (ax,) = _figure(1)
    if ok.any():
        finite = v[ok]
        ax.hist(finite, bins=40, color="C0", alpha=0.8, edgecolor="white", lw=0.4,
                label=f"runs (mean {_fmt(finite.mean())}, std {_fmt(finite.std())})")
    else:
        _empty(ax, "no finite values")
    if mean_model_value is not None and np.isfinite(mean_model_value):
        ax.axvline(float(mean_model_value), color="red", ls="--", lw=1.5,
                   label=f"mean model: {_fmt(float(mean_model_value))}")
    n_bad = int((~ok).sum())
    full_title = title + (f"\n({n_bad} of {v.size} runs excluded as diverged)" if n_bad else "")
    _finish(ax, xlabel=xlabel, ylabel="number of runs", title=full_title, legend=True)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# --------------------------------------------------------------------------------------------
# averaged-Hessian spectra (exp2 analysis)


def spectrum_summary(eigvals: Any, tol: float = 1e-10) -> dict[str, float]:
    """The original's averaged-Hessian summary: drop eigenvalues with ``|λ| <= tol`` (and
    non-finite ones), then count, max, min, #positive, #negative, condition number (max /
    smallest positive), trace (sum of kept eigenvalues) and the sign of their product."""
    e = _arr(eigvals)
    e = e[np.isfinite(e) & (np.abs(e) > tol)]
    pos = e[e > 0]
    return {
        "count": int(e.size),
        "max": float(e.max()) if e.size else float("nan"),
        "min": float(e.min()) if e.size else float("nan"),
        "n_positive": int(pos.size),
        "n_negative": int((e < 0).sum()),
        "condition_number": float(pos.max() / pos.min()) if pos.size else float("nan"),
        "trace": float(e.sum()),
        "det_sign": float((-1) ** int((e < 0).sum())) if e.size else 0.0,
    }


def spectrum(eigvals: Any, title: str, tol: float = 1e-10) -> Figure:
    """Spectrum of one (e.g. trajectory-averaged) Hessian (``{base}_eigenvalues.png``): left,
    eigenvalues sorted descending vs index with a zero line (symlog y); right, 50-bin
    histogram. Eigenvalues with ``|λ| <= tol`` are dropped, as in the original."""
    e = _arr(eigvals)
    kept = np.sort(e[np.isfinite(e) & (np.abs(e) > tol)])[::-1]
    summ = spectrum_summary(e, tol)
    fig, (ax_s, ax_h) = _figure(2)
    if kept.size:
        ax_s.plot(np.arange(kept.size), kept, color="C0", lw=1.2, marker=".", ms=2)
        ax_s.axhline(0.0, color="red", lw=0.8, ls="--")
        ax_s.set_yscale("symlog", linthresh=1e-3)
        ax_h.hist(kept, bins=50, color="C0", alpha=0.8, edgecolor="white", lw=0.4)
        ax_h.axvline(0.0, color="red", lw=0.8, ls="--")
    else:
        _empty(ax_s, f"no eigenvalue with |λ| > {tol:g}")
        _empty(ax_h, "nothing to histogram")
    _finish(ax_s, xlabel="index (descending)", ylabel="eigenvalue (symlog)",
            title=f"sorted spectrum: {summ['count']} of {e.size} with |λ| > {tol:g}")
    _finish(ax_h, xlabel="eigenvalue", ylabel="count",
            title=f"max {_fmt(summ['max'])}, min {_fmt(summ['min'])}, "
                  f"+{summ['n_positive']}/-{summ['n_negative']}")
    fig.suptitle(title)
    return fig


def hessian_comparison(lrs: Sequence[float], max_eigs: Sequence[float],
                       min_eigs: Sequence[float], traces: Sequence[float],
                       conds: Sequence[float]) -> Figure:
    """Averaged-Hessian statistics vs learning rate (``hessian_comparison.png``): max
    eigenvalue, min eigenvalue, trace (log-x) and condition number (log-log)."""
    lr = _arr(lrs)
    order = np.argsort(lr)
    fig, axes = _figure(2, 2, panel=(5.0, 3.8))
    panels = (("max eigenvalue", max_eigs, "C0"), ("min eigenvalue", min_eigs, "C3"),
              ("trace (sum of kept eigenvalues)", traces, "C2"),
              ("condition number (max / min positive)", conds, "C4"))
    for ax, (label, values, color) in zip(axes, panels, strict=True):
        y = _arr(values)
        if y.size != lr.size:
            raise ValueError(f"{label}: {y.size} values for {lr.size} learning rates")
        ax.plot(lr[order], y[order], color=color, marker="o", lw=1.2)
        ax.set_xscale("log")
        if label.startswith("condition"):
            _log_if_positive(ax, y)
        _finish(ax, xlabel="learning rate", ylabel=label.split(" (")[0], title=label)
    fig.suptitle("Trajectory-averaged Hessian vs learning rate")
    return fig
