"""Groups of training runs as one compiled call: ``vmap`` over (run key, lr) of the engine's
trajectory, each run starting from its own initialisation drawn inside the call.

Keys: the setup seed gives the data key ``fold_in(key(seed), 0)`` and the run keys
``fold_in(fold_in(key(seed), 1), s)`` for seed index ``s``; a run key gives the initialisation
(``fold_in(k, 0)``) and the batch stream (``fold_in(k, 1)``). Every learning rate of a sweep
reuses the same seed keys, so all lrs start from the same initialisation and see the same
batches (the reference reseeds before every run); seed ``s`` of a sweep is run ``s`` of stage
``train`` with the same optimiser and lr.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.data.sampling import make_sampler
from sgdjax.engine.trajectory import Data, Recorder, Trajectory, make_trajectory
from sgdjax.models.moons_mlp import MoonsMLP, make_bce_loss
from sgdjax.optdyn.diagnostics import LogSpec, logged_steps, make_step_extras
from sgdjax.optdyn.optimizers import OptimizerSpec, make_update_rule

DATA_STREAM, RUN_STREAM = 0, 1
INIT_STREAM, BATCH_STREAM = 0, 1


def data_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), DATA_STREAM)


def seed_keys(seed: int, n_seeds: int) -> jax.Array:
    """Keys of seed indices ``0 .. n_seeds-1`` (shape ``[n_seeds]``)."""
    base = jax.random.fold_in(jax.random.key(seed), RUN_STREAM)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(n_seeds, dtype=jnp.uint32))


def init_params(model: MoonsMLP, run_key: jax.Array) -> jax.Array:
    """The flat float32 initial parameters of a run."""
    params, _ = model.init(jax.random.fold_in(run_key, INIT_STREAM), jnp.float32)
    return model.flatten(params)


def make_group(
    model: MoonsMLP, spec: OptimizerSpec, log: LogSpec, steps: int, batch_size: int,
    n_train: int,
) -> Callable[[jax.Array, jax.Array, Data], Trajectory]:
    """``fn(keys [R], lrs [R], data) -> Trajectory`` with a leading run axis: R runs in one
    jitted call, run r from its own init with its own batches at its own lr."""
    sampler = make_sampler("replacement", n_train, batch_size)
    trajectory = make_trajectory(
        make_bce_loss(model), sampler, steps, Recorder(),
        update_rule=make_update_rule(spec), step_extras=make_step_extras(model, log),
    )

    def one(key: jax.Array, lr: jax.Array, data: Data) -> Trajectory:
        return trajectory(init_params(model, key), {}, jax.random.fold_in(key, BATCH_STREAM),
                          lr, data)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


@functools.lru_cache(maxsize=16)
def compiled_group(
    model: MoonsMLP, spec: OptimizerSpec, log: LogSpec, steps: int, batch_size: int,
    n_train: int, n_val: int, n_runs: int,
) -> Any:
    """:func:`make_group` compiled ahead of time for ``n_runs`` runs and the data shapes.

    Cached per argument tuple (all frozen, hashable), so a process that runs the same group
    twice (a test session, a notebook) compiles it once; the caller can time the compilation
    apart from the run."""
    fn = make_group(model, spec, log, steps, batch_size, n_train)
    f32, i32 = jnp.float32, jnp.int32
    shape = jax.ShapeDtypeStruct
    data = Data(shape((n_train, model.in_features), f32), shape((n_train,), i32),
                shape((n_val, model.in_features), f32), shape((n_val,), i32))
    keys = shape((n_runs,), jax.random.key(0).dtype)
    return fn.lower(keys, shape((n_runs,), f32), data).compile()


def histories(traj: Trajectory, steps: int, log: LogSpec) -> dict[str, np.ndarray]:
    """Host arrays of a group: every diagnostic at the logged steps ``[R, L]``, ``step [L]``,
    the per-step minibatch loss ``loss_per_step [R, T]``, ``diverged_at [R]`` (-1 = finite)
    and the final parameters ``params [R, P]``."""
    idx = logged_steps(steps, log.first, log.every)
    records = {k: np.asarray(v) for k, v in traj.records.items()}
    out: dict[str, np.ndarray] = {"step": idx}
    out.update({k: v[:, idx] for k, v in records.items() if k != "loss"})
    out["loss_per_step"] = records["loss"]
    out["diverged_at"] = np.asarray(traj.diverged_at)
    out["params"] = np.asarray(traj.params)
    return out


def final(values: np.ndarray) -> np.ndarray:
    """The last logged value along the last axis (the reference's "final" metric)."""
    return np.asarray(values)[..., -1]


def to_device(train_x: Any, train_y: Any, val_x: Any, val_y: Any) -> Data:
    return Data(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
                jnp.asarray(val_x, jnp.float32), jnp.asarray(val_y, jnp.int32))
