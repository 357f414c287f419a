"""In-context function classes, sampled on the device with ``jax.random``.

A batch is ``B`` prompts of ``N`` points in ambient dimension ``D``, one random function per
prompt. Only the first ``d`` coordinates of x are live (the dims curriculum; the others are 0),
``d`` may be traced. Fresh functions and inputs every call, as the original's default
(``use_fixed_dataset=False``).

* ``linear_regression``: ``x, w ~ N(0, I)`` truncated to ``d`` coordinates, ``y = <x, w>``.
* ``noisy_linear_regression``: the same plus ``N(0, noise_std²)`` on every y.
* ``sparse_linear_regression``: then all but ``sparsity`` coordinates of w are zeroed; the kept
  ones are drawn without replacement from *all* D coordinates (the original's behaviour: during
  the dims curriculum the support may fall on dead coordinates).
* ``relu_2nn_regression``: ``y = sqrt(2/H) relu(x W1) W2`` with ``W1, W2 ~ N(0, 1)``, H = 100.
* ``decision_tree``: a depth-4 tree per prompt (31 nodes, each testing ``x[c] > 0`` for a
  coordinate ``c ~ U{0..D-1}``, child ``2·node + 1 + decision``), leaf values ``N(0, 1)``; x is
  *not* truncated for this task (the original ignores the dims curriculum here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

TaskName = Literal["linear_regression", "noisy_linear_regression", "sparse_linear_regression",
                   "relu_2nn_regression", "decision_tree"]
TASKS: tuple[str, ...] = ("linear_regression", "noisy_linear_regression",
                          "sparse_linear_regression", "relu_2nn_regression", "decision_tree")


@dataclass(frozen=True)
class Task:
    """A function class and its sampling constants."""

    name: TaskName = "linear_regression"
    n_dims: int = 20  # ambient dimension D
    noise_std: float = 0.1
    sparsity: int = 3
    hidden: int = 100
    depth: int = 4

    def normaliser(self, d: int) -> float:
        """What squared errors are divided by in the evaluation: the live dimension for the
        (noisy) linear and ReLU tasks, the sparsity for sparse regression, 1 for trees (the
        zero predictor then scores about 1)."""
        if self.name == "sparse_linear_regression":
            return float(self.sparsity)
        if self.name == "decision_tree":
            return 1.0
        return float(d)


def sample_prompts(task: Task, key: jax.Array, batch: int, n_points: int,
                   d: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """``(xs [B, N, D], ys [B, N])`` float32 for ``B`` fresh prompts with ``d`` live dims."""
    big_d = task.n_dims
    k_x, k_f, k_extra = jax.random.split(key, 3)
    xs = jax.random.normal(k_x, (batch, n_points, big_d), jnp.float32)
    live = (jnp.arange(big_d) < jnp.asarray(d, jnp.int32)).astype(jnp.float32)
    if task.name != "decision_tree":
        xs = xs * live
    if task.name in ("linear_regression", "noisy_linear_regression",
                     "sparse_linear_regression"):
        w = jax.random.normal(k_f, (batch, big_d), jnp.float32) * live
        if task.name == "sparse_linear_regression":
            w = w * _support(k_extra, batch, big_d, task.sparsity)
        ys = jnp.einsum("bnd,bd->bn", xs, w)
        if task.name == "noisy_linear_regression":
            ys = ys + task.noise_std * jax.random.normal(k_extra, ys.shape, jnp.float32)
        return xs, ys
    if task.name == "relu_2nn_regression":
        k1, k2 = jax.random.split(k_f)
        w1 = jax.random.normal(k1, (batch, big_d, task.hidden), jnp.float32)
        w2 = jax.random.normal(k2, (batch, task.hidden), jnp.float32)
        act = jax.nn.relu(jnp.einsum("bnd,bdh->bnh", xs, w1))
        return xs, math.sqrt(2.0 / task.hidden) * jnp.einsum("bnh,bh->bn", act, w2)
    return xs, _tree_values(task, k_f, xs)


def _support(key: jax.Array, batch: int, big_d: int, s: int) -> jax.Array:
    """[B, D] 0/1: ``s`` coordinates per row, uniformly without replacement (the ``s``
    smallest of D uniform draws)."""
    u = jax.random.uniform(key, (batch, big_d))
    threshold = jnp.sort(u, axis=1)[:, s - 1 : s]
    return (u <= threshold).astype(jnp.float32)


def _tree_values(task: Task, key: jax.Array, xs: jax.Array) -> jax.Array:
    batch, big_d = xs.shape[0], xs.shape[-1]
    n_nodes = 2 ** (task.depth + 1) - 1
    k_c, k_v = jax.random.split(key)
    coords = jax.random.randint(k_c, (batch, n_nodes), 0, big_d)
    values = jax.random.normal(k_v, (batch, n_nodes), jnp.float32)
    return tree_predict(coords, values, xs, task.depth)


def tree_predict(coords: jax.Array, values: jax.Array, xs: jax.Array, depth: int) -> jax.Array:
    """Evaluate one binary tree per prompt (``coords, values [B, 2^(depth+1) - 1]``, node
    ``i``'s children ``2i+1`` (x[c] <= 0) and ``2i+2`` (x[c] > 0)) at ``xs [B, N, D]``."""
    node = jnp.zeros(xs.shape[:2], jnp.int32)  # [B, N]
    for _ in range(depth):
        c = jnp.take_along_axis(coords, node, axis=1)  # coordinate tested at each point's node
        right = jnp.take_along_axis(xs, c[..., None], axis=2)[..., 0] > 0
        node = 2 * node + 1 + right.astype(jnp.int32)
    return jnp.take_along_axis(values, node, axis=1)


__all__ = ["TASKS", "Task", "TaskName", "sample_prompts", "tree_predict"]
