"""SGD as a diffusion near a minimum: the linearised (Ornstein–Uhlenbeck) prediction of the
ensemble covariance, checked against the stage-4 ensembles (spec §8 item 4, item 7 and the [inf]
notebook list; §9 exp6 (b)–(d)).

The model
---------
Near a point ``w*`` with Hessian ``H`` the SGD step ``w ← w − lr·g_B(w)`` is, to first order,

    δ_{t+1} = (I − lr·H) δ_t + lr·ξ_t,        δ_t = w_t − w*,  ξ_t = g_full(w*) − g_B(w*),

where ``ξ_t`` is the minibatch gradient noise with ``E ξ = 0`` and ``Cov ξ = C``. When the batches
of different steps are independent (sampling **with replacement**: exact i.i.d. noise), the
covariance obeys ``Σ_{t+1} = A Σ_t A + lr²·C`` with ``A = I − lr·H``. Every run of a stage-4
ensemble starts at the same checkpoint, so ``Σ_0 = 0``. In the eigenbasis of ``H``
(``H = U diag(λ) Uᵀ``, ``C̃ = Uᵀ C U``, ``a = 1 − lr·λ``):

    Σ̃_ij(t) = lr²·C̃_ij · Σ_{s<t} (a_i a_j)^s = lr²·C̃_ij · (1 − (a_i a_j)^t) / (1 − a_i a_j)

(``t·lr²·C̃_ij`` when ``a_i a_j = 1``), and, when ``|a_i a_j| < 1``, the stationary limit

    Σ̃_ij(∞) = lr²·C̃_ij / (1 − a_i a_j),      Σ̃_ii(∞) = lr·C̃_ii / (λ_i (2 − lr·λ_i))

whose small-lr form is the familiar ``lr·C̃_ii / (2 λ_i)`` (exp6 (b)). The mean follows the GD
recursion and drops out: the covariance is measured around the ensemble mean, so ``w*`` need not
be known. A direction with ``λ ≤ 0`` (or ``lr·λ ≥ 2``) has ``|a| ≥ 1``: no stationary state, the
variance grows (linearly at ``λ = 0``, geometrically otherwise).

What is exact and what is not
-----------------------------
* For a quadratic loss whose per-example gradients differ by a constant
  (``∇ℓ_i(w) = A(w − z_i)``: linear regression with a fixed design) the noise is additive and the
  formulas above are exact for replacement sampling (the acceptance test).
* For a network, ``H`` and ``C`` are frozen at one point (the checkpoint, or ``H`` averaged along
  the stage-3 trajectory): state-dependent noise and curvature changes are ignored.
* **Reshuffling** (sampling without replacement, the original's default loader): one step's batch
  is a uniform ``B``-subset, whose covariance is ``Cov/B · (N − B)/(N − 1)`` (finite-population
  correction). Consecutive batches of one epoch are disjoint, hence *negatively correlated*; the
  per-step formula ignores that correlation (it treats the steps as independent), so the reshuffle
  prediction is an approximation — over a whole epoch the noise sums exactly to zero.
* With BatchNorm in training mode the minibatch gradient is not a mean of per-example gradients;
  the driver then uses the evaluation-mode (running statistics) loss for ``C`` and ``H``, and says
  so in the summary (``bn_mode``).

Functions
---------
:func:`ensemble_mean_vs_gd`, :func:`gradient_noise_covariance`, :func:`per_example_gradients`,
:func:`full_batch_hessian`, :func:`ou_covariance` (its diagonal :func:`ou_variance`, the small-lr
form :func:`small_lr_stationary`),
:func:`projected_covariance`, :func:`variance_vs_time`, :func:`loglog_fit`,
:func:`spread_vs_lr`, :func:`log_agreement`, and the driver :func:`analyze_diffusion`, which
writes ``diffusion/summary.json``, ``diffusion/arrays_lr{lr}.npz`` and the figures. All analysis
arithmetic is float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.analysis.hessian import dense_hessian

__all__ = [
    "SAMPLERS",
    "OUCovariance",
    "analyze_diffusion",
    "ensemble_mean_vs_gd",
    "full_batch_hessian",
    "gradient_noise_covariance",
    "log_agreement",
    "loglog_fit",
    "ou_covariance",
    "ou_variance",
    "per_example_gradients",
    "projected_covariance",
    "small_lr_stationary",
    "spread_vs_lr",
    "variance_vs_time",
]

SamplerName = Literal["replacement", "reshuffle"]
#: Accepted sampler names: the config's ``dataloader`` values map onto the two cases.
SAMPLERS: dict[str, SamplerName] = {
    "replacement": "replacement",
    "reshuffle": "reshuffle",
    "default": "reshuffle",  # the original's default loader reshuffles every epoch
    "without_replacement": "reshuffle",
}
#: Bytes of float64 ensemble data read from a memory map at a time.
BLOCK_BYTES = 128 * 2**20


# --------------------------------------------------------------------------------------------
# small numerical helpers


def _block_len(n_runs: int, n_params: int, total: int, block_bytes: int = BLOCK_BYTES) -> int:
    return int(max(1, min(total, block_bytes // max(1, 8 * n_runs * n_params))))


def _count_runs(runs: np.ndarray | None, n_all: int) -> int:
    """How many runs a selection (None = all, a bool mask or indices) keeps."""
    if runs is None:
        return n_all
    r = np.asarray(runs)
    return int(np.count_nonzero(r)) if r.dtype == bool else int(r.size)


def _rows(ens: Any, runs: np.ndarray | None, sl: slice | int) -> np.ndarray:
    """``ens[runs, sl]`` as float64 without materialising ``ens[runs]`` of a memory map."""
    part = np.asarray(ens[:, sl])
    if runs is not None:
        part = part[runs]
    return part.astype(np.float64, copy=False)


def _geometric_sum(q: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``Σ_{s<t} p^s = (1 − p^t)/(1 − p)`` with ``p = 1 − q``, elementwise and stable.

    ``q`` is passed instead of ``p`` because ``q = lr(λ_i + λ_j) − lr²λ_iλ_j`` is small in flat
    directions, where forming ``1 − p`` would cancel. For ``p > 0`` this is
    ``−expm1(t·log1p(−q)) / q`` (``t`` at ``q = 0``), which also covers ``p > 1`` (growth);
    for ``p ≤ 0`` (``lr·λ ≥ 1``, oscillating) the direct form has no cancellation.
    """
    q, t = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(steps, np.float64))
    out = np.empty(q.shape, np.float64)
    pos = q < 1.0  # p > 0
    zero = q == 0.0
    reg = pos & ~zero
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out[reg] = -np.expm1(t[reg] * np.log1p(-q[reg])) / q[reg]
        out[zero] = t[zero]
        neg = ~pos
        out[neg] = (1.0 - np.power(1.0 - q[neg], t[neg])) / q[neg]
    return out


def _stationary_factor(q: np.ndarray) -> np.ndarray:
    """``Σ_{s≥0} p^s = 1/q`` where ``|p| < 1`` (``0 < q < 2``); ``inf`` where ``p ≥ 1`` (the sum
    diverges), ``nan`` where ``p ≤ −1`` (oscillation without a limit)."""
    q = np.asarray(q, np.float64)
    out = np.full(q.shape, np.nan)
    ok = (q > 0) & (q < 2)
    out[ok] = 1.0 / q[ok]
    out[q <= 0] = np.inf
    return out


def _pair_q(lam_i: np.ndarray, lam_j: np.ndarray, lr: float) -> np.ndarray:
    """``1 − a_i a_j`` with ``a = 1 − lr·λ``, written without cancellation."""
    return lr * (lam_i + lam_j) - lr * lr * lam_i * lam_j


def _steps_array(steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
    t = np.asarray(steps)
    if t.size and (np.any(t < 0) or np.any(t != np.round(t))):
        raise ValueError(f"steps must be non-negative integers, got {steps!r}")
    return t.astype(np.float64)


def _eigh(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {h.shape}")
    return np.linalg.eigh(0.5 * (h + h.T))


# --------------------------------------------------------------------------------------------
# 1. the ensemble mean vs the GD trajectory


def ensemble_mean_vs_gd(ens: Any, gd: Any, record_every: int, *, gd_step_ratio: float = 1.0,
                        runs: np.ndarray | None = None) -> dict[str, np.ndarray | int]:
    """How far the across-run mean of an SGD ensemble is from the GD trajectory, step by step.

    ``ens`` [R, T', P] holds pre-update weights recorded every ``record_every`` steps (recorded
    index k ↔ step ``k·record_every``; a memory map is read in blocks of steps); ``gd`` [T, P]
    holds the GD weights of every step. GD step ``s = t·gd_step_ratio`` is compared with SGD step
    ``t`` (use ``lr / effective_gd_lr`` when stage 5 scaled the lr, so both sit at the same
    "time" lr·step; fractional ``s`` is linearly interpolated). ``runs`` selects runs (e.g. the
    non-diverged ones); ``None`` takes all.

    Returns float64 arrays over the recorded steps:

    * ``steps`` [T'] and ``gd_steps`` [T'] (NaN where GD was not run that far);
    * ``distance``  ‖mean_r w_r(t) − w_gd(t)‖ (NaN where no GD point);
    * ``spread_rms``  sqrt(mean over parameters of the across-run variance) — the RMS std,
      stage 4's ``final_weight_spread`` at every step;
    * ``spread_total``  sqrt(sum of the variances) = sqrt(P)·spread_rms, the RMS distance of a run
      from the ensemble mean;
    * ``relative`` = distance / spread_total: **the one number per step**. ≪ 1: the SGD mean is the
      GD trajectory up to a small fraction of the diffusion spread; ~1 or more: SGD drifts away
      from GD by as much as it diffuses;
    * ``noise_floor`` = spread_total/√R, the sampling error of the mean itself: a distance of that
      size is indistinguishable from zero with R runs;
    * ``n_runs``.
    """
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    if len(ens.shape) != 3:
        raise ValueError(f"ensemble must be [runs, steps, params], got shape {ens.shape}")
    gd = np.asarray(gd, np.float64)
    n_all, n_rec, n_params = (int(s) for s in ens.shape)
    if gd.ndim != 2 or gd.shape[1] != n_params:
        raise ValueError(f"GD trajectory must be [steps, {n_params}], got shape {gd.shape}")
    n_runs = _count_runs(runs, n_all)
    if n_runs < 2:
        raise ValueError(f"need at least 2 runs for a spread, got {n_runs}")
    steps = np.arange(n_rec, dtype=np.float64) * record_every
    gd_pos = steps * float(gd_step_ratio)
    have = gd_pos <= gd.shape[0] - 1 + 1e-9
    dist = np.full(n_rec, np.nan)
    var_sum = np.empty(n_rec)
    blk = _block_len(n_runs, n_params, n_rec)
    for start in range(0, n_rec, blk):
        sl = slice(start, min(start + blk, n_rec))
        part = _rows(ens, runs, sl)  # [R, b, P]
        mean = part.mean(axis=0)
        var_sum[sl] = part.var(axis=0, ddof=1).sum(axis=1)
        idx = np.arange(sl.start, sl.stop)
        ok = idx[have[idx]]
        if ok.size:
            pos = gd_pos[ok]
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, gd.shape[0] - 1)
            frac = (pos - lo)[:, None]
            ref = (1.0 - frac) * gd[lo] + frac * gd[hi]
            dist[ok] = np.linalg.norm(mean[ok - start] - ref, axis=1)
    total = np.sqrt(var_sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = dist / total
    return {
        "steps": steps,
        "gd_steps": np.where(have, gd_pos, np.nan),
        "distance": dist,
        "spread_rms": total / math.sqrt(n_params),
        "spread_total": total,
        "relative": relative,
        "noise_floor": total / math.sqrt(n_runs),
        "n_runs": n_runs,
    }


# --------------------------------------------------------------------------------------------
# 2. gradient noise


def gradient_noise_covariance(per_example_grads: Any, batch_size: int,
                              sampler: str = "replacement") -> np.ndarray:
    """Covariance [P, P] (float64) of one step's minibatch gradient around the full gradient.

    With per-example gradients ``g_i`` (i = 1..N), ``ḡ`` their mean and the population covariance
    ``Cov = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ``, the mean gradient of a batch of ``B`` examples has

    * ``"replacement"`` (B independent uniform draws):           ``Cov / B``  (exact, and the
      noise of different steps is i.i.d.);
    * ``"reshuffle"`` (a uniform B-subset, without replacement): ``Cov / B · (N − B)/(N − 1)``
      (finite-population correction; 0 when B = N). This is the covariance of *one* step;
      consecutive batches of an epoch are disjoint and so negatively correlated, which a per-step
      covariance cannot express. ``"default"`` (the config's name) means reshuffle.

    Assumes the minibatch gradient is the mean of per-example gradients (true for the MLP and
    NanoGPT, and for a BatchNorm model only in evaluation mode).
    """
    kind = SAMPLERS.get(sampler)
    if kind is None:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    g = np.asarray(per_example_grads, np.float64)
    if g.ndim != 2:
        raise ValueError(f"per-example gradients must be [N, P], got shape {g.shape}")
    n = g.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in 1..N={n}, got {batch_size}")
    centred = g - g.mean(axis=0)
    cov = centred.T @ centred / n
    cov = 0.5 * (cov + cov.T)
    if kind == "replacement":
        return cov / batch_size
    factor = 0.0 if n == 1 else (n - batch_size) / (n - 1)
    return cov * (factor / batch_size)


def per_example_gradients(loss_fn: Callable[..., Any], w: jax.Array, state: Any, x: Any, y: Any,
                          chunk: int = 256) -> jax.Array:
    """``[N, P]`` gradients of the loss of each single example at ``w``.

    ``loss_fn(w, state, x_batch, y_batch) -> (loss, aux)`` is the engine's loss (mean over the
    batch); example i's gradient is that of ``loss_fn`` on the batch ``x[i:i+1]``. Computed as
    ``jax.vmap(jax.grad)`` over chunks of ``chunk`` examples (one compiled call per chunk, the
    last chunk padded), so memory stays at ``chunk`` examples' activations plus the ``[N, P]``
    result. Gradients are in ``w``'s dtype (run under x64 with a float64 ``w`` for float64).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    chunk = max(1, min(int(chunk), n))

    def one(wv: jax.Array, st: Any, xi: jax.Array, yi: jax.Array) -> jax.Array:
        return jax.grad(lambda v: loss_fn(v, st, xi[None], yi[None])[0])(wv)

    fn = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))
    out = []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk)
        valid = idx < n
        idx = np.where(valid, idx, 0)  # pad the last chunk with example 0, dropped below
        g = fn(w, state, x[idx], y[idx])
        out.append(g[: int(valid.sum())])
    return jnp.concatenate(out, axis=0)


def full_batch_hessian(loss_fn: Callable[..., Any], w: jax.Array, state: Any, x: Any, y: Any,
                       *, chunk: int = 512, block: int = 32) -> np.ndarray:
    """Dense ``[P, P]`` Hessian (float64 numpy, symmetrised) of the mean loss over all of
    ``(x, y)`` at ``w``.

    The same forward-over-reverse derivative as ``jax.hessian`` (columns ``H e_j`` = ``jvp`` of
    ``grad``), computed for ``block`` basis vectors at a time and for ``chunk`` examples at a time,
    then weighted by each chunk's share of the examples. Memory is ``block × chunk`` examples'
    activations instead of ``P × N``; the chunk decomposition is exact because the loss is a mean
    over examples (for a BatchNorm model: in evaluation mode only).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    n = int(x.shape[0])
    block = max(1, min(int(block), int(w.shape[0])))
    # One compiled call per example chunk: the columns come from the toolkit's dense_hessian
    # (lax.map over blocks of HVPs), so there is a single Hessian implementation.
    fn = jax.jit(lambda wv, st, xc, yc: dense_hessian(
        lambda v: loss_fn(v, st, xc, yc)[0], wv, batch_size=block))
    h = np.zeros((int(w.shape[0]),) * 2, np.float64)
    for start in range(0, n, max(1, int(chunk))):
        xc, yc = x[start:start + chunk], y[start:start + chunk]
        h += (int(xc.shape[0]) / n) * np.asarray(fn(w, state, xc, yc), np.float64)
    return 0.5 * (h + h.T)


# --------------------------------------------------------------------------------------------
# 3. the Ornstein–Uhlenbeck (linearised SGD) covariance


class OUCovariance(NamedTuple):
    """Predicted covariance of linearised SGD (see :func:`ou_covariance`).

    ``sigma`` is in the basis named by ``basis``: ``"eigen"`` → ``Σ̃ = Uᵀ Σ U`` (entry ij couples
    eigen-directions i and j; its diagonal is the variance along each eigenvector), ``"original"``
    → ``Σ = U Σ̃ Uᵀ`` in parameter coordinates. Shape ``[P, P]`` for one step count,
    ``[len(steps), P, P]`` for an array. ``eigvals`` are ascending (``numpy.linalg.eigh``), the
    columns of ``eigvecs`` the matching eigenvectors. ``unstable`` [P] marks directions with
    ``|1 − lr·λ| ≥ 1`` (λ ≤ 0 or lr·λ ≥ 2); ``stationary_exists`` is False when any direction is
    unstable (then a stationary ``sigma`` holds inf/nan in those rows and columns).
    """

    sigma: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    basis: str
    steps: np.ndarray | None
    unstable: np.ndarray
    stationary_exists: bool

    def variances(self) -> np.ndarray:
        """Variance along each eigenvector (the diagonal of Σ̃), ``[P]`` or ``[len(steps), P]``."""
        if self.basis == "eigen":
            return np.diagonal(self.sigma, axis1=-2, axis2=-1).copy()
        return np.einsum("pi,...pq,qi->...i", self.eigvecs, self.sigma, self.eigvecs)


def ou_covariance(h: Any, c: Any, lr: float, steps: int | Sequence[int] | np.ndarray | None = None,
                  *, basis: Literal["eigen", "original"] = "eigen",
                  eig: tuple[np.ndarray, np.ndarray] | None = None) -> OUCovariance:
    """Covariance of ``δ_{t+1} = (I − lr·H) δ_t + lr·ξ_t`` (``Cov ξ = C``) started at a point.

    In H's eigenbasis (``C̃ = Uᵀ C U``, ``a = 1 − lr·λ``)::

        Σ̃_ij(t) = lr²·C̃_ij · (1 − (a_i a_j)^t) / (1 − a_i a_j)      (t·lr²·C̃_ij if a_i a_j = 1)
        Σ̃_ij(∞) = lr²·C̃_ij / (1 − a_i a_j)                           (needs |a_i a_j| < 1)

    ``steps``: an int (one matrix), an array of ints (a stack), or ``None`` for the stationary
    limit. Directions with λ < 0 (or lr·λ > 2) have no stationary state: their finite-t variance
    grows geometrically (linearly at λ = 0); their stationary entries are ``inf`` (``nan`` where
    ``a_i a_j ≤ −1``, an oscillation without limit, or ``0·inf``) and ``stationary_exists`` is
    False. ``eig = (eigvals, eigvecs)`` reuses a decomposition of ``H``. Float64 throughout.
    """
    if basis not in ("eigen", "original"):
        raise ValueError(f"basis must be 'eigen' or 'original', got {basis!r}")
    lam, u = eig if eig is not None else _eigh(h)
    lam = np.asarray(lam, np.float64)
    u = np.asarray(u, np.float64)
    c = np.asarray(c, np.float64)
    c_t = u.T @ c @ u
    c_t = 0.5 * (c_t + c_t.T)
    q = _pair_q(lam[:, None], lam[None, :], float(lr))
    unstable = ~((np.diagonal(q) > 0) & (np.diagonal(q) < 2))
    if steps is None:
        factor = _stationary_factor(q)
        with np.errstate(invalid="ignore"):
            sig = lr * lr * c_t * factor
        sig = np.where(c_t == 0.0, np.where(np.isfinite(factor), 0.0, np.nan), sig)
        t_arr = None
    else:
        t_arr = _steps_array(steps)
        factor = _geometric_sum(q, t_arr.reshape(t_arr.shape + (1, 1)))
        with np.errstate(invalid="ignore", over="ignore"):
            sig = lr * lr * c_t * factor
    if basis == "original":
        with np.errstate(invalid="ignore", over="ignore"):
            sig = np.einsum("ip,...pq,jq->...ij", u, sig, u)
    return OUCovariance(sig, lam, u, basis, t_arr, unstable, not bool(unstable.any()))


def ou_variance(eigvals: Any, c_diag: Any, lr: float,
                steps: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The diagonal of :func:`ou_covariance` in the eigenbasis, without forming [P, P] matrices:
    ``lr²·C̃_ii·(1 − a_i^{2t})/(1 − a_i²)``, or ``lr·C̃_ii / (λ_i (2 − lr·λ_i))`` for
    ``steps=None`` (``inf`` where unstable). ``c_diag`` = ``diag(Uᵀ C U)``. Shape ``[P]``, or
    ``[len(steps), P]`` for an array of step counts."""
    lam = np.asarray(eigvals, np.float64)
    cd = np.asarray(c_diag, np.float64)
    q = _pair_q(lam, lam, float(lr))
    if steps is None:
        factor = _stationary_factor(q)
        with np.errstate(invalid="ignore"):
            return np.where(cd == 0.0, 0.0, lr * lr * cd * factor)
    t = _steps_array(steps)
    factor = _geometric_sum(q, t.reshape(t.shape + (1,)) if t.ndim else t)
    with np.errstate(over="ignore"):
        return lr * lr * cd * factor


def small_lr_stationary(eigvals: Any, c_diag: Any, lr: float) -> np.ndarray:
    """The continuous-time (small-lr) stationary variance ``lr·C̃_ii / (2 λ_i)``; NaN for λ ≤ 0."""
    lam = np.asarray(eigvals, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lam > 0, lr * np.asarray(c_diag, np.float64) / (2.0 * lam), np.nan)


# --------------------------------------------------------------------------------------------
# 4. measured covariance in the eigenbasis


def projected_covariance(ens_at_t: Any, eigvecs: Any, *, full: bool = False
                         ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Across-run variance of an ensemble snapshot ``[R, P]`` along each column of ``eigvecs``.

    Deviations from the ensemble mean are projected, ``z_r = Uᵀ (w_r − mean)``, and the unbiased
    (ddof = 1) variance of each component is returned, ``[K]`` for ``K`` columns. With
    ``full=True`` also the projected covariance matrix ``[K, K]`` (``Uᵀ Cov U``). Float64.
    """
    w = np.asarray(ens_at_t, np.float64)
    u = np.asarray(eigvecs, np.float64)
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"need a snapshot [R >= 2, P], got shape {w.shape}")
    z = (w - w.mean(axis=0)) @ u
    var = (z * z).sum(axis=0) / (w.shape[0] - 1)
    if not full:
        return var
    return var, z.T @ z / (w.shape[0] - 1)


def variance_vs_time(ens: Any, directions: Any, *, runs: np.ndarray | None = None,
                     indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Across-run variance along each column of ``directions`` [P, K] at recorded indices
    ``indices`` (default all) of ``ens`` [R, T', P]; returns ``[len(indices), K]`` float64.
    Reads a memory map in blocks of steps; ``runs`` selects runs."""
    n_all, n_rec, n_params = (int(s) for s in ens.shape)
    d = np.asarray(directions, np.float64)
    idx = np.arange(n_rec) if indices is None else np.asarray(indices, int)
    n_runs = _count_runs(runs, n_all)
    out = np.empty((idx.size, d.shape[1]))
    blk = _block_len(n_runs, n_params, max(1, idx.size))
    for start in range(0, idx.size, blk):
        sel = idx[start:start + blk]
        part = np.asarray(ens[:, sel])
        if runs is not None:
            part = part[runs]
        z = np.einsum("rtp,pk->rtk", part.astype(np.float64, copy=False), d)
        out[start:start + sel.size] = z.var(axis=0, ddof=1)
    return out


# --------------------------------------------------------------------------------------------
# 5. power laws and agreement


def loglog_fit(x: Any, y: Any) -> dict[str, float]:
    """Least-squares line ``log y = α log x + log c``: ``{"alpha", "prefactor" (c), "r2",
    "n"}`` over the points with finite positive x and y (NaN fit with fewer than two)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n = int(ok.sum())
    nan = {"alpha": float("nan"), "prefactor": float("nan"), "r2": float("nan"), "n": n}
    if n < 2:
        return nan
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if np.ptp(lx) == 0:
        return nan
    alpha, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (alpha * lx + intercept)
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    return {"alpha": float(alpha), "prefactor": float(np.exp(intercept)), "r2": r2, "n": n}


def spread_vs_lr(lrs: Sequence[float], spreads: Any,
                 groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit ``spread ∝ lr^α`` on log–log axes.

    ``spreads`` is ``[L]`` (one spread per lr) or ``[L, G]`` with one column per eigen-direction
    group (names in ``groups``). Returns ``{"alpha", "prefactor", "r2", "n", "lrs", "spreads"}``
    for ``[L]``, and ``{"groups": {name: fit}}`` (plus the same top-level keys for the first
    column) for ``[L, G]``. Reading: α ≈ 1/2 is a stationary state (variance ∝ lr), α ≈ 1 is
    diffusion that has not yet felt the curvature (variance ≈ t·lr²·C).
    """
    lr = np.asarray(lrs, np.float64).ravel()
    s = np.asarray(spreads, np.float64)
    if s.shape[0] != lr.size:
        raise ValueError(f"{lr.size} learning rates but spreads of shape {s.shape}")
    if s.ndim == 1:
        return {**loglog_fit(lr, s), "lrs": lr.tolist(), "spreads": s.tolist()}
    if s.ndim != 2:
        raise ValueError(f"spreads must be [L] or [L, G], got shape {s.shape}")
    names = list(groups) if groups is not None else [f"group{g}" for g in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} group names for {s.shape[1]} columns")
    fits = {name: {**loglog_fit(lr, s[:, g]), "spreads": s[:, g].tolist()}
            for g, name in enumerate(names)}
    first = fits[names[0]]
    return {**first, "lrs": lr.tolist(), "groups": fits}


def log_agreement(predicted: Any, measured: Any, mask: Any | None = None) -> dict[str, float]:
    """Agreement of two positive series on log scale over ``mask`` (and where both are finite
    and positive): ``pearson_r_log`` (correlation of the logs), ``median_ratio`` (median of
    measured / predicted), ``within_factor_2`` (fraction with ratio in [1/2, 2]),
    ``mean_abs_log10_ratio``, ``max_rel_dev`` (max |measured/predicted − 1|), ``n``."""
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    ok = np.isfinite(p) & np.isfinite(m) & (p > 0) & (m > 0)
    if mask is not None:
        ok &= np.asarray(mask, bool)
    n = int(ok.sum())
    out = {"n": n, "pearson_r_log": float("nan"), "median_ratio": float("nan"),
           "within_factor_2": float("nan"), "mean_abs_log10_ratio": float("nan"),
           "max_rel_dev": float("nan")}
    if n == 0:
        return out
    ratio = m[ok] / p[ok]
    out.update(median_ratio=float(np.median(ratio)),
               within_factor_2=float(np.mean((ratio >= 0.5) & (ratio <= 2.0))),
               mean_abs_log10_ratio=float(np.mean(np.abs(np.log10(ratio)))),
               max_rel_dev=float(np.max(np.abs(ratio - 1.0))))
    if n >= 3:
        lp, lm = np.log(p[ok]), np.log(m[ok])
        if np.ptp(lp) > 0 and np.ptp(lm) > 0:
            out["pearson_r_log"] = float(np.corrcoef(lp, lm)[0, 1])
    return out


# --------------------------------------------------------------------------------------------
# 6. the driver


def _fail(message: str) -> Exception:
    from sgdjax.errors import SgdjaxError

    return SgdjaxError(message)


def _stage_cmd(cfg: Any, root: Path, stage: str) -> str:
    return f"python -m sgdjax.run {cfg.experiment} {cfg.setup} --out {root} --stages {stage}"


def _lr_key(lr: float) -> str:
    from sgdjax.store import lr_tag

    return f"lr{lr_tag(lr)}"


def _pick_directions(lam_desc: np.ndarray, positive: np.ndarray, k: int) -> list[int]:
    """Indices (into the descending order) of a few directions for variance-vs-time: the
    sharpest, a sharp one, the median and the flattest of the positive-curvature directions, and
    the lowest-curvature direction overall when it is not positive."""
    n_pos = int(positive.sum())
    picks: list[int] = []
    if n_pos:
        picks += [0, n_pos // 10, n_pos // 2, n_pos - 1]
    if lam_desc.size and not positive[-1]:
        picks.append(lam_desc.size - 1)
    seen: list[int] = []
    for i in picks:
        if i not in seen:
            seen.append(i)
    return seen[:max(1, k)]


def _time_indices(n_rec: int, max_points: int) -> np.ndarray:
    if n_rec <= max_points:
        return np.arange(n_rec)
    idx = np.unique(np.round(np.geomspace(1, n_rec - 1, max_points - 1)).astype(int))
    return np.concatenate([[0], idx])


def _checkpoint_quantities(ctx: Any, need_hessian: bool, chunk: int, log: Callable[[str], None]
                           ) -> dict[str, Any]:
    """Per-example gradients (→ noise covariances) and, if asked, the full-batch Hessian at the
    stage-2 checkpoint, in float64."""
    from sgdjax.models.objective import make_loss_fn
    from sgdjax.stages.train_gd import CHECKPOINT

    cfg = ctx.cfg
    with jax.enable_x64(True):
        w0, state0 = ctx.load_checkpoint(CHECKPOINT, dtype="float64")
        data = ctx.data("float64")
        has_bn = bool(ctx.model.buffers)
        loss_fn = make_loss_fn(ctx.model, train=not has_bn)
        log(f"per-example gradients at the checkpoint ({int(data.train_x.shape[0])} examples, "
            f"{int(w0.shape[0])} parameters)")
        grads = np.asarray(per_example_gradients(loss_fn, w0, state0, data.train_x, data.train_y,
                                                 chunk=chunk), np.float64)
        h = None
        if need_hessian:
            log("full-batch Hessian at the checkpoint")
            h = full_batch_hessian(loss_fn, w0, state0, data.train_x, data.train_y)
        w0_np = np.asarray(w0, np.float64)
    n = grads.shape[0]
    b = cfg.batch_size
    return {
        "w0": w0_np,
        "n_train": n,
        "batch_size": b,
        "full_grad": grads.mean(axis=0),
        "cov": {"replacement": gradient_noise_covariance(grads, b, "replacement"),
                "reshuffle": gradient_noise_covariance(grads, b, "reshuffle")},
        "hessian": h,
        "bn_mode": "running (evaluation-mode loss: BatchNorm statistics frozen)" if has_bn
        else "none (no BatchNorm)",
    }


def _find_gd(store: Any, cfg: Any, lr: float) -> tuple[str | None, str | None]:
    from sgdjax.store import lr_tag

    tag = lr_tag(lr)
    name = f"gd_weights_lr{tag}_dtype{cfg.dtype}.npy"
    if store.exists(name):
        return name, f"gd_logs_lr{tag}_dtype{cfg.dtype}.json"
    pattern = re.compile(rf"gd_weights_lr{re.escape(tag)}_dtype(\w+?)\.npy")
    for p in sorted(store.root.iterdir()):
        m = pattern.fullmatch(p.name)
        if m and not m[1].endswith("_final"):
            return p.name, f"gd_logs_lr{tag}_dtype{m[1]}.json"
    return None, None


def analyze_diffusion(results_dir: str | Path, *, lrs: Sequence[float] | None = None,
                      hessian: str = "averaged", step: int = -1, out: str = "diffusion",
                      top_k: int = 48, n_time_directions: int = 5, max_time_points: int = 120,
                      grad_chunk: int = 256, figures: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The SGD-as-diffusion analysis of one results directory; writes ``{out}/summary.json``,
    ``{out}/arrays_lr{lr}.npz`` and figures, and returns the summary.

    For each lr with a stage-4 ensemble (``lrs``: a subset; default every lr of the config whose
    ``sgd_weights_lr{lr}.npy`` exists):

    1. runs that diverged (``sgd_diverged_at_lr{lr}.npy`` ≥ 0) or are non-finite are excluded;
    2. the Hessian is the stage-7 trajectory-averaged matrix ``hessians_averaged_lr{lr}.npy`` when
       ``hessian="averaged"`` and it exists, else the full-batch Hessian of the training loss at
       the stage-2 checkpoint (``hessian="checkpoint"`` forces that); eigenvalues with
       ``λ > tol = P·eps·max|λ|`` count as positive curvature (eps of float32 for the averaged
       float32 stage-3 Hessians, of float64 for the checkpoint Hessian);
    3. the gradient-noise covariance at the checkpoint, for **both** samplers;
    4. the OU prediction at the measured step count ``t = k·record_every`` (``k = step``, an index
       into the recorded steps, −1 = last) and the stationary one, per eigen-direction;
    5. the measured across-run variance per eigen-direction at ``t``, at a few earlier recorded
       steps (agreement over time) and for a few directions at every (or ≤ ``max_time_points``)
       recorded step (variance vs time);
    6. agreement over the positive-curvature directions (all of them, and the ``top_k`` sharpest):
       Pearson r of the logs, median measured/predicted ratio, fraction within a factor 2;
    7. the ensemble mean vs the stage-5 GD trajectory (on the lr·step time axis when stage 5
       scaled its lr), when stage 5 ran;

    and across lrs the spread (RMS std over parameters, and per group of eigen-directions) vs lr
    with fitted exponents, measured and predicted. The primary sampler (the one the ensemble
    used) is the config's ``dataloader``; the other prediction is reported beside it.

    The summary holds, besides the setup and noise-level facts (``sampler``, ``noise_trace``,
    ``reshuffle_factor``, ``checkpoint_full_grad_norm``, ``bn_mode``), ``per_lr[f"lr{lr}"]`` with
    ``hessian`` (source, extreme eigenvalues, ``tol``, counts, ``lr·λ_max``), ``comparison
    [sampler][finite_t | finite_t_top | stationary | stationary_top | small_lr]`` (each a
    :func:`log_agreement` dict), ``by_time``, ``spread``, ``mean_vs_gd`` and the names of its
    arrays/figures; ``spread_vs_lr`` (``measured`` / ``predicted`` fits per group) and
    ``figures``. ``figures=False`` skips the PNGs; ``log`` receives progress lines. User errors
    (missing directory or inputs, bad options) raise :class:`~sgdjax.errors.SgdjaxError` naming
    the stage that writes the missing files and the command that runs it.
    """
    from sgdjax.config import from_dict
    from sgdjax.stages.common import Context
    from sgdjax.stages.hessian_spectrum import files as averaged_files
    from sgdjax.stages.many_runs import weights_file
    from sgdjax.store import Store, lr_tag

    say = log or (lambda _msg: None)
    root = Path(results_dir)
    if not root.is_dir():
        raise _fail(f"results directory {root} does not exist; it is written by "
                    f"'python -m sgdjax.run EXP SETUP --out {root}'.")
    if hessian not in ("averaged", "checkpoint"):
        raise _fail(f"hessian={hessian!r}: choose 'averaged' (stage 7's trajectory average, "
                    f"falling back to the checkpoint) or 'checkpoint'.")
    store = Store(root)
    config = store.manifest().get("config")
    if not config:
        raise _fail(f"{store.path('manifest.json')} is missing or holds no config: it is written "
                    f"by 'python -m sgdjax.run EXP SETUP --out {root}' when the pipeline starts.")
    cfg = from_dict(config)

    if lrs:
        chosen = [float(v) for v in lrs]
        missing = [v for v in chosen if not store.exists(weights_file(v))]
        if missing:
            names = ", ".join(weights_file(v) for v in missing)
            raise _fail(f"{names} missing in {root}: stage 4 (many_runs) writes the SGD "
                        f"ensembles; run '{_stage_cmd(cfg, root, '4')}' (with --set "
                        f"lrs=... for learning rates outside the config).")
    else:
        chosen = [float(v) for v in cfg.lrs if store.exists(weights_file(v))]
        if not chosen:
            raise _fail(f"no SGD ensemble (sgd_weights_lr{{lr}}.npy for lrs "
                        f"{list(cfg.lrs)}) in {root}: it is written by stage 4 (many_runs); run "
                        f"'{_stage_cmd(cfg, root, '4')}'.")
    from sgdjax.stages.train_gd import CHECKPOINT

    if not store.exists(CHECKPOINT):
        raise _fail(f"{store.path(CHECKPOINT)} is missing: the stage-2 checkpoint is written by "
                    f"stage 2 (gd); run '{_stage_cmd(cfg, root, '1,2')}'.")

    use_avg = {lr: hessian == "averaged" and store.exists(averaged_files(lr)["matrix"])
               for lr in chosen}
    ctx = Context(cfg, store, show_progress=False)
    ck = _checkpoint_quantities(ctx, need_hessian=not all(use_avg.values()), chunk=grad_chunk,
                                log=say)
    primary: SamplerName = SAMPLERS[cfg.dataloader]
    other: SamplerName = "replacement" if primary == "reshuffle" else "reshuffle"
    n_params = ck["w0"].size
    eps32 = float(np.finfo(np.float32).eps)
    eps64 = float(np.finfo(np.float64).eps)

    summary: dict[str, Any] = {
        "results_dir": str(root),
        "experiment": cfg.experiment,
        "setup": cfg.setup,
        "model": cfg.model,
        "n_params": n_params,
        "hessian_requested": hessian,
        "sampler": primary,
        "config_dataloader": cfg.dataloader,
        "batch_size": ck["batch_size"],
        "n_train": ck["n_train"],
        "bn_mode": ck["bn_mode"],
        "checkpoint_full_grad_norm": float(np.linalg.norm(ck["full_grad"])),
        "noise_trace": {k: float(np.trace(v)) for k, v in ck["cov"].items()},
        "reshuffle_factor": (ck["n_train"] - ck["batch_size"]) / max(1, ck["n_train"] - 1),
        "lrs": chosen,
        "per_lr": {},
        "notes": [
            "Prediction: linearised SGD with gradient noise frozen at the stage-2 checkpoint, "
            "Sigma_0 = 0; variances per Hessian eigen-direction (ddof=1 across runs).",
            "replacement: i.i.d. batches, the per-step noise model is exact; reshuffle: one "
            "step's covariance with the (N-B)/(N-1) correction, ignoring the negative "
            "correlation between batches of one epoch.",
            "Agreement is computed over directions with positive curvature (lambda > tol).",
        ],
    }
    groups = ["sharp", "flat", "nonpositive"]
    spread_rows: list[list[float]] = []
    pred_rows: list[list[float]] = []
    mean_gd: dict[float, dict[str, Any]] = {}
    written: list[str] = []

    for lr in chosen:
        tag = lr_tag(lr)
        key = _lr_key(lr)
        say(f"lr={lr:g}")
        ens = store.load_npy(weights_file(lr), mmap=True)
        if ens.ndim != 3 or ens.shape[2] != n_params:
            raise _fail(f"{weights_file(lr)} has shape {ens.shape}; expected [runs, steps, "
                        f"{n_params}]. Rerun '{_stage_cmd(cfg, root, '4')} --force'.")
        n_runs, n_rec, _ = ens.shape
        k = step if step >= 0 else n_rec + step
        if not 0 <= k < n_rec:
            raise _fail(f"step index {step} is out of range: {weights_file(lr)} holds {n_rec} "
                        f"recorded steps (index 0..{n_rec - 1}, or -1 for the last).")
        t = int(k * cfg.record_every)
        div_name = f"sgd_diverged_at_lr{tag}.npy"
        diverged_at = (store.load_npy(div_name) if store.exists(div_name)
                       else np.full(n_runs, -1))
        snap = np.asarray(ens[:, k], np.float64)
        healthy = (np.asarray(diverged_at) < 0) & np.isfinite(snap).all(axis=1)
        n_ok = int(healthy.sum())
        if n_ok < 2:
            summary["per_lr"][key] = {"lr": lr, "skipped": f"only {n_ok} non-diverged runs"}
            spread_rows.append([np.nan] * 4)
            pred_rows.append([np.nan] * 4)
            continue
        runs = np.flatnonzero(healthy)

        if use_avg[lr]:
            h = np.asarray(store.load_npy(averaged_files(lr)["matrix"]), np.float64)
            h_src, h_file, eps = "averaged", averaged_files(lr)["matrix"], eps32
            if h.shape != (n_params, n_params):
                raise _fail(f"{h_file} has shape {h.shape}, expected ({n_params}, {n_params}).")
        else:
            h, h_src, h_file, eps = ck["hessian"], "checkpoint", None, eps64
        lam, u = _eigh(h)
        order = np.argsort(-lam)
        lam, u = lam[order], u[:, order]  # descending: sharpest first
        tol = n_params * eps * float(np.abs(lam).max())
        positive = lam > tol

        c_diag = {s: np.sum(u * (ck["cov"][s] @ u), axis=0) for s in ck["cov"]}  # diag(UᵀCU)
        pred_t = {s: ou_variance(lam, c_diag[s], lr, t) for s in c_diag}
        pred_inf = {s: ou_variance(lam, c_diag[s], lr, None) for s in c_diag}
        pred_small = {s: small_lr_stationary(lam, c_diag[s], lr) for s in c_diag}
        measured = projected_covariance(snap[healthy], u)
        top = positive & (np.arange(lam.size) < top_k)

        comparison = {}
        for s in (primary, other):
            comparison[s] = {
                "finite_t": log_agreement(pred_t[s], measured, positive),
                "finite_t_top": log_agreement(pred_t[s], measured, top),
                "stationary": log_agreement(pred_inf[s], measured, positive),
                "stationary_top": log_agreement(pred_inf[s], measured, top),
                "small_lr": log_agreement(pred_small[s], measured, positive),
            }

        # agreement at a few earlier recorded steps
        by_time = []
        for kk in sorted({int(v) for v in np.unique(np.round(np.geomspace(1, max(1, k),
                                                                           6)))} | {k}):
            if kk <= 0 or kk > k:
                continue
            snap_k = np.asarray(ens[:, kk], np.float64)[runs]
            if not np.isfinite(snap_k).all():
                continue
            meas_k = projected_covariance(snap_k, u)
            pred_k = ou_variance(lam, c_diag[primary], lr, kk * cfg.record_every)
            agr = log_agreement(pred_k, meas_k, positive)
            by_time.append({"step": kk * cfg.record_every, "pearson_r_log": agr["pearson_r_log"],
                            "median_ratio": agr["median_ratio"],
                            "total_variance": float(meas_k.sum())})

        # variance vs time for a few directions
        picks = _pick_directions(lam, positive, n_time_directions)
        t_idx = _time_indices(n_rec, max_time_points)
        var_t = variance_vs_time(ens, u[:, picks], runs=runs, indices=t_idx)
        var_t_pred = ou_variance(lam[picks], c_diag[primary][picks], lr,
                                 t_idx * cfg.record_every)

        # spread (RMS std) overall and per group, measured and predicted
        n_sharp = max(1, int(math.ceil(0.1 * int(positive.sum())))) if positive.any() else 0
        sharp = positive & (np.arange(lam.size) < n_sharp)
        masks = {"sharp": sharp, "flat": positive & ~sharp, "nonpositive": ~positive}

        def rms(v: np.ndarray, m: np.ndarray) -> float:
            return float(np.sqrt(np.mean(v[m]))) if m.any() else float("nan")

        everything = np.ones(lam.size, bool)
        spread = {"rms": rms(measured, everything),
                  "groups": {g: rms(measured, masks[g]) for g in groups},
                  "predicted_rms": rms(pred_t[primary], everything),
                  "predicted_groups": {g: rms(pred_t[primary], masks[g]) for g in groups},
                  "group_sizes": {g: int(masks[g].sum()) for g in groups}}
        spread_rows.append([spread["rms"], *(spread["groups"][g] for g in groups)])
        pred_rows.append([spread["predicted_rms"],
                          *(spread["predicted_groups"][g] for g in groups)])

        # the ensemble mean vs GD
        gd_name, gd_logs = _find_gd(store, cfg, lr)
        if gd_name is None:
            mvg: dict[str, Any] = {
                "available": False,
                "reason": f"gd_weights_lr{tag}_dtype{cfg.dtype}.npy missing (stage 5, "
                          f"gd_many_runs: '{_stage_cmd(cfg, root, '5')}')"}
        else:
            eff = lr
            if gd_logs and store.exists(gd_logs):
                eff = float(store.load_json(gd_logs).get("effective_lr", lr))
            res = ensemble_mean_vs_gd(ens, store.load_npy(gd_name, mmap=True), cfg.record_every,
                                      gd_step_ratio=lr / eff, runs=runs)
            mean_gd[lr] = res
            fin = np.isfinite(res["relative"])  # step 0 has no spread: 0/0
            last = int(np.flatnonzero(fin)[-1]) if fin.any() else -1
            mvg = {
                "available": True, "gd_file": gd_name, "effective_lr": eff,
                "gd_step_ratio": lr / eff,
                "n_compared": int(np.isfinite(res["distance"]).sum()),
                "last_step": float(res["steps"][last]) if last >= 0 else None,
                "distance_last": float(res["distance"][last]) if last >= 0 else None,
                "relative_last": float(res["relative"][last]) if last >= 0 else None,
                "noise_floor_last": float(res["noise_floor"][last]) if last >= 0 else None,
                "relative_max": float(np.nanmax(res["relative"][1:]))
                if fin[1:].any() else None,
            }

        arrays = {
            "eigvals": lam, "c_diag_replacement": c_diag["replacement"],
            "c_diag_reshuffle": c_diag["reshuffle"], "measured": measured,
            "positive": positive, "directions": np.asarray(picks),
            "time_steps": t_idx * cfg.record_every, "var_time": var_t, "var_time_pred": var_t_pred,
            **{f"pred_t_{s}": pred_t[s] for s in pred_t},
            **{f"pred_stationary_{s}": pred_inf[s] for s in pred_inf},
            **{f"pred_small_lr_{s}": pred_small[s] for s in pred_small},
        }
        if lr in mean_gd:
            arrays.update({f"mean_vs_gd_{k2}": np.asarray(v) for k2, v in mean_gd[lr].items()})
        arrays_name = f"{out}/arrays_lr{tag}.npz"
        store.save_npz(arrays_name, arrays)

        lr_figures = []
        if figures:
            fig_pred = f"{out}/pred_vs_measured_lr{tag}.png"
            store.save_figure(fig_pred, _fig_pred_vs_measured(
                lam, positive, measured, pred_t[primary], pred_inf[primary], lr, t, primary,
                comparison[primary]))
            fig_time = f"{out}/variance_vs_time_lr{tag}.png"
            store.save_figure(fig_time, _fig_variance_vs_time(
                t_idx * cfg.record_every, var_t, var_t_pred, pred_inf[primary][picks],
                lam[picks], picks, lr, primary))
            lr_figures = [fig_pred, fig_time]
        written += lr_figures
        lr_lam_max = lr * float(lam[0])
        summary["per_lr"][key] = {
            "lr": lr, "n_runs": int(n_runs), "n_used": n_ok,
            "n_excluded": int(n_runs - n_ok), "record_every": cfg.record_every,
            "step_index": k, "step": t,
            "hessian": {"source": h_src, "file": h_file, "max": float(lam[0]),
                        "min": float(lam[-1]), "tol": tol,
                        "n_positive": int(positive.sum()),
                        "n_nonpositive": int((~positive).sum()),
                        "lr_times_max": lr_lam_max, "linearly_stable": lr_lam_max < 2.0},
            "primary_sampler": primary,
            "comparison": comparison,
            "by_time": by_time,
            "spread": spread,
            "mean_vs_gd": mvg,
            "variance_vs_time_directions": {
                "rank": [int(i) for i in picks], "eigval": [float(lam[i]) for i in picks]},
            "arrays": arrays_name,
            "figures": lr_figures,
        }

    # across learning rates
    s_meas = np.asarray(spread_rows, np.float64)
    s_pred = np.asarray(pred_rows, np.float64)
    names = ["all", *groups]
    summary["spread_vs_lr"] = {
        "measured": spread_vs_lr(chosen, s_meas, names) if chosen else {},
        "predicted": spread_vs_lr(chosen, s_pred, names) if chosen else {},
        "note": "spread = RMS over eigen-directions of the across-run std at the analysed step; "
                "sharp = top 10% of positive-curvature directions of each lr's Hessian.",
    }
    if figures and mean_gd:
        name = f"{out}/mean_vs_gd.png"
        store.save_figure(name, _fig_mean_vs_gd(mean_gd))
        written.append(name)
    if figures and np.isfinite(s_meas).any():
        name = f"{out}/spread_vs_lr.png"
        store.save_figure(name, _fig_spread_vs_lr(chosen, s_meas, s_pred, names,
                                                  summary["spread_vs_lr"]))
        written.append(name)
    summary["figures"] = written
    store.save_json(f"{out}/summary.json", summary, indent=2)
    return summary


# --------------------------------------------------------------------------------------------
# figures (matplotlib, no pyplot: the style of sgdjax.plots)


def _tidy_log(ax: Any) -> None:
    """Readable tick labels on log axes: over less than two decades, plain numbers at 1, 2, 5
    (instead of crowded minor labels); over more, labels at the decades only."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(lim)
        if lo > 0 and np.log10(hi / lo) < 2:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())


def _legend(ax: Any, loc: str) -> None:
    """The legend style of :mod:`sgdjax.plots` at a fixed place ("best" is slow on dense data)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, frameon=True, framealpha=0.85, edgecolor="0.85", fontsize="small")


def _fig_pred_vs_measured(lam: np.ndarray, positive: np.ndarray, measured: np.ndarray,
                          pred_t: np.ndarray, pred_inf: np.ndarray, lr: float, t: int,
                          sampler: str, comp: dict[str, Any]) -> Any:
    from matplotlib.colors import LogNorm

    from sgdjax.plots import _empty, _figure, _finish

    fig, axes = _figure(2, panel=(5.4, 4.6))
    pos_lam = lam[positive]
    norm = LogNorm(vmin=float(pos_lam.min()), vmax=float(max(pos_lam.max(), pos_lam.min() * 1.01))
                   ) if pos_lam.size else None
    panels = ((pred_t, f"predicted at t = {t} steps", comp["finite_t"]),
              (pred_inf, "predicted stationary (t → ∞)", comp["stationary"]))
    sc = None
    for ax, (pred, label, agr) in zip(axes, panels, strict=True):
        ok = positive & np.isfinite(pred) & (pred > 0) & (measured > 0)
        other = ~positive & np.isfinite(pred) & (pred > 0) & (measured > 0)
        if not (ok.any() or other.any()):
            _empty(ax, "no direction with positive predicted and measured variance")
            _finish(ax, xlabel=label, ylabel="measured variance")
            continue
        if ok.any():
            sc = ax.scatter(pred[ok], measured[ok], c=lam[ok], cmap="viridis", norm=norm, s=14,
                            alpha=0.85, edgecolors="none")
        if other.any():
            ax.scatter(pred[other], measured[other], marker="x", color="0.45", s=16, lw=0.8,
                       label=f"λ ≤ tol ({int(other.sum())})")
        vals = np.concatenate([pred[ok | other], measured[ok | other]])
        lo, hi = float(vals.min()) / 2, float(vals.max()) * 2
        ax.plot([lo, hi], [lo, hi], color="0.2", ls="--", lw=1.0, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        _tidy_log(ax)
        ax.text(0.03, 0.97, f"r(log) = {agr['pearson_r_log']:.3f}\n"
                            f"median meas/pred = {agr['median_ratio']:.3g}\n"
                            f"within ×2: {agr['within_factor_2']:.0%}  (n = {agr['n']})",
                transform=ax.transAxes, va="top", ha="left", fontsize="small",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.9})
        _finish(ax, xlabel=label, ylabel="measured variance across runs")
        _legend(ax, "lower right")
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="Hessian eigenvalue λ", shrink=0.9)
    fig.suptitle(f"Variance per Hessian eigen-direction, lr = {lr:g} ({sampler} noise model)")
    return fig


def _fig_variance_vs_time(steps: np.ndarray, var_t: np.ndarray, var_pred: np.ndarray,
                          stationary: np.ndarray, lam: np.ndarray, ranks: Sequence[int],
                          lr: float, sampler: str) -> Any:
    from sgdjax.plots import _figure, _finish

    fig, (ax,) = _figure(1, panel=(8.2, 4.6))
    show = steps > 0
    for j, (rank, lj) in enumerate(zip(ranks, lam, strict=True)):
        color = f"C{j % 10}"
        label = f"#{rank}: λ = {lj:.3g}"
        ax.plot(steps[show], var_t[show, j], "o", ms=3, color=color, alpha=0.8, label=label)
        ax.plot(steps[show], var_pred[show, j], "-", color=color, lw=1.2)
        if np.isfinite(stationary[j]) and stationary[j] > 0:
            ax.axhline(stationary[j], color=color, ls=":", lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _tidy_log(ax)
    ax.plot([], [], "-", color="0.3", label="OU prediction")
    ax.plot([], [], ":", color="0.3", label="stationary level")
    _finish(ax, xlabel="SGD step", ylabel="variance across runs",
            title=f"Variance vs time along eigen-directions, lr = {lr:g} ({sampler})")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=True, framealpha=0.85,
              edgecolor="0.85", fontsize="small", title="eigen-direction (rank)",
              title_fontsize="small")
    return fig


def _fig_mean_vs_gd(results: dict[float, dict[str, Any]]) -> Any:
    from sgdjax.plots import _figure, _finish

    fig, (ax_d, ax_r) = _figure(2)
    for j, (lr, res) in enumerate(sorted(results.items())):
        color = f"C{j % 10}"
        steps = res["steps"]
        ok = steps > 0
        ax_d.plot(steps[ok], res["distance"][ok], color=color, lw=1.3, label=f"lr = {lr:g}")
        ax_d.plot(steps[ok], res["noise_floor"][ok], color=color, lw=0.9, ls=":")
        ax_r.plot(steps[ok], res["relative"][ok], color=color, lw=1.3, label=f"lr = {lr:g}")
    ax_d.plot([], [], ls=":", color="0.3", label="noise floor (spread/√R)")
    for ax in (ax_d, ax_r):
        ax.set_xscale("log")
        ax.set_yscale("log")
        _tidy_log(ax)
    _finish(ax_d, xlabel="SGD step", ylabel="‖mean SGD − GD‖",
            title="distance of the ensemble mean from GD")
    _finish(ax_r, xlabel="SGD step", ylabel="distance / ensemble spread",
            title="relative to the ensemble spread")
    _legend(ax_d, "upper left")
    _legend(ax_r, "upper left")
    fig.suptitle("Is the SGD mean the GD trajectory? (dotted: noise floor spread/√R; right: "
                 "distance / RMS distance of a run from the mean)", fontsize="medium")
    return fig


def _fig_spread_vs_lr(lrs: Sequence[float], meas: np.ndarray, pred: np.ndarray,
                      names: Sequence[str], fits: dict[str, Any]) -> Any:
    from sgdjax.plots import _figure, _finish

    fig, (ax,) = _figure(1, panel=(6.4, 4.8))
    lr = np.asarray(lrs, np.float64)
    order = np.argsort(lr)
    grid = np.geomspace(lr.min(), lr.max(), 50) if lr.size else lr
    for j, name in enumerate(names):
        y = meas[:, j]
        if not np.isfinite(y).any():
            continue
        color = f"C{j % 10}"
        fit = fits["measured"]["groups"][name]
        label = f"{name}: α = {fit['alpha']:.2f}" if np.isfinite(fit["alpha"]) else name
        ax.plot(lr[order], y[order], "o", color=color, ms=5, label=label)
        ax.plot(lr[order], pred[order, j], "s", mfc="none", color=color, ms=6, alpha=0.7)
        if np.isfinite(fit["alpha"]):
            ax.plot(grid, fit["prefactor"] * grid ** fit["alpha"], "-", color=color, lw=1.0)
    ax.plot([], [], "s", mfc="none", color="0.3", label="OU prediction")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _tidy_log(ax)
    _finish(ax, xlabel="learning rate", ylabel="spread (RMS std across runs)",
            title="Ensemble spread vs learning rate (fit: spread ∝ lr^α)")
    _legend(ax, "upper left")
    return fig
