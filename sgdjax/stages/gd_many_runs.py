"""Stage 5: one deterministic GD continuation per lr from the polished checkpoint (spec §4–5).

Computed in the setup's ``dtype`` (float64 in exp1 setups 1–3), with the effective lr given by
``gd_scaling``: ``default``/``none`` keep lr, ``N/B``/``times_B_over_N`` multiply it by B/N (what
the original's "N/B" really does, spec §10 #10), ``times_N_over_B`` by N/B. Every lr runs
the same one-lr program (compiled once for the stage), one lr per local device at a time: a
full-batch step is one large computation that one CPU device runs mostly on one core, while
separate devices run concurrently (exp1 setup 3, CNN float64 on 6400 images: 0.22 s per
lr-step on one device, 0.17 s with two lrs on two). Since the program is the same whatever the
device count, so are the results. The data are replicated on every device used; fewer devices
are used when the copies would exceed ``memory_budget_gb``. exp2 gets the same
stage plus the gradient norm log its stored results show.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sgdjax import plots
from sgdjax.config import SetupConfig
from sgdjax.engine.ensemble import global_chunk, run_chunks, run_keys, run_mesh, vmapped
from sgdjax.engine.trajectory import Data, Recorder, make_trajectory
from sgdjax.stages.common import DTYPES, Context
from sgdjax.stages.train_gd import CHECKPOINT as GD_CHECKPOINT
from sgdjax.stages.train_gd import gd_logs
from sgdjax.store import lr_tag


def effective_lr(cfg: SetupConfig, lr: float, n_train: int) -> float:
    """The lr stage 5 actually uses under ``gd_scaling``."""
    b, n = cfg.batch_size, n_train
    if cfg.gd_scaling in ("N/B", "times_B_over_N"):
        return lr * b / n
    if cfg.gd_scaling == "times_N_over_B":
        return lr * n / b
    return lr


def stem(cfg: SetupConfig, lr: float) -> str:
    return f"lr{lr_tag(lr)}_dtype{cfg.dtype}"


def lr_mesh(ctx: Context, data: Data, n_lrs: int) -> Mesh | None:
    """The local devices the lrs are spread over (None: one device), as many as there are lrs
    while the data's extra copies fit ``memory_budget_gb``."""
    devices = jax.local_devices(backend=ctx.platform)
    data_bytes = sum(x.nbytes for x in jax.tree.leaves(data))
    fit = 1 + int(ctx.cfg.memory_budget_gb * 2**30 // max(1, data_bytes))
    return run_mesh(devices[:max(1, min(n_lrs, fit))])


def outputs(ctx: Context) -> list[str]:
    out = []
    for lr in ctx.cfg.lrs:
        s = stem(ctx.cfg, lr)
        out += [f"gd_weights_{s}.npy", f"gd_weights_{s}_final.npy", f"gd_logs_{s}.json",
                f"gd_logs_{s}.png"]
    return out


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    dtype = DTYPES[cfg.dtype]
    w0, state0 = ctx.load_checkpoint(GD_CHECKPOINT, dtype=cfg.dtype)
    train_loss, eval_loss = ctx.loss_fns()
    data = ctx.data(cfg.dtype)
    steps = cfg.many_runs_steps
    traj = make_trajectory(
        train_loss, ctx.sampler("full"), steps,
        Recorder(params_every=1, grad_norm=True, val_every=1), eval_loss=eval_loss,
    )
    lrs = [effective_lr(cfg, lr, ctx.n_train) for lr in cfg.lrs]
    mesh = lr_mesh(ctx, data, len(lrs))
    fn = vmapped(traj, mesh)
    keys = jnp.repeat(run_keys(cfg.seed, "gd_many_runs", 1), len(lrs), axis=0)
    size = global_chunk(1, mesh)
    info: dict[str, Any] = {"steps": steps, "effective_lrs": lrs,
                            "devices": 1 if mesh is None else int(mesh.devices.size)}

    def on_chunk(c: int, rows: slice, out: Any) -> None:
        for j, i in enumerate(range(rows.start, rows.stop)):
            lr = cfg.lrs[i]
            rec = {k: v[j] for k, v in out.records.items() if k != "state"}
            s = stem(cfg, lr)
            logs = gd_logs(ctx, rec, w0, state0, data)
            logs["effective_lr"] = lrs[i]
            if out.diverged_at[j] >= 0:
                logs["diverged_at_step"] = int(out.diverged_at[j])
            store.save_npy(f"gd_weights_{s}.npy", rec["params"])
            store.save_npy(f"gd_weights_{s}_final.npy", out.params[j])
            store.save_json(f"gd_logs_{s}.json", logs)
            store.save_figure(f"gd_logs_{s}.png", plots.gd_logs(logs, lr))
            info[f"lr{lr_tag(lr)}"] = {
                "final_train_loss": logs["train_losses"][-1] if steps else None,
                "final_grad_norm": logs["grad_norms"][-1] if steps else None,
                "diverged_at_step": logs.get("diverged_at_step"),
            }

    with ctx.progress("stage 5 GD per lr", steps * len(lrs), unit="steps") as bar:
        run_chunks(fn, w0, state0, keys, jnp.asarray(lrs, dtype), data, size,
                   range(-(-len(lrs) // size)), on_chunk,
                   lambda count, s: bar.update(count * steps), mesh)
    info["throughput_steps_per_s"] = bar.rate
    return info

