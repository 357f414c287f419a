"""The training objective on the flat parameter vector.

``make_loss_fn`` returns the function the engine differentiates (``jax.grad(..., has_aux=True)``)
and the Hessian code differentiates twice (``jax.hessian``): it takes the flat vector in the
original's coordinates, so gradients and Hessians come out in those coordinates too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from sgdjax.models.base import TorchLayoutModel

LossFn = Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, jax.Array]]]


def cross_entropy(logits: jax.Array, labels: jax.Array, axis: int = -1) -> jax.Array:
    """Mean softmax cross-entropy over every target: ``logits`` with the classes along
    ``axis`` (``[..., C]`` by default), int ``labels`` of the other axes."""
    logp = jax.nn.log_softmax(logits, axis=axis)
    # one-hot product rather than take_along_axis: the gather's derivative is a serial
    # scatter on CPU, which dominated Hessian-vector products of the small models.
    onehot = jax.nn.one_hot(labels, logits.shape[axis], dtype=logp.dtype, axis=axis)
    return -jnp.sum(onehot * logp) / labels.size


def num_correct(logits: jax.Array, labels: jax.Array, axis: int = -1) -> jax.Array:
    """Number of targets whose arg-max logit (classes along ``axis``) is the label (int32)."""
    if axis in (-1, logits.ndim - 1):
        return jnp.sum(jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32)
    # Classes on a major axis: argmax there is a variadic reduce that XLA's CPU backend runs
    # element by element (2 ms of a 9 ms vmapped NanoGPT step), so the same test as row
    # maxima: the label's logit beats every earlier class's and is at least every later
    # one's (argmax takes the first maximum).
    y = jnp.expand_dims(labels, axis)
    classes = lax.broadcasted_iota(labels.dtype, logits.shape, axis % logits.ndim)
    low = jnp.asarray(-jnp.inf, logits.dtype)
    target = jnp.sum(jnp.where(classes == y, logits, 0), axis=axis)
    before = jnp.max(jnp.where(classes < y, logits, low), axis=axis)
    after = jnp.max(jnp.where(classes > y, logits, low), axis=axis)
    return jnp.sum((target > before) & (target >= after)).astype(jnp.int32)


def make_loss_fn(model: TorchLayoutModel, *, train: bool) -> LossFn:
    """``f(w_flat, state, x, y) -> (loss, (new_state, n_correct))``.

    ``x`` are features (``model.featurize`` output), ``y`` integer labels; with ``train=True``
    BatchNorm uses batch statistics and ``new_state`` carries the updated running statistics.
    ``f.eval_batch`` is the model's validation slice size (``model.eval_batch``), which a
    trajectory evaluating with ``f`` uses unless its Recorder sets ``val_batch``.
    """

    objective = model.objective  # the model's own loss and count, where it has them

    def loss_fn(
        w_flat: jax.Array, state: Any, x: jax.Array, y: jax.Array
    ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        if objective is not None:
            loss, correct = objective(model.unflatten(w_flat), state, x, y)
            return loss, (state, correct)
        logits, new_state = model.apply(model.unflatten(w_flat), state, x, train=train)
        return cross_entropy(logits, y), (new_state, num_correct(logits, y))

    loss_fn.eval_batch = model.eval_batch  # type: ignore[attr-defined]
    return loss_fn
