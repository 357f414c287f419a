"""Stage 7: spectrum of the trajectory-averaged Hessian per lr (spec §5, the original's
``average_hessians.py`` + ``analyze_averaged_hessians.py``, with bug 14 fixed).

For every lr, the stage-3 per-step minibatch Hessians ``hessians_traj_lr{lr}.npy`` [T, P, P] are
averaged over the T steps (streamed through the memory map in blocks of at most ``BLOCK_BYTES``,
accumulated in float64; non-finite Hessians of a diverged stage-3 run are left out and counted),
symmetrised, and diagonalised with a **symmetric** eigensolver (``numpy.linalg.eigvalsh``), which
gives the true signed spectrum. The original dropped every ``|λ| <= 1e-10`` and used a general
eigensolver, so it reported 0 negative eigenvalues by construction (spec §10 #14).

Zero eigenvalues: a float32 Hessian (the stored per-step matrices) cannot resolve eigenvalues
below its rounding noise, so ``|λ| <= tol`` counts as zero with the usual numerical-rank rule

    tol = P · eps(float32) · max|λ|          (``rank_tol`` in the summary)

(``eps(float64)`` when stage 3 stored float64 Hessians). Positive / negative / zero counts, the
condition number (largest / smallest eigenvalue above ``tol``) and the sign of the determinant
(0 when any eigenvalue is zero in this sense) all use this ``tol``; ``trace`` is the sum of *all*
eigenvalues (equal to the matrix trace).

Files: ``hessians_averaged_lr{lr}.npy`` [P, P] (float64), ``hessians_averaged_eigs_lr{lr}.npy``
[P] (ascending), ``hessians_averaged_lr{lr}_eigenvalues.png``, ``hessian_spectrum.json`` (one
summary per lr) and, with two or more lrs, ``hessian_comparison.png``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sgdjax import plots
from sgdjax.errors import SgdjaxError
from sgdjax.stages.common import Context
from sgdjax.store import lr_tag

#: Bytes of one float64 block of Hessians read from the memory map at a time.
BLOCK_BYTES = 256 * 2**20
SUMMARY = "hessian_spectrum.json"
COMPARISON = "hessian_comparison.png"
TOL_RULE = "tol = P * eps(stored dtype) * max|eigenvalue|; |eigenvalue| <= tol counts as zero"


def hessians_file(lr: float) -> str:
    return f"hessians_traj_lr{lr_tag(lr)}.npy"


def files(lr: float) -> dict[str, str]:
    tag = lr_tag(lr)
    return {
        "matrix": f"hessians_averaged_lr{tag}.npy",
        "eigvals": f"hessians_averaged_eigs_lr{tag}.npy",
        "figure": f"hessians_averaged_lr{tag}_eigenvalues.png",
    }


def outputs(ctx: Context) -> list[str]:
    names = [SUMMARY]
    for lr in ctx.cfg.lrs:
        names += list(files(lr).values())
    if len(ctx.cfg.lrs) >= 2:
        names.append(COMPARISON)
    return names


def average_hessians(stack: np.ndarray, block_bytes: int | None = None,
                     on_block: Any = None) -> tuple[np.ndarray, int]:
    """Mean over axis 0 of ``stack`` [T, P, P] (e.g. a memory map), read in blocks and
    accumulated in float64, skipping non-finite matrices; returns (mean, number used).
    The result is symmetrised: ``(A + Aᵀ) / 2``."""
    n_steps, p, _ = stack.shape
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    block = max(1, int(block_bytes // max(1, p * p * 8)))
    acc = np.zeros((p, p), np.float64)
    used = 0
    for start in range(0, n_steps, block):
        part = np.asarray(stack[start:start + block])
        finite = np.isfinite(part).all(axis=(1, 2))
        if not finite.all():
            part = part[finite]
        acc += part.sum(axis=0, dtype=np.float64)
        used += int(finite.sum())
        if on_block is not None:
            on_block(int(finite.size))
    if used:
        acc /= used
    return 0.5 * (acc + acc.T), used


def spectrum_stats(eigvals: np.ndarray, eps: float = float(np.finfo(np.float32).eps),
                   ) -> dict[str, Any]:
    """Summary of a symmetric matrix's (signed) spectrum with the numerical-rank tolerance
    ``tol = P · eps · max|λ|`` (see the module docstring)."""
    e = np.asarray(eigvals, np.float64)
    p = int(e.size)
    scale = float(np.abs(e).max()) if p else 0.0
    tol = p * eps * scale
    pos, neg = e[e > tol], e[e < -tol]
    n_zero = p - pos.size - neg.size
    return {
        "n_params": p,
        "max": float(e.max()) if p else float("nan"),
        "min": float(e.min()) if p else float("nan"),
        "n_positive": int(pos.size),
        "n_negative": int(neg.size),
        "n_zero": int(n_zero),
        "rank": int(pos.size + neg.size),
        "min_positive": float(pos.min()) if pos.size else float("nan"),
        "max_negative": float(neg.max()) if neg.size else float("nan"),
        "condition_number": float(pos.max() / pos.min()) if pos.size else float("nan"),
        "trace": float(e.sum()),
        "det_sign": 0 if n_zero or not p else int((-1) ** int(neg.size)),
        "rank_tol": tol,
    }


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    stacks = {}
    for lr in cfg.lrs:
        tag = lr_tag(lr)
        name = hessians_file(lr)
        if store.exists(name):
            stacks[lr] = store.load_npy(name, mmap=True)
        elif store.exists(f"hessian_eigs_lr{tag}.npy"):
            raise SgdjaxError(
                f"{store.path(name)} is missing: stage 3 ran with store_hessians=false and kept "
                f"only the per-step eigenvalues (hessian_eigs_lr{tag}.npy). The spectrum of the "
                f"trajectory-averaged Hessian needs the per-step matrices (the average of the "
                f"spectra is not the spectrum of the average). Rerun stage 3 with "
                f"'--set store_hessians=true --stages 3 --force', then this stage."
            )
        else:
            raise SgdjaxError(
                f"{store.path(name)} is missing: it is written by stage 3 (Hessian trajectory). "
                f"Run stage 3 first (with store_hessians=true, the default)."
            )

    info: dict[str, Any] = {}
    summary: dict[str, Any] = {"tolerance": TOL_RULE, "lrs": list(cfg.lrs)}
    total = sum(int(s.shape[0]) for s in stacks.values())
    t0 = time.perf_counter()
    with ctx.progress("stage 7 averaged Hessians", total, unit="hessians") as bar:
        for lr, stack in stacks.items():
            if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
                raise SgdjaxError(f"{hessians_file(lr)} has shape {stack.shape}; expected "
                                  f"[steps, P, P]. Rerun stage 3 with --force.")
            mean, used = average_hessians(stack, on_block=bar.update)
            if not used:
                raise SgdjaxError(
                    f"{hessians_file(lr)} holds no finite Hessian ({stack.shape[0]} steps): "
                    f"stage 3 diverged at its first step for lr={lr:g} or ran 0 steps."
                )
            eigs = np.linalg.eigvalsh(mean)  # ascending, real, symmetric solver
            eps = float(np.finfo(stack.dtype).eps) if np.issubdtype(stack.dtype, np.floating) \
                else float(np.finfo(np.float32).eps)
            stats = spectrum_stats(eigs, eps)
            stats.update({
                "n_steps": int(stack.shape[0]),
                "n_steps_averaged": used,
                "n_steps_nonfinite": int(stack.shape[0]) - used,
                "matrix_trace": float(np.trace(mean)),
                "hessians_file": hessians_file(lr),
            })
            names = files(lr)
            store.save_npy(names["matrix"], mean)
            store.save_npy(names["eigvals"], eigs)
            store.save_figure(names["figure"], plots.spectrum(
                eigs, f"Trajectory-averaged Hessian, lr={lr:g} ({used} steps)",
                tol=stats["rank_tol"]))
            summary[f"lr{lr_tag(lr)}"] = stats
            info[f"lr{lr_tag(lr)}"] = {k: stats[k] for k in (
                "max", "min", "n_positive", "n_negative", "n_zero", "condition_number", "trace")}
    store.save_json(SUMMARY, summary, indent=2)
    if len(cfg.lrs) >= 2:
        rows = [summary[f"lr{lr_tag(lr)}"] for lr in cfg.lrs]
        store.save_figure(COMPARISON, plots.hessian_comparison(
            list(cfg.lrs), [r["max"] for r in rows], [r["min"] for r in rows],
            [r["trace"] for r in rows], [r["condition_number"] for r in rows]))
    info["throughput_hessians_per_s"] = total / max(time.perf_counter() - t0, 1e-9)
    return info
