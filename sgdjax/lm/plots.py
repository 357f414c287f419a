"""Figures of the LM study (matplotlib, no pyplot; save with ``Store.save_figure``).

===========================  ==================================================================
function                     file
===========================  ==================================================================
:func:`loss_curve`           ``loss_curve.png``: train loss per step, validation, lr (twin axis)
:func:`scaling`              ``scaling.png``: tokens/s and per-device memory per mode and devices
:func:`sweep`                ``sweep.png``: objective of every sweep run, and against lr
===========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sgdjax.plots import DPI

_PANEL = (5.6, 4.0)


def _figure(ncols: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(_PANEL[0] * ncols, _PANEL[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def loss_curve(loss: np.ndarray, lr: np.ndarray, val_steps: np.ndarray, val_loss: np.ndarray,
               *, unigram: float | None = None, title: str = "") -> Figure:
    """Training loss per optimizer step (thin) with a running mean, validation points, the
    unigram baseline, and the learning rate on a twin axis."""
    fig, (ax,) = _figure()
    loss = np.asarray(loss, float)
    steps = np.arange(1, loss.size + 1)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, color="C0", label="train (per step)")
    if loss.size >= 10:
        k = max(1, loss.size // 50)
        smooth = np.convolve(np.nan_to_num(loss), np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", lw=1.4, label=f"train (mean of {k})")
    if len(val_steps):
        ax.plot(val_steps, val_loss, "o-", color="C1", ms=3, label="validation")
    if unigram is not None:
        ax.axhline(unigram, color="0.4", ls="--", lw=1, label="unigram baseline")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(lr):
        twin = ax.twinx()
        twin.plot(np.arange(len(lr)), lr, color="C2", lw=1, alpha=0.8)
        twin.set_ylabel("learning rate", color="C2")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def scaling(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Tokens/s (left) and analytic per-device state memory (right) against device count, one
    line per sharding mode."""
    fig, (ax1, ax2) = _figure(2)
    modes = sorted({r["mode"] for r in rows}, key=lambda m: ("dp", "zero1", "zero2",
                                                            "zero3").index(m))
    for i, mode in enumerate(modes):
        sub = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["devices"])
        n = [r["devices"] for r in sub]
        ax1.plot(n, [r["tokens_per_s"] for r in sub], "o-", color=f"C{i}", label=mode)
        ax2.plot(n, [r["memory_mb"]["total"] for r in sub], "o-", color=f"C{i}", label=mode)
    for ax, ylabel in ((ax1, "tokens / s"), (ax2, "state memory per device (MB)")):
        ax.set_xlabel("devices")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r["devices"] for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("throughput (simulated host devices share the CPU)"
                  if rows and rows[0].get("simulated") else "throughput")
    ax2.set_title("params + grads + optimizer state")
    return fig


def sweep(rows: Sequence[Mapping[str, Any]], metric: str = "final_eval_loss") -> Figure:
    """The objective of every run, sorted (left), and against the learning rate (right)."""
    fig, (ax1, ax2) = _figure(2)
    vals = np.array([float(r.get(metric, np.nan)) for r in rows])
    order = np.argsort(np.where(np.isfinite(vals), vals, np.inf))
    ax1.barh(np.arange(len(rows)), vals[order], color="C0")
    ax1.set_yticks(np.arange(len(rows)), [str(rows[i]["name"]) for i in order], fontsize=6)
    ax1.invert_yaxis()
    ax1.set_xlabel(metric)
    lrs = np.array([float(r.get("lr", np.nan)) for r in rows])
    ok = np.isfinite(vals) & np.isfinite(lrs)
    ax2.scatter(lrs[ok], vals[ok], c="C1")
    if ok.any():
        ax2.set_xscale("log")
    ax2.set_xlabel("learning rate")
    ax2.set_ylabel(metric)
    ax2.grid(alpha=0.3)
    n_bad = int((~np.isfinite(vals)).sum())
    ax2.set_title(f"{len(rows)} runs" + (f", {n_bad} diverged" if n_bad else ""))
    return fig


__all__ = ["loss_curve", "scaling", "sweep"]
