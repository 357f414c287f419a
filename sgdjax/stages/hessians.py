"""Stage 3: SGD from the polished checkpoint with the dense minibatch Hessian at every step.

Spec §4 stage 3: for every lr, ``hessian_steps`` SGD steps; at each step the pre-update weights,
the dense Hessian of *that step's minibatch* mean loss at the pre-update point (train mode, so the
CNN's BatchNorm uses the batch statistics), then the SGD step on the same batch. sgdjax also stores
each Hessian's eigenvalues (the original left them to notebooks). Steps run in compiled segments
whose Hessians stream into a pre-allocated ``[T, P, P]`` ``.npy``, so even NanoGPT's 3.7 GB per lr
never sits in memory at once, and an interrupted stage resumes at its first unfinished segment.

Files per lr: ``weights_traj_lr{lr}.npy`` [T, P], ``weights_traj_lr{lr}_final.npy`` [P],
``hessians_traj_lr{lr}.npy`` [T, P, P] (unless ``store_hessians=false``),
``hessian_eigs_lr{lr}.npy`` [T, P] (ascending per step), ``hessian_losses_lr{lr}.npy`` [T],
``logs_sgd_gd_plus_sgdEpochified_lr{lr}.json`` and its figure, ``significant_eigs_lr{lr}.png``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax import plots
from sgdjax.engine.ensemble import run_keys
from sgdjax.engine.trajectory import Recorder, Trajectory, make_trajectory
from sgdjax.stages.common import DTYPES, Context
from sgdjax.stages.train_gd import CHECKPOINT as GD_CHECKPOINT
from sgdjax.stages.train_gd import LOGS as GD_LOGS
from sgdjax.stages.train_sgd import LOGS as SGD_LOGS
from sgdjax.store import lr_tag, pending_chunks

#: Hessian bytes per compiled segment: bounds the device/host memory a segment holds.
SEGMENT_BYTES = 256 * 2**20


def files(cfg: Any, lr: float) -> dict[str, str]:
    tag = lr_tag(lr)
    out = {
        "params": f"weights_traj_lr{tag}.npy",
        "eigvals": f"hessian_eigs_lr{tag}.npy",
        "loss": f"hessian_losses_lr{tag}.npy",
    }
    if cfg.store_hessians:
        out["hessian"] = f"hessians_traj_lr{tag}.npy"
    return out


def outputs(ctx: Context) -> list[str]:
    names = []
    for lr in ctx.cfg.lrs:
        tag = lr_tag(lr)
        names += list(files(ctx.cfg, lr).values())
        names += [f"weights_traj_lr{tag}_final.npy", f"significant_eigs_lr{tag}.png",
                  f"logs_sgd_gd_plus_sgdEpochified_lr{tag}.json"]
    return names


def segment_steps(n_params: int, itemsize: int, total: int) -> int:
    """Steps per compiled segment so that a segment's Hessians stay under SEGMENT_BYTES."""
    return int(max(1, min(total, SEGMENT_BYTES // (n_params * n_params * itemsize))))


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    dtype = DTYPES[cfg.compute_dtype]
    w0, state0 = ctx.load_checkpoint(GD_CHECKPOINT)
    train_loss, _ = ctx.loss_fns()
    data = ctx.data()
    sampler = ctx.stage_sampler(cfg.stage3_sampler)
    steps, n_params = cfg.hessian_steps, int(w0.shape[0])
    seg = segment_steps(n_params, jnp.dtype(dtype).itemsize, steps)
    # Eigenvalues are computed on the host (LAPACK) while the device computes the next segment:
    # XLA's in-loop eigvalsh cost ~20x the MLP's Hessian itself, LAPACK about 5x less.
    # Every exp1/exp2 model computes its own Hessian (closed forms, NanoGPT's structure).
    record = Recorder(params_every=1, hessian=True)
    fns: dict[int, Any] = {}
    info: dict[str, Any] = {"steps": steps, "segment_steps": seg}

    bar = ctx.progress("stage 3 Hessians", steps * len(cfg.lrs), unit="hessians")
    with bar:
        for i, lr in enumerate(cfg.lrs):
            names = files(cfg, lr)
            shapes = {"params": (n_params,), "eigvals": (n_params,), "loss": (),
                      "hessian": (n_params, n_params)}
            streams = {k: store.stream(name, (steps, *shapes[k]), np.dtype(dtype), seg)
                       for k, name in names.items()}
            pending = pending_chunks(*streams.values())
            key = run_keys(cfg.seed, "hessians", 1,
                           lr_index=None if cfg.lr_streams == "common" else i)[0]
            lr_arr = jnp.asarray(lr, dtype)
            # The state at a segment start is the previous segment's end: replay from the
            # checkpoint through finished segments when resuming (cheap next to Hessians).
            w, state = w0, state0
            first_pending = pending[0] if pending else streams["params"].n_chunks
            bar.update(min(steps, first_pending * seg))
            final_name = f"weights_traj_lr{lr_tag(lr)}_final.npy"
            previous: tuple[int, Trajectory] | None = None
            for c in range(streams["params"].n_chunks):
                start = c * seg
                n = min(seg, steps - start)
                done = c < first_pending
                rec = Recorder() if done else record
                key_fn = (n, done)
                if key_fn not in fns:
                    fns[key_fn] = jax.jit(make_trajectory(
                        train_loss, sampler, n, rec,
                        hessian_fn=getattr(ctx.model, "loss_hessian", None)))
                # Dispatch is asynchronous: segment c computes while the host stores c - 1.
                out: Trajectory = fns[key_fn](w, state, key, lr_arr, data, start)
                if previous is not None:
                    store_segment(streams, *previous, bar, info, lr)
                    previous = None
                if not done:
                    previous = (c, out)
                w, state = out.params, out.state
            if previous is not None:
                store_segment(streams, *previous, bar, info, lr)
            if not store.exists(final_name) or pending:
                store.save_npy(final_name, np.asarray(w))
            for stream in streams.values():
                stream.finalize()
            write_summaries(ctx, lr)
    info["throughput_hessians_per_s"] = bar.rate
    return info


def store_segment(streams: dict[str, Any], c: int, out: Trajectory, bar: Any,
                  info: dict[str, Any], lr: float) -> None:
    """Write one segment's records, with the eigenvalues of its Hessians from the host's
    LAPACK in the Hessians' own dtype (float32 LAPACK is ~5x faster than float64 here)."""
    records = {k: np.asarray(v) for k, v in out.records.items() if k != "state"}
    records["eigvals"] = np.linalg.eigvalsh(records["hessian"])
    for k, stream in streams.items():
        stream.write(c, records[k])
    bar.update(len(records["loss"]))
    if int(out.diverged_at) >= 0:
        info[f"lr{lr_tag(lr)}_diverged_at_step"] = int(out.diverged_at)


def write_summaries(ctx: Context, lr: float) -> None:
    """The original's epochified loss log and figure, and the eigenvalue "tubes" figure."""
    store = ctx.store
    tag = lr_tag(lr)
    losses = store.load_npy(f"hessian_losses_lr{tag}.npy").astype(np.float64)
    spe = ctx.steps_per_epoch
    n_epochs = len(losses) // spe
    epochified = losses[: n_epochs * spe].reshape(n_epochs, spe).mean(axis=1).tolist()
    sgd = store.load_json(SGD_LOGS)["train_losses"] if store.exists(SGD_LOGS) else []
    gd = store.load_json(GD_LOGS)["train_losses"] if store.exists(GD_LOGS) else []
    store.save_json(f"logs_sgd_gd_plus_sgdEpochified_lr{tag}.json", {
        "steps_per_epoch": spe,
        "total_steps": len(losses),
        "sgd_train_losses": sgd,
        "gd_train_losses": gd,
        "current_sgd_step_losses": losses.tolist(),
        "current_sgd_epochified_losses": epochified,
        "combined_train_losses": list(sgd) + list(gd) + epochified,
    })
    store.save_figure(f"loss_sgd_gd_plus_sgdEpochified_lr{tag}.png",
                      plots.combined_curve(np.asarray(sgd), np.asarray(gd),
                                           np.asarray(epochified), lr))
    eigs = store.load_npy(f"hessian_eigs_lr{tag}.npy", mmap=True)
    store.save_figure(f"significant_eigs_lr{tag}.png", plots.eigenvalue_tubes(np.asarray(eigs), lr))
