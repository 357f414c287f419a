"""The exact train-mode Hessian of the CNN's mean cross-entropy, from its channel structure.

With batch statistics, channel ``c`` of conv → BatchNorm is an affine map of the image patches
``x̃ = [patch, 1]`` whose coefficients ``ab_c = φ(w_c, γ_c, β_c)`` (``a = γ w / σ``,
``b = β − γ w·m / σ``, ``σ² = wᵀSw + ε`` with the batch's patch mean ``m`` and covariance ``S``)
depend on that channel's 11 parameters only. The pooled features are
``u[n, c] = mean_p silu(ab_c · x̃[n, :, p])`` and the loss is a small MLP head ``L(u, θ_head)``.
So, with ``G = ∂L/∂u``, ``J[n, c] = ∂u[n, c]/∂ab_c = mean_p silu'(h) x̃`` and the head's
Hessian in ``(u, θ_head)``, the Hessian in ``(ab, θ_head)`` is

* ``ab × ab``: ``Σ_n J[n, c]ᵀ ∂²L/∂u[n, c]∂u[n, d] J[n, d]`` plus, on the diagonal blocks,
  ``Σ_{n, p} G[n, c] silu''(h) x̃ x̃ᵀ / P`` (the head loss is a mean of per-example terms, so
  ``∂²L/∂u²`` is block-diagonal over examples);
* ``ab × head``: ``Σ_n J[n, c]ᵀ ∂²L/∂u[n, c]∂θ_head``; ``head × head`` from the head alone;

and the chain rule through the per-channel maps ``φ`` (their Jacobians and Hessians by autodiff,
11 inputs each) gives the Hessian in the parameters. Only the elementwise pass over the
``[N, C, P]`` maps and a few contractions with the patches touch the large arrays, instead of one
Hessian-vector product per parameter through the whole network: 27 ms for the exp1 model at
batch 64 in float64 against ~5.4 s for batched HVPs on one core of the 2-vCPU machine, exact to
rounding (the tests compare it with ``jax.hessian``). The result is in the flat PyTorch order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sgdjax.models.cnn import im2col, unpack_patch_features
from sgdjax.models.mlp_hessian import _silu_derivatives, mlp_ce_hessian


def _flat_order(channels: int, k: int) -> np.ndarray:
    """Flat PyTorch index of each per-channel parameter in the order ``(c, [w_c..., γ_c, β_c])``:
    ``conv.weight`` is ``c·K + i``, ``bn.weight`` ``O·K + c``, ``bn.bias`` ``O·K + O + c``."""
    c, i = np.divmod(np.arange(channels * (k + 2)), k + 2)
    return np.where(i < k, c * k + i, np.where(i == k, channels * k + c,
                                               channels * k + channels + c))


def cnn_ce_hessian(w: jax.Array, x: jax.Array, y: jax.Array, *, in_channels: int, channels: int,
                   hidden: int, n_classes: int, kernel: int, padding: int,
                   eps: float = 1e-5) -> jax.Array:
    """``[P, P]`` Hessian of the mean cross-entropy with BatchNorm in training mode (batch
    statistics) at the flat parameters ``w``; ``x`` are images ``[B, C, H, W]`` or their packed
    patch features (``CNN.featurize``), ``y`` labels."""
    o, k = channels, in_channels * kernel * kernel
    n_cb = o * k + 2 * o
    if x.ndim == 3:  # packed patch features (CNN.featurize): zero patches may be left out
        feats, _, _, positions = unpack_patch_features(x.astype(w.dtype))
        patches = jnp.swapaxes(feats, 1, 2)  # [N, K, M]
    else:
        patches = im2col(x.astype(w.dtype), kernel, padding)  # [N, K, P]
        positions = jnp.full((x.shape[0],), patches.shape[2], w.dtype)
    # Image n has p[n] positions, ``zeros[n]`` of them zero patches not in ``patches``: on
    # those x̃ = [0, …, 0, 1] and the conv + BatchNorm value is the channel's bias b_c.
    p = positions[:, None]  # [N, 1]
    zeros = p - patches.shape[2]
    total = jnp.sum(positions)
    m = jnp.sum(patches, axis=(0, 2)) / total
    centred = patches - m[None, :, None]
    cov = (jnp.einsum("nkp,nlp->kl", centred, centred) + jnp.sum(zeros) * jnp.outer(m, m)) / total

    def phi(theta: jax.Array) -> jax.Array:  # (w_c, γ_c, β_c) -> (a_c, b_c)
        wc, gamma, beta = theta[:k], theta[k], theta[k + 1]
        scale = gamma * lax.rsqrt(wc @ cov @ wc + eps)
        return jnp.concatenate([wc * scale, (beta - (wc @ m) * scale)[None]])

    theta = jnp.concatenate([w[: o * k].reshape(o, k), w[o * k: o * k + o, None],
                             w[o * k + o: n_cb, None]], axis=1)  # [O, K+2]
    ab = jax.vmap(phi)(theta)  # [O, K+1]
    j_phi = jax.vmap(jax.jacfwd(phi))(theta)  # [O, K+1, K+2]
    h_phi = jax.vmap(jax.hessian(phi))(theta)  # [O, K+1, K+2, K+2]

    n, _, npos = patches.shape
    xt = jnp.concatenate([patches, jnp.ones((n, 1, npos), patches.dtype)], axis=1)  # [N, K+1, M]
    pre = jnp.einsum("ck,nkp->ncp", ab, xt)
    act, d1, d2 = _silu_derivatives(pre)
    act0, d1_0, d2_0 = _silu_derivatives(ab[:, k])  # on a zero patch, [O]
    u = (jnp.sum(act, axis=2) + zeros * act0) / p  # [N, O]
    ju = jnp.einsum("ncp,nkp->nck", d1, xt) / p[:, :, None]  # [N, O, K+1]
    ju = ju.at[:, :, k].add(zeros * d1_0 / p)

    head = w[n_cb:]

    def example_loss(un: jax.Array, hv: jax.Array, yn: jax.Array) -> jax.Array:
        w1 = hv[: hidden * o].reshape(hidden, o)
        b1 = hv[hidden * o: hidden * o + hidden]
        w2 = hv[hidden * o + hidden: hidden * o + hidden + n_classes * hidden].reshape(
            n_classes, hidden)
        b2 = hv[hidden * o + hidden + n_classes * hidden:]
        logp = jax.nn.log_softmax(jax.nn.silu(w1 @ un + b1) @ w2.T + b2)
        return -jnp.sum(jax.nn.one_hot(yn, n_classes, dtype=logp.dtype) * logp) / n

    # The head's loss is a sum of per-example terms: its Hessian in u is block-diagonal over
    # examples, and its cross block needs only one example's 12 features per reverse pass (one
    # jax.hessian over the whole batch and head was 30x slower); head x head in closed form.
    g_u = jax.vmap(jax.grad(example_loss), in_axes=(0, None, 0))(u, head, y)  # [N, O]
    h_uu = jax.vmap(jax.hessian(example_loss), in_axes=(0, None, 0))(u, head, y)  # [N, O, O]
    h_uh = jax.vmap(jax.jacrev(jax.grad(example_loss), argnums=1), in_axes=(0, None, 0))(
        u, head, y)  # [N, O, P_head]
    h_hh = mlp_ce_hessian(head, u, y, in_features=o, hidden=hidden, n_classes=n_classes)

    # Hessian in (ab, head)
    # one channel at a time: a weighted Gram of the patches (a three-operand einsum over all
    # channels materialises a [N, O, K+1, P] intermediate and was 40 % slower)
    g_p = g_u / p  # [N, O]
    weights = jnp.moveaxis(g_p[:, :, None] * d2, 1, 0)  # [O, N, M]
    t = lax.map(lambda wc: jnp.einsum("np,nkp,nlp->kl", wc, xt, xt), weights)
    t = t.at[:, k, k].add(jnp.sum(g_p * zeros, axis=0) * d2_0)
    h_abab = jnp.einsum("nck,ncd,ndl->ckdl", ju, h_uu, ju)
    h_abab = h_abab + jnp.eye(o, dtype=w.dtype)[:, None, :, None] * t[:, :, None, :]
    h_abh = jnp.einsum("nck,ncj->ckj", ju, h_uh)
    g_ab = jnp.einsum("nc,nck->ck", g_u, ju)

    # chain rule through the per-channel maps
    h_tt = jnp.einsum("cki,ckdl,dlj->cidj", j_phi, h_abab, j_phi)
    h_tt = h_tt + jnp.eye(o, dtype=w.dtype)[:, None, :, None] * jnp.einsum(
        "ck,ckij->cij", g_ab, h_phi)[:, :, None, :]
    h_th = jnp.einsum("cki,ckj->cij", j_phi, h_abh).reshape(n_cb, -1)
    h_tt = h_tt.reshape(n_cb, n_cb)
    aug = jnp.block([[h_tt, h_th], [h_th.T, h_hh]])
    order = np.concatenate([_flat_order(o, k), np.arange(n_cb, w.shape[0])])
    inv = np.argsort(order)
    return aug[inv][:, inv]
