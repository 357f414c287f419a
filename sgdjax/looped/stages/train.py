"""Stage 1: train one model (curriculum, truncated loop window, Adam) on the shared engine.

After every compiled call the parameters, the Adam state and the logs so far are saved to a
resume checkpoint, so an interrupted stage continues where it stopped and ends with the same
result as an uninterrupted run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from jax.flatten_util import ravel_pytree

from sgdjax.looped.checkpoint import named_params, opt_arrays, opt_from_arrays, params_from_named
from sgdjax.looped.context import MODEL, RESUME, TRAIN_LOG, LoopedContext
from sgdjax.looped.train import RunState, curriculum_log, fresh_state, run_training, segment_steps


def outputs(ctx: LoopedContext) -> list[str]:
    return [MODEL, TRAIN_LOG]


def _save_resume(ctx: LoopedContext, rs: RunState, flat: Any) -> None:
    logs = {f"log.{k}": np.concatenate(v) if v else np.zeros(0, np.float32)
            for k, v in rs.logs.items()}
    ctx.store.save_npz(RESUME, {**named_params(flat.unravel(rs.w)), **opt_arrays(rs.opt_state),
                                **logs, "step": np.asarray(rs.done)})


def _load_resume(ctx: LoopedContext, rs: RunState) -> RunState:
    where = str(ctx.store.path(RESUME))
    arrays = ctx.store.load_npz(RESUME)
    params = params_from_named(ctx.param_template, arrays, where)
    w, _ = ravel_pytree(params)
    logs = {k: [arrays[f"log.{k}"]] for k in rs.logs if f"log.{k}" in arrays}
    return RunState(w, opt_from_arrays(rs.opt_state, arrays, where), int(arrays["step"]),
                    {k: logs.get(k, []) for k in rs.logs})


def run(ctx: LoopedContext) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    total = cfg.training.train_steps
    rs, flat = fresh_state(cfg)
    if store.exists(RESUME) and not ctx.force:
        rs = _load_resume(ctx, rs)
    start = rs.done
    bar = ctx.progress("train", total - start)
    seg = segment_steps(cfg)
    timings: list[tuple[int, float]] = []
    last = [time.perf_counter()]

    def on_segment(state: RunState, n: int) -> None:
        now = time.perf_counter()
        timings.append((n, now - last[0]))
        last[0] = now
        loss = state.logs["loss"][-1]
        d, pts, k = (c.at(state.done - 1) for c in (cfg.training.curriculum.dims,
                                                     cfg.training.curriculum.points,
                                                     cfg.training.curriculum.loops))
        bar.update(n)
        bar.set_postfix(loss=f"{float(np.nanmean(loss[-max(1, n // 10):])):.4g}", d=d, n=pts,
                        K=k)
        if state.done < total and state.diverged_at < 0:
            _save_resume(ctx, state, flat)

    with bar:
        rs = run_training(cfg, rs, on_segment=on_segment)

    logs = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in rs.logs.items()}
    done_steps = logs["loss"].size
    store.save_npz(MODEL, {**named_params(flat.unravel(rs.w)), "step": np.asarray(rs.done)})
    store.save_npz(TRAIN_LOG, {**logs, **curriculum_log(cfg, done_steps),
                               "val_every": np.asarray(cfg.training.val_every),
                               "diverged_at": np.asarray(rs.diverged_at)})
    store.remove(RESUME)
    # Steady throughput leaves out the calls that compiled (the first of each length).
    seen: set[int] = set()
    steady = []
    for n, seconds in timings:
        if n in seen:
            steady.append((n, seconds))
        seen.add(n)
    steady_rate = (sum(n for n, _ in steady) / sum(s for _, s in steady)) if steady else None
    params = flat.unravel(rs.w)
    tail = logs["loss"][-max(1, min(100, done_steps)):] if done_steps else np.zeros(1)
    return {
        "steps": int(rs.done),
        "steps_this_call": int(rs.done - start),
        "segment_steps": seg,
        "throughput_steps_per_s": bar.rate,
        "steady_steps_per_s": steady_rate,
        "ms_per_step": 1e3 / steady_rate if steady_rate else None,
        "final_loss_mean100": float(np.nanmean(tail)),
        "diverged_at": int(rs.diverged_at),
        "n_params": cfg.model.num_params(params),
        "n_params_backbone": cfg.model.num_params(params, backbone_only=True),
    }
