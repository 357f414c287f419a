"""The exact Hessian of the MLP's mean cross-entropy in closed form.

For Linear → SiLU → Linear with softmax cross-entropy, per example ``n`` (``x̃ = [x, 1]``,
``ã = [a, 1]`` carry the biases; ``p`` the softmax, ``δ = p − e_y``, ``M = diag(p) − ppᵀ``,
``G[c, j] = W2[c, j] σ'(h_j)``)::

    H = mean_n  JᵀMJ  +  Σ_c δ_c ∇²z_c

and every block factorises into small per-example matrices times outer products of ``x̃`` and
``ã``:

* layer 1 × layer 1: ``(GᵀMG + diag((W2ᵀδ) ∘ σ''(h))) ⊗ x̃x̃ᵀ``
* layer 1 × layer 2: ``(GᵀM) ⊗ x̃ãᵀ`` plus ``δ_c σ'(h_j) x̃`` where W2's column is ``j``
* layer 2 × layer 2: ``M ⊗ ããᵀ``

That is about 10 M multiply-adds for the exp1 model at batch 64 instead of 386 Hessian-vector
products through autodiff (several times faster on CPU, exact to rounding: the tests compare it
with ``jax.hessian`` in float64). The result is in the flat PyTorch order of the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _silu_derivatives(h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    s = jax.nn.sigmoid(h)
    act = h * s
    d1 = s * (1 + h * (1 - s))
    d2 = s * (1 - s) * (2 + h * (1 - 2 * s))
    return act, d1, d2


def _flat_order(d: int, h: int, c: int) -> np.ndarray:
    """For each parameter in the augmented order ([W1|b1] row-major, then [W2|b2] row-major),
    its index in the flat PyTorch order (W1, b1, W2, b2)."""
    j, i = np.divmod(np.arange(h * (d + 1)), d + 1)
    first = np.where(i < d, j * d + i, h * d + j)
    off = h * d + h
    cc, k = np.divmod(np.arange(c * (h + 1)), h + 1)
    second = np.where(k < h, off + cc * h + k, off + c * h + cc)
    return np.concatenate([first, second])


def mlp_ce_hessian(w: jax.Array, x: jax.Array, y: jax.Array, *, in_features: int, hidden: int,
                   n_classes: int) -> jax.Array:
    """``[P, P]`` Hessian of ``mean_n CE(MLP_w(x_n), y_n)`` at the flat parameters ``w``.

    ``x`` are the pooled features ``[B, in_features]``, ``y`` integer labels ``[B]``."""
    d, hd, c = in_features, hidden, n_classes
    n = x.shape[0]
    w1 = w[: hd * d].reshape(hd, d)
    b1 = w[hd * d: hd * d + hd]
    w2 = w[hd * d + hd: hd * d + hd + c * hd].reshape(c, hd)
    b2 = w[hd * d + hd + c * hd:]
    pre = x @ w1.T + b1  # [B, H]
    act, d1, d2 = _silu_derivatives(pre)
    p = jax.nn.softmax(act @ w2.T + b2, axis=-1)  # [B, C]
    delta = p - jax.nn.one_hot(y, c, dtype=p.dtype)
    m = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]  # [B, C, C]
    g = w2[None] * d1[:, None, :]  # [B, C, H]
    gtm = jnp.einsum("nch,ncd->nhd", g, m)  # [B, H, C]
    k = jnp.einsum("nhd,ndj->nhj", gtm, g) + jax.vmap(jnp.diag)((delta @ w2) * d2)  # [B, H, H]
    one = jnp.ones((n, 1), x.dtype)
    xt, at = jnp.concatenate([x, one], 1), jnp.concatenate([act, one], 1)
    h11 = jnp.einsum("njk,ni,nl->jikl", k, xt, xt).reshape(hd * (d + 1), hd * (d + 1))
    # GGN part of layer 1 x layer 2, then the second-order term d²z_c/dW2[c,j] dh_j.
    h12 = jnp.einsum("njc,ni,nk->jick", gtm, xt, at)
    second = jnp.einsum("nc,nj,ni->jic", delta, d1, xt)
    h12 = h12.at[:, :, :, :hd].add(second[..., None] * jnp.eye(hd, dtype=x.dtype)[:, None, None])
    h12 = h12.reshape(hd * (d + 1), c * (hd + 1))
    h22 = jnp.einsum("ncd,nj,nk->cjdk", m, at, at).reshape(c * (hd + 1), c * (hd + 1))
    aug = jnp.block([[h11, h12], [h12.T, h22]]) / n
    order = _flat_order(d, hd, c)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return aug[inverse][:, inverse]
