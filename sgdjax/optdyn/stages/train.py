"""Stage ``train``: the setup's runs (one optimiser at one lr each, ``train.seeds`` seeds), every
diagnostic at the logged steps, and the comparison figures.

Outputs: ``history_{run}.npz`` per run (every diagnostic ``[seeds, logged steps]``, ``step``,
``loss_per_step [seeds, steps]``, ``diverged_at [seeds]``, final ``params [seeds, 513]``, ``lr``),
``train_summary.json`` (final metrics per run), and the figures ``curves_{run}.png``,
``norms_{run}.png``, ``compare.png``, ``effective_step.png``, ``logits.png``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.errors import ConfigError
from sgdjax.optdyn import plots
from sgdjax.optdyn.config import Config
from sgdjax.optdyn.optimizers import OptimizerSpec
from sgdjax.optdyn.runs import compiled_group, final, histories, seed_keys
from sgdjax.progress import Progress
from sgdjax.store import Store, lr_tag

SUMMARY = "train_summary.json"


def run_table(cfg: Config) -> list[tuple[str, OptimizerSpec, float]]:
    """``(name, optimiser, lr)`` of every run, e.g. ``("adam_lr0.001", ...)``."""
    table = []
    for i, lr in enumerate(cfg.train.lrs):
        spec = cfg.train_spec(i)
        table.append((f"{spec.label}_lr{lr_tag(lr)}", spec, float(lr)))
    names = [t[0] for t in table]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"train runs repeat {', '.join(dupes)}; give each optimizer/lr/momentum "
                          "combination once.")
    return table


def history_file(name: str) -> str:
    return f"history_{name}.npz"


def outputs(ctx: Any) -> list[str]:
    return [history_file(name) for name, _, _ in run_table(ctx.cfg)] + [SUMMARY]


def run_summary(h: dict[str, np.ndarray], lr: float) -> dict[str, Any]:
    """Final (last logged step) metrics, mean over seeds of the runs that stayed finite."""
    ok = h["diverged_at"] < 0

    def mean(key: str) -> float | None:
        v = final(h[key])[ok]
        return float(v.mean()) if v.size else None

    eff = h["eff_step.global"][ok]
    return {
        "lr": lr,
        "final_val_acc": mean("val.acc"),
        "final_val_loss": mean("val.loss"),
        "final_train_loss": mean("train.loss"),
        "final_param_norm": mean("param.global"),
        "eff_step_median": float(np.median(eff)) if eff.size else None,
        "eff_step_min": float(eff.min()) if eff.size else None,
        "eff_step_max": float(eff.max()) if eff.size else None,
        "final_sat_rate": mean("sat_rate"),
        "n_diverged": int((~ok).sum()),
        "diverged_at": [int(s) for s in h["diverged_at"][~ok]],
    }


def save_figures(store: Store, table: list[tuple[str, OptimizerSpec, float]],
                 hists: dict[str, dict[str, np.ndarray]], setup: str) -> None:
    for name, _, _ in table:
        store.save_figure(f"curves_{name}.png", plots.curves(hists[name], f"{setup}: {name}"))
        store.save_figure(f"norms_{name}.png", plots.norms(hists[name], f"{setup}: {name}"))
    store.save_figure("compare.png", plots.compare(hists, f"{setup}: runs compared"))
    store.save_figure("effective_step.png", plots.effective_step(
        hists, {name: lr for name, _, lr in table}))
    store.save_figure("logits.png", plots.logits(hists))


def run(ctx: Any) -> dict[str, Any]:
    cfg: Config = ctx.cfg
    table = run_table(cfg)
    t = cfg.train
    if not table:
        ctx.store.save_json(SUMMARY, {"runs": {}})
        return {"runs": 0, "note": "no train runs in this setup (train.optimizers is empty)"}
    keys = seed_keys(cfg.seed, t.seeds)
    data = jax.block_until_ready(ctx.data)  # generated and on the device before any timing
    hists: dict[str, dict[str, np.ndarray]] = {}
    summary: dict[str, Any] = {}
    compute_s = compile_s = 0.0
    with Progress("train", len(table) * t.seeds * t.steps,
                  enabled=ctx.show_progress) as bar:
        for name, spec, lr in table:
            lrs = jnp.full((t.seeds,), lr, jnp.float32)
            t0 = time.perf_counter()
            compiled = compiled_group(ctx.model, spec, ctx.log_spec, t.steps, t.batch_size,
                                      ctx.n_train, ctx.n_val, t.seeds)
            t1 = time.perf_counter()
            traj = jax.block_until_ready(compiled(keys, lrs, data))
            compile_s += t1 - t0
            compute_s += time.perf_counter() - t1
            h = histories(traj, t.steps, ctx.log_spec)
            ctx.store.save_npz(history_file(name), {**h, "lr": np.float32(lr)})
            hists[name] = h
            summary[name] = run_summary(h, lr)
            bar.update(t.seeds * t.steps)
            bar.set_postfix(run=name)
    ctx.store.save_json(SUMMARY, {"runs": summary, "seeds": t.seeds, "steps": t.steps,
                                  "compile_s": compile_s, "compute_s": compute_s}, indent=2)
    save_figures(ctx.store, table, hists, cfg.setup)
    out: dict[str, Any] = {"runs": len(table), "seeds": t.seeds, "compile_s": compile_s,
                           "compute_s": compute_s,
                           "run_steps_per_s": len(table) * t.seeds * t.steps / compute_s}
    for name, s in summary.items():
        out[name] = {k: s[k] for k in ("final_val_acc", "final_val_loss", "eff_step_median",
                                       "n_diverged")}
    return out
