"""Stage ``sweep``: for each optimiser, every lr of its log-spaced grid × ``sweep.seeds`` seeds as
ONE vmapped run axis in ONE compiled call; final (last logged step) validation accuracy and loss
per lr with mean and spread over seeds; the best lr and the good region.

Seeds vary the initialisation and the batches; every lr reuses the same seeds, so at one seed
all lrs start from the same point and see the same batches.

Outputs: ``sweep_{optimizer}.npz`` (``lrs [n]``, ``step [L]``, every diagnostic
``[n, seeds, L]``, ``loss_per_step [n, seeds, T]``, ``diverged_at [n, seeds]``, ``params``),
``sweep_summary.json``, figures ``sweep_final_val.png`` and ``sweep_dynamics_{optimizer}.png``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.optdyn import plots
from sgdjax.optdyn.config import Config
from sgdjax.optdyn.runs import compiled_group, final, histories, seed_keys
from sgdjax.progress import Progress
from sgdjax.store import Store

SUMMARY = "sweep_summary.json"


def lr_grid(lo: float, hi: float, num: int) -> np.ndarray:
    """``numpy.logspace(log10 lo, log10 hi, num)`` as float32 (the dtype the runs see)."""
    return np.logspace(np.log10(lo), np.log10(hi), num).astype(np.float32)


def sweep_file(name: str) -> str:
    return f"sweep_{name}.npz"


def outputs(ctx: Any) -> list[str]:
    # names are unique: SweepConfig refuses a repeat when the config is loaded
    return [sweep_file(n) for n in ctx.cfg.sweep.optimizers] + [SUMMARY]


def analyse(lrs: np.ndarray, acc: np.ndarray, loss: np.ndarray, diverged_at: np.ndarray,
            good_tol: float) -> dict[str, Any]:
    """Per-lr statistics over seeds of the final metrics (``[n_lrs, seeds]``), the best lr
    (highest mean final validation accuracy; a diverged run counts as accuracy 0.5, chance) and
    the good region: lrs whose mean accuracy is within ``good_tol`` of the best."""
    ok = diverged_at < 0
    scored = np.where(ok, acc, 0.5)
    mean_scored = scored.mean(axis=1)
    best = int(np.argmax(mean_scored))
    good = np.flatnonzero(mean_scored >= mean_scored[best] - good_tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # lrs where every seed diverged
        stats = {f"final_val_{name}_{stat}": fn(np.where(ok, v, np.nan), axis=1)
                 for name, v in (("acc", acc), ("loss", loss))
                 for stat, fn in (("mean", np.nanmean), ("std", np.nanstd), ("min", np.nanmin),
                                  ("max", np.nanmax))}
    return {
        "lrs": lrs.tolist(),
        **{k: v.tolist() for k, v in stats.items()},
        "n_diverged": (~ok).sum(axis=1).tolist(),
        "best_lr": float(lrs[best]),
        "best_val_acc": float(mean_scored[best]),
        "good_lrs": lrs[good].tolist(),
        # whether the good region reaches the end of the grid (its edge was not probed)
        "good_at_grid_edge": bool(good.min() == 0 or good.max() == lrs.size - 1),
        "good_contiguous": bool(np.all(np.diff(good) == 1)),
    }


def dynamics_choice(lrs: np.ndarray, best: int) -> list[int]:
    """Grid indices of the best lr, the grid lrs nearest best/10 and best*10, and the smallest
    and largest lr (unique, ascending)."""
    logs = np.log10(lrs.astype(np.float64))
    near = [int(np.argmin(np.abs(logs - (logs[best] + d)))) for d in (-1.0, 1.0)]
    return sorted({best, *near, 0, lrs.size - 1})


def save_figures(store: Store, results: dict[str, dict[str, Any]],
                 sweeps: dict[str, dict[str, np.ndarray]]) -> None:
    finals = {name: {"lrs": s["lrs"], "final_val_acc": final(s["val.acc"]),
                     "final_val_loss": final(s["val.loss"]), "diverged_at": s["diverged_at"],
                     "best_lr": results[name]["best_lr"]} for name, s in sweeps.items()}
    store.save_figure("sweep_final_val.png", plots.sweep_final(finals))
    for name, s in sweeps.items():
        lrs = np.asarray(s["lrs"])
        best = int(np.argmin(np.abs(lrs - results[name]["best_lr"])))
        store.save_figure(f"sweep_dynamics_{name}.png",
                          plots.sweep_dynamics(name, lrs.tolist(), s, dynamics_choice(lrs, best)))


def run(ctx: Any) -> dict[str, Any]:
    cfg: Config = ctx.cfg
    sw, batch = cfg.sweep, cfg.train.batch_size
    if not sw.optimizers:
        ctx.store.save_json(SUMMARY, {"optimizers": {}})
        return {"runs": 0, "note": "no sweep in this setup (sweep.optimizers is empty)"}
    seeds = seed_keys(cfg.seed, sw.seeds)
    data = jax.block_until_ready(ctx.data)  # generated and on the device before any timing
    summary: dict[str, Any] = {}
    sweeps: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, Any] = {}
    total_runs = len(sw.optimizers) * sw.num_lrs * sw.seeds
    with Progress("sweep", total_runs * sw.steps, enabled=ctx.show_progress) as bar:
        for name, lo, hi in zip(sw.optimizers, sw.lr_min, sw.lr_max, strict=True):
            lrs = lr_grid(lo, hi, sw.num_lrs)
            # run axis r = lr index * seeds + seed index: every lr sees the same seed keys
            keys = jnp.tile(seeds, sw.num_lrs)
            run_lrs = jnp.repeat(jnp.asarray(lrs), sw.seeds)
            t0 = time.perf_counter()
            compiled = compiled_group(ctx.model, cfg.sweep_spec(name), ctx.log_spec, sw.steps,
                                      batch, ctx.n_train, ctx.n_val, int(keys.shape[0]))
            t1 = time.perf_counter()
            traj = jax.block_until_ready(compiled(keys, run_lrs, data))
            t2 = time.perf_counter()
            h = histories(traj, sw.steps, ctx.log_spec)
            grid = {k: (v.reshape(sw.num_lrs, sw.seeds, *v.shape[1:]) if k != "step" else v)
                    for k, v in h.items()}
            grid["lrs"] = lrs
            ctx.store.save_npz(sweep_file(name), grid)
            sweeps[name] = grid
            res = analyse(lrs, final(grid["val.acc"]), final(grid["val.loss"]),
                          grid["diverged_at"], sw.good_tol)
            res.update(compile_s=t1 - t0, compute_s=t2 - t1, runs=int(keys.shape[0]),
                       run_steps_per_s=keys.shape[0] * sw.steps / (t2 - t1))
            summary[name] = res
            out[name] = {"best_lr": res["best_lr"], "best_val_acc": res["best_val_acc"],
                         "good_lr_min": min(res["good_lrs"]), "good_lr_max": max(res["good_lrs"]),
                         "n_diverged": int(sum(res["n_diverged"])),
                         "compute_s": res["compute_s"]}
            bar.update(int(keys.shape[0]) * sw.steps)
            bar.set_postfix(optimizer=name)
    ctx.store.save_json(SUMMARY, {"optimizers": summary, "seeds": sw.seeds, "steps": sw.steps,
                                  "good_tol": sw.good_tol}, indent=2)
    save_figures(ctx.store, summary, sweeps)
    return {"runs": total_runs, "seeds": sw.seeds, **out}
