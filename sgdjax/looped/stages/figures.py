"""Stage 3: figures from the saved arrays (error vs k, error vs loops, training curves)."""

from __future__ import annotations

from typing import Any

from sgdjax.errors import SgdjaxError
from sgdjax.looped import plots
from sgdjax.looped.context import EVAL, TRAIN_LOG, LoopedContext


def outputs(ctx: LoopedContext) -> list[str]:
    names = ["error_vs_k.png", "training.png"]
    return names + (["error_vs_loops.png"] if ctx.cfg.looped else [])


def run(ctx: LoopedContext) -> dict[str, Any]:
    store, cfg = ctx.store, ctx.cfg
    missing = [n for n in (EVAL, TRAIN_LOG) if not store.exists(n)]
    if missing:
        raise SgdjaxError(f"{', '.join(str(store.path(n)) for n in missing)} missing: run the "
                          "train and evaluate stages first.")
    arrays = store.load_npz(EVAL)
    title = f"{cfg.setup}: {cfg.training.task}, d={cfg.eval_dims}"
    store.save_figure("error_vs_k.png", plots.error_vs_k(arrays, title, ctx.label,
                                                          cfg.eval.knn_neighbours))
    if cfg.looped:
        store.save_figure("error_vs_loops.png", plots.error_vs_loops(arrays, title))
    store.save_figure("training.png", plots.training_curves(store.load_npz(TRAIN_LOG),
                                                             cfg.setup))
    return {"figures": len(outputs(ctx))}
