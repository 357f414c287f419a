"""Dense Hessian of NanoGPT's cross-entropy with the table and ``lm_head`` blocks from structure.

The tables enter the loss only through the blocks' input ``x = wte[idx] + wpe[:T]``, which is
linear in them, and sequences do not interact. With ``H_s = ∂²L/∂x_s²`` (``[T·C, T·C]`` for
sequence ``s``), entries ``C × C`` blocks::

    H[wte_v, wte_v'] = Σ_s Σ_{t,t'} [idx_st = v] [idx_st' = v'] H_s[t, t']
    H[wpe_t, wpe_t'] = Σ_s H_s[t, t']          H[wte_v, wpe_t'] = Σ_s Σ_t [idx_st = v] H_s[t, t']

All ``H_s`` come from ``T·C`` Hessian-vector products in ``x``: the tangent that puts the same
unit vector in every sequence returns column ``j`` of every ``H_s`` at once, because the
cross-sequence blocks are zero.

``lm_head`` (``W``, logits ``l = h Wᵀ`` of the final LayerNorm's output ``h``) has closed forms:
with ``g = (p - y) / N`` the logits' gradient,

    H[W, W]   = Σ_n (diag(p_n) - p_n p_nᵀ) ⊗ h_n h_nᵀ / N
    H[W, x_s] = Σ_t (ġ_st h_stᵀ + g_st ḣ_stᵀ),   ġ = p ⊙ (l̇ - ⟨p, l̇⟩) / N,  l̇ = ḣ Wᵀ

where ``ḣ`` is the forward-mode derivative of ``h`` along a unit vector of ``x`` (again one per
slot for all sequences at once), mapped onto the tables as above. The remaining parameters
(blocks and final LayerNorm) get ordinary Hessian-vector products, whose outputs also fill their
rows against the tables and ``lm_head``; one-head attention's weights get theirs through the
attention factors (``_block_columns``). For the default model: 128 products in ``x``, 128
forward derivatives and 304 products in the parameters (176 in weights, 128 in factors), instead
of 960 products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sgdjax.analysis.hessian import dense_hessian, make_hvp
from sgdjax.models.nanogpt import attention_factors, regroups_attention
from sgdjax.models.objective import cross_entropy

if TYPE_CHECKING:
    from sgdjax.models.nanogpt import NanoGPT

#: Hessian-vector products per batch (``lax.map`` block): the fastest measured on CPU.
HVP_CHUNK = 16
#: Largest per-sequence intermediates (bytes) the structured form may hold; beyond it (long
#: contexts, wide embeddings: they grow as (T·C)² · B) the Hessian is all products instead.
STRUCTURED_BYTES = 512 * 2**20


def gpt_ce_hessian(
    model: NanoGPT, w: jax.Array, tokens: jax.Array, labels: jax.Array,
    chunk: int | None = None,
) -> jax.Array:
    """``[P, P]`` Hessian of the mean cross-entropy of ``model`` at the flat ``w`` on
    ``tokens [B, T]`` with targets ``labels [B, T]``, in the flat PyTorch order (symmetric).
    ``chunk``: products per ``lax.map`` block (default ``HVP_CHUNK``)."""
    chunk = chunk or HVP_CHUNK
    b, t = tokens.shape
    v, c, tb = model.vocab_size, model.n_embd, model.block_size
    n = w.shape[0]
    e, p_end = v * c, v * c + tb * c  # layout: wte, wpe, blocks + ln_f, lm_head
    head = n - v * c
    params = model.unflatten(w)
    module = model.module(w.dtype)
    dt = w.dtype

    def loss(vec: jax.Array) -> jax.Array:
        # From the logits, not the model's token-minor ``objective`` (the same function):
        # that one's Hessian-vector products ran 3-10 % slower (it serves the training step).
        logits, _ = model.apply(model.unflatten(vec), None, tokens, train=True)
        return cross_entropy(logits, labels)

    per_slot = b * (2 * t * c + v * c + t * v)  # hx, hdot, the lm_head coupling, its logits
    if t * c * per_slot * jnp.dtype(dt).itemsize > STRUCTURED_BYTES:
        return dense_hessian(loss, w, batch_size=chunk)

    cols = _block_columns(model, w, loss, tokens, labels, p_end, head, chunk)

    # Per-sequence second derivatives in the blocks' input, and the hidden state's tangents.
    x0 = jnp.take(params["wte"]["weight"], tokens, axis=0) + params["wpe"]["weight"][:t]

    def loss_x(x: jax.Array) -> jax.Array:
        return cross_entropy(module.apply({"params": params}, tokens, embedded=x), labels)

    tangents = jnp.broadcast_to(jnp.eye(t * c, dtype=dt).reshape(t * c, 1, t, c),
                                (t * c, b, t, c))
    hx = lax.map(make_hvp(loss_x, x0), tangents, batch_size=chunk).reshape(t, c, b, t, c)
    h0, h_tan = jax.linearize(
        lambda x: module.apply({"params": params}, tokens, embedded=x, hidden=True), x0)
    hdot = lax.map(h_tan, tangents, batch_size=chunk)  # [j = (t, c), B, T', C]

    # lm_head: closed forms.
    wh = params["lm_head"]["weight"]  # [V, C]
    nt = b * t
    probs = jax.nn.softmax(h0 @ wh.T, axis=-1)  # [B, T, V]
    onehot_y = jax.nn.one_hot(labels, v, dtype=dt)
    g = (probs - onehot_y) / nt
    hh = jnp.einsum("stc,stk->stck", h0, h0)
    diag = jnp.einsum("stv,stck->vck", probs, hh)  # the diag(p) term, on the V diagonal
    h_ww = (jnp.einsum("vck,vw->vcwk", diag, jnp.eye(v, dtype=dt))
            - jnp.einsum("stv,stw,stck->vcwk", probs, probs, hh)) / nt
    ldot = jnp.einsum("jsuc,vc->jsuv", hdot, wh)  # [j, B, T, V]
    gdot = probs * (ldot - jnp.sum(probs * ldot, -1, keepdims=True)) / nt
    m = (jnp.einsum("jsuv,suc->jsvc", gdot, h0)
         + jnp.einsum("suv,jsuc->jsvc", g, hdot))  # [j, B, V, C]
    m = m.reshape(t, c, b, v * c)  # H[W, x_s(t, c)] at [t, c, s, :]

    onehot = jax.nn.one_hot(tokens, v, dtype=dt)  # [B, T, V]
    right = jnp.einsum("tcsuk,suw->tcswk", hx, onehot)
    h_ee = jnp.einsum("stv,tcswk->vcwk", onehot, right).reshape(e, e)
    h_ep = jnp.einsum("stv,tcsuk->vcuk", onehot, hx).reshape(e, t * c)
    h_pp = jnp.sum(hx, axis=2).reshape(t * c, t * c)
    h_we = jnp.einsum("stv,tcsw->wvc", onehot, m).reshape(v * c, e)
    h_wp = jnp.sum(m, axis=2).reshape(t * c, v * c).T

    h = jnp.zeros((n, n), dt)
    h = h.at[p_end:head, :].set(cols).at[:, p_end:head].set(cols.T)
    mid = cols[:, p_end:head]
    h = h.at[p_end:head, p_end:head].set(0.5 * (mid + mid.T))
    # wpe rows of positions >= T stay zero: they do not enter the loss.
    q = e + t * c
    h = h.at[:e, :e].set(0.5 * (h_ee + h_ee.T))
    h = h.at[:e, e:q].set(h_ep).at[e:q, :e].set(h_ep.T)
    h = h.at[e:q, e:q].set(0.5 * (h_pp + h_pp.T))
    h = h.at[head:, :e].set(h_we).at[:e, head:].set(h_we.T)
    h = h.at[head:, e:q].set(h_wp).at[e:q, head:].set(h_wp.T)
    h_ww = h_ww.reshape(v * c, v * c)
    return h.at[head:, head:].set(0.5 * (h_ww + h_ww.T))


def _block_columns(
    model: NanoGPT, w: jax.Array, loss: Callable[[jax.Array], jax.Array], tokens: jax.Array,
    labels: jax.Array, start: int, stop: int, chunk: int,
) -> jax.Array:
    """Hessian columns ``[stop - start, P]`` of the blocks' and final LayerNorm's parameters.

    Ordinary products with unit vectors, except for one-head attention, whose weights enter
    the loss only through the ``[2C, C]`` factors ``M = φ(W)`` (``attention_factors``). With
    ``J = ∂M/∂W`` and ``g`` and ``H̃`` the gradient and Hessian in (other parameters, ``M``):

        H[θ, W] = H̃[θ, M] J        H[W, W] = Jᵀ H̃[M, M] J + ∂²⟨g_M, φ(W)⟩/∂W²

    so the 4C² weights per layer cost 2C² products in ``M`` (the second term is the Hessian of
    a product of two C×C matrices, exact and cheap): 304 instead of 432 products here.
    """
    n, dt = w.shape[0], w.dtype
    idx = np.arange(start, stop)
    if not regroups_attention(model.n_head):
        units = jnp.eye(stop - start, n, k=start, dtype=dt)
        return lax.map(make_hvp(loss, w), units, batch_size=chunk)

    offsets = model.offsets()
    layers = [f"transformer.h.{i}.attn." for i in range(model.n_layer)]
    attn = np.concatenate([np.arange(*offsets[t + k]) for t in layers
                           for k in ("c_attn.weight", "c_proj.weight")])
    others = np.setdiff1d(idx, attn)
    module = model.module(dt)

    def factors(v: jax.Array) -> jax.Array:  # φ: flat weights -> flat factors of all layers
        params = model.unflatten(v)
        return jnp.concatenate([
            attention_factors(params[f"h_{i}"]["attn"]["c_attn"]["weight"],
                              params[f"h_{i}"]["attn"]["c_proj"]["weight"]).ravel()
            for i in range(model.n_layer)])

    f0 = factors(w)
    nf, per = f0.shape[0], f0.shape[0] // model.n_layer

    def loss_m(v: jax.Array, f: jax.Array) -> jax.Array:
        tree = {f"h_{i}": {"attn": {"qv": f[i * per : (i + 1) * per].reshape(
            2 * model.n_embd, model.n_embd)}} for i in range(model.n_layer)}
        logits = module.apply({"params": model.unflatten(v), "factors": tree}, tokens)
        return cross_entropy(logits, labels)

    (_, g_m), tangent = jax.linearize(jax.grad(loss_m, argnums=(0, 1)), w, f0)
    h_mw, h_mm = lax.map(lambda u: tangent(jnp.zeros_like(w), u), jnp.eye(nf, dtype=dt),
                         batch_size=chunk)  # [nf, P] (zero in the W columns), [nf, nf]

    def phi(a: jax.Array) -> jax.Array:  # φ of the attention weights alone
        return factors(w.at[attn].set(a))

    jac = jax.jacfwd(phi)(w[attn])  # [nf, |W|]
    curv = jax.hessian(lambda a: jnp.vdot(g_m, phi(a)))(w[attn])
    cols_w = (jac.T @ h_mw).at[:, attn].set(jac.T @ h_mm @ jac + curv)  # [|W|, P]

    units = jnp.eye(n, dtype=dt)[others]
    cols_o = lax.map(make_hvp(loss, w), units, batch_size=chunk)
    return (jnp.zeros((stop - start, n), dt)
            .at[attn - start].set(cols_w).at[others - start].set(cols_o))
