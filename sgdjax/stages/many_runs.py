"""Stage 4: many independent SGD runs from the polished checkpoint (spec §4 stage 4).

For every lr, ``many_runs_samples`` runs of ``many_runs_steps`` SGD steps start from the same
stage-2 parameters; only their minibatch streams differ. Run r's key depends on (seed, r) — and on
the lr index when ``lr_streams="independent"`` — so with the default "common" streams run r sees
the same batches at every lr, as in the original's reshuffle mode. Runs are vmapped in chunks sized
from ``memory_budget_gb`` (on CPU at most ``MAX_CHUNK_CPU`` runs per device); each chunk is one
compiled call whose outputs go straight into pre-allocated ``.npy`` files, so the ensemble may be
larger than memory and an interrupted stage resumes at its first unfinished chunk.

Files per lr (``[runs, steps, params]`` layout):
``sgd_weights_lr{lr}.npy`` [R, T/k, P] pre-update weights (k = ``record_every``),
``sgd_weights_lr{lr}_final.npy`` [R, P] the weights after the last step,
``sgd_train_losses_lr{lr}.npy`` [R, T] pre-update minibatch losses,
``sgd_val_losses_lr{lr}.npy`` / ``sgd_val_accs_lr{lr}.npy`` [R, T // val_every],
``sgd_diverged_at_lr{lr}.npy`` [R] (-1 = finite), BatchNorm running statistics at the recorded
steps for the CNN (``sgd_bn_{name}_lr{lr}.npy``), and ``sgd_logs_lr{lr}.json`` with the
original's keys.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax import plots
from sgdjax.config import SetupConfig
from sgdjax.distributed import broadcast, is_main, process_count
from sgdjax.engine.ensemble import (
    MAX_CHUNK_CPU,
    chunk_size,
    diverged_summary,
    global_chunk,
    output_bytes_per_run,
    run_chunks,
    run_keys,
    run_mesh,
    vmapped,
)
from sgdjax.engine.trajectory import make_trajectory
from sgdjax.errors import ConfigError
from sgdjax.stages.common import DTYPES, Context
from sgdjax.stages.train_gd import CHECKPOINT as GD_CHECKPOINT
from sgdjax.store import lr_tag, pending_chunks

#: JSON logs hold the flat per-step losses only up to this many values (the .npy always has them).
JSON_LIMIT = 2_000_000
#: Every process of a multi-host run takes part (see ``sgdjax.distributed``); process 0 writes.
DISTRIBUTED = True


def runs_per_call(cfg: SetupConfig, share: int, bytes_per_run: int, n_dev: int,
                  platform: str) -> int:
    """Runs one device computes per compiled call: ``chunk_runs`` if set, else as many of its
    ``share`` as fit its part of ``memory_budget_gb``, at most ``MAX_CHUNK_CPU`` on CPU."""
    if cfg.chunk_runs:
        return cfg.chunk_runs
    cap = MAX_CHUNK_CPU.get(cfg.model) if platform == "cpu" else None
    return chunk_size(share, bytes_per_run, cfg.memory_budget_gb * 2**30 / n_dev, cap)


def weights_file(lr: float) -> str:
    return f"sgd_weights_lr{lr_tag(lr)}.npy"


def state_names(ctx: Context) -> list[str]:
    """Names of the recorded model-state leaves (BatchNorm statistics of the CNN)."""
    return [_leaf_name(path) for path, leaf in jax.tree_util.tree_leaves_with_path(
        ctx.model.init(jax.random.key(0), jnp.float32)[1])]


def _leaf_name(path: tuple) -> str:
    return "_".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def files(ctx: Context, lr: float) -> dict[str, str]:
    tag = lr_tag(lr)
    out = {
        "params": weights_file(lr),
        "final": f"sgd_weights_lr{tag}_final.npy",
        "loss": f"sgd_train_losses_lr{tag}.npy",
        "val_loss": f"sgd_val_losses_lr{tag}.npy",
        "val_acc": f"sgd_val_accs_lr{tag}.npy",
        "diverged_at": f"sgd_diverged_at_lr{tag}.npy",
    }
    for name in state_names(ctx):
        out[f"state/{name}"] = f"sgd_bn_{name}_lr{tag}.npy"
    if ctx.cfg.curvature_every:
        out["curv_eigs"] = f"sgd_curv_eigs_lr{tag}.npy"
        if ctx.cfg.curvature_probes:
            out["curv_trace"] = f"sgd_curv_trace_lr{tag}.npy"
    return out


def outputs(ctx: Context) -> list[str]:
    names = []
    for lr in ctx.cfg.lrs:
        names += list(files(ctx, lr).values())
        names += [f"sgd_logs_lr{lr_tag(lr)}.json", f"sgd_loss_ensemble_lr{lr_tag(lr)}.png"]
    return names


def val_every(ctx: Context) -> int:
    """Validation cadence: ``val_every`` or one epoch (100 steps for exp1, 74 for exp2)."""
    return ctx.cfg.val_every or ctx.steps_per_epoch


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    dtype = DTYPES[cfg.compute_dtype]
    w0, state0 = ctx.load_checkpoint(GD_CHECKPOINT)
    train_loss, eval_loss = ctx.loss_fns()
    data = ctx.data()
    steps, n_runs, k = cfg.many_runs_steps, cfg.many_runs_samples, cfg.record_every
    ve = val_every(ctx)
    if ve % k:
        raise ConfigError(
            f"record_every={k} must divide the validation cadence {ve} (val_every, or one "
            f"epoch = {ctx.steps_per_epoch} steps); e.g. --set val_every={k * 10}."
        )
    traj = make_trajectory(
        train_loss, ctx.sampler(cfg.dataloader), steps,
        ctx.recorder(ve, params_every=k, val_every=ve), eval_loss=eval_loss,
    )
    one_key = run_keys(cfg.seed, "many_runs", 1)[0]
    per_run = output_bytes_per_run(traj, w0, state0, one_key, jnp.asarray(0.1, dtype), data)
    per_run += steps * cfg.batch_size * 4  # the run's precomputed batch indices
    platform = ctx.platform
    # Several hosts: one mesh over every host's devices; one host: its local devices.
    mesh = run_mesh(jax.devices(platform) if process_count() > 1
                    else jax.local_devices(backend=platform))
    n_dev = 1 if mesh is None else int(mesh.devices.size)
    # Each device's share of the runs; every chunk's outputs land in this host's memory, so the
    # budget is shared by all devices.
    share = -(-n_runs // n_dev)
    size = runs_per_call(cfg, share, per_run, n_dev, platform or jax.default_backend())
    size = global_chunk(min(size, share), mesh)
    fn = vmapped(traj, mesh)

    info: dict[str, Any] = {"chunk_runs": size, "runs_per_lr": n_runs, "steps": steps,
                            "devices": 1 if mesh is None else int(mesh.devices.size),
                            "processes": process_count()}
    writer = is_main()
    total_run_steps = 0
    bar = ctx.progress("stage 4 many runs", n_runs * steps * len(cfg.lrs))
    with bar:
        for i, lr in enumerate(cfg.lrs):
            names = files(ctx, lr)
            shapes = jax.eval_shape(traj, w0, state0, one_key, jnp.asarray(lr, dtype), data)
            streams = {}
            for key, name in names.items() if writer else ():
                if key == "final":
                    shape, sdt = shapes.params.shape, shapes.params.dtype
                elif key == "diverged_at":
                    shape, sdt = (), np.int32
                elif key.startswith("state/"):
                    leaves = dict(zip(state_names(ctx), jax.tree.leaves(shapes.records["state"]),
                                      strict=True))
                    leaf = leaves[key[6:]]
                    shape, sdt = leaf.shape, leaf.dtype
                else:
                    shape, sdt = shapes.records[key].shape, shapes.records[key].dtype
                streams[key] = store.stream(name, (n_runs, *shape), np.dtype(sdt), size)
            n_chunks = -(-n_runs // size)
            pending = broadcast(pending_chunks(*streams.values()) if writer else [])
            if len(pending) < n_chunks:
                bar.update((n_chunks - len(pending)) * size * steps)
            keys = run_keys(cfg.seed, "many_runs", n_runs,
                            lr_index=None if cfg.lr_streams == "common" else i)
            lrs = jnp.full((n_runs,), lr, dtype)

            def on_chunk(c: int, rows: slice, out: Any, streams: dict = streams) -> None:
                rec = out.records  # (streams is empty on processes other than 0)
                for key, stream in streams.items():
                    if key == "final":
                        stream.write(c, out.params)
                    elif key == "diverged_at":
                        stream.write(c, out.diverged_at)
                    elif key.startswith("state/"):
                        leaves = dict(zip(state_names(ctx), jax.tree.leaves(rec["state"]),
                                          strict=True))
                        stream.write(c, leaves[key[6:]])
                    else:
                        stream.write(c, rec[key])

            def progress(count: int, seconds: float, lr: float = lr) -> None:
                bar.update(count * steps)
                bar.set_postfix(lr=lr, chunk_s=f"{seconds:.2f}")

            run_chunks(fn, w0, state0, keys, lrs, data, size, pending, on_chunk, progress, mesh)
            total_run_steps += len(pending) * size * steps
            for stream in streams.values():
                stream.finalize()
            if writer:
                info[f"lr{lr_tag(lr)}"] = write_logs(ctx, lr, names, ve)
    info["throughput_run_steps_per_s"] = bar.rate
    return info


def write_logs(ctx: Context, lr: float, names: dict[str, str], ve: int) -> dict[str, Any]:
    """The original's ``sgd_logs_lr{lr}.json`` (flat run-major lists) and a loss figure."""
    store = ctx.store
    losses = store.load_npy(names["loss"], mmap=True)
    val_losses = store.load_npy(names["val_loss"])
    val_accs = store.load_npy(names["val_acc"])
    diverged_at = store.load_npy(names["diverged_at"])
    n_runs, n_steps = losses.shape
    small = losses.size <= JSON_LIMIT
    logs: dict[str, Any] = {
        "train_losses": np.asarray(losses).reshape(-1).tolist() if small else None,
        "val_losses": val_losses.reshape(-1).tolist(),
        "val_accs": val_accs.reshape(-1).tolist(),
        "n_runs": n_runs,
        "n_steps": n_steps,
        "val_every": ve,
        "record_every": ctx.cfg.record_every,
        "arrays": {k: v for k, v in names.items()},
        **diverged_summary(diverged_at),
    }
    store.save_json(f"sgd_logs_lr{lr_tag(lr)}.json", logs)
    diverged = diverged_at >= 0
    store.save_figure(f"sgd_loss_ensemble_lr{lr_tag(lr)}.png",
                      plots.ensemble_loss(np.asarray(losses), lr, diverged))
    healthy = ~diverged
    final_loss = np.asarray(losses[:, -1])[healthy]
    final_w = store.load_npy(names["final"])[healthy].astype(np.float64)
    return {
        # RMS over parameters of the across-run std of the final weights: the ensemble's spread.
        "final_weight_spread": float(np.sqrt(final_w.var(axis=0).mean()))
        if len(final_w) > 1 else None,
        "n_diverged": int(diverged.sum()),
        "final_train_loss_mean": float(final_loss.mean()) if final_loss.size else None,
        "final_val_loss_mean": float(val_losses[healthy, -1].mean())
        if healthy.any() and val_losses.shape[1] else None,
    }
