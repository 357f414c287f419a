"""Figures of the looped study, one function per figure (NumPy in, ``Figure`` out).

Like :mod:`sgdjax.plots`, figures are built without pyplot (Agg when saved, nothing kept alive)
and non-finite values show as gaps.

=========================  =====================================================
function                   file
=========================  =====================================================
:func:`error_vs_k`         ``error_vs_k.png``
:func:`error_vs_loops`     ``error_vs_loops.png``
:func:`training_curves`    ``training.png``
:func:`compare_error_vs_k` written by ``python -m sgdjax.looped.compare``
=========================  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sgdjax.looped.baselines import LABELS
from sgdjax.plots import DPI

_PANEL = (5.6, 4.0)
_BASELINE_STYLE = {"least_squares": ("tab:green", "--"), "averaging": ("tab:purple", ":"),
                   "knn": ("tab:brown", "-."), "lasso": ("tab:olive", "--")}


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(_PANEL[0] * ncols, _PANEL[1]), dpi=DPI, layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, ncols)))


def _band(ax: Axes, x: np.ndarray, band: np.ndarray, label: str, color: str | None = None,
          style: str = "-") -> None:
    (line,) = ax.plot(x, band[0], style, color=color, label=label, lw=1.6)
    ax.fill_between(x, band[1], band[2], color=line.get_color(), alpha=0.2, lw=0)


def _zero_level(ax: Axes) -> None:
    ax.axhline(1.0, color="0.4", ls="--", lw=0.9)


def baseline_label(name: str, knn: int = 3) -> str:
    return f"{knn}-Nearest Neighbours" if name == "knn" else LABELS.get(name, name)


def error_vs_k(arrays: Mapping[str, np.ndarray], title: str, model_label: str = "model",
               knn: int = 3, ylim: tuple[float, float] = (-0.1, 1.25)) -> Figure:
    """Normalised squared error vs in-context examples: the model (after the evaluation's loop
    count and, for a looped model, after the trained one) and the baselines, with bootstrap
    bands and the zero-predictor level at 1."""
    fig, (ax,) = _figure()
    k = np.asarray(arrays["k"])
    if "band.model.at_train_loops" in arrays:
        b = int(arrays["trained_loops"])
        _band(ax, k, arrays["band.model.at_train_loops"], f"{model_label} ({b} loops, trained)",
              "tab:orange")
        eval_loops = np.asarray(arrays["loop_curve"]).shape[1] // int(arrays["units_per_loop"])
        _band(ax, k, arrays["band.model"], f"{model_label} ({eval_loops} loops)", "tab:blue")
    else:
        _band(ax, k, arrays["band.model"], model_label, "tab:blue")
    for name in sorted(n for n in arrays if n.startswith("band.baseline.")):
        base = name.removeprefix("band.baseline.")
        color, style = _BASELINE_STYLE.get(base, (None, "--"))
        _band(ax, k, arrays[name], baseline_label(base, knn), color, style)
    _zero_level(ax)
    ax.set_ylim(*ylim)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / normaliser")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def error_vs_loops(arrays: Mapping[str, np.ndarray], title: str) -> Figure:
    """Error of the last point vs loop iteration at inference, far beyond the trained count
    (marked), with the least-squares error at that point for reference."""
    fig, (ax,) = _figure()
    band = np.asarray(arrays["band.loop_curve"])
    per = int(arrays["units_per_loop"])
    steps = np.arange(1, band.shape[1] + 1)
    _band(ax, steps, band, "model, last point", "tab:blue")
    trained = int(arrays["trained_loops"]) * per
    ax.axvline(trained, color="tab:red", ls=":", lw=1.2, label=f"trained loops b={trained}")
    if "band.baseline.least_squares" in arrays:
        ax.axhline(float(arrays["band.baseline.least_squares"][0][-1]), color="tab:green",
                   ls="--", lw=1.0, label="least squares, last point")
    _zero_level(ax)
    ax.set_xscale("log")
    finite = band[0][np.isfinite(band[0])]
    top = max(1.25, float(np.nanmax(finite)) * 1.05) if finite.size else 1.25
    ax.set_ylim(-0.05, min(top, 5.0))
    ax.set_xlabel("loop iteration" + (" (single-layer steps)" if per > 1 else ""))
    ax.set_ylabel("squared error / normaliser")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def training_curves(log: Mapping[str, np.ndarray], title: str) -> Figure:
    """Train loss (and test loss), gradient norm and the curriculum (d, n, K) vs step."""
    fig, axes = _figure(3)
    loss = np.asarray(log["loss"], np.float64)
    steps = np.arange(loss.size)
    window = max(1, loss.size // 200)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid") if loss.size else loss
    axes[0].plot(steps, loss, color="0.8", lw=0.5, label="train (per step)")
    axes[0].plot(steps[window - 1 :], smooth, color="tab:blue", lw=1.2,
                 label=f"train (mean of {window})")
    val = np.asarray(log.get("val_loss", np.zeros(0)), np.float64)
    if val.size:
        every = int(log["val_every"])
        axes[0].plot(every * np.arange(1, val.size + 1), val, "o-", ms=3, color="tab:red",
                     label="test (full d, n)")
    if np.all(loss[np.isfinite(loss)] > 0) and np.isfinite(loss).any():
        axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="loss", title=title)
    axes[0].legend(fontsize=8)
    grad = np.asarray(log["grad_norm"], np.float64)
    axes[1].plot(np.arange(grad.size), grad, color="tab:gray", lw=0.6)
    axes[1].set(xlabel="step", ylabel="gradient L2 norm", yscale="log", title="gradient norm")
    for name, color in (("dims", "tab:green"), ("points", "tab:blue"), ("loops", "tab:orange")):
        if name in log:
            axes[2].plot(np.arange(len(log[name])), log[name], color=color, label=name)
    axes[2].set(xlabel="step", ylabel="value", title="curriculum (d, n, K)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def compare_error_vs_k(curves: Mapping[str, np.ndarray], baselines: Mapping[str, np.ndarray],
                       title: str, k_from: int = 0, knn: int = 3) -> Figure:
    """Several models' error-vs-k bands (``{label: [3, N]}``) and shared baselines; ``k_from``
    zooms on the examples from that k on (the seed-002 zoom figures)."""
    fig, (ax,) = _figure()
    for label, band in curves.items():
        band = np.asarray(band)
        k = np.arange(band.shape[1])
        _band(ax, k[k_from:], band[:, k_from:], label)
    for name, band in baselines.items():
        band = np.asarray(band)
        k = np.arange(band.shape[1])
        color, style = _BASELINE_STYLE.get(name, (None, "--"))
        _band(ax, k[k_from:], band[:, k_from:], baseline_label(name, knn), color, style)
    if k_from == 0:
        _zero_level(ax)
        ax.set_ylim(-0.1, 1.25)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / normaliser")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


__all__ = ["baseline_label", "compare_error_vs_k", "error_vs_k", "error_vs_loops",
           "training_curves"]
