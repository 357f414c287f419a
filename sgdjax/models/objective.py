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

from sgdjax.models.base import TorchLayoutModel

LossFn = Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, jax.Array]]]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over every target (``logits [..., C]``, int ``labels [...]``)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    # one-hot product rather than take_along_axis: the gather's derivative is a serial
    # scatter on CPU, which dominated Hessian-vector products of the small models.
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype)
    return -jnp.sum(onehot * logp) / labels.size


def num_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Number of targets whose arg-max logit is the label (int32 scalar)."""
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32)


def make_loss_fn(model: TorchLayoutModel, *, train: bool) -> LossFn:
    """``f(w_flat, state, x, y) -> (loss, (new_state, n_correct))``.

    ``x`` are features (``model.featurize`` output), ``y`` integer labels; with ``train=True``
    BatchNorm uses batch statistics and ``new_state`` carries the updated running statistics.
    ``f.eval_batch`` is the model's validation slice size (``model.eval_batch``), which a
    trajectory evaluating with ``f`` uses unless its Recorder sets ``val_batch``.
    """

    objective = getattr(model, "objective", None)  # its own loss and count, where it has them

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
