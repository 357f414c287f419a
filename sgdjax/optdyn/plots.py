"""Figures of the optimizer-dynamics study, one function per figure, in sgdjax's figure style.

Every function takes the arrays the stages store (``history_*.npz`` / ``sweep_*.npz`` loaded as
dicts; per-run arrays ``[seeds, logged steps]``) and returns a Figure. With several seeds a line
is the mean over seeds and the band spans their min..max; diverged runs (NaN after their step)
are left out of the mean at the steps where they are NaN and counted in the titles.

=============================  ==============================================================
function                       file
=============================  ==============================================================
:func:`curves`                 ``curves_{run}.png``: train/val loss (log y), train/val accuracy
:func:`norms`                  ``norms_{run}.png``: grad/update/param norms, global and per layer
:func:`compare`                ``compare.png``: val accuracy, val loss, update norm, eff. step
:func:`effective_step`         ``effective_step.png``: ‖update‖/‖grad‖ global and per layer
:func:`logits`                 ``logits.png``: saturation share, logit spread, active ReLUs
:func:`sweep_final`            ``sweep_final_val.png``: final val accuracy / loss vs lr
:func:`sweep_dynamics`         ``sweep_dynamics_{optimizer}.png``: chosen lrs vs step
=============================  ==============================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sgdjax.plots import _empty, _figure, _finish, _fmt

History = Mapping[str, Any]
LAYERS = ("fc1", "fc2")


def _seeds(values: Any) -> np.ndarray:
    """``[seeds, steps]`` float64 view of a record (a single run becomes one row)."""
    a = np.asarray(values, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def _mean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: diverged everywhere
        return np.nanmean(a, axis=0)


def _line(ax: Axes, steps: np.ndarray, values: Any, color: str, label: str,
          positive: bool = False) -> None:
    """Mean over seeds with a min..max band; ``positive`` hides values <= 0 (log axes)."""
    a = _seeds(values)
    if positive:
        a = np.where(a > 0, a, np.nan)
    ax.plot(steps, _mean(a), color=color, lw=1.3, label=label)
    if a.shape[0] > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.fill_between(steps, np.nanmin(a, axis=0), np.nanmax(a, axis=0), color=color,
                            alpha=0.18, lw=0)


def _n_diverged(h: History) -> int:
    return int((np.asarray(h.get("diverged_at", [-1])) >= 0).sum())


def _suffix(h: History) -> str:
    n_seeds = _seeds(h["train.loss"]).shape[0]
    parts = [f"{n_seeds} seeds: mean, min..max"] if n_seeds > 1 else []
    if _n_diverged(h):
        parts.append(f"{_n_diverged(h)} diverged")
    return f" ({', '.join(parts)})" if parts else ""


def curves(h: History, title: str) -> Figure:
    """Train (minibatch, pre-update) and validation (post-update) loss on log y, and accuracy."""
    steps = np.asarray(h["step"])
    fig, (ax_loss, ax_acc) = _figure(2)
    _line(ax_loss, steps, h["train.loss"], "C0", "train (minibatch)", positive=True)
    _line(ax_loss, steps, h["val.loss"], "C1", "validation", positive=True)
    ax_loss.set_yscale("log")
    _finish(ax_loss, xlabel="step", ylabel="BCE loss", title="loss", legend=True)
    _line(ax_acc, steps, h["train.acc"], "C0", "train (minibatch)")
    _line(ax_acc, steps, h["val.acc"], "C1", "validation")
    final = _mean(_seeds(h["val.acc"]))[-1]
    _finish(ax_acc, xlabel="step", ylabel="accuracy",
            title=f"accuracy (final validation {_fmt(final)})", legend=True)
    fig.suptitle(title + _suffix(h))
    return fig


def norms(h: History, title: str) -> Figure:
    """Global grad/update/param norms on one log axis, then each kind per layer."""
    steps = np.asarray(h["step"])
    fig, axes = _figure(2, 2)
    for kind, color in (("grad", "C3"), ("update", "C2"), ("param", "C0")):
        _line(axes[0], steps, h[f"{kind}.global"], color, f"{kind}.global", positive=True)
    axes[0].set_yscale("log")
    _finish(axes[0], xlabel="step", ylabel="L2 norm", title="global norms", legend=True)
    for ax, kind in zip(axes[1:], ("grad", "update", "param"), strict=True):
        for j, layer in enumerate(LAYERS):
            _line(ax, steps, h[f"{kind}.{layer}"], f"C{j}", f"{kind}.{layer}", positive=True)
        ax.set_yscale("log")
        _finish(ax, xlabel="step", ylabel="L2 norm", title=f"{kind} norm per layer",
                legend=True)
    fig.suptitle(title + _suffix(h))
    return fig


def compare(hists: Mapping[str, History], title: str) -> Figure:
    """Several runs on shared axes: validation accuracy, validation loss (log y), update norm
    (log y) and effective step (log y) vs step."""
    fig, axes = _figure(2, 2)
    panels = (("val.acc", "validation accuracy", False), ("val.loss", "validation loss", True),
              ("update.global", r"$\|\Delta\theta\|$", True),
              ("eff_step.global", r"$\|\Delta\theta\| / \|g\|$", True))
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for j, (name, h) in enumerate(hists.items()):
            _line(ax, np.asarray(h["step"]), h[key], f"C{j % 10}",
                  name + (f" ({_n_diverged(h)} diverged)" if _n_diverged(h) else ""),
                  positive=log)
        if log:
            ax.set_yscale("log")
        _finish(ax, xlabel="step", ylabel=label, title=label, legend=True)
    if not hists:
        _empty(axes[0], "no runs")
    fig.suptitle(title)
    return fig


def effective_step(hists: Mapping[str, History], lrs: Mapping[str, float] | None = None
                   ) -> Figure:
    """``‖update‖/‖grad‖`` vs step, global and per layer, one line per run (log y); a run's lr
    is drawn dotted when given (plain SGD's effective step equals it)."""
    fig, axes = _figure(3)
    for ax, part in zip(axes, ("global", *LAYERS), strict=True):
        for j, (name, h) in enumerate(hists.items()):
            color = f"C{j % 10}"
            _line(ax, np.asarray(h["step"]), h[f"eff_step.{part}"], color, name, positive=True)
            if lrs and name in lrs:
                ax.axhline(lrs[name], color=color, ls=":", lw=0.9)
        ax.set_yscale("log")
        _finish(ax, xlabel="step", ylabel=r"$\|\Delta\theta\| / \|g\|$",
                title=f"effective step ({part})", legend=True)
    fig.suptitle("Effective step per run (dotted: the run's lr)")
    return fig


def logits(hists: Mapping[str, History]) -> Figure:
    """Logit saturation (share of |logit| above the threshold), logit spread, active ReLUs."""
    fig, axes = _figure(3)
    panels = (("sat_rate", "share of saturated logits"), ("logits.std", "std of logits"),
              ("active_frac", "share of active hidden units"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for j, (name, h) in enumerate(hists.items()):
            _line(ax, np.asarray(h["step"]), h[key], f"C{j % 10}", name)
        _finish(ax, xlabel="step", ylabel=label, title=label, legend=True)
    fig.suptitle("Logits and hidden units on the training minibatch")
    return fig


def sweep_final(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Final validation accuracy vs lr (log x) and final validation loss vs lr (log-log), one
    curve per optimiser: mean over the seeds that stayed finite with min..max error bars; lrs
    where a run diverged are marked with a cross. ``results[name]`` holds ``lrs [n]``,
    ``final_val_acc`` and ``final_val_loss [n, seeds]``, ``diverged_at [n, seeds]`` and
    optionally ``best_lr`` (drawn dotted)."""
    fig, (ax_acc, ax_loss) = _figure(2)
    for j, (name, r) in enumerate(results.items()):
        lrs = np.asarray(r["lrs"], dtype=np.float64)
        color = f"C{j % 10}"
        for ax, key in ((ax_acc, "final_val_acc"), (ax_loss, "final_val_loss")):
            a = np.asarray(r[key], dtype=np.float64)  # [n_lrs, seeds]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(a, 1), np.nanmin(a, 1), np.nanmax(a, 1)
            ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], color=color, marker="o", ms=4,
                        lw=1.3, capsize=2, label=f"{name} ({a.shape[1]} seeds)")
            bad = (np.asarray(r["diverged_at"]) >= 0).any(axis=1)
            if bad.any():
                ax.plot(lrs[bad], np.full(bad.sum(), np.nanmin(mean) if np.isfinite(mean).any()
                                          else 0.5), "x", color=color, ms=8,
                        label=f"{name}: a run diverged")
        if "best_lr" in r:
            ax_acc.axvline(float(r["best_lr"]), color=color, ls=":", lw=0.9)
    ax_acc.set_xscale("log")
    _finish(ax_acc, xlabel="learning rate", ylabel="final validation accuracy",
            title="final validation accuracy vs lr (dotted: best lr)", legend=True)
    ax_loss.set_xscale("log")
    ax_loss.set_yscale("log")
    _finish(ax_loss, xlabel="learning rate", ylabel="final validation loss",
            title="final validation loss vs lr", legend=True)
    if not results:
        _empty(ax_acc, "no sweep")
    return fig


def sweep_dynamics(name: str, lrs: Sequence[float], sweep: History, chosen: Sequence[int]
                   ) -> Figure:
    """Validation accuracy and minibatch train loss (log y) vs step for the chosen lr indices
    of one optimiser's sweep (arrays ``[n_lrs, seeds, steps]``)."""
    steps = np.asarray(sweep["step"])
    fig, (ax_acc, ax_loss) = _figure(2)
    for j, i in enumerate(chosen):
        label = f"lr={lrs[i]:.3g}"
        _line(ax_acc, steps, np.asarray(sweep["val.acc"])[i], f"C{j % 10}", label)
        _line(ax_loss, steps, np.asarray(sweep["train.loss"])[i], f"C{j % 10}", label,
              positive=True)
    ax_loss.set_yscale("log")
    _finish(ax_acc, xlabel="step", ylabel="validation accuracy", title="validation accuracy",
            legend=True)
    _finish(ax_loss, xlabel="step", ylabel="train loss (minibatch)", title="train loss",
            legend=True)
    fig.suptitle(f"{name} sweep: dynamics at selected learning rates")
    return fig
