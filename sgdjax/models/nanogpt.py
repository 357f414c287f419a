"""NanoGPT of exp2 (spec §3.3): a one-block, one-head, 8-wide GPT on a 25-character vocabulary.

Token and learned position embeddings; pre-LayerNorm blocks ``x += attn(ln_1(x))``,
``x += mlp(ln_2(x))``; final LayerNorm; untied bias-free ``lm_head``. Every Linear is bias-free,
LayerNorms have weight and bias (eps 1e-5), GELU is the exact (erf) one, no dropout. With one
head, attention's products are regrouped around its weights (``attention_factors``): the same
function with half the token-wide products.

State-dict names follow nanoGPT, and ``layout`` lists them in the original's ``parameters()``
order; for the default config (vocab 25, n_embd 8, n_head 1, n_layer 1, block 16, mlp_ratio 1):

=====================================  =======  ============
name                                   shape    flat indices
=====================================  =======  ============
transformer.wte.weight                 [25, 8]  [0..199]
transformer.wpe.weight                 [16, 8]  [200..327]
transformer.h.0.ln_1.weight            [8]      [328..335]
transformer.h.0.ln_1.bias              [8]      [336..343]
transformer.h.0.attn.c_attn.weight     [24, 8]  [344..535]
transformer.h.0.attn.c_proj.weight     [8, 8]   [536..599]
transformer.h.0.ln_2.weight            [8]      [600..607]
transformer.h.0.ln_2.bias              [8]      [608..615]
transformer.h.0.mlp.c_fc.weight        [8, 8]   [616..679]
transformer.h.0.mlp.c_proj.weight      [8, 8]   [680..743]
transformer.ln_f.weight                [8]      [744..751]
transformer.ln_f.bias                  [8]      [752..759]
lm_head.weight                         [25, 8]  [760..959]
=====================================  =======  ============

The original registers a causal-mask buffer in each attention layer; such entries
(``...attn.bias``, ``...attn.mask``, ``...attn.masked_bias``) are ignored when loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sgdjax.errors import ConfigError
from sgdjax.models.base import ParamSpec, TorchLayoutModel, TorchLinear, declared
from sgdjax.models.objective import cross_entropy, num_correct

_STD = 0.02


@jax.custom_jvp
def _fence(x: jax.Array) -> jax.Array:
    """Identity whose tangents (and so cotangents) are materialised.

    At a LayerNorm input the cotangent is the residual-stream gradient, which feeds the
    LayerNorm's own backward and the branch behind it. Left free, XLA's CPU fusion recomputes
    the whole chain of LayerNorm backwards after it inside each consumer (one fusion redid all
    three, 22 % of a training step); the barrier makes it one stored array.
    """
    return x


@_fence.defjvp
def _fence_jvp(
    primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    return primals[0], lax.optimization_barrier(tangents[0])


def _t(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


# Attention's two batched products with hand-written tangents. Autodiff transposes ``q kᵀ``
# and ``p v`` into products that contract the major axis of one operand (``dSᵀ q``, ``pᵀ dy``),
# which XLA's CPU backend runs in a generic kernel 4-5x slower than the forward ones (18 % of a
# vmapped training step). Writing those tangent terms as transposes of products in the standard
# form, with optimization barriers so that XLA does not fold the transposes back into the
# products, keeps every product of the gradient and of Hessian-vector products on the fast
# path (attention's gradient 193 -> 127 us, its HVP 388 -> 283 us at batch 64).
@jax.custom_jvp
def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """``q @ kᵀ`` over the last two axes (``[..., T, hs] x [..., S, hs] -> [..., T, S]``)."""
    return q @ _t(k)


@_scores.defjvp
def _scores_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (q, k), (dq, dk) = primals, tangents
    return _scores(q, k), dq @ _t(k) + _t(lax.optimization_barrier(dk @ _t(q)))


@jax.custom_jvp
def _mix(p: jax.Array, v: jax.Array) -> jax.Array:
    """``p @ v`` over the last two axes (``[..., T, S] x [..., S, hs] -> [..., T, hs]``)."""
    return p @ v


@_mix.defjvp
def _mix_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (p, v), (dp, dv) = primals, tangents
    bar = lax.optimization_barrier
    return _mix(p, v), dp @ v + _t(bar(bar(_t(dv)) @ _t(p)))


class LayerNorm(nn.Module):
    """PyTorch LayerNorm over the last axis (biased variance, eps inside the square root)."""

    features: int
    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, channels_first: bool = False) -> jax.Array:
        """Normalise over the last axis, or with ``channels_first`` over the first (``x`` is
        ``[C, N]``: the reductions then run along the token axis in vector lanes)."""
        w = self.param("weight", declared, (self.features,), self.param_dtype)
        b = self.param("bias", declared, (self.features,), self.param_dtype)
        x = _fence(x)
        axis = 0 if channels_first else -1
        if channels_first:
            w, b = w[:, None], b[:, None]
        mean = jnp.mean(x, axis=axis, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
        return (x - mean) * lax.rsqrt(var + self.eps) * w + b


class Embedding(nn.Module):
    num: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, idx: jax.Array) -> jax.Array:
        table = self.param("weight", declared, (self.num, self.features), self.param_dtype)
        # A gather (its gradient a scatter-add of 1024 rows of 8, ~1 us). The one-hot matmul
        # used before made the gradient a product contracting the one-hot's major axis, which
        # XLA's CPU backend hands to a slow generic kernel (40 us of a 0.6 ms step); with
        # jaxlib 0.10 the gather is also faster in Hessians (0.81 -> 0.74 s at batch 64).
        return jnp.take(table, idx, axis=0)


class PositionEmbedding(nn.Module):
    num: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: int) -> jax.Array:
        table = self.param("weight", declared, (self.num, self.features), self.param_dtype)
        return table[:t]  # positions 0..t-1: a static slice, no gather


def _linear(n_in: int, n_out: int, dtype: Any, name: str) -> TorchLinear:
    return TorchLinear(n_in, n_out, use_bias=False, param_dtype=dtype, name=name)


class LinearWeight(nn.Module):
    """A bias-free Linear's ``[out, in]`` weight alone, for products regrouped around it."""

    n_in: int
    n_out: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("weight", declared, (self.n_out, self.n_in), self.param_dtype)


def regroups_attention(n_head: int) -> bool:
    """Whether attention runs regrouped around its weights (``attention_factors``): with H
    heads the regrouped form needs 2HC token-wide columns against 4C, so only for one head.
    The structured Hessian differentiates in the factors exactly when this holds."""
    return n_head == 1


def _causal_softmax(scores: jax.Array) -> jax.Array:
    t = scores.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return jax.nn.softmax(jnp.where(causal, scores, jnp.asarray(-jnp.inf, scores.dtype)), axis=-1)


class CausalSelfAttention(nn.Module):
    n_embd: int
    n_head: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if regroups_attention(self.n_head):
            return self._one_head(x)
        b, t, c = x.shape
        hs = c // self.n_head
        qkv = _linear(c, 3 * c, self.param_dtype, "c_attn")(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # q, k, v in that order, as the original

        def heads(a: jax.Array) -> jax.Array:  # [B, T, C] -> [B, H, T, hs]
            return a.reshape(b, t, self.n_head, hs).transpose(0, 2, 1, 3)

        q, k, v = heads(q), heads(k), heads(v)
        scores = _scores(q, k) / jnp.asarray(math.sqrt(hs), dtype=q.dtype)
        y = _mix(_causal_softmax(scores), v)  # [B, H, T, hs]
        y = y.transpose(0, 2, 1, 3).reshape(b, t, c)
        return _linear(c, c, self.param_dtype, "c_proj")(y)

    def _one_head(self, x: jax.Array) -> jax.Array:
        """One head, with the products regrouped around the weights (the same function).

        ``q kᵀ = x (Wqᵀ Wk) xᵀ`` and ``c_proj(p v) = p (x Wvᵀ Wpᵀ)``: two C×C matrices formed
        per step replace the three projections q, k, v and the output projection, so the
        token-wide products go from 4C to 2C output columns and the concatenated q, k, v
        gradient disappears (vmapped training step -11 to -13 %, Hessians -9 %).
        """
        c, dt = x.shape[-1], self.param_dtype
        w_attn = LinearWeight(c, 3 * c, dt, name="c_attn")()
        w_proj = LinearWeight(c, c, dt, name="c_proj")()
        # The structured Hessian differentiates in the factors themselves (half as many
        # coordinates as the weights behind them) and passes them in as variables.
        if self.has_variable("factors", "qv"):
            m = self.get_variable("factors", "qv")
        else:
            m = attention_factors(w_attn, w_proj)
        qv = x @ m.T
        return _mix(_causal_softmax(_scores(qv[..., :c], x)), qv[..., c:])


def attention_factors(w_attn: jax.Array, w_proj: jax.Array) -> jax.Array:
    """``[2C, C]``: ``(Wkᵀ Wq / √C ; Wp Wv)`` of one head's ``c_attn [3C, C]`` and ``c_proj
    [C, C]`` weights, so that ``x Mᵀ = (x Wqᵀ Wk / √C, x Wvᵀ Wpᵀ)``.

    The [out, in] layout of a Linear's weight: the gradient in ``M`` is then the product
    ``cotangentᵀ x`` that XLA runs on the fast path, while ``x`` times the transposed layout made
    it contract x's token axis in XLA's generic kernel (0.7 ms of a 6 ms step)."""
    c = w_proj.shape[0]
    wq, wk, wv = w_attn[:c], w_attn[c : 2 * c], w_attn[2 * c :]
    a_t = (wk.T @ wq) / jnp.asarray(math.sqrt(c), dtype=w_attn.dtype)
    return jnp.concatenate([a_t, w_proj @ wv], axis=0)


class MLPBlock(nn.Module):
    n_embd: int
    hidden: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _linear(self.n_embd, self.hidden, self.param_dtype, "c_fc")(x)
        h = jax.nn.gelu(h, approximate=False)
        return _linear(self.hidden, self.n_embd, self.param_dtype, "c_proj")(h)


class Block(nn.Module):
    n_embd: int
    n_head: int
    mlp_hidden: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt, c = self.param_dtype, self.n_embd
        x = x + CausalSelfAttention(c, self.n_head, dt, name="attn")(
            LayerNorm(c, param_dtype=dt, name="ln_1")(x)
        )
        return x + MLPBlock(c, self.mlp_hidden, dt, name="mlp")(
            LayerNorm(c, param_dtype=dt, name="ln_2")(x)
        )


class GPTModule(nn.Module):
    """Flax tree: ``wte``, ``wpe``, ``h_0 .. h_{L-1}``, ``ln_f``, ``lm_head`` (torch names add the
    ``transformer.`` prefix and write ``h.i``)."""

    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    mlp_hidden: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, idx: jax.Array, train: bool = False, embedded: jax.Array | None = None,
        hidden: bool = False, labels: jax.Array | None = None,
    ) -> Any:
        """Logits of ``idx``; with ``embedded`` (``[B, T, n_embd]``) the blocks start from that
        input instead of ``wte[idx] + wpe``, and ``hidden=True`` returns the final LayerNorm's
        output instead of the logits (the structured Hessian differentiates both). With
        ``labels`` (``[B, T]``) it returns ``(mean cross-entropy, number correct)`` instead,
        computed with the tokens on the minor axis (``_objective``)."""
        del train  # no dropout
        dt, c = self.param_dtype, self.n_embd
        if embedded is None:
            x = Embedding(self.vocab_size, c, dt, name="wte")(idx)
            x = x + PositionEmbedding(self.block_size, c, dt, name="wpe")(idx.shape[-1])
        else:
            x = embedded
        for i in range(self.n_layer):
            x = Block(c, self.n_head, self.mlp_hidden, dt, name=f"h_{i}")(x)
        if labels is not None:
            return self._objective(x, labels)
        x = LayerNorm(c, param_dtype=dt, name="ln_f")(x)
        if hidden:
            return x
        return _linear(c, self.vocab_size, dt, "lm_head")(x)

    def _objective(self, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Final LayerNorm, ``lm_head``, mean cross-entropy and correct count on ``[C, N]``.

        With the N tokens on the minor axis the LayerNorm's reductions over C = 8 and the
        softmax's over the 25 words become sums of rows (vector adds instead of horizontal
        ones), and the head is ``W [V, C] @ h [C, N]`` with a wide output rather than
        ``h [N, C] @ Wᵀ`` with 25 columns: a vmapped stage-4 step of 16 runs on one core
        9.5-10.5 -> 8.7-9.2 ms in float32, 15.5 -> 14.9 ms in float64. The same function as
        ``cross_entropy`` of the logits."""
        dt, c, v = self.param_dtype, self.n_embd, self.vocab_size
        h = LayerNorm(c, param_dtype=dt, name="ln_f")(x.reshape(-1, c).T, channels_first=True)
        logits = LinearWeight(c, v, dt, name="lm_head")() @ h  # [V, N]
        y = labels.reshape(-1)
        return cross_entropy(logits, y, axis=0), num_correct(logits, y, axis=0)


@dataclass(frozen=True)
class NanoGPT(TorchLayoutModel):
    """NanoGPT; defaults give the exp2 model with 960 parameters. Input: int tokens ``[B, T]``
    with ``T <= block_size``; output: logits ``[B, T, vocab_size]``."""

    vocab_size: int = 25
    block_size: int = 16
    n_embd: int = 8
    n_head: int = 1
    n_layer: int = 1
    mlp_ratio: int = 1
    name: str = "nanogpt"

    ignored_state_dict_suffixes = (".attn.bias", ".attn.mask", ".attn.masked_bias")

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"nanogpt: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})."
            )

    @property
    def layout(self) -> tuple[ParamSpec, ...]:
        v, c, h = self.vocab_size, self.n_embd, self.n_embd * self.mlp_ratio
        # every Linear weight and embedding N(0, 0.02²); LayerNorm weight 1, bias 0
        n, one, zero = ("normal", _STD), ("ones", 0.0), ("zeros", 0.0)
        specs = [
            ParamSpec("transformer.wte.weight", ("wte", "weight"), (v, c), n),
            ParamSpec("transformer.wpe.weight", ("wpe", "weight"), (self.block_size, c), n),
        ]
        for i in range(self.n_layer):
            t, f = f"transformer.h.{i}.", f"h_{i}"
            specs += [
                ParamSpec(t + "ln_1.weight", (f, "ln_1", "weight"), (c,), one),
                ParamSpec(t + "ln_1.bias", (f, "ln_1", "bias"), (c,), zero),
                ParamSpec(t + "attn.c_attn.weight", (f, "attn", "c_attn", "weight"), (3 * c, c), n),
                ParamSpec(t + "attn.c_proj.weight", (f, "attn", "c_proj", "weight"), (c, c), n),
                ParamSpec(t + "ln_2.weight", (f, "ln_2", "weight"), (c,), one),
                ParamSpec(t + "ln_2.bias", (f, "ln_2", "bias"), (c,), zero),
                ParamSpec(t + "mlp.c_fc.weight", (f, "mlp", "c_fc", "weight"), (h, c), n),
                ParamSpec(t + "mlp.c_proj.weight", (f, "mlp", "c_proj", "weight"), (c, h), n),
            ]
        specs += [
            ParamSpec("transformer.ln_f.weight", ("ln_f", "weight"), (c,), one),
            ParamSpec("transformer.ln_f.bias", ("ln_f", "bias"), (c,), zero),
            ParamSpec("lm_head.weight", ("lm_head", "weight"), (v, c), n),
        ]
        return tuple(specs)

    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return GPTModule(
            self.vocab_size,
            self.block_size,
            self.n_embd,
            self.n_head,
            self.n_layer,
            self.n_embd * self.mlp_ratio,
            param_dtype=param_dtype,
        )

    def featurize(self, x: jax.Array) -> jax.Array:
        return jnp.asarray(x, dtype=jnp.int32)

    def example_features(self, batch: int, dtype: Any = jnp.float32) -> jax.Array:
        del dtype  # tokens are integers whatever the parameter dtype
        return jnp.zeros((batch, self.block_size), dtype=jnp.int32)

    def apply(
        self, params: Any, state: Any, feats: jax.Array, *, train: bool
    ) -> tuple[jax.Array, Any]:
        self._check_length(feats)
        return super().apply(params, state, feats, train=train)

    def _check_length(self, feats: jax.Array) -> None:
        if feats.shape[-1] > self.block_size:
            raise ConfigError(
                f"nanogpt: sequence length {feats.shape[-1]} exceeds block_size {self.block_size}."
            )

    def objective(
        self, params: Any, state: Any, feats: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(mean cross-entropy, number correct)`` of ``feats`` against ``labels``
        (``make_loss_fn`` uses it instead of logits and ``cross_entropy``; the same function,
        computed with the tokens on the minor axis)."""
        del state  # no buffers
        self._check_length(feats)
        module = self.module(self.param_dtype(params))
        return module.apply({"params": params}, jnp.asarray(feats, jnp.int32), labels=labels)

    def loss_hessian(
        self, w: jax.Array, state: Any, feats: jax.Array, labels: jax.Array,
        chunk: int | None = None,
    ) -> jax.Array:
        """Exact ``[P, P]`` Hessian of the mean cross-entropy at the flat parameters ``w``
        (:mod:`sgdjax.models.nanogpt_hessian`: the tables' and ``lm_head``'s blocks from
        per-sequence structure and closed forms, 560 instead of 960 Hessian-vector products
        for the default model)."""
        from sgdjax.models.nanogpt_hessian import gpt_ce_hessian

        del state  # no buffers
        return gpt_ce_hessian(self, w, feats, labels, chunk)

    def generate(
        self,
        params: Any,
        idx: jax.Array,
        key: jax.Array,
        max_new_tokens: int,
        temperature: float = 1.0,
    ) -> jax.Array:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx [B, T0]`` → ``[B, T0+new]``.

        Pure and jit-friendly: one ``lax.scan`` step per token over a fixed-size window of
        ``block_size`` tokens. While the sequence is shorter than the window, the window starts
        at 0 and the causal mask keeps the not-yet-written tail from affecting the read position;
        afterwards it holds the last ``block_size`` tokens, as the original crops its context.
        """
        idx = jnp.asarray(idx, dtype=jnp.int32)
        b, t0 = idx.shape
        total = t0 + max_new_tokens
        buf = jnp.zeros((b, max(total, self.block_size)), dtype=jnp.int32).at[:, :t0].set(idx)
        module = self.module(self.param_dtype(params))

        def step(buf: jax.Array, inp: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
            length, k = inp
            start = jnp.maximum(length - self.block_size, 0)
            window = lax.dynamic_slice_in_dim(buf, start, self.block_size, axis=1)
            logits = module.apply({"params": params}, window)
            last = lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)
            nxt = jax.random.categorical(k, last / temperature, axis=-1).astype(jnp.int32)
            return lax.dynamic_update_slice_in_dim(buf, nxt[:, None], length, axis=1), None

        lengths = jnp.arange(t0, total, dtype=jnp.int32)
        buf, _ = lax.scan(step, buf, (lengths, jax.random.split(key, max_new_tokens)))
        return buf[:, :total]
