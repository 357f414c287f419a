"""Next-token cross-entropy over token blocks, with padding excluded.

A block ``[B, L + 1]`` is read as inputs ``block[:, :-1]`` and targets ``block[:, 1:]``. A target
counts when both its position and the position before it hold real tokens (the mask), so padding
never contributes -- neither as a target nor, through the attention mask, as context. The training
loss is the mean over the counted targets of the batch (HF's loss with labels = -100 on padding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.models.qwen3 import ParamsHook, Qwen3


def token_nll(model: Qwen3, params: Any, tokens: jax.Array, mask: jax.Array,
              use_params: ParamsHook | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of target negative log-likelihoods, number of counted targets, number of targets
    predicted correctly by argmax) of a batch of blocks; ``use_params`` as in
    ``Qwen3.logits``."""
    mask = mask.astype(bool)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    weight = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
    logits = model.logits(params, ids, mask[:, :-1], use_params)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight), jnp.sum(correct * weight)


def mean_loss(model: Qwen3, params: Any, tokens: jax.Array, mask: jax.Array,
              use_params: ParamsHook | None = None) -> tuple[jax.Array, jax.Array]:
    """(mean loss over the batch's counted targets, correct predictions)."""
    total, count, correct = token_nll(model, params, tokens, mask, use_params)
    return total / jnp.maximum(count, 1.0), correct


EngineLoss = Callable[..., tuple[jax.Array, tuple[Any, jax.Array]]]


def tree_loss(model: Qwen3, use_params: ParamsHook | None = None) -> EngineLoss:
    """The engine's ``loss(params, state, x, y)`` on the parameter pytree: x = token blocks,
    y = their mask."""

    def loss(params: Any, state: Any, x: jax.Array, y: jax.Array
             ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        value, correct = mean_loss(model, params, x, y, use_params)
        return value, (state, correct)

    return loss


def flat_loss(model: Qwen3) -> EngineLoss:
    """:func:`tree_loss` of the flat parameter vector (Hugging Face ``parameters()`` order)."""
    loss = tree_loss(model)
    return lambda w, state, x, y: loss(model.unflatten(w), state, x, y)


def evaluate(model: Qwen3, params: Any, tokens: np.ndarray | jax.Array,
             mask: np.ndarray | jax.Array, batch: int = 64) -> dict[str, float]:
    """Token-weighted mean loss, perplexity and accuracy over all blocks (in slices of
    ``batch`` blocks; the last partial slice is padded with fully masked blocks)."""
    total, count, correct = _eval_sums(model, params, tokens, mask, batch)
    loss = float(total / max(float(count), 1.0))
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 700.0))),
            "accuracy": float(correct / max(float(count), 1.0)), "tokens": int(count)}


def eval_sums(model: Qwen3, params: Any, tokens: jax.Array, mask: jax.Array, batch: int
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Traceable sums (nll, count, correct) over all blocks; vmappable over ``params``."""
    n = tokens.shape[0]
    batch = max(1, min(batch, n))
    n_slices = -(-n // batch)
    pad = n_slices * batch - n
    tokens = jnp.concatenate([tokens, jnp.zeros((pad, tokens.shape[1]), tokens.dtype)])
    mask = jnp.concatenate([mask.astype(bool), jnp.zeros((pad, mask.shape[1]), bool)])
    xs = tokens.reshape(n_slices, batch, -1)
    ms = mask.reshape(n_slices, batch, -1)
    sums = jax.lax.map(lambda a: token_nll(model, params, a[0], a[1]), (xs, ms))
    return tuple(jnp.sum(s) for s in sums)  # type: ignore[return-value]


_eval_sums = jax.jit(eval_sums, static_argnums=(0, 4))


__all__ = ["EngineLoss", "eval_sums", "evaluate", "flat_loss", "mean_loss", "token_nll",
           "tree_loss"]
