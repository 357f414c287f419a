"""A Qwen3-style decoder-only language model (spec lm_training §1.1, §3).

Pre-norm blocks ``x += attn(rmsnorm(x))``, ``x += mlp(rmsnorm(x))`` with RMSNorm (eps 1e-6),
grouped-query attention (``num_heads`` query heads share ``num_kv_heads`` key/value heads),
per-head RMSNorm on queries and keys (before RoPE), rotary position embeddings (theta 1e4, the
"rotate half" convention), a SwiGLU MLP ``down(silu(gate(x)) * up(x))``, no biases anywhere, a
final RMSNorm and an untied LM head. Every Linear and the embedding start from N(0, 0.02²), every
norm weight from ones.

Parameters carry Hugging Face ``Qwen3ForCausalLM`` state-dict names and ``[out, in]`` layouts
(``model.layers.0.self_attn.q_proj.weight`` ...), listed in that model's ``parameters()`` order,
so the flat vector and checkpoints are in the coordinates users know. The parameter count is
computed from the layout alone, without allocating anything: the ``paper`` preset with GPT-2's
vocabulary of 50,257 has 960,881,664 parameters, the count the seed's run logged.

Compute precision is a model field: ``compute_dtype="bfloat16"`` casts the (float32 master)
weights and activations to bf16 for the matmuls while norms, softmax and the loss stay in float32,
as Hugging Face does under ``bf16=True``. ``remat=True`` rematerialises each decoder layer in the
backward pass (``jax.checkpoint``).

``logits(..., use_params=f)`` reads the parameters of the embedding, of each child of every
decoder layer (attention, MLP, norms), of the final norm and of the head through ``f`` where
that module computes -- fully sharded training passes a gather, so one layer's full weights
exist at a time. The decoder layers are then rematerialised (without ``remat``: keeping their
matmul outputs, recomputing the rest), so the backward pass applies ``f`` again (gathers again)
instead of keeping every layer's ``f`` results from the forward to the backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.models.base import Params, ParamSpec, TorchLayoutModel, declared

ComputeDtype = Literal["float32", "bfloat16"]
#: Maps one module's parameter tree to the tree it computes with (see ``Qwen3.logits``).
ParamsHook = Callable[[Any], Any]

#: Architecture sizes of the presets (vocabulary excluded: it comes from the tokenizer).
PRESETS: dict[str, dict[str, int]] = {
    # CPU / CI size.
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=256),
    # One GPU: ~32M parameters plus 1024 x vocab for embedding and head.
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                  intermediate_size=2048),
    # The seed's 2048 x 12 model; for parameter counts (and memory estimates) only.
    "paper": dict(hidden_size=2048, num_layers=12, num_heads=16, num_kv_heads=8, head_dim=128,
                  intermediate_size=8192),
}


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Qwen3's RMSNorm: normalise in float32, cast back, then scale by the weight."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``[T, head_dim]`` (the two halves repeat, as in Hugging Face)."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[:, None] * inv[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x [B, T, heads, head_dim]`` by position: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c, s = cos[None, :, None, :].astype(x.dtype), sin[None, :, None, :].astype(x.dtype)
    return x * c + rotated * s


class RMSNorm(nn.Module):
    features: int
    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", declared, (self.features,), self.param_dtype)
        return rms_norm(x, w, self.eps)


class Linear(nn.Module):
    """Bias-free ``y = x Wᵀ`` with ``W`` stored ``[out, in]``, computed in the input's dtype."""

    in_features: int
    out_features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("weight", declared, (self.out_features, self.in_features),
                       self.param_dtype)
        return x @ w.astype(x.dtype).T


class Embedding(nn.Module):
    num: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param("weight", declared, (self.num, self.features), self.param_dtype)
        return jnp.take(table, ids, axis=0)


class Attention(nn.Module):
    cfg: Qwen3
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 key_mask: jax.Array | None) -> jax.Array:
        c = self.cfg
        b, t, _ = x.shape
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        q = Linear(c.hidden_size, nh * hd, self.param_dtype, name="q_proj")(x)
        k = Linear(c.hidden_size, nkv * hd, self.param_dtype, name="k_proj")(x)
        v = Linear(c.hidden_size, nkv * hd, self.param_dtype, name="v_proj")(x)
        q = RMSNorm(hd, c.norm_eps, self.param_dtype, name="q_norm")(q.reshape(b, t, nh, hd))
        k = RMSNorm(hd, c.norm_eps, self.param_dtype, name="k_norm")(k.reshape(b, t, nkv, hd))
        v = v.reshape(b, t, nkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Query head h reads key/value head h // group (Hugging Face's repeat_kv). Repeating
        # the few key/value heads keeps every contraction a plain 4-D batched matmul, which XLA
        # compiles several times faster than a grouped 5-D einsum.
        group = nh // nkv
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / jnp.sqrt(hd)
        allowed = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask.astype(bool)[:, None, None, :]
        # A finite floor instead of -inf: a row with no allowed key (a padding query of an empty
        # document) must stay finite, or 0 * NaN would poison the masked loss's gradient.
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, nh * hd)
        return Linear(nh * hd, c.hidden_size, self.param_dtype, name="o_proj")(out)


class MLP(nn.Module):
    cfg: Qwen3
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, i = self.cfg.hidden_size, self.cfg.intermediate_size
        gate = Linear(h, i, self.param_dtype, name="gate_proj")(x)
        up = Linear(h, i, self.param_dtype, name="up_proj")(x)
        return Linear(i, h, self.param_dtype, name="down_proj")(jax.nn.silu(gate) * up)


def _reading_through(cls: type[nn.Module], hook: ParamsHook | None) -> type[nn.Module]:
    """``cls`` computing with ``hook(its parameters)`` (``cls`` itself without a hook). The
    mapping runs where the wrapped module is called, so inside a rematerialised layer only when
    the layer's own body wraps its children: flax applies it outside any lifted transform
    wrapped around it."""
    if hook is None:
        return cls
    return nn.map_variables(cls, "params", trans_in_fn=hook)


class DecoderLayer(nn.Module):
    cfg: Qwen3
    param_dtype: Any = jnp.float32
    use_params: ParamsHook | None = None  # applied to each child's parameters, see Qwen3.logits

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 key_mask: jax.Array | None) -> jax.Array:
        c = self.cfg
        hook = self.use_params
        norm = _reading_through(RMSNorm, hook)
        # Submodules are created in the order of Hugging Face's __init__ (attention, MLP, norms),
        # which only matters for readability: the flat order comes from ``Qwen3.layout``.
        attn = _reading_through(Attention, hook)(c, self.param_dtype, name="self_attn")
        mlp = _reading_through(MLP, hook)(c, self.param_dtype, name="mlp")
        ln1 = norm(c.hidden_size, c.norm_eps, self.param_dtype, name="input_layernorm")
        ln2 = norm(c.hidden_size, c.norm_eps, self.param_dtype, name="post_attention_layernorm")
        x = x + attn(ln1(x), cos, sin, key_mask)
        return x + mlp(ln2(x))


def _layer_class(remat: bool, hooked: bool) -> type[nn.Module]:
    if remat:
        return nn.remat(DecoderLayer)  # recomputes the whole layer, the hook included
    if hooked:
        # Keep the matmul outputs (the costly part) and recompute the rest, the hook's results
        # among it: the backward pass re-applies the hook, so no layer's hooked weights outlive
        # its forward computation. (jax's save_anything_except_these_names saves everything,
        # names or not, so naming the hook's results cannot exclude them.)
        return nn.remat(DecoderLayer, policy=jax.checkpoint_policies.dots_saveable)
    return DecoderLayer


class Decoder(nn.Module):
    """``Qwen3ForCausalLM``: ids ``[B, T]`` -> float32 logits ``[B, T, vocab]``."""

    cfg: Qwen3
    param_dtype: Any = jnp.float32
    use_params: ParamsHook | None = None  # see Qwen3.logits

    @nn.compact
    def __call__(self, ids: jax.Array, key_mask: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        del train  # no dropout: training and evaluation run the same function
        c, hook = self.cfg, self.use_params
        cdt = jnp.dtype(c.compute_dtype)
        x = _reading_through(Embedding, hook)(c.vocab_size, c.hidden_size, self.param_dtype,
                                              name="embed_tokens")(ids)
        x = x.astype(cdt)
        cos, sin = rope_tables(jnp.arange(ids.shape[1]), c.head_dim, c.rope_theta)
        layer_cls = _layer_class(c.remat, hook is not None)
        for i in range(c.num_layers):
            x = layer_cls(c, self.param_dtype, hook, name=f"layers_{i}")(x, cos, sin, key_mask)
        x = _reading_through(RMSNorm, hook)(c.hidden_size, c.norm_eps, self.param_dtype,
                                            name="norm")(x)
        logits = _reading_through(Linear, hook)(c.hidden_size, c.vocab_size, self.param_dtype,
                                                name="lm_head")(x)
        return logits.astype(jnp.float32)


@dataclass(frozen=True)
class Qwen3(TorchLayoutModel):
    """Architecture hyper-parameters (hashable: used as a static jit argument)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    compute_dtype: ComputeDtype = "float32"
    remat: bool = False
    name: str = "qwen3"

    def __post_init__(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "intermediate_size"):
            if int(getattr(self, field)) < 1:
                raise ConfigError(f"model {field} must be a positive integer, got "
                                  f"{getattr(self, field)}.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention shares each key/value head among "
                "num_heads / num_kv_heads query heads)."
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs).")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"compute_dtype must be 'float32' or 'bfloat16', got "
                              f"{self.compute_dtype!r}.")

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides: Any) -> Qwen3:
        """The ``tiny``, ``small`` or ``paper`` sizes with the given vocabulary."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset '{name}'; choose one of "
                              f"{', '.join(PRESETS)}.{did_you_mean(name, PRESETS)}")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def with_(self, **changes: Any) -> Qwen3:
        return replace(self, **changes)

    # -- layout -----------------------------------------------------------------------------
    @property
    def layout(self) -> tuple[ParamSpec, ...]:
        return _layout(self)

    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return Decoder(self, param_dtype)

    def example_features(self, batch: int, dtype: Any = jnp.int32) -> jax.Array:
        del dtype  # token ids are integers whatever the parameters' dtype
        return jnp.zeros((batch, 8), jnp.int32)

    # -- forward ----------------------------------------------------------------------------
    def logits(self, params: Params, ids: jax.Array, key_mask: jax.Array | None = None,
               use_params: ParamsHook | None = None) -> jax.Array:
        """float32 logits ``[B, T, vocab]`` of token ids ``[B, T]``; ``key_mask [B, T]``
        (True for real tokens) hides padding keys from attention. ``use_params`` maps each
        module's parameters where that module computes (see the module docstring)."""
        module = Decoder(self, self.param_dtype(params), use_params)
        return module.apply({"params": params}, ids, key_mask)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 3 x forward): 6 x matmul parameters
        plus the attention score and value products (the usual 6N + 12 L T d estimate)."""
        matmul = self.num_params - sum(s.size for s in self.layout if len(s.shape) == 1)
        matmul -= self.vocab_size * self.hidden_size  # the embedding is a lookup
        attn = 12 * self.num_layers * seq_len * self.num_heads * self.head_dim // 2
        return 6 * matmul + attn


@functools.lru_cache(maxsize=64)
def _layout(m: Qwen3) -> tuple[ParamSpec, ...]:
    normal = ("normal", m.init_std)
    ones = ("ones", 0.0)
    h, nh, nkv, hd, inter = (m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim,
                             m.intermediate_size)
    specs = [ParamSpec("model.embed_tokens.weight", ("embed_tokens", "weight"),
                       (m.vocab_size, h), normal)]
    for i in range(m.num_layers):
        torch, path = f"model.layers.{i}", (f"layers_{i}",)
        attn, mlp = (*path, "self_attn"), (*path, "mlp")
        specs += [
            ParamSpec(f"{torch}.self_attn.q_proj.weight", (*attn, "q_proj", "weight"),
                      (nh * hd, h), normal),
            ParamSpec(f"{torch}.self_attn.k_proj.weight", (*attn, "k_proj", "weight"),
                      (nkv * hd, h), normal),
            ParamSpec(f"{torch}.self_attn.v_proj.weight", (*attn, "v_proj", "weight"),
                      (nkv * hd, h), normal),
            ParamSpec(f"{torch}.self_attn.o_proj.weight", (*attn, "o_proj", "weight"),
                      (h, nh * hd), normal),
            ParamSpec(f"{torch}.self_attn.q_norm.weight", (*attn, "q_norm", "weight"), (hd,),
                      ones),
            ParamSpec(f"{torch}.self_attn.k_norm.weight", (*attn, "k_norm", "weight"), (hd,),
                      ones),
            ParamSpec(f"{torch}.mlp.gate_proj.weight", (*mlp, "gate_proj", "weight"), (inter, h),
                      normal),
            ParamSpec(f"{torch}.mlp.up_proj.weight", (*mlp, "up_proj", "weight"), (inter, h),
                      normal),
            ParamSpec(f"{torch}.mlp.down_proj.weight", (*mlp, "down_proj", "weight"), (h, inter),
                      normal),
            ParamSpec(f"{torch}.input_layernorm.weight", (*path, "input_layernorm", "weight"),
                      (h,), ones),
            ParamSpec(f"{torch}.post_attention_layernorm.weight",
                      (*path, "post_attention_layernorm", "weight"), (h,), ones),
        ]
    specs += [
        ParamSpec("model.norm.weight", ("norm", "weight"), (h,), ones),
        ParamSpec("lm_head.weight", ("lm_head", "weight"), (m.vocab_size, h), normal),
    ]
    return tuple(specs)


def count_params(preset: str, vocab_size: int) -> int:
    """Parameters of a preset, from the layout (nothing is allocated)."""
    return Qwen3.preset(preset, vocab_size).num_params


__all__ = ["PRESETS", "ParamsHook", "Qwen3", "apply_rope", "count_params", "rms_norm",
           "rope_tables"]
