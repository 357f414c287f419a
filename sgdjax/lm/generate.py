"""Sampling text from a trained model: temperature, nucleus (top-p), a maximum of new tokens.

The seed's sample after training: 64 new tokens, temperature 0.8, top-p 0.9 (HF ``generate``
with ``do_sample=True``). Logits are divided by the temperature, then the smallest set of most
probable tokens whose probabilities sum to at least ``top_p`` is kept (the most probable token is
always kept) and one token is drawn from the renormalised rest. Temperature 0 is greedy.

Generation runs as one ``lax.scan`` over a fixed buffer of ``prompt + max_new_tokens`` ids; each
step runs the causal model over the buffer and reads the logits of the last filled position
(positions after it cannot influence them), so every step has the same shape and compiles once.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.models.qwen3 import Qwen3


def nucleus_logits(logits: jax.Array, top_p: float) -> jax.Array:
    """``logits`` with every token outside the top-p nucleus set to -inf."""
    if top_p >= 1.0:
        return logits
    order = jnp.argsort(-logits)
    probs = jax.nn.softmax(logits[order])
    before = jnp.cumsum(probs) - probs  # mass of the strictly more probable tokens
    keep_sorted = before < top_p  # the first token always has before = 0
    keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float
                 ) -> jax.Array:
    """One token id from float32 ``logits [V]``."""
    if temperature == 0:
        return jnp.argmax(logits).astype(jnp.int32)
    scaled = nucleus_logits(logits / temperature, top_p)
    return jax.random.categorical(key, scaled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _generate(model: Qwen3, params: Any, prompt: jax.Array, max_new: int, temperature: float,
              top_p: float, key: jax.Array) -> jax.Array:
    n_prompt = prompt.shape[0]
    buf = jnp.zeros((n_prompt + max_new,), jnp.int32).at[:n_prompt].set(prompt)

    def step(buf: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = model.logits(params, buf[None])[0, t - 1]
        tok = sample_token(logits, jax.random.fold_in(key, t), temperature, top_p)
        return buf.at[t].set(tok), tok

    _, new = jax.lax.scan(step, buf, n_prompt + jnp.arange(max_new))
    return new


def generate(model: Qwen3, params: Any, prompt_ids: np.ndarray, key: jax.Array, *,
             max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.9,
             eos: int | None = None) -> np.ndarray:
    """The new token ids after ``prompt_ids`` (an empty prompt starts from ``eos``); the output
    is cut before the first end-of-text token when ``eos`` is given."""
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size == 0:
        prompt = np.asarray([eos if eos is not None else 0], np.int32)
    if max_new_tokens == 0:
        return np.zeros(0, np.int32)
    new = np.asarray(_generate(model, params, jnp.asarray(prompt), int(max_new_tokens),
                               float(temperature), float(top_p), key))
    if eos is not None and (stop := np.flatnonzero(new == eos)).size:
        new = new[: stop[0]]
    return new


__all__ = ["generate", "nucleus_logits", "sample_token"]
