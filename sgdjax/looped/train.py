"""Training on the shared engine: task batches generated inside the compiled step.

``make_trajectory`` runs the steps as one ``lax.scan``: ``batch_fn(key, step)`` draws the step's
prompts on the device with the curriculum values of that step (dims, points, loops are traced
functions of the step, so the curriculum never recompiles), ``train_loss`` is the truncated-window
objective (spec §2.4) over the flat parameter vector, and the update rule is Adam as in the
original (``torch.optim.Adam``; its weight decay is an L2 term added to the gradient).

:func:`run_training` drives one run in calls of ``steps_per_call`` steps and carries the Adam
state from call to call, which makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from sgdjax.engine.trajectory import Data, Recorder, Trajectory, make_trajectory
from sgdjax.looped.config import LoopedConfig
from sgdjax.looped.tasks import sample_prompts
from sgdjax.models.looped import LoopedTransformer, interleave

# fold_in streams of the setup seed: each random choice has its own.
INIT_STREAM, TRAIN_STREAM, VAL_STREAM, TEST_STREAM, BOOTSTRAP_STREAM = 0, 1, 2, 3, 4


class Prompts(NamedTuple):
    """One step's batch: prompts padded to the largest number of points, and the live part."""

    xs: jax.Array  # [B, N_max, D]
    ys: jax.Array  # [B, N_max]
    n_points: jax.Array  # int32: live points n (the rest is padding)
    n_loops: jax.Array  # int32: loop iterations K of this step


def setup_key(cfg: LoopedConfig, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(cfg.training.seed), stream)


@dataclass(frozen=True)
class Flat:
    """The model with its flat-vector view (``ravel_pytree`` order)."""

    model: LoopedTransformer
    unravel: Callable[[jax.Array], Any]
    size: int


def init_flat(cfg: LoopedConfig) -> tuple[jax.Array, Flat]:
    """Initial flat parameters (a pure function of the seed) and the flat view."""
    params = cfg.model.init(setup_key(cfg, INIT_STREAM))
    w, unravel = ravel_pytree(params)
    return w, Flat(cfg.model, unravel, int(w.size))


def make_batch_fn(cfg: LoopedConfig) -> Callable[[jax.Array, jax.Array], tuple[Prompts, Any]]:
    cur, task, batch = cfg.training.curriculum, cfg.task, cfg.training.batch_size

    def batch_fn(key: jax.Array, step: jax.Array) -> tuple[Prompts, jax.Array]:
        d, n, k = cur.values(step)
        xs, ys = sample_prompts(task, key, batch, cur.points.end, d)
        return Prompts(xs, ys, n, k), ys

    return batch_fn


def sq_error_terms(preds: jax.Array, ys: jax.Array, n_points: jax.Array) -> jax.Array:
    """Mean squared error over the batch and the live points, for every leading index of
    ``preds`` (``[..., B, N]`` -> ``[...]``)."""
    live = (jnp.arange(ys.shape[-1]) < n_points).astype(preds.dtype)
    total = jnp.sum((preds - ys) ** 2 * live, axis=(-1, -2))
    return total / (ys.shape[0] * n_points.astype(preds.dtype))


def make_losses(cfg: LoopedConfig, flat: Flat) -> tuple[Callable, Callable]:
    """``(train_loss, eval_loss)`` over the flat parameters, in the engine's signature.

    Looped: the mean over the window iterations of the MSE over batch and live points; the
    eval loss is the MSE after ``loops.end`` iterations. Unlooped: the MSE."""
    model, t = flat.model, cfg.training
    max_loops = t.curriculum.loops.end

    def train_loss(w: jax.Array, state: Any, x: Prompts, y: jax.Array) -> tuple:
        params = flat.unravel(w)
        tokens = interleave(x.xs, x.ys)
        if cfg.looped:
            preds, weights = model.window_predictions(
                params, tokens, x.n_points, x.n_loops, t.n_loop_window, max_loops,
                t.fork_window)
            per_step = sq_error_terms(preds, y, x.n_points)
            loss = jnp.sum(per_step * weights) / jnp.sum(weights)
        else:
            loss = sq_error_terms(model.forward(params, tokens), y, x.n_points)
        return loss, (state, jnp.int32(0))

    def eval_loss(w: jax.Array, state: Any, xs: jax.Array, ys: jax.Array) -> tuple:
        params = flat.unravel(w)
        tokens = interleave(xs, ys)
        if cfg.looped:
            p = model.embed(params, tokens)
            keep = model.keep_mask(xs.shape[-2], tokens.shape[-2])
            (z, _), _ = model.run_units(params, p, max_loops * model.units_per_loop, keep)
            preds = model.readout(params, z)
        else:
            preds = model.forward(params, tokens)
        return jnp.mean((preds - ys) ** 2), (state, jnp.int32(0))

    return train_loss, eval_loss


def update_rule(cfg: LoopedConfig) -> Callable[[jax.Array], optax.GradientTransformation]:
    wd = cfg.training.weight_decay

    def rule(lr: jax.Array) -> optax.GradientTransformation:
        adam = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
        return adam if wd == 0 else optax.chain(optax.add_decayed_weights(wd), adam)

    return rule


def validation_data(cfg: LoopedConfig) -> Data:
    """Fixed test prompts for the training-time test loss (full dims and points), or empty."""
    dummy = jnp.zeros((1,), jnp.float32)
    if not cfg.training.val_every:
        return Data(dummy, dummy)
    cur = cfg.training.curriculum
    xs, ys = sample_prompts(cfg.task, setup_key(cfg, VAL_STREAM), cfg.training.val_prompts,
                            cur.points.end, cur.dims.end)
    return Data(dummy, dummy, xs, ys)


def build_trajectory(cfg: LoopedConfig, flat: Flat, n_steps: int,
                     val_batch: int = 128) -> Callable[..., Trajectory]:
    """The engine's ``run`` for ``n_steps`` steps of this setup (not jitted)."""
    train_loss, eval_loss = make_losses(cfg, flat)
    rec = Recorder(grad_norm=True, val_every=cfg.training.val_every, val_batch=val_batch)
    return make_trajectory(train_loss, None, n_steps, rec, eval_loss=eval_loss,
                           update_rule=update_rule(cfg), batch_fn=make_batch_fn(cfg))


def _program_key(cfg: LoopedConfig) -> tuple[Any, ...]:
    """What the compiled trajectory depends on: the model and the training fields that shape
    the step (the seed, lr, step counts and names are arguments or irrelevant to it)."""
    t = dataclasses.replace(cfg.training, seed=0, learning_rate=1.0, train_steps=1,
                            steps_per_call=1, val_prompts=1)
    return cfg.model, t


@functools.lru_cache(maxsize=16)
def _compiled(key: tuple[Any, ...], n_steps: int, val_batch: int) -> Callable[..., Trajectory]:
    model, training = key
    cfg = LoopedConfig(model=model, training=training)
    _, flat = init_flat(cfg)
    return jax.jit(build_trajectory(cfg, flat, n_steps, val_batch))


def compiled_trajectory(cfg: LoopedConfig, n_steps: int, val_batch: int = 128,
                        ) -> Callable[..., Trajectory]:
    """The jitted trajectory of ``n_steps`` steps, memoised by what the program depends on, so
    setups (and tests) that differ only in seed, lr or length share one compilation."""
    return _compiled(_program_key(cfg), n_steps, val_batch)


def segment_steps(cfg: LoopedConfig) -> int:
    """Steps per compiled call: ``steps_per_call`` rounded to a multiple of ``val_every``."""
    t = cfg.training
    unit = t.val_every or 1
    return max(unit, t.steps_per_call // unit * unit)


@dataclass
class RunState:
    """Where a run stands: parameters, Adam state, steps done, per-step logs so far."""

    w: jax.Array
    opt_state: Any
    done: int
    logs: dict[str, list[np.ndarray]]
    diverged_at: int = -1


def fresh_state(cfg: LoopedConfig) -> tuple[RunState, Flat]:
    w, flat = init_flat(cfg)
    opt_state = update_rule(cfg)(jnp.float32(cfg.training.learning_rate)).init(w)
    return RunState(w, opt_state, 0, {"loss": [], "grad_norm": [], "val_loss": []}), flat


def run_training(cfg: LoopedConfig, rs: RunState, *, until: int | None = None,
                 on_segment: Callable[[RunState, int], None] | None = None) -> RunState:
    """Advance ``rs`` to step ``until`` (default ``train_steps``) in compiled calls of
    :func:`segment_steps` steps. Every call sees the global index of its first step, so the
    batches, and hence the result, do not depend on where the run was split. Stops after the
    call in which the run diverged (``rs.diverged_at`` holds the step)."""
    total = cfg.training.train_steps if until is None else until
    seg = segment_steps(cfg)
    key = setup_key(cfg, TRAIN_STREAM)
    lr = jnp.float32(cfg.training.learning_rate)
    data = validation_data(cfg)
    while rs.done < total:
        # Calls end on multiples of seg, so a resumed run compiles the same lengths.
        n = min(seg - rs.done % seg, total - rs.done)
        traj = compiled_trajectory(cfg, n, cfg.eval.batch)(rs.w, {}, key, lr, data, rs.done,
                                                            rs.opt_state)
        rs.w, rs.opt_state = traj.params, traj.opt_state
        records = jax.tree.map(np.asarray, traj.records)
        for name in rs.logs:
            if name in records:
                rs.logs[name].append(records[name])
        rs.done += n
        rs.diverged_at = int(traj.diverged_at)
        if on_segment is not None:
            on_segment(rs, n)
        if rs.diverged_at >= 0:
            break
    return rs


def curriculum_log(cfg: LoopedConfig, steps: int) -> dict[str, np.ndarray]:
    """d, n and K at every step 0..steps-1 (host-side; the same formula as the traced one)."""
    s = np.arange(steps)
    out = {}
    for name in ("dims", "points", "loops"):
        c = getattr(cfg.training.curriculum, name)
        out[name] = np.minimum(c.end, c.start + c.inc * (s // c.interval)).astype(np.int32)
    return out


__all__ = ["Flat", "Prompts", "RunState", "build_trajectory", "curriculum_log", "fresh_state",
           "init_flat", "make_batch_fn", "make_losses", "run_training", "segment_steps",
           "setup_key", "update_rule", "validation_data"]
