"""Stage 2: full-batch GD polishing from the stage-1 endpoint (spec §4 stage 2).

``epochs_gd`` GD steps at ``lr`` (one "epoch" = one full-batch step), logging the pre-update
full-batch loss, the global gradient norm, and validation loss/accuracy. The original measures
validation *after* the step (``log_point="original"``); ``log_point="pre_update"`` logs it at the
same point as the train loss and keeps the post-update values under ``val_losses_post_update``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax import plots
from sgdjax.engine.ensemble import run_keys
from sgdjax.engine.segments import run_segments, segment_length
from sgdjax.engine.trajectory import Data, evaluate, make_trajectory
from sgdjax.stages.common import DTYPES, Context
from sgdjax.stages.train_sgd import CHECKPOINT as SGD_CHECKPOINT
from sgdjax.stages.train_sgd import diverged_error

CHECKPOINT = "initial_after_sgd_and_gd.npz"
GD_SEGMENT = 500
LOGS = "logs_gd.json"


def outputs(ctx: Context) -> list[str]:
    return [CHECKPOINT, LOGS, "grad_norms_gd.npy", "loss_acc_gd.png", "grad_norm_loglog_gd.png"]


def gd_logs(ctx: Context, traj_records: dict[str, np.ndarray], w0: jax.Array, state0: Any,
            data: Data) -> dict[str, list[float]]:
    """Per-step GD logs with the setup's log point (shared by stages 2 and 5)."""
    logs = {
        "train_losses": traj_records["loss"].tolist(),
        "val_losses": traj_records["val_loss"].tolist(),
        "val_accs": traj_records["val_acc"].tolist(),
    }
    if "grad_norm" in traj_records:
        logs["grad_norms"] = traj_records["grad_norm"].tolist()
    if ctx.cfg.log_point == "pre_update" and logs["val_losses"]:
        _, eval_loss = ctx.loss_fns()
        vl, va = jax.jit(evaluate, static_argnums=(0, 5))(
            eval_loss, w0, state0, data.val_x, data.val_y, 1024)
        logs["val_losses_post_update"] = logs["val_losses"]
        logs["val_accs_post_update"] = logs["val_accs"]
        logs["val_losses"] = [float(vl)] + logs["val_losses"][:-1]
        logs["val_accs"] = [float(va)] + logs["val_accs"][:-1]
    return logs


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    w0, state0 = ctx.load_checkpoint(SGD_CHECKPOINT)
    train_loss, eval_loss = ctx.loss_fns()
    data = ctx.data()
    steps = cfg.epochs_gd
    key = run_keys(cfg.seed, "gd", 1)[0]
    lr = jnp.asarray(cfg.lr, DTYPES[cfg.compute_dtype])
    pieces: list[dict[str, np.ndarray]] = []
    bar = ctx.progress("stage 2 GD", steps, unit="steps")

    def build(n: int) -> Any:
        return make_trajectory(train_loss, ctx.sampler("full"), n,
                               ctx.recorder(1, grad_norm=True, val_every=1), eval_loss=eval_loss)

    def on_segment(first: int, n: int, rec: dict[str, np.ndarray], w: Any, state: Any) -> None:
        pieces.append(rec)
        bar.update(n)
        bar.set_postfix(loss=f"{float(rec['loss'][-1]):.4g}",
                        grad_norm=f"{float(rec['grad_norm'][-1]):.3g}")

    with bar:
        w, state, diverged_at, _ = run_segments(
            build, w0, state0, key, lr, data, start=0, total=steps,
            seg=segment_length(GD_SEGMENT, cfg.curvature_every), on_segment=on_segment)
    curvature = [{k: v for k, v in p.items() if k.startswith("curv_")} for p in pieces
                 if "curv_eigs" in p]
    rec = {k: np.concatenate([p[k] for p in pieces if k in p]) for k in pieces[0]} if pieces else {
        "loss": np.zeros(0), "val_loss": np.zeros(0), "val_acc": np.zeros(0),
        "grad_norm": np.zeros(0)}
    logs = gd_logs(ctx, rec, w0, state0, data)
    if diverged_at >= 0:
        store.save_json(LOGS, dict(logs, diverged_at_step=diverged_at))
        raise diverged_error("stage 2 (GD)", diverged_at, cfg.lr, "lr")

    ctx.save_checkpoint(CHECKPOINT, w, state)
    store.save_json(LOGS, logs)
    store.save_npy("grad_norms_gd.npy", np.asarray(logs["grad_norms"], np.float64))
    store.save_figure("loss_acc_gd.png", plots.loss_acc_gd(logs))
    ctx.save_curvature("curvature_gd", curvature, 0, cfg.lr,
                       "stage 2 GD: top Hessian eigenvalues")
    store.save_figure("grad_norm_loglog_gd.png",
                      plots.grad_norm_loglog(np.asarray(logs["grad_norms"]), "GD gradient norm"))
    return {
        "steps": steps,
        "throughput_steps_per_s": bar.rate,
        "final_train_loss": logs["train_losses"][-1] if steps else None,
        "final_grad_norm": logs["grad_norms"][-1] if steps else None,
        "final_val_acc": logs["val_accs"][-1] if steps else None,
    }
