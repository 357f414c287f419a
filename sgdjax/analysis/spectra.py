"""Hessian spectra of a results directory: how the curvature seen by SGD evolves along the stage-3
trajectory, and how it compares with the stability threshold 2/lr (spec §8 items 1 and 8, and
the [inf] notebook list (i)–(ii)).

Stage 3 stores, per lr, the eigenvalues of every step's minibatch Hessian
(``hessian_eigs_lr{lr}.npy`` [T, P], ascending per step) and usually the matrices themselves
(``hessians_traj_lr{lr}.npy`` [T, P, P]). From them this module draws

* the significant-eigenvalue "tubes" (:func:`sgdjax.plots.eigenvalue_tubes`);
* the top-k (and bottom-k) eigenvalues vs step (:func:`topk_trajectory`): whether the sharp
  directions stay put or drift while SGD diffuses;
* the signed spectrum at the first and last step on a symmetric-log axis: the bulk near zero and
  the outliers in one picture (:func:`symlog_edges`);
* the number of eigenvalues above ``|λ| > 1e-3`` and ``> 1e-5``, positive and negative separately,
  per step (:func:`count_above`): the effective dimension of the curved subspace and how much
  negative curvature the minibatch Hessians carry;
* λ_max vs 2/lr along stage 3 and, where ``curvature_every`` was set, along stages 1, 2 and 4
  (:func:`curvature_tracks`): GD on a quadratic is stable only while λ_max < 2/lr;
* the stochastic-Lanczos-quadrature density of the last stored Hessian against the smoothed
  dense spectrum (:func:`slq_vs_dense`), with their Wasserstein-1 distance: the check that SLQ,
  the density estimate that needs only Hessian-vector products and so scales to big models,
  sees the same spectrum as the dense solver;
* the spectrum of the stage-7 trajectory-averaged Hessian where it exists
  (:func:`sgdjax.plots.spectrum`).

The pure helpers work on NumPy arrays and are what the notebooks call; :func:`analyze_spectra`
is the driver behind ``python -m sgdjax.analyze spectra DIR``. Figures are built without pyplot
(the conventions of :mod:`sgdjax.plots`), so they render with any backend and are displayed
inline by Jupyter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from sgdjax.errors import SgdjaxError

__all__ = [
    "DEFAULT_K",
    "THRESHOLDS",
    "SlqComparison",
    "Track",
    "analyze_spectra",
    "available_lrs",
    "bottomk_trajectory",
    "count_above",
    "counts_figure",
    "curvature_tracks",
    "histogram_figure",
    "load_config",
    "sharpness_figure",
    "slq_figure",
    "slq_vs_dense",
    "spectrum_at",
    "stage3_files",
    "symlog_edges",
    "topk_figure",
    "topk_trajectory",
]

#: How many of the largest eigenvalues the trajectories follow.
DEFAULT_K = 10
#: |λ| thresholds of the significant-eigenvalue counts: 1e-3 is the symlog linear threshold of
#: the tubes figure, 1e-5 the tubes' significance threshold (spec §8 item 1).
THRESHOLDS: tuple[float, ...] = (1e-3, 1e-5)
#: Linear threshold of the symmetric-log axes, as in the tubes figure.
LINTHRESH = 1e-3


# --------------------------------------------------------------------------------------------
# pure helpers


def _eig_matrix(eigs: Any) -> np.ndarray:
    e = np.asarray(eigs, dtype=np.float64)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2:
        raise ValueError(f"eigenvalues must be [T, P] (one spectrum per step), got {e.shape}")
    return e


def topk_trajectory(eigs: Any, k: int = DEFAULT_K) -> np.ndarray:
    """The ``k`` largest eigenvalues of every step, descending: ``[T, min(k, P)]`` float64.

    ``eigs`` is ``[T, P]`` in any order per step (stage 3 stores them ascending). Column 0 is
    λ_max. A step with any non-finite eigenvalue (a diverged step) gives a row of NaN, so a plot
    shows a gap instead of a misleading value sorted out of garbage.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    e = _eig_matrix(eigs)
    k = min(k, e.shape[1])
    top = -np.sort(-e, axis=1)[:, :k]
    return np.where(np.isfinite(e).all(axis=1, keepdims=True), top, np.nan)


def bottomk_trajectory(eigs: Any, k: int = DEFAULT_K) -> np.ndarray:
    """The ``k`` smallest (most negative) eigenvalues of every step, ascending:
    ``[T, min(k, P)]``; NaN rows for non-finite steps, as :func:`topk_trajectory`."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    e = _eig_matrix(eigs)
    k = min(k, e.shape[1])
    low = np.sort(e, axis=1)[:, :k]
    return np.where(np.isfinite(e).all(axis=1, keepdims=True), low, np.nan)


def count_above(eigs: Any, thresholds: Sequence[float] = THRESHOLDS
                ) -> dict[float, dict[str, np.ndarray]]:
    """Per step, how many eigenvalues exceed each threshold in magnitude, by sign.

    Returns ``{threshold: {"positive": [T], "negative": [T]}}`` with the counts of ``λ > thr``
    and ``λ < −thr``. Counts are float64 so that a step whose spectrum is not finite can be NaN:
    a diverged step then shows as a gap, never as "no significant eigenvalue".
    """
    e = _eig_matrix(eigs)
    finite = np.isfinite(e).all(axis=1)
    out: dict[float, dict[str, np.ndarray]] = {}
    for thr in thresholds:
        thr = float(thr)
        if thr < 0:
            raise ValueError(f"thresholds must be non-negative, got {thr}")
        with np.errstate(invalid="ignore"):
            pos = (e > thr).sum(axis=1).astype(np.float64)
            neg = (e < -thr).sum(axis=1).astype(np.float64)
        out[thr] = {"positive": np.where(finite, pos, np.nan),
                    "negative": np.where(finite, neg, np.nan)}
    return out


def spectrum_at(eigs: Any, step: int = -1) -> np.ndarray:
    """The finite eigenvalues of one step (``step`` indexes the rows; negative counts from the
    end), ascending."""
    e = _eig_matrix(eigs)
    n = e.shape[0]
    if not -n <= step < n:
        raise IndexError(f"step {step} out of range for {n} recorded steps")
    row = e[step]
    return np.sort(row[np.isfinite(row)])


def _symlog(x: np.ndarray, linthresh: float) -> np.ndarray:
    return np.sign(x) * np.log10(1.0 + np.abs(x) / linthresh)


def _symlog_inv(y: np.ndarray, linthresh: float) -> np.ndarray:
    return np.sign(y) * linthresh * (10.0 ** np.abs(y) - 1.0)


def symlog_edges(values: Any, linthresh: float = LINTHRESH, bins: int = 60) -> np.ndarray:
    """Histogram bin edges evenly spaced on a symmetric-log scale covering ``values``.

    Hessian spectra are a bulk of tiny eigenvalues of both signs plus a few outliers orders of
    magnitude larger; linear bins put everything into one bin, log bins cannot hold the signs.
    The transform ``sign(x)·log10(1 + |x|/linthresh)`` is linear below ``linthresh`` and
    logarithmic above, so equal-width bins in it resolve both. Always includes 0 inside the range.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    lo = min(float(v.min()), 0.0) if v.size else -linthresh
    hi = max(float(v.max()), 0.0) if v.size else linthresh
    if hi - lo <= 0:
        lo, hi = -linthresh, linthresh
    t = np.linspace(_symlog(np.asarray(lo), linthresh), _symlog(np.asarray(hi), linthresh),
                    max(2, int(bins)) + 1)
    edges = _symlog_inv(t, linthresh)
    edges[0], edges[-1] = lo, hi  # exact ends: nothing falls outside through rounding
    return edges


class SlqComparison(NamedTuple):
    """Result of :func:`slq_vs_dense`.

    ``grid`` / ``slq_density`` / ``dense_density``: the two smoothed densities (each integrates
    to 1 on the grid); ``nodes`` / ``weights`` ``[num_probes, num_iters]``: the SLQ quadrature
    (weights of each probe sum to 1); ``eigvals``: the dense spectrum (ascending);
    ``wasserstein1``: W1 distance between the SLQ measure and the dense eigenvalues, in
    eigenvalue units (no smoothing involved); ``wasserstein1_relative``: the same divided by the
    spectral range ``max − min``; ``l1_density``: ``∫|p_slq − p_dense|`` on the grid (0..2).
    """

    grid: np.ndarray
    slq_density: np.ndarray
    dense_density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    eigvals: np.ndarray
    sigma: float
    num_probes: int
    num_iters: int
    wasserstein1: float
    wasserstein1_relative: float
    l1_density: float

    def summary(self) -> dict[str, Any]:
        """The scalars, for a JSON summary."""
        return {"wasserstein1": self.wasserstein1,
                "wasserstein1_relative": self.wasserstein1_relative,
                "l1_density": self.l1_density, "sigma": self.sigma,
                "num_probes": self.num_probes, "num_iters": self.num_iters,
                "dense_min": float(self.eigvals[0]), "dense_max": float(self.eigvals[-1])}


@functools.lru_cache(maxsize=1)
def _slq_matrix_fn() -> Callable[..., Any]:
    """SLQ nodes and weights of a dense matrix, jitted once per process: the Lanczos loop under
    ``vmap`` costs seconds to trace, so tracing it anew for every matrix would dominate."""
    import jax
    import jax.numpy as jnp

    from sgdjax.analysis.hessian import slq_nodes_weights

    def run(mat: Any, key: Any, num_probes: int, num_iters: int) -> tuple[Any, Any]:
        def matvec(v: Any) -> Any:
            return jnp.dot(mat, v, precision=jax.lax.Precision.HIGHEST)

        return slq_nodes_weights(matvec, mat.shape[0], key, num_probes=num_probes,
                                 num_iters=num_iters, dtype=mat.dtype)

    return jax.jit(run, static_argnums=(2, 3))


def _slq_matrix(mat: Any, key: Any, num_probes: int, num_iters: int) -> tuple[Any, Any]:
    return _slq_matrix_fn()(mat, key, num_probes, num_iters)


def slq_vs_dense(hessian: Any, *, eigvals: Any | None = None, num_probes: int = 16,
                 num_iters: int | None = None, sigma: float | None = None,
                 grid_points: int = 512, seed: int = 0) -> SlqComparison:
    """Stochastic Lanczos quadrature of a stored Hessian against its dense spectrum.

    The matrix acts as the matvec of :func:`sgdjax.analysis.hessian.slq_nodes_weights` (the same
    code path HVPs take for models too big for a dense Hessian), in float64. ``eigvals`` (any
    order) saves the dense solve when known (stage 3 stores them); otherwise
    ``numpy.linalg.eigvalsh``. ``num_iters`` defaults to ``min(P, 80)``. ``sigma`` (the Gaussian
    smoothing of both densities) defaults to 1/100 of the spectral range, so the bulk and the
    outliers are resolved alike; the grid extends 5σ beyond the extreme eigenvalues.
    """
    import jax
    import jax.numpy as jnp

    from sgdjax.analysis.hessian import dense_density, smoothed_density
    from sgdjax.analysis.hessian import wasserstein1 as _w1

    h = np.asarray(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"expected a square Hessian, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("the Hessian holds non-finite entries (a diverged step)")
    h = 0.5 * (h + h.T)
    dim = h.shape[0]
    lam = np.sort(np.asarray(eigvals, np.float64).ravel()) if eigvals is not None else \
        np.linalg.eigvalsh(h)
    if lam.size != dim:
        raise ValueError(f"{lam.size} eigenvalues for a {dim}x{dim} Hessian")
    iters = min(dim, 80) if num_iters is None else int(num_iters)
    if not 1 <= iters <= dim:
        raise ValueError(f"num_iters must lie in 1..{dim}, got {iters}")
    span = float(lam[-1] - lam[0])
    width = float(sigma) if sigma is not None else (span / 100.0 if span > 0 else 1e-3)
    with jax.enable_x64(True):
        nodes, weights = _slq_matrix(jnp.asarray(h), jax.random.PRNGKey(seed),
                                     int(num_probes), iters)
        grid = jnp.linspace(lam[0] - 5 * width, lam[-1] + 5 * width, int(grid_points))
        p_slq = smoothed_density(nodes, weights / num_probes, grid, width)
        p_dense = dense_density(jnp.asarray(lam), grid, width)
        w1 = float(_w1(nodes, weights, jnp.asarray(lam)))
        grid_np, p_slq_np, p_dense_np = (np.asarray(a, np.float64) for a in (grid, p_slq,
                                                                             p_dense))
        nodes_np, weights_np = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    l1 = float(np.trapezoid(np.abs(p_slq_np - p_dense_np), grid_np))
    return SlqComparison(grid_np, p_slq_np, p_dense_np, nodes_np, weights_np, lam, width,
                         int(num_probes), iters, w1, w1 / span if span > 0 else float("nan"),
                         l1)


# --------------------------------------------------------------------------------------------
# results-directory access


def _lr_key(lr: float) -> str:
    from sgdjax.store import lr_tag

    return f"lr{lr_tag(lr)}"


def stage3_files(lr: float) -> dict[str, str]:
    """The stage-3 / stage-7 file names of one lr that the spectra read."""
    from sgdjax.store import lr_tag

    tag = lr_tag(lr)
    return {"eigvals": f"hessian_eigs_lr{tag}.npy", "matrices": f"hessians_traj_lr{tag}.npy",
            "params": f"weights_traj_lr{tag}.npy",
            "averaged_eigvals": f"hessians_averaged_eigs_lr{tag}.npy"}


def load_config(results_dir: str | Path) -> Any | None:
    """The :class:`~sgdjax.config.SetupConfig` recorded in ``manifest.json``, or None when the
    directory has no manifest (the analyses then fall back to what the file names say)."""
    from sgdjax.config import from_dict
    from sgdjax.store import MANIFEST

    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        return None
    import json

    config = json.loads(path.read_text(encoding="utf-8")).get("config")
    return from_dict(config) if config else None


_EIGS_RE = re.compile(r"hessian_eigs_lr(.+)\.npy")


def available_lrs(results_dir: str | Path, cfg: Any | None = None) -> list[float]:
    """Learning rates whose stage-3 eigenvalues exist: in the config's order when the manifest
    is there (``cfg``: pass it to skip reading it again), then any others found on disk,
    ascending."""
    root = Path(results_dir)
    cfg = cfg if cfg is not None else load_config(root)
    ordered = [float(v) for v in cfg.lrs] if cfg is not None else []
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _EIGS_RE.fullmatch(p.name)
            if m:
                try:
                    found.append(float(m[1]))
                except ValueError:
                    continue
    present = {_lr_key(v) for v in found}
    out = [v for v in ordered if _lr_key(v) in present]
    seen = {_lr_key(v) for v in out}
    out += sorted(v for v in found if _lr_key(v) not in seen)
    return out


def _stage_cmd(cfg: Any | None, root: Path, stages: str) -> str:
    exp, setup = (cfg.experiment, cfg.setup) if cfg is not None else ("EXP", "SETUP")
    return f"python -m sgdjax.run {exp} {setup} --out {root} --stages {stages}"


class Track(NamedTuple):
    """Top Hessian eigenvalues measured along one stage: ``steps`` [n] (the stage's own step
    index), ``eigs`` [n, k] (descending, column 0 = λ_max) or, for an ensemble, [R, n, k];
    ``lr`` the learning rate that stage ran at (so 2/lr is *its* stability threshold)."""

    name: str
    label: str
    steps: np.ndarray
    eigs: np.ndarray
    lr: float


def curvature_tracks(results_dir: str | Path, lr: float, cfg: Any | None = None,
                     eigs: Any | None = None) -> list[Track]:
    """Every λ_max track for ``lr``: stage 3 (top eigenvalues of every step's minibatch Hessian,
    from ``eigs`` or ``hessian_eigs_lr{lr}.npy``) and, when ``curvature_every`` was set, the
    Lanczos tracks of stage 1 (``curvature_sgd.npz``) and stage 2 (``curvature_gd.npz``, both at
    the config's ``lr``) and of the stage-4 ensemble (``sgd_curv_eigs_lr{lr}.npy`` [R, n, k],
    measured every ``curvature_every`` steps). Missing files are skipped."""
    from sgdjax.store import lr_tag

    root = Path(results_dir)
    cfg = cfg if cfg is not None else load_config(root)
    tracks: list[Track] = []
    if cfg is not None:
        for name, label in (("curvature_sgd", "stage 1 SGD"), ("curvature_gd", "stage 2 GD")):
            path = root / f"{name}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    e = np.asarray(z["eigs"], np.float64)
                    steps = np.asarray(z["steps"], np.float64)
                tracks.append(Track(name, f"{label} (lr={cfg.lr:g})", steps,
                                    e.reshape(len(steps), -1), float(cfg.lr)))
    if eigs is None:
        path = root / stage3_files(lr)["eigvals"]
        eigs = np.load(path, mmap_mode="r") if path.is_file() else None
    if eigs is not None:
        top = topk_trajectory(np.asarray(eigs), 3)
        tracks.append(Track("stage3", f"stage 3 SGD, dense minibatch Hessians (lr={lr:g})",
                            np.arange(top.shape[0], dtype=np.float64), top, float(lr)))
    path = root / f"sgd_curv_eigs_lr{lr_tag(lr)}.npy"
    if path.is_file():
        e = np.asarray(np.load(path), np.float64)
        if e.ndim == 2:
            e = e[:, :, None]
        every = int(cfg.curvature_every) if cfg is not None and cfg.curvature_every else 1
        tracks.append(Track("stage4", f"stage 4 SGD ensemble ({e.shape[0]} runs, lr={lr:g})",
                            every * np.arange(e.shape[1], dtype=np.float64), e, float(lr)))
    return tracks


def _mean_finite(values: Any) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _track_summary(track: Track) -> dict[str, Any]:
    e = np.asarray(track.eigs, np.float64)
    lmax = e[..., 0]  # [n] for a single run, [R, n] for an ensemble
    finite = lmax[np.isfinite(lmax)]
    thr = 2.0 / track.lr
    peak = float(finite.max()) if finite.size else float("nan")
    n = int(lmax.shape[-1])
    out: dict[str, Any] = {
        "lr": track.lr, "two_over_lr": thr, "n_measurements": n,
        "lambda_max_first": _mean_finite(lmax[..., 0]) if n else float("nan"),
        "lambda_max_last": _mean_finite(lmax[..., -1]) if n else float("nan"),
        "lambda_max_peak": peak,
        # lr·λ_max/2 >= 1 means λ_max reached the GD stability threshold 2/lr
        "peak_over_threshold": peak / thr if finite.size else float("nan"),
    }
    if e.ndim == 3:
        out["n_runs"] = int(e.shape[0])
    return out


# --------------------------------------------------------------------------------------------
# figures


def _plots() -> Any:
    from sgdjax import plots

    return plots


def topk_figure(eigs: Any, lr: float, k: int = DEFAULT_K) -> Figure:
    """Left: the ``k`` largest eigenvalues vs stage-3 step (λ_max darkest; log-y when all are
    positive); right: the ``k`` most negative ones. Whether the sharp directions are stable
    while SGD moves, and how much negative curvature the minibatches show."""
    plots = _plots()
    top = topk_trajectory(eigs, k)
    low = bottomk_trajectory(eigs, k)
    steps = np.arange(top.shape[0])
    fig, (ax_t, ax_b) = plots._figure(2)
    from matplotlib import colormaps

    for ax, arr, cmap, what in ((ax_t, top, "Blues_r", "largest"),
                                (ax_b, low, "Reds_r", "smallest")):
        n = arr.shape[1]
        colors = colormaps[cmap](np.linspace(0.0, 0.7, max(n, 2)))
        for j in range(n):
            ax.plot(steps, arr[:, j], color=colors[j], lw=1.4 if j == 0 else 0.9,
                    marker="." if steps.size <= 60 else None,
                    label=(r"$\lambda_{\max}$" if what == "largest" else r"$\lambda_{\min}$")
                    if j == 0 else None)
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite > 0).all():
            ax.set_yscale("log")
        elif finite.size:
            ax.set_yscale("symlog", linthresh=LINTHRESH)
        plots._finish(ax, xlabel="stage-3 step", ylabel="eigenvalue",
                      title=f"{n} {what} eigenvalues per step", legend=True)
    fig.suptitle(f"Extreme Hessian eigenvalues along stage 3, lr={lr:g}")
    return fig


def histogram_figure(eigs: Any, lr: float, steps: Sequence[int] = (0, -1),
                     linthresh: float = LINTHRESH, bins: int = 60) -> Figure:
    """The signed spectrum of the chosen steps (default first and last) as step histograms on
    a shared symmetric-log x axis (linear below ``linthresh``): bulk and outliers, both signs."""
    plots = _plots()
    e = _eig_matrix(eigs)
    n_steps = e.shape[0]
    fig, (ax,) = plots._figure(1, panel=(8.0, 4.5))
    chosen = []
    for s in steps:
        idx = s if s >= 0 else n_steps + s
        if 0 <= idx < n_steps and idx not in chosen:
            chosen.append(idx)
    spectra = [spectrum_at(e, i) for i in chosen]
    chosen = [i for i, spec in zip(chosen, spectra, strict=True) if spec.size]
    spectra = [spec for spec in spectra if spec.size]  # a diverged step has nothing to show
    values = np.concatenate(spectra) if spectra else np.zeros(0)
    if values.size:
        edges = symlog_edges(values, linthresh, bins)
        for j, (idx, spec) in enumerate(zip(chosen, spectra, strict=True)):
            n_pos, n_neg = int((spec > linthresh).sum()), int((spec < -linthresh).sum())
            ax.hist(spec, bins=edges, histtype="step", lw=1.5, color=f"C{j}",
                    label=f"step {idx}: {n_pos} > {linthresh:g}, {n_neg} < −{linthresh:g}, "
                          f"max {plots._fmt(float(spec.max()))}")
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_yscale("log")
        ax.axvline(0.0, color="0.4", lw=0.8, ls="--")
    else:
        plots._empty(ax, "no finite spectrum at the chosen steps")
    plots._finish(ax, xlabel=f"eigenvalue (symlog, linear below {linthresh:g})",
                  ylabel="number of eigenvalues",
                  title=f"Hessian spectrum at stage-3 steps {chosen}, lr={lr:g}", legend=True)
    return fig


def counts_figure(counts: Mapping[float, Mapping[str, Any]], lr: float) -> Figure:
    """The number of eigenvalues with ``λ > thr`` (blue) and ``λ < −thr`` (red) vs step, one
    line style per threshold (as returned by :func:`count_above`)."""
    plots = _plots()
    fig, (ax,) = plots._figure(1, panel=(8.0, 4.5))
    styles = ["-", "--", ":", "-."]
    for j, (thr, by_sign) in enumerate(sorted(counts.items(), key=lambda kv: -kv[0])):
        for sign, color in (("positive", "C0"), ("negative", "C3")):
            y = np.asarray(by_sign[sign], np.float64)
            rel = f"> {thr:g}" if sign == "positive" else f"< −{thr:g}"
            ax.plot(np.arange(y.size), y, ls=styles[j % len(styles)], color=color, lw=1.3,
                    marker="." if y.size <= 60 else None, label=f"λ {rel}")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    plots._finish(ax, xlabel="stage-3 step", ylabel="number of eigenvalues",
                  title=f"Significant Hessian eigenvalues per step, lr={lr:g}", legend=True)
    return fig


def sharpness_figure(tracks: Sequence[Track], lr: float) -> Figure:
    """λ_max against each stage's stability threshold 2/lr: one panel per track (stage 1, 2, 3,
    4 where measured). Single runs show λ_max and the next eigenvalues; the stage-4 ensemble
    shows the across-run mean of λ_max with its min–max band. Log-y when everything is positive,
    so λ_max and 2/lr (often orders of magnitude apart near a minimum) are both readable."""
    plots = _plots()
    if not tracks:
        fig, (ax,) = plots._figure(1)
        plots._empty(ax, "no curvature measured")
        return fig
    fig, axes = plots._figure(len(tracks), panel=(5.0, 4.0))
    for ax, tr in zip(axes, tracks, strict=True):
        e = np.asarray(tr.eigs, np.float64)
        if e.ndim == 3:
            lm = e[:, :, 0]
            ok = np.isfinite(lm).all(axis=1)
            lm = lm[ok] if ok.any() else lm
            ax.fill_between(tr.steps, lm.min(axis=0), lm.max(axis=0), color="C0", alpha=0.25,
                            lw=0, label="min–max over runs")
            ax.plot(tr.steps, lm.mean(axis=0), color="C0", lw=1.4,
                    label=r"mean $\lambda_{\max}$")
            shown = lm
        else:
            for j in range(e.shape[1]):
                ax.plot(tr.steps, e[:, j], color=f"C{j}", lw=1.4 if j == 0 else 0.9,
                        marker="." if tr.steps.size <= 60 else None,
                        label=r"$\lambda_{\max}$" if j == 0 else rf"$\lambda_{{{j + 1}}}$")
            shown = e
        thr = 2.0 / tr.lr
        ax.axhline(thr, color="k", ls="--", lw=1, label=f"2/lr = {plots._fmt(thr)}")
        finite = shown[np.isfinite(shown)]
        if finite.size and (finite > 0).all():
            ax.set_yscale("log")
        summ = _track_summary(tr)
        plots._finish(ax, xlabel="step of that stage", ylabel="Hessian eigenvalue",
                      title=f"{tr.label}\npeak λ_max·lr/2 = "
                            f"{plots._fmt(summ['peak_over_threshold'])}", legend=True)
    fig.suptitle(f"Sharpness vs the stability threshold 2/lr (analysis lr={lr:g})")
    return fig


def slq_figure(result: SlqComparison, title: str = "") -> Figure:
    """SLQ density (dashed) over the smoothed dense spectrum (solid), on linear and log y: the
    linear panel shows the bulk, the log panel the outliers' small mass."""
    plots = _plots()
    fig, axes = plots._figure(2)
    for ax, scale in zip(axes, ("linear", "log"), strict=True):
        ax.plot(result.grid, result.dense_density, color="C0", lw=1.6,
                label=f"dense eigenvalues (P={result.eigvals.size})")
        ax.plot(result.grid, result.slq_density, color="C1", lw=1.3, ls="--",
                label=f"SLQ ({result.num_probes} probes × {result.num_iters} iters)")
        if scale == "log":
            peak = float(max(result.dense_density.max(), result.slq_density.max()))
            ax.set_yscale("log")
            ax.set_ylim(max(peak * 1e-8, 1e-300), peak * 2)
        plots._finish(ax, xlabel="eigenvalue", ylabel="spectral density",
                      title=f"{scale} y, σ = {plots._fmt(result.sigma)}", legend=scale == "linear")
    fig.suptitle(f"{title}{': ' if title else ''}W1(SLQ, dense) = "
                 f"{plots._fmt(result.wasserstein1)} "
                 f"({plots._fmt(result.wasserstein1_relative)} of the spectral range)")
    return fig


# --------------------------------------------------------------------------------------------
# the driver


def analyze_spectra(results_dir: str | Path, lrs: Sequence[float] | None = None,
                    out: str = "spectra", *, k: int = DEFAULT_K,
                    thresholds: Sequence[float] = THRESHOLDS, slq: bool = True,
                    slq_probes: int = 16, slq_iters: int | None = None,
                    figures: bool = True,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The Hessian-spectra analysis of one results directory; writes figures and
    ``{out}/summary.json`` (plus ``{out}/arrays_lr{lr}.npz``) and returns the summary.

    For each lr with stage-3 eigenvalues (``lrs``: a subset; default all of them), under
    ``{out}/``:

    ========================================  ====================================================
    ``significant_eigs_lr{lr}.png``           rank-wise mean ± std tubes (spec §8 item 1)
    ``topk_lr{lr}.png``                       ``k`` largest / most negative eigenvalues vs step
    ``histogram_lr{lr}.png``                  signed spectrum at the first and last step (symlog)
    ``counts_lr{lr}.png``                     #λ > thr and #λ < −thr per step, per threshold
    ``lambda_max_lr{lr}.png``                 λ_max vs 2/lr: stage 3 and the stage 1/2/4 tracks
    ``slq_vs_dense_lr{lr}.png``               SLQ vs dense density at the last finite stored
                                              Hessian (when ``hessians_traj_lr{lr}.npy`` exists)
    ``averaged_spectrum_lr{lr}.png``          stage-7 trajectory-averaged spectrum (if present)
    ========================================  ====================================================

    The summary holds, per ``lr{lr}``: steps, the top-k at the first and last step, the counts
    (first / last / mean over steps per threshold and sign), the tube statistics, each λ_max
    track (first, last, peak, ``peak_over_threshold`` = peak·lr/2), the SLQ comparison
    (``wasserstein1``, relative to the spectral range, L1 between the densities) or why it was
    skipped, and the averaged spectrum's statistics. Missing stage-3 files raise
    :class:`~sgdjax.errors.SgdjaxError` naming stage 3 and the command that writes them.
    """
    plots = _plots()
    from sgdjax.store import Store

    say = log or (lambda _msg: None)
    root = Path(results_dir)
    if not root.is_dir():
        raise SgdjaxError(f"results directory {root} does not exist; it is written by "
                          f"'python -m sgdjax.run EXP SETUP --out {root}'.")
    store = Store(root)
    cfg = load_config(root)
    if lrs:
        chosen = [float(v) for v in lrs]
        missing = [stage3_files(v)["eigvals"] for v in chosen
                   if not store.exists(stage3_files(v)["eigvals"])]
        if missing:
            hint = " (with --set lrs=... for learning rates outside the config)"
            raise SgdjaxError(
                f"{', '.join(missing)} missing in {root}: the per-step Hessian eigenvalues are "
                f"written by stage 3 (hessians); run '{_stage_cmd(cfg, root, '3')}'{hint}.")
    else:
        chosen = available_lrs(root, cfg)
        if not chosen:
            lr_list = f" for lrs {list(cfg.lrs)}" if cfg is not None else ""
            raise SgdjaxError(
                f"no stage-3 Hessian eigenvalues (hessian_eigs_lr{{lr}}.npy{lr_list}) in {root}: "
                f"they are written by stage 3 (hessians), which needs the stage-2 checkpoint; "
                f"run '{_stage_cmd(cfg, root, '1-3')}'.")

    summary: dict[str, Any] = {
        "results_dir": str(root),
        "experiment": cfg.experiment if cfg is not None else None,
        "setup": cfg.setup if cfg is not None else None,
        "model": cfg.model if cfg is not None else None,
        "lrs": chosen, "k": int(k), "thresholds": [float(t) for t in thresholds],
        "per_lr": {},
    }
    written: list[str] = []

    def save(into: list[str], name: str, make: Callable[..., Figure], *args: Any,
             **kwargs: Any) -> None:
        # figures are built only when written: drawing costs more than the analysis here
        if figures:
            store.save_figure(f"{out}/{name}", make(*args, **kwargs))
            written.append(f"{out}/{name}")
            into.append(f"{out}/{name}")

    for lr in chosen:
        key = _lr_key(lr)
        tag = key[2:]
        names = stage3_files(lr)
        say(f"lr={lr:g}")
        eigs = np.asarray(store.load_npy(names["eigvals"]), np.float64)
        if eigs.ndim != 2:
            raise SgdjaxError(f"{names['eigvals']} has shape {eigs.shape}; expected [steps, P]. "
                              f"Rerun '{_stage_cmd(cfg, root, '3')} --force'.")
        n_steps, n_params = eigs.shape
        finite_rows = np.isfinite(eigs).all(axis=1)
        lr_figs: list[str] = []
        top = topk_trajectory(eigs, k)
        counts = count_above(eigs, thresholds)
        tube_stats = plots.significant_ranks(eigs)
        entry: dict[str, Any] = {
            "lr": lr, "n_steps": int(n_steps), "n_params": int(n_params),
            "n_steps_finite": int(finite_rows.sum()), "two_over_lr": 2.0 / lr,
            "topk_first": top[0].tolist(), "topk_last": top[-1].tolist(),
            "lambda_min_first": float(np.min(eigs[0])),
            "lambda_min_last": float(np.min(eigs[-1])),
            "counts": {f"{thr:g}": {sign: {"first": float(v[0]), "last": float(v[-1]),
                                           "mean": _mean_finite(v)}
                                    for sign, v in by_sign.items()}
                       for thr, by_sign in counts.items()},
            "tubes": {"threshold": 1e-5, "n_ranks": int(tube_stats.ranks.size),
                      "n_negative": int(tube_stats.n_negative),
                      "n_steps_used": int(tube_stats.n_steps_used)},
        }
        arrays: dict[str, np.ndarray] = {"topk": top, "bottomk": bottomk_trajectory(eigs, k)}
        for thr, by_sign in counts.items():
            for sign, v in by_sign.items():
                arrays[f"count_{sign}_{thr:g}"] = v

        tracks = curvature_tracks(root, lr, cfg, eigs=eigs)
        entry["lambda_max"] = {tr.name: _track_summary(tr) for tr in tracks}

        save(lr_figs, f"significant_eigs_lr{tag}.png", plots.eigenvalue_tubes, eigs, lr)
        save(lr_figs, f"topk_lr{tag}.png", topk_figure, eigs, lr, k)
        save(lr_figs, f"histogram_lr{tag}.png", histogram_figure, eigs, lr)
        save(lr_figs, f"counts_lr{tag}.png", counts_figure, counts, lr)
        save(lr_figs, f"lambda_max_lr{tag}.png", sharpness_figure, tracks, lr)

        # SLQ vs dense at the last stored Hessian with a finite spectrum
        slq_entry: dict[str, Any]
        if not slq:
            slq_entry = {"available": False, "reason": "disabled"}
        elif not store.exists(names["matrices"]):
            slq_entry = {"available": False,
                         "reason": f"{names['matrices']} missing (stage 3 ran with "
                                   f"store_hessians=false); only the eigenvalues are stored"}
        elif not finite_rows.any():
            slq_entry = {"available": False, "reason": "no step with a finite spectrum"}
        else:
            stack = store.load_npy(names["matrices"], mmap=True)
            if stack.shape != (n_steps, n_params, n_params):
                raise SgdjaxError(
                    f"{names['matrices']} has shape {stack.shape}, expected "
                    f"({n_steps}, {n_params}, {n_params}). Rerun "
                    f"'{_stage_cmd(cfg, root, '3')} --force'.")
            step = int(np.flatnonzero(finite_rows)[-1])
            say(f"  SLQ vs dense at stage-3 step {step}")
            res = slq_vs_dense(np.asarray(stack[step]), eigvals=eigs[step],
                               num_probes=slq_probes, num_iters=slq_iters)
            slq_entry = {"available": True, "step": step, **res.summary()}
            arrays.update(slq_grid=res.grid, slq_density=res.slq_density,
                          dense_density=res.dense_density, slq_nodes=res.nodes,
                          slq_weights=res.weights)
            save(lr_figs, f"slq_vs_dense_lr{tag}.png", slq_figure, res,
                 f"Stage-3 Hessian at step {step}, lr={lr:g}")
        entry["slq"] = slq_entry

        # stage 7: the spectrum of the trajectory-averaged Hessian
        if store.exists(names["averaged_eigvals"]):
            from sgdjax.stages.hessian_spectrum import spectrum_stats

            avg = np.asarray(store.load_npy(names["averaged_eigvals"]), np.float64)
            entry["averaged"] = spectrum_stats(avg)
            arrays["averaged_eigvals"] = avg
            save(lr_figs, f"averaged_spectrum_lr{tag}.png", plots.spectrum, avg,
                 f"Trajectory-averaged Hessian (stage 7), lr={lr:g}",
                 tol=entry["averaged"]["rank_tol"])
        else:
            entry["averaged"] = {"available": False,
                                 "reason": f"{names['averaged_eigvals']} missing (stage 7, "
                                           f"'{_stage_cmd(cfg, root, '7')}')"}

        arrays_name = f"{out}/arrays_lr{tag}.npz"
        store.save_npz(arrays_name, arrays)
        entry["arrays"] = arrays_name
        entry["figures"] = lr_figs
        summary["per_lr"][key] = entry

    summary["figures"] = written
    store.save_json(f"{out}/summary.json", summary, indent=2)
    return summary
