"""Evaluation on fresh prompts: normalised squared error vs in-context examples and vs loops.

``n_prompts`` new prompts at the evaluation's dims and points. For every prompt position ``k``
(the prediction for point ``k+1`` after ``k`` labelled examples) the squared error divided by the
task's normaliser (``d`` for linear and ReLU tasks, the sparsity for sparse regression, 1 for
trees; predicting 0 then scores about 1). A looped model runs ``eval.n_loops`` iterations -- many
more than it was trained with -- and every iteration's predictions are kept, which gives in one
pass the error vs k at the last iteration and at the trained loop count, and the error of the last
point vs the iteration (does the loop settle at a fixed point beyond ``b``?). Bands are bootstrap
percentiles (5th-95th) over prompts.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.looped.baselines import BASELINES
from sgdjax.looped.config import LoopedConfig
from sgdjax.looped.tasks import sample_prompts
from sgdjax.looped.train import BOOTSTRAP_STREAM, TEST_STREAM, setup_key
from sgdjax.models.looped import LoopedTransformer, interleave, loop_predictions


def test_prompts(cfg: LoopedConfig) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation prompts ``(xs [P, N, D], ys [P, N])``: one draw, independent of the
    evaluation batch size."""
    xs, ys = jax.jit(sample_prompts, static_argnums=(0, 2, 3))(
        cfg.task, setup_key(cfg, TEST_STREAM), cfg.eval.n_prompts, cfg.eval_points,
        cfg.eval_dims)
    return np.asarray(xs), np.asarray(ys)


@partial(jax.jit, static_argnums=(0, 4, 5))
def _looped_batch(model: LoopedTransformer, params: Any, xs: jax.Array, ys: jax.Array,
                  n_units: int, train_unit: int) -> dict[str, jax.Array]:
    preds = loop_predictions(model, params, interleave(xs, ys), n_units // model.units_per_loop)
    se = (preds - ys) ** 2  # [U, b, N]
    return {"final": se[-1], "at_train": se[train_unit - 1], "last_point": se[:, :, -1].T,
            "sum_by_unit": jnp.sum(se, axis=1)}


@partial(jax.jit, static_argnums=0)
def _plain_batch(model: LoopedTransformer, params: Any, xs: jax.Array, ys: jax.Array,
                 ) -> jax.Array:
    return (model.forward(params, interleave(xs, ys)) - ys) ** 2


def model_errors(cfg: LoopedConfig, params: Any, xs: np.ndarray, ys: np.ndarray,
                 ) -> dict[str, np.ndarray]:
    """Normalised squared errors of the model on the prompts, in batches of ``eval.batch``.

    Always ``model [P, N]`` (after ``eval.n_loops`` iterations for a looped model); a looped
    model adds ``model.at_train_loops [P, N]`` (after ``loops.end``), ``loop_curve [P, U]``
    (last point after every loop step) and ``loop_mean [U, N]`` (mean over prompts)."""
    model, norm = cfg.model, cfg.task.normaliser(cfg.eval_dims)
    per = model.units_per_loop
    n_units = cfg.eval.n_loops * per
    train_unit = min(cfg.training.curriculum.loops.end * per, n_units)
    parts: dict[str, list[np.ndarray]] = {}
    size = cfg.eval.batch
    for lo in range(0, xs.shape[0], size):
        xb, yb = jnp.asarray(xs[lo : lo + size]), jnp.asarray(ys[lo : lo + size])
        if cfg.looped:
            out = _looped_batch(model, params, xb, yb, n_units, train_unit)
        else:
            out = {"final": _plain_batch(model, params, xb, yb)}
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value, np.float64))
    result = {"model": np.concatenate(parts["final"]) / norm}
    if cfg.looped:
        result["model.at_train_loops"] = np.concatenate(parts["at_train"]) / norm
        result["loop_curve"] = np.concatenate(parts["last_point"]) / norm
        result["loop_mean"] = np.sum(parts["sum_by_unit"], axis=0) / (xs.shape[0] * norm)
    return result


def baseline_errors(cfg: LoopedConfig, xs: np.ndarray, ys: np.ndarray,
                    ) -> dict[str, np.ndarray]:
    """``{"baseline.<name>": normalised squared errors [P, N]}`` for the setup's baselines."""
    norm = cfg.task.normaliser(cfg.eval_dims)
    out = {}
    for name in cfg.baselines:
        kwargs: dict[str, Any] = {}
        if name == "knn":
            kwargs["m"] = cfg.eval.knn_neighbours
        if name == "lasso":
            kwargs["alpha"] = cfg.eval.lasso_alpha
        preds = BASELINES[name](xs, ys, **kwargs)
        out[f"baseline.{name}"] = (preds - np.asarray(ys, np.float64)) ** 2 / norm
    return out


def bootstrap_band(errors: np.ndarray, key: jax.Array, n_boot: int,
                   ) -> np.ndarray:
    """``[3, X]``: the mean over prompts (axis 0 of ``errors [P, X]``) and the 5th / 95th
    percentiles of ``n_boot`` resampled means (prompts drawn with replacement). Resamples are
    multinomial counts, so the cost is one ``[n_boot, P] @ [P, X]`` product."""
    errors = np.asarray(errors, np.float64)
    mean = errors.mean(axis=0)
    if n_boot == 0:
        return np.stack([mean, mean, mean])
    n = errors.shape[0]
    idx = np.asarray(jax.random.randint(key, (n_boot, n), 0, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    means = counts @ errors / n
    lo, hi = np.percentile(means, [5, 95], axis=0)
    return np.stack([mean, lo, hi])


def evaluate(cfg: LoopedConfig, params: Any) -> dict[str, np.ndarray]:
    """Every evaluation array of the setup: per-prompt errors and their bands."""
    xs, ys = test_prompts(cfg)
    arrays: dict[str, np.ndarray] = {"k": np.arange(cfg.eval_points)}
    arrays.update(model_errors(cfg, params, xs, ys))
    arrays.update(baseline_errors(cfg, xs, ys))
    key = setup_key(cfg, BOOTSTRAP_STREAM)
    for i, name in enumerate([n for n in list(arrays) if n not in ("k", "loop_mean")]):
        arrays[f"band.{name}"] = bootstrap_band(arrays[name], jax.random.fold_in(key, i),
                                                cfg.eval.bootstrap)
    arrays["normaliser"] = np.asarray(cfg.task.normaliser(cfg.eval_dims))
    arrays["units_per_loop"] = np.asarray(cfg.model.units_per_loop)
    arrays["trained_loops"] = np.asarray(cfg.training.curriculum.loops.end)
    return arrays


def summary(cfg: LoopedConfig, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Headline numbers: mean normalised error at ``k = d`` and at the last k for the model and
    every baseline; for a looped model the last point's error at the trained loop count and
    after the last evaluated iteration."""
    d = min(cfg.eval_dims, cfg.eval_points - 1)
    out: dict[str, Any] = {}
    for name in [n for n in arrays if n.startswith(("model", "baseline."))]:
        mean = arrays[f"band.{name}"][0]
        label = name.replace("baseline.", "")
        out[f"{label}_err_k{d}"] = float(mean[d])
        out[f"{label}_err_last"] = float(mean[-1])
    if "loop_curve" in arrays:
        curve = arrays["band.loop_curve"][0]
        per = cfg.model.units_per_loop
        trained = min(cfg.training.curriculum.loops.end * per, curve.size)
        out["loop_err_at_trained"] = float(curve[trained - 1])
        out["loop_err_at_end"] = float(curve[-1])
        out["eval_loops"] = cfg.eval.n_loops
    return out


__all__ = ["baseline_errors", "bootstrap_band", "evaluate", "model_errors", "summary",
           "test_prompts"]
