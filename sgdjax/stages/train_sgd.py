"""Stage 1: long SGD training from a random initialisation (spec §4 stage 1).

``epochs_sgd`` genuine epochs of minibatch SGD at ``lr``; per epoch the mean of the pre-update
minibatch losses and the validation loss/accuracy at the end of the epoch. The run is split into
compiled calls of about ``steps_per_call`` steps; after each call the parameters and logs so far
are saved, so an interrupted stage 1 resumes where it stopped with the same batches.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax import plots
from sgdjax.engine.ensemble import run_keys
from sgdjax.engine.segments import run_segments, segment_length
from sgdjax.engine.trajectory import make_trajectory
from sgdjax.errors import SgdjaxError
from sgdjax.stages.common import DTYPES, Context

CHECKPOINT = "initial_after_sgd.npz"
LOGS = "logs_sgd.json"
RESUME = "initial_after_sgd.resume.npz"


def outputs(ctx: Context) -> list[str]:
    return [CHECKPOINT, LOGS, "loss_acc_sgd.png"]


def init_params(ctx: Context) -> tuple[jax.Array, Any]:
    """The setup's initial parameters: a pure function of the seed."""
    key = jax.random.fold_in(jax.random.key(ctx.cfg.seed), 0)
    params, state = ctx.model.init(key, DTYPES[ctx.cfg.compute_dtype])
    return ctx.model.flatten(params), state


def diverged_error(stage: str, step: int, lr: float, key: str) -> SgdjaxError:
    return SgdjaxError(
        f"{stage} diverged at step {step} (the loss or the parameters became NaN/inf) with "
        f"lr={lr}. Its logs up to that step are saved; lower the learning rate "
        f"(--set {key}=...) and run again with --force."
    )


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    spe = ctx.steps_per_epoch
    total_epochs = cfg.epochs_sgd
    seg = segment_length(max(cfg.steps_per_call, spe), spe, cfg.curvature_every)
    train_loss, eval_loss = ctx.loss_fns()
    sampler = ctx.stage_sampler(cfg.stage1_sampler)
    data = ctx.data()
    key = run_keys(cfg.seed, "sgd", 1)[0]
    lr = jnp.asarray(cfg.lr, DTYPES[cfg.compute_dtype])

    logs: dict[str, list[float]] = {"train_losses": [], "val_losses": [], "val_accs": []}
    if store.exists(RESUME) and not ctx.force:
        saved = store.load_npz(RESUME)
        for k in logs:
            logs[k] = saved.pop(f"log.{k}").tolist()
        w, state = ctx.load_checkpoint(RESUME)
    else:
        w, state = init_params(ctx)
    done = len(logs["train_losses"])

    curvature: list[dict[str, np.ndarray]] = []
    first_curvature_step = done * spe
    bar = ctx.progress("stage 1 SGD", (total_epochs - done) * spe, unit="steps")

    def build(n: int) -> Any:
        return make_trajectory(train_loss, sampler, n, ctx.recorder(spe, val_every=spe),
                               eval_loss=eval_loss)

    def on_segment(first: int, n: int, rec: dict[str, np.ndarray], w: Any, state: Any) -> None:
        logs["train_losses"] += rec["loss"].reshape(n // spe, spe).mean(axis=1).tolist()
        logs["val_losses"] += rec["val_loss"].tolist()
        logs["val_accs"] += rec["val_acc"].tolist()
        if "curv_eigs" in rec:
            curvature.append({k: v for k, v in rec.items() if k.startswith("curv_")})
        bar.update(n)
        bar.set_postfix(loss=f"{logs['train_losses'][-1]:.4g}",
                        val_acc=f"{logs['val_accs'][-1]:.4f}")
        if first + n < total_epochs * spe:
            ctx.save_checkpoint(RESUME, w, state, extra={
                f"log.{k}": np.asarray(v) for k, v in logs.items()})

    with bar:
        w, state, diverged_at, _ = run_segments(
            build, w, state, key, lr, data, start=done * spe, total=total_epochs * spe,
            seg=seg, on_segment=on_segment)
    if diverged_at >= 0:
        store.save_json(LOGS, dict(logs, diverged_at_step=diverged_at))
        raise diverged_error("stage 1 (SGD)", diverged_at, cfg.lr, "lr")

    ctx.save_checkpoint(CHECKPOINT, w, state)
    store.save_json(LOGS, logs)
    store.save_figure("loss_acc_sgd.png", plots.loss_acc_sgd(logs))
    ctx.save_curvature("curvature_sgd", curvature, first_curvature_step, cfg.lr,
                       "stage 1 SGD: top Hessian eigenvalues")
    store.remove(RESUME)
    return {
        "steps": total_epochs * spe,
        "throughput_steps_per_s": bar.rate,
        "final_train_loss": logs["train_losses"][-1] if logs["train_losses"] else None,
        "final_val_loss": logs["val_losses"][-1] if logs["val_losses"] else None,
        "final_val_acc": logs["val_accs"][-1] if logs["val_accs"] else None,
    }
