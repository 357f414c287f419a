"""In-context baselines: predictions for every prefix of every prompt (spec §3).

Each function maps prompts ``xs [P, N, D]``, ``ys [P, N]`` to predictions ``[P, N]`` where entry
``k`` uses only the first ``k`` labelled points (entry 0 is 0, as in the original). They run in
NumPy float64 on the host: the least-squares fit near ``k = d`` is ill-conditioned, and float64
there needs no global x64 switch in JAX.

Closed forms for ``x, w ~ N(0, I_d)``, errors normalised by ``d`` (the tests check them):
least squares ``(d - k)/d`` for ``k < d`` and 0 after; averaging ``(d + 1)/k``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def least_squares(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Minimum-norm least squares on the first k pairs, evaluated at ``x_k``."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    preds = np.zeros(ys.shape)
    for k in range(1, ys.shape[1]):
        w = np.linalg.pinv(xs[:, :k]) @ ys[:, :k, None]  # [P, D, 1]
        preds[:, k] = np.einsum("pd,pd->p", xs[:, k], w[..., 0])
    return preds


def averaging(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``w_hat = mean_{i<k} x_i y_i``; predict ``<x_k, w_hat>``."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    sums = np.cumsum(xs * ys[..., None], axis=1)  # sums[:, i] = sum over points 0..i
    preds = np.zeros(ys.shape)
    k = np.arange(1, ys.shape[1])
    w = sums[:, :-1] / k[None, :, None]
    preds[:, 1:] = np.einsum("pkd,pkd->pk", xs[:, 1:], w)
    return preds


def nearest_neighbours(xs: np.ndarray, ys: np.ndarray, m: int = 3) -> np.ndarray:
    """Mean label of the ``m`` nearest earlier inputs (Euclidean; all of them when k < m)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    n = ys.shape[1]
    dist = np.sum((xs[:, :, None, :] - xs[:, None, :, :]) ** 2, axis=-1)  # [P, N, N]
    earlier = np.arange(n)[None, :] < np.arange(n)[:, None]  # [query k, candidate i]: i < k
    dist = np.where(earlier[None], dist, np.inf)
    order = np.argsort(dist, axis=-1, kind="stable")[..., :m]  # [P, N, m]
    labels = np.take_along_axis(np.broadcast_to(ys[:, None, :], dist.shape), order, axis=-1)
    used = np.minimum(np.arange(n), m)  # how many neighbours exist for query k
    valid = np.arange(m)[None, :] < used[:, None]  # [N, m]
    total = np.sum(np.where(valid[None], labels, 0.0), axis=-1)
    return np.where(used[None] > 0, total / np.maximum(used[None], 1), 0.0)


def lasso_fit(x: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray,
              max_sweeps: int = 1000, tol: float = 1e-6) -> np.ndarray:
    """Minimise ``1/(2k) ||y - X w||² + alpha ||w||_1`` for every prompt (``x [P, k, D]``,
    ``y [P, k]``) by cyclic coordinate descent from ``w [P, D]``; stops when no coordinate of
    any prompt moves by more than ``tol`` in a sweep."""
    w = np.array(w, np.float64)
    k, d = x.shape[1], x.shape[2]
    col_sq = np.sum(x * x, axis=1) / k  # [P, D]; 0 for dead coordinates
    safe = np.where(col_sq > 0, col_sq, 1.0)
    resid = y - np.einsum("pkd,pd->pk", x, w)
    for _ in range(max_sweeps):
        biggest = 0.0
        for j in range(d):
            old = w[:, j].copy()
            rho = np.einsum("pk,pk->p", x[:, :, j], resid) / k + col_sq[:, j] * old
            new = np.where(col_sq[:, j] > 0,
                           np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0) / safe[:, j], 0.0)
            resid += x[:, :, j] * (old - new)[:, None]
            w[:, j] = new
            biggest = max(biggest, float(np.max(np.abs(new - old))))
        if biggest < tol:
            break
    return w


def lasso(xs: np.ndarray, ys: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    """Lasso without intercept on the first k pairs (sklearn's objective, see
    :func:`lasso_fit`); each k starts from the solution for k - 1."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    preds = np.zeros(ys.shape)
    w = np.zeros((xs.shape[0], xs.shape[2]))
    for k in range(1, ys.shape[1]):
        w = lasso_fit(xs[:, :k], ys[:, :k], alpha, w)
        preds[:, k] = np.einsum("pd,pd->p", xs[:, k], w)
    return preds


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "least_squares": least_squares,
    "averaging": averaging,
    "knn": nearest_neighbours,
    "lasso": lasso,
}

LABELS = {"least_squares": "Least Squares", "averaging": "Averaging", "knn": "3-Nearest Neighbours",
          "lasso": "Lasso"}


__all__ = ["BASELINES", "LABELS", "averaging", "lasso", "lasso_fit", "least_squares",
           "nearest_neighbours"]
