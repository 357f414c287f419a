"""Stage 6: validation loss/accuracy distribution of the stage-4 ensemble (spec §4 extra stage).

For every lr whose ``sgd_weights_lr{lr}.npy`` exists, every run is evaluated on the whole
validation set (eval mode, example-weighted means) at the first recorded step ("start") and at
the last recorded step ("end": the parameters *before* the last update, as in the original), and
so is the **mean model**: the parameters averaged over the runs that are healthy at that step.

Differences from the original, on purpose:

* the CNN is evaluated with the BatchNorm running statistics each run had at that step (stage 4
  records them), not with a fresh model's mean 0 / variance 1 (spec §10 #4); the mean model gets
  the run-averaged statistics;
* a run that diverged at or before the evaluated step (``diverged_at`` in ``[0, step]``) or whose
  recorded parameters are not finite is written as NaN and left out of every mean and std;
* all runs go through one jitted function, vmapped over chunks of runs whose size is derived from
  ``memory_budget_gb`` (the last chunk is padded, so the stage compiles once).

Files per lr, in ``val_analysis_lr{lr}/``: ``sgd_weights_lr{lr}__{start,end}_val_metrics.csv``
(sample_idx, val_loss, val_acc), ``sgd_weights_lr{lr}__summary.json`` and in
``val_loss_distribution/`` the four histograms
``sgd_weights_lr{lr}__{start,end}_{loss,acc}_hist.png``.

For exp2 (Shakespeare) the original script had other semantics, which are written as well, in
``val_analysis_sgd_weights_lr{lr}/``: the **first run only**, at ``val_dist_points`` evenly spaced
recorded steps; the first 10 points are "start", the last 10 "end"
(``sgd_weights_lr{lr}_{start,end}_val_metrics.csv`` with steps, val_losses, val_accs,
``sgd_weights_lr{lr}_summary.json`` and four histograms).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax import plots
from sgdjax.engine.trajectory import evaluate
from sgdjax.errors import SgdjaxError
from sgdjax.stages import many_runs
from sgdjax.stages.common import DTYPES, Context
from sgdjax.store import lr_tag

#: Never vmap more runs than this in one chunk (enough to fill an accelerator with these models).
MAX_CHUNK = 256
#: Used when the activation estimate is unavailable.
FALLBACK_CHUNK = {"cnn": 4}
#: Number of points called "start" / "end" in the exp2 variant (the original's 10).
EXP2_EDGE = 10
TAGS = ("start", "end")


# --------------------------------------------------------------------------------------------
# file names


def prefix(lr: float) -> str:
    return f"sgd_weights_lr{lr_tag(lr)}"


def analysis_dir(lr: float) -> str:
    return f"val_analysis_lr{lr_tag(lr)}"


def summary_file(lr: float) -> str:
    return f"{analysis_dir(lr)}/{prefix(lr)}__summary.json"


def csv_file(lr: float, tag: str) -> str:
    return f"{analysis_dir(lr)}/{prefix(lr)}__{tag}_val_metrics.csv"


def hist_file(lr: float, tag: str, metric: str) -> str:
    return f"{analysis_dir(lr)}/val_loss_distribution/{prefix(lr)}__{tag}_{metric}_hist.png"


def exp2_dir(lr: float) -> str:
    return f"val_analysis_{prefix(lr)}"


def exp2_file(lr: float, suffix: str) -> str:
    return f"{exp2_dir(lr)}/{prefix(lr)}_{suffix}"


def is_exp2(ctx: Context) -> bool:
    return ctx.cfg.dataset_train == "shakespeare"


def available_lrs(ctx: Context) -> list[float]:
    """The lrs of the setup whose stage-4 weights exist."""
    return [lr for lr in ctx.cfg.lrs if ctx.store.exists(many_runs.weights_file(lr))]


def outputs(ctx: Context) -> list[str]:
    # Before stage 4 has run nothing exists: list every lr so the stage is not "complete".
    lrs = available_lrs(ctx) or list(ctx.cfg.lrs)
    names = [summary_file(lr) for lr in lrs]
    if is_exp2(ctx):
        names += [exp2_file(lr, "summary.json") for lr in lrs]
    return names


# --------------------------------------------------------------------------------------------
# evaluation of many (parameters, state) points


def _jaxpr_bytes(jaxpr: Any) -> int:
    """Bytes of every intermediate of a jaxpr, nested jaxprs included (no buffer reuse)."""
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = getattr(var, "aval", None)
            try:
                total += math.prod(aval.shape) * np.dtype(aval.dtype).itemsize
            except (AttributeError, TypeError):
                pass
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_bytes(inner)
    return total


def bytes_per_example(eval_loss: Any, w: jax.Array, state: Any, x: jax.Array,
                      y: jax.Array) -> int:
    """Upper bound of the intermediate bytes one validation example adds to one evaluation:
    the traced intermediates of a 2-example batch minus those of a 1-example batch."""
    def traced(n: int) -> int:
        fn = jax.make_jaxpr(lambda w, s, xs, ys: eval_loss(w, s, xs, ys)[0])
        return _jaxpr_bytes(fn(w, state, x[:n], y[:n]).jaxpr)

    return max(1, traced(2) - traced(1))


class Evaluator:
    """Validation loss and accuracy of many (flat parameters, model state) points.

    One jitted function ``vmap``s :func:`~sgdjax.engine.trajectory.evaluate` over a fixed-size
    chunk of points; every call pads its last chunk, so each setup compiles once. The chunk size
    keeps a chunk's activations (``chunk · model.eval_batch · bytes per example``) under
    ``memory_budget_gb``."""

    def __init__(self, ctx: Context, max_points: int = MAX_CHUNK, chunk: int | None = None):
        cfg, model = ctx.cfg, ctx.model
        self.dtype = DTYPES[cfg.compute_dtype]
        self.device = ctx.device
        _, eval_loss = ctx.loss_fns()
        data = ctx.data()
        self.x, self.y = data.val_x, data.val_y
        if self.x is None or self.y is None or self.x.shape[0] == 0:
            raise SgdjaxError("stage 6 needs a validation set, and this setup has none.")
        self.n_val = int(self.x.shape[0])
        # examples per slice of one evaluation (bounds the activations of one run)
        self.batch = min(model.eval_batch, self.n_val)
        params, state = model.init(jax.random.key(0), self.dtype)
        w = model.flatten(params)
        self.n_params = int(w.shape[0])
        self.treedef = jax.tree.structure(state)
        self.leaf_dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree.leaves(state)]
        if chunk is None:
            try:
                per_run = bytes_per_example(eval_loss, w, state, self.x, self.y) * self.batch
                chunk = int(cfg.memory_budget_gb * 2**30 // per_run)
            except Exception:  # the estimate is a convenience; fall back to a safe size
                chunk = FALLBACK_CHUNK.get(cfg.model, 64)
        # No call evaluates more than ``max_points`` points: a wider chunk would only pad.
        self.chunk = max(1, min(MAX_CHUNK, max_points, chunk))
        batch = self.batch

        def one(w: jax.Array, s: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
            return evaluate(eval_loss, w, s, x, y, batch)

        self._fn = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))
        self.n_evaluated = 0
        self.seconds = 0.0

    def state_tree(self, leaves: list[np.ndarray]) -> Any:
        """The model state pytree from leaves in :func:`many_runs.state_names` order."""
        cast = [np.asarray(a, dtype=dt) for a, dt in zip(leaves, self.leaf_dtypes, strict=True)]
        return jax.tree.unflatten(self.treedef, cast)

    def __call__(self, params: np.ndarray, states: list[np.ndarray],
                 on_chunk: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(val loss [n], val acc [n]) of ``params [n, P]`` with state leaves ``states``
        (each ``[n, ...]``, in :func:`many_runs.state_names` order)."""
        n = params.shape[0]
        losses, accs = np.empty(n, np.float64), np.empty(n, np.float64)
        t0 = time.perf_counter()
        for start in range(0, n, self.chunk):
            rows = slice(start, min(n, start + self.chunk))
            count = rows.stop - rows.start
            pad = self.chunk - count

            def take(a: np.ndarray, rows: slice = rows, pad: int = pad) -> np.ndarray:
                part = np.asarray(a[rows])
                if pad:
                    part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
                return part

            w = jax.device_put(jnp.asarray(take(params), self.dtype), self.device)
            s = jax.device_put(self.state_tree([take(a) for a in states]), self.device)
            loss, acc = self._fn(w, s, self.x, self.y)
            losses[rows] = np.asarray(loss)[:count]
            accs[rows] = np.asarray(acc)[:count]
            if on_chunk is not None:
                on_chunk(count)
        self.n_evaluated += n
        self.seconds += time.perf_counter() - t0
        return losses, accs


# --------------------------------------------------------------------------------------------
# the stage


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std of the finite values (NaN when there are none)."""
    v = values[np.isfinite(values)]
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def _csv(header: str, columns: list[np.ndarray]) -> str:
    rows = [header]
    for values in zip(*columns, strict=True):
        rows.append(",".join(str(int(v)) if isinstance(v, np.integer | int) else repr(float(v))
                             for v in values))
    return "\n".join(rows) + "\n"


def load_ensemble(ctx: Context, lr: float) -> dict[str, Any]:
    """Memory-mapped stage-4 arrays of one lr: params [R, T', P], state leaves, diverged_at."""
    store, names = ctx.store, many_runs.files(ctx, lr)
    params = store.load_npy(names["params"], mmap=True)
    n_runs = params.shape[0]
    states = []
    for name in many_runs.state_names(ctx):
        file = names[f"state/{name}"]
        if not store.exists(file):
            raise SgdjaxError(
                f"{store.path(file)} is missing: stage 6 evaluates each CNN run with the BatchNorm "
                f"running statistics it had at the evaluated step, which stage 4 records. Rerun "
                f"stage 4 with --force (--stages 4 --force) to write them."
            )
        states.append(store.load_npy(file, mmap=True))
    if store.exists(names["diverged_at"]):
        diverged_at = np.asarray(store.load_npy(names["diverged_at"]), np.int64)
    else:  # older results without the divergence record: non-finite weights still excluded
        diverged_at = np.full(n_runs, -1, np.int64)
    return {"params": params, "states": states, "diverged_at": diverged_at}


def _mean_model(params: np.ndarray, states: list[np.ndarray], healthy: np.ndarray,
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Parameters (and state leaves) averaged over the healthy runs, accumulated in float64;
    NaN when no run is healthy. Integer leaves (BatchNorm's batch counter) are rounded."""
    if not healthy.any():
        w = np.full(params.shape[1:], np.nan)
        leaves = [np.zeros(a.shape[1:], a.dtype) if not np.issubdtype(a.dtype, np.floating)
                  else np.full(a.shape[1:], np.nan) for a in states]
        return w, leaves
    w = params[healthy].astype(np.float64).mean(axis=0)
    leaves = []
    for a in states:
        m = a[healthy].astype(np.float64).mean(axis=0)
        leaves.append(m if np.issubdtype(a.dtype, np.floating) else np.rint(m).astype(a.dtype))
    return w, leaves


def evaluate_tag(ev: Evaluator, ens: dict[str, Any], index: int, step: int,
                 bar: Any = None) -> dict[str, Any]:
    """Every run and the mean model at recorded ``index`` (optimizer step ``step``)."""
    params = np.asarray(ens["params"][:, index, :])
    states = [np.asarray(a[:, index]) for a in ens["states"]]
    div = ens["diverged_at"]
    healthy = ~((div >= 0) & (div <= step)) & np.isfinite(params).all(axis=1)
    for a in states:
        if np.issubdtype(a.dtype, np.floating):
            healthy &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    mean_w, mean_leaves = _mean_model(params, states, healthy)
    # The mean model rides along as one extra point: one compiled function for everything.
    points = np.concatenate([params, mean_w[None].astype(params.dtype)])
    leaves = [np.concatenate([a, m[None].astype(a.dtype)]) for a, m in
              zip(states, mean_leaves, strict=True)]
    loss, acc = ev(points, leaves, None if bar is None else bar.update)
    run_loss, run_acc = loss[:-1], acc[:-1]
    run_loss[~healthy] = np.nan
    run_acc[~healthy] = np.nan
    return {"loss": run_loss, "acc": run_acc, "healthy": healthy,
            "mean_model_loss": float(loss[-1]) if healthy.any() else float("nan"),
            "mean_model_acc": float(acc[-1]) if healthy.any() else float("nan")}


def run(ctx: Context) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    lrs = available_lrs(ctx)
    if not lrs:
        raise SgdjaxError(
            f"no stage-4 ensemble found in {store.root} for lrs {list(cfg.lrs)} (looked for "
            f"{', '.join(many_runs.weights_file(lr) for lr in cfg.lrs)}). Run stage 4 first."
        )
    ensembles = {lr: load_ensemble(ctx, lr) for lr in lrs}
    max_points = max(e["params"].shape[0] + 1 for e in ensembles.values())
    if is_exp2(ctx):
        max_points = max(max_points, cfg.val_dist_points)
    ev = Evaluator(ctx, max_points)
    info: dict[str, Any] = {"chunk_runs": ev.chunk, "val_examples": ev.n_val,
                            "skipped_lrs": [lr for lr in cfg.lrs if lr not in lrs]}
    total = sum(2 * (e["params"].shape[0] + 1) for e in ensembles.values())
    if is_exp2(ctx):
        total += len(lrs) * cfg.val_dist_points
    with ctx.progress("stage 6 val distribution", total, unit="evals") as bar:
        for lr in lrs:
            ens = ensembles[lr]
            n_runs, n_rec, n_params = ens["params"].shape
            if n_params != ev.n_params:
                raise SgdjaxError(
                    f"{store.path(many_runs.weights_file(lr))} holds {n_params} parameters per "
                    f"point, but the setup's {cfg.model} has {ev.n_params}. Was it written by "
                    f"another setup? Rerun stage 4 with --force."
                )
            if n_rec == 0:
                raise SgdjaxError(f"{many_runs.weights_file(lr)} holds no recorded step.")
            info[f"lr{lr_tag(lr)}"] = write_exp1(ctx, ev, lr, ens, bar)
            if is_exp2(ctx):
                info[f"lr{lr_tag(lr)}"]["exp2"] = write_exp2(ctx, ev, lr, ens, bar)
            bar.set_postfix(lr=lr)
    info["evaluations"] = ev.n_evaluated
    info["throughput_evals_per_s"] = ev.n_evaluated / max(ev.seconds, 1e-9)
    info["throughput_val_examples_per_s"] = info["throughput_evals_per_s"] * ev.n_val
    return info


def write_exp1(ctx: Context, ev: Evaluator, lr: float, ens: dict[str, Any],
               bar: Any = None) -> dict[str, Any]:
    """The exp1 semantics: every run and the mean model at the first and last recorded step."""
    store, k = ctx.store, ctx.cfg.record_every
    n_runs, n_rec, n_params = ens["params"].shape
    summary: dict[str, Any] = {
        "weights_file": many_runs.weights_file(lr),
        "n_samples": n_runs,
        "n_steps": n_rec,
        "n_params": n_params,
        "n_diverged": int((ens["diverged_at"] >= 0).sum()),
        "record_every": k,
        "bn_statistics": "recorded per run" if ens["states"] else "none (model has no state)",
    }
    info: dict[str, Any] = {}
    for tag, index in (("start", 0), ("end", n_rec - 1)):
        step = index * k
        res = evaluate_tag(ev, ens, index, step, bar)
        loss_mean, loss_std = _stats(res["loss"])
        acc_mean, acc_std = _stats(res["acc"])
        csv = csv_file(lr, tag)
        store.save_text(csv, _csv("sample_idx,val_loss,val_acc",
                                  [np.arange(n_runs), res["loss"], res["acc"]]))
        summary.update({
            f"{tag}_step": step,
            f"{tag}_n_excluded": int((~res["healthy"]).sum()),
            f"{tag}_val_loss_mean": loss_mean,
            f"{tag}_val_loss_std": loss_std,
            f"{tag}_val_acc_mean": acc_mean,
            f"{tag}_val_acc_std": acc_std,
            f"{tag}_mean_model_val_loss": res["mean_model_loss"],
            f"{tag}_mean_model_val_acc": res["mean_model_acc"],
            f"{tag}_csv": csv,
        })
        for metric, key, label in (("loss", "loss", "validation loss"),
                                   ("acc", "acc", "validation accuracy")):
            title = f"lr={lr:g}, {tag} (step {step}): {label} of {n_runs} runs"
            store.save_figure(hist_file(lr, tag, metric), plots.val_histogram(
                res[key], res[f"mean_model_{key}"], label, title))
        info.update({
            f"{tag}_val_loss_mean": loss_mean,
            f"{tag}_val_acc_mean": acc_mean,
            f"{tag}_mean_model_val_loss": res["mean_model_loss"],
            f"{tag}_mean_model_val_acc": res["mean_model_acc"],
        })
    store.save_json(summary_file(lr), summary, indent=2)
    info["n_diverged"] = summary["n_diverged"]
    return info


def exp2_indices(n_recorded: int, n_points: int) -> np.ndarray:
    """The exp2 script's evenly spaced recorded indices (linspace over 0..T'-1, rounded)."""
    return np.rint(np.linspace(0, n_recorded - 1, n_points)).astype(np.int64)


def write_exp2(ctx: Context, ev: Evaluator, lr: float, ens: dict[str, Any],
               bar: Any = None) -> dict[str, Any]:
    """The exp2 script's semantics: run 0 only, at ``val_dist_points`` evenly spaced recorded
    steps; the first 10 points are "start", the last 10 "end"."""
    store, cfg = ctx.store, ctx.cfg
    n_rec = ens["params"].shape[1]
    idx = exp2_indices(n_rec, cfg.val_dist_points)
    steps = idx * cfg.record_every
    params = np.asarray(ens["params"][0, idx, :])
    states = [np.asarray(a[0, idx]) for a in ens["states"]]
    loss, acc = ev(params, states, None if bar is None else bar.update)
    div = int(ens["diverged_at"][0])
    bad = ((div >= 0) & (steps >= div)) | ~np.isfinite(params).all(axis=1)
    loss[bad], acc[bad] = np.nan, np.nan
    summary: dict[str, Any] = {
        "weights_file": many_runs.weights_file(lr),
        "run": 0,
        "n_points": int(idx.size),
        "steps": steps.tolist(),
    }
    edge = min(EXP2_EDGE, idx.size)
    for tag, sel in (("start", slice(0, edge)), ("end", slice(idx.size - edge, idx.size))):
        csv = exp2_file(lr, f"{tag}_val_metrics.csv")
        store.save_text(csv, _csv("steps,val_losses,val_accs",
                                  [steps[sel], loss[sel], acc[sel]]))
        loss_mean, loss_std = _stats(loss[sel])
        acc_mean, acc_std = _stats(acc[sel])
        summary.update({
            f"{tag}_val_loss_mean": loss_mean, f"{tag}_val_loss_std": loss_std,
            f"{tag}_val_acc_mean": acc_mean, f"{tag}_val_acc_std": acc_std,
            f"{tag}_csv": csv,
        })
        for metric, values, label in (("loss", loss[sel], "validation loss"),
                                      ("acc", acc[sel], "validation accuracy")):
            title = (f"lr={lr:g}, run 0, {tag}: steps {int(steps[sel][0])}"
                     f"..{int(steps[sel][-1])}")
            store.save_figure(
                f"{exp2_dir(lr)}/val_loss_distribution/{prefix(lr)}_{tag}_{metric}_hist.png",
                plots.val_histogram(values, None, label, title))
    store.save_json(exp2_file(lr, "summary.json"), summary, indent=2)
    return {k: v for k, v in summary.items() if k.endswith(("_mean", "_std"))}
