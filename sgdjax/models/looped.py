"""In-context regressors on a GPT-2 backbone: the standard transformer and the looped one.

A prompt is a sequence of ``2n`` tokens of width ``D`` (``x_1, ỹ_1, x_2, ỹ_2, ...``). Every
model reads it in with an affine map ``D -> E`` (``read_in``), runs a NanoGPT-style backbone
without token embedding (learned positions, pre-LayerNorm blocks, final ``ln_f``) and reads a
scalar out at the x positions (``read_out``), so the prediction for ``y_i`` sees
``x_1..x_{i-1}, y_1..y_{i-1}, x_i`` only.

Families (the original's names):

* ``gpt2``: ``yhat = read_out(ln_f(blocks(P + pos)))`` with ``n_layer`` distinct blocks.
* ``gpt2_loop``: ``Z_0 = 0``, ``Z_{t+1} = M(Z_t + P)`` where ``P = read_in(tokens)`` is
  re-injected before every iteration and ``M`` adds the positions, runs the ``n_layer``
  blocks and applies ``ln_f``; ``yhat_t = read_out(Z_t)``.
* ``gpt2_tying``: one block applied ``n_layer`` times without injection (weight tying).

Variants of the looped family, each a field: state truncation (``n_last_tokens`` /
``save_n_tokens``: only some positions of ``Z_t`` are carried over, the injected prompt is
always whole), ``feed_block`` (every single layer is its own loop step), the block type
(attention, LSTM or a selective state-space layer), the skip connection to ``Z_{t-1}``, a learned
scale on the injection and the multiplicative loop ``Z_{t+1} = M(Z_t * P)``.

Parameters are a pytree (the layers stacked along a leading axis, so a loop step can pick its
layer with a traced index); training flattens them with ``jax.flatten_util.ravel_pytree``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

from sgdjax.errors import ConfigError

Params = dict[str, Any]
Carry = tuple[jax.Array, jax.Array]  # (Z_t, Z_{t-1})

LN_EPS = 1e-5
INIT_STD = 0.02
UNROLL_WINDOW = 8  # gradient windows up to this many loop steps are unrolled


# The linen modules only declare names and shapes (their initialisers give zeros): the values
# come from ``LoopedTransformer.init``, which draws every tensor by the rule of ``_init_rule``.
_ZEROS = nn.initializers.zeros


# ---------------------------------------------------------------------------------------------
# backbone pieces


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (nanoGPT's ``attn``)."""

    n_embd: int
    n_head: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        seq, width = h.shape[-2], self.n_embd
        head = width // self.n_head
        qkv = nn.Dense(3 * width, kernel_init=_ZEROS, name="c_attn")(h)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        split = lambda a: a.reshape(*a.shape[:-1], self.n_head, head)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(head)
        causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
        att = jnp.where(causal, att, jnp.finfo(att.dtype).min)
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.einsum("...hqk,...khd->...qhd", att, v).reshape(*h.shape[:-1], width)
        return nn.Dense(width, kernel_init=_ZEROS, name="c_proj")(y)


class SelectiveSSM(nn.Module):
    """A Mamba-like selective state-space layer (diagonal A; input-dependent Δ, B, C).

    ``Δ = softplus(dt_proj(x_proj(u)[:r]))``, ``B, C = x_proj(u)[r:]``; per channel
    ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t`` and ``y_t = C_t·h_t + D u_t``. The scan runs
    left to right over positions, so the layer is causal like the attention it replaces.
    """

    n_embd: int
    d_state: int
    dt_rank: int

    @nn.compact
    def __call__(self, u: jax.Array) -> jax.Array:
        e, n, r = self.n_embd, self.d_state, self.dt_rank
        a_log = self.param("A_log", _ZEROS, (e, n))
        d_skip = self.param("D", _ZEROS, (e,))
        dbc = nn.Dense(r + 2 * n, use_bias=False, kernel_init=_ZEROS, name="x_proj")(u)
        dt, b, c = jnp.split(dbc, [r, r + n], axis=-1)
        dt = jax.nn.softplus(nn.Dense(e, kernel_init=_ZEROS, name="dt_proj")(dt))
        a = -jnp.exp(a_log)  # [E, N], negative: a stable, decaying state
        decay = jnp.exp(dt[..., None] * a)  # [..., S, E, N]
        drive = (dt * u)[..., None] * b[..., None, :]  # [..., S, E, N]

        def combine(left: tuple, right: tuple) -> tuple:
            a1, b1 = left
            a2, b2 = right
            return a1 * a2, a2 * b1 + b2

        _, states = lax.associative_scan(combine, (decay, drive), axis=u.ndim - 2)
        return jnp.einsum("...sen,...sn->...se", states, c) + d_skip * u


class MLP(nn.Module):
    n_embd: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        h = nn.Dense(4 * self.n_embd, kernel_init=_ZEROS, name="c_fc")(h)
        h = jax.nn.gelu(h, approximate=True)
        return nn.Dense(self.n_embd, kernel_init=_ZEROS, name="c_proj")(h)


class Block(nn.Module):
    """Pre-LayerNorm block: ``h + mix(LN1(h))`` then ``h + MLP(LN2(h))``; ``mix`` is causal
    self-attention (``attn``) or the selective state-space layer (``ssm``)."""

    n_embd: int
    n_head: int
    block_type: str = "attn"
    d_state: int = 64
    dt_rank: int = 0

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_1")(h)
        if self.block_type == "ssm":
            h = h + SelectiveSSM(self.n_embd, self.d_state, self.dt_rank or self.n_embd,
                                 name="ssm")(x)
        else:
            h = h + CausalSelfAttention(self.n_embd, self.n_head, name="attn")(x)
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_2")(h)
        return h + MLP(self.n_embd, name="mlp")(x)


class LSTMLayer(nn.Module):
    """One unidirectional LSTM layer E -> E in PyTorch's parametrisation (gate order i, f, g, o;
    two bias vectors); its output replaces the hidden state (no residual, no LayerNorm)."""

    n_embd: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        e = self.n_embd
        w_ih = self.param("weight_ih", _ZEROS, (4 * e, e))
        w_hh = self.param("weight_hh", _ZEROS, (4 * e, e))
        b = self.param("bias_ih", _ZEROS, (4 * e,)) + self.param("bias_hh", _ZEROS, (4 * e,))
        inputs = jnp.moveaxis(h @ w_ih.T + b, -2, 0)  # [S, ..., 4E]: the scan runs over positions

        def cell(carry: tuple, gates_x: jax.Array) -> tuple[tuple, jax.Array]:
            hid, cell_state = carry
            gates = gates_x + hid @ w_hh.T
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            cell_state = jax.nn.sigmoid(f) * cell_state + jax.nn.sigmoid(i) * jnp.tanh(g)
            hid = jax.nn.sigmoid(o) * jnp.tanh(cell_state)
            return (hid, cell_state), hid

        zeros = jnp.zeros(h.shape[:-2] + (e,), h.dtype)
        _, out = lax.scan(cell, (zeros, zeros), inputs)
        return jnp.moveaxis(out, 0, -2)


class Affine(nn.Module):
    """``read_in`` / ``read_out``: the affine maps outside the backbone."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.features, kernel_init=_ZEROS)(x)


def _index(tree: Any, j: jax.Array | int) -> Any:
    return jax.tree.map(lambda a: a[j], tree)


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class LoopedTransformer:
    """Hyper-parameters of one in-context regressor, and the pure functions that run it."""

    family: Literal["gpt2", "gpt2_loop", "gpt2_tying"] = "gpt2_loop"
    n_dims: int = 20
    n_positions: int = 101
    n_embd: int = 256
    n_layer: int = 1
    n_head: int = 8
    block_type: Literal["attn", "lstm", "ssm"] = "attn"
    loop_func: Literal["add", "mul"] = "add"
    n_last_tokens: int = -1
    save_n_tokens: float = 0.0
    mask_per_layer: bool = False
    feed_block: bool = False
    skip_connection: bool = False
    inject_scale: bool = False
    ssm_state: int = 64
    ssm_dt_rank: int = 0
    remat: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} must be a multiple of model.n_head="
                              f"{self.n_head} (the head size is n_embd / n_head).")
        if min(self.n_dims, self.n_positions, self.n_embd, self.n_layer, self.n_head) < 1:
            raise ConfigError("model.n_dims, n_positions, n_embd, n_layer and n_head must all be "
                              "at least 1.")
        s = self.save_n_tokens
        if s != 0 and not (0 < s < 1 or (s == int(s) and abs(s) >= 1)):
            raise ConfigError(f"model.save_n_tokens={s} is not valid: use 0 (keep all), an "
                              "integer N >= 1 (keep the last N positions), an integer N <= -1 "
                              "(drop the first |N|) or a fraction 0 < N < 1 (keep the last "
                              "round(N * 2n)).")
        if s != 0 and self.n_last_tokens >= 0:
            raise ConfigError("model.n_last_tokens and model.save_n_tokens both truncate the "
                              "carried state; set only one of them (n_last_tokens=-1 or "
                              "save_n_tokens=0 switches one off).")

    # -- sizes ------------------------------------------------------------------------------
    @property
    def n_stacked(self) -> int:
        """Distinct layers held (weight tying keeps one and applies it n_layer times)."""
        return 1 if self.family == "gpt2_tying" else self.n_layer

    @property
    def units_per_loop(self) -> int:
        """Loop steps per loop iteration: every layer is its own step under ``feed_block``."""
        return self.n_layer if (self.family == "gpt2_loop" and self.feed_block) else 1

    @property
    def max_tokens(self) -> int:
        return 2 * self.n_positions + 1

    def _layer_module(self) -> nn.Module:
        if self.block_type == "lstm":
            return LSTMLayer(self.n_embd)
        return Block(self.n_embd, self.n_head, self.block_type, self.ssm_state, self.ssm_dt_rank)

    # -- parameters -------------------------------------------------------------------------
    def init(self, key: jax.Array) -> Params:
        """Random float32 parameters: GPT-2's init inside the backbone (weights and the
        position table N(0, 0.02²), the residual output projections N(0, (0.02/sqrt(2L))²),
        biases 0, LayerNorm 1/0), PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
        read-in/read-out and LSTM tensors, Mamba's ``A_log = log(1..N)``, ``D = 1`` for SSM
        layers, and U(0, 1) for the injection scale."""
        return _jit_init(self, key)

    def _shapes(self) -> Params:
        tokens = jnp.zeros((1, 2, self.n_dims), jnp.float32)
        hidden = jnp.zeros((1, 2, self.n_embd), jnp.float32)
        layer = self._layer_module()
        key = jax.random.key(0)
        shapes: Params = {
            "read_in": jax.eval_shape(Affine(self.n_embd).init, key, tokens)["params"],
            "wpe": jax.ShapeDtypeStruct((self.max_tokens, self.n_embd), jnp.float32),
            "layers": jax.tree.map(
                lambda a: jax.ShapeDtypeStruct((self.n_stacked, *a.shape), a.dtype),
                jax.eval_shape(layer.init, key, hidden)["params"]),
            "ln_f": jax.eval_shape(nn.LayerNorm(epsilon=LN_EPS).init, key, hidden)["params"],
            "read_out": jax.eval_shape(Affine(1).init, key, hidden)["params"],
        }
        if self.inject_scale and self.family == "gpt2_loop":
            shapes["inject_scale"] = jax.ShapeDtypeStruct((), jnp.float32)
        return shapes

    def _init_rule(self, path: tuple[str, ...]) -> tuple[str, float]:
        """How the tensor at ``path`` is drawn: ("normal", std), ("uniform", bound) for
        U(-bound, bound), ("unit_uniform", 1) for U(0, 1), ("const", value) or ("a_log", 0)."""
        name = path[-1]
        if path[0] in ("read_in", "read_out"):
            return "uniform", 1.0 / math.sqrt(self.n_dims if path[0] == "read_in" else self.n_embd)
        if path[0] == "wpe":
            return "normal", INIT_STD
        if path[0] == "inject_scale":
            return "unit_uniform", 1.0
        if name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            return "uniform", 1.0 / math.sqrt(self.n_embd)
        if name == "scale" or name == "D":
            return "const", 1.0
        if name == "bias":
            return "const", 0.0
        if name == "A_log":
            return "a_log", 0.0
        if name == "kernel" and path[-2] == "c_proj":
            return "normal", INIT_STD / math.sqrt(2 * self.n_stacked)
        if name == "kernel":
            return "normal", INIT_STD
        raise ValueError(f"no init rule for parameter {'.'.join(path)}")

    def _init(self, key: jax.Array) -> Params:
        # One normal and one uniform draw for the whole model, sliced in path order: a draw per
        # tensor would compile one random-bits kernel per tensor (seconds on a small CPU).
        flat = traverse_util.flatten_dict(self._shapes())
        rules = {path: self._init_rule(path) for path in flat}
        sizes = {"normal": 0, "uniform": 0}
        for path, (kind, _) in rules.items():
            if kind in sizes:
                sizes[kind] += math.prod(flat[path].shape)
        k_normal, k_uniform, k_scale = jax.random.split(key, 3)
        draws = {"normal": jax.random.normal(k_normal, (sizes["normal"],), jnp.float32),
                 "uniform": jax.random.uniform(k_uniform, (sizes["uniform"],), jnp.float32,
                                               -1.0, 1.0)}
        used = {"normal": 0, "uniform": 0}
        out = {}
        for path, (kind, scale) in rules.items():
            shape = flat[path].shape
            if kind in draws:
                size = math.prod(shape)
                chunk = draws[kind][used[kind] : used[kind] + size]
                used[kind] += size
                out[path] = scale * chunk.reshape(shape)
            elif kind == "const":
                out[path] = jnp.full(shape, scale, jnp.float32)
            elif kind == "a_log":
                out[path] = jnp.log(jnp.broadcast_to(
                    jnp.arange(1, shape[-1] + 1, dtype=jnp.float32), shape))
            else:
                out[path] = jax.random.uniform(k_scale, shape, jnp.float32)
        return traverse_util.unflatten_dict(out)

    def num_params(self, params: Params, *, backbone_only: bool = False) -> int:
        """Parameter count; ``backbone_only`` counts the layers and ``ln_f`` (the original's
        reported number, position table excluded)."""
        if backbone_only:
            params = {"layers": params["layers"], "ln_f": params["ln_f"]}
        return int(sum(a.size for a in jax.tree.leaves(params)))

    # -- pieces -----------------------------------------------------------------------------
    def embed(self, params: Params, tokens: jax.Array) -> jax.Array:
        """``P = read_in(tokens)``: [..., S, D] -> [..., S, E]."""
        if tokens.shape[-2] > self.max_tokens:
            raise ConfigError(f"a prompt of {tokens.shape[-2] // 2} points needs "
                              f"{tokens.shape[-2]} positions but model.n_positions="
                              f"{self.n_positions} allows {self.max_tokens}; raise "
                              "model.n_positions.")
        return Affine(self.n_embd).apply({"params": params["read_in"]}, tokens)

    def readout(self, params: Params, z: jax.Array) -> jax.Array:
        """Predictions at the x positions: [..., 2n, E] -> [..., n]."""
        return Affine(1).apply({"params": params["read_out"]}, z[..., ::2, :])[..., 0]

    def layer(self, params: Params, j: jax.Array | int, h: jax.Array) -> jax.Array:
        """Layer ``j`` of the stack (``j`` may be traced)."""
        return self._layer_module().apply({"params": _index(params["layers"], j)}, h)

    def _positions(self, params: Params, h: jax.Array) -> jax.Array:
        return h + params["wpe"][: h.shape[-2]]

    def _ln_f(self, params: Params, h: jax.Array) -> jax.Array:
        return nn.LayerNorm(epsilon=LN_EPS).apply({"params": params["ln_f"]}, h)

    def backbone(self, params: Params, h: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """``M(h)``: positions, the ``n_stacked`` layers in order, ``ln_f``. With
        ``mask_per_layer`` the non-kept positions are also cleared before every later layer."""
        h = self._positions(params, h)

        def one(hh: jax.Array, j: jax.Array) -> tuple[jax.Array, None]:
            if keep is not None and self.mask_per_layer:
                hh = jnp.where((j == 0) | keep[:, None], hh, self._fill(hh))
            return self.layer(params, j, hh), None

        if self.n_stacked <= 4:  # unrolled: lets XLA fuse across the few layers of a loop
            for j in range(self.n_stacked):
                h, _ = one(h, jnp.int32(j))
        else:
            h, _ = lax.scan(one, h, jnp.arange(self.n_stacked, dtype=jnp.int32))
        return self._ln_f(params, h)

    def forward(self, params: Params, tokens: jax.Array) -> jax.Array:
        """Predictions of the unlooped families (``gpt2``, ``gpt2_tying``): [..., n]."""
        h = self.embed(params, tokens)
        if self.family == "gpt2_tying":
            for _ in range(self.n_layer):
                h = self.backbone(params, h)
        else:
            h = self.backbone(params, h)
        return self.readout(params, h)

    # -- the loop ---------------------------------------------------------------------------
    def _fill(self, z: jax.Array) -> jax.Array:
        """What a cleared state position holds: the neutral element of the injection."""
        return jnp.ones_like(z) if self.loop_func == "mul" else jnp.zeros_like(z)

    def keep_mask(self, n_points: jax.Array | int, seq: int) -> jax.Array | None:
        """[S] bool: the positions of ``Z_t`` carried into the next iteration, for a prompt of
        ``n_points`` live points padded to ``seq`` tokens (None: all of them). Positions count
        from the start of the live prompt; padding after it is causally invisible."""
        live = 2 * jnp.asarray(n_points, jnp.int32)
        pos = jnp.arange(seq, dtype=jnp.int32)
        n, s = self.n_last_tokens, self.save_n_tokens
        if n >= 0:  # seed-002 semantics: 0 keeps nothing, N > 0 the last N
            return pos >= live - n
        if s == 0:
            return None
        if s <= -1:  # drop the first |N|
            return pos >= int(-s)
        if s >= 1:
            return pos >= live - int(s)
        kept = jnp.round(s * live.astype(jnp.float32)).astype(jnp.int32)
        return pos >= live - kept

    def init_carry(self, p: jax.Array) -> Carry:
        """``(Z_0, Z_{-1})``: ``Z_0`` is 0 (1 for the multiplicative loop), ``Z_{-1}`` is 0."""
        return self._fill(p), jnp.zeros_like(p)

    def unit(self, params: Params, carry: Carry, p: jax.Array, t: jax.Array,
             keep: jax.Array | None) -> Carry:
        """One loop step ``t`` (0-based): truncate the carried state, inject the prompt, run
        ``M`` (or, under ``feed_block``, layer ``t mod L`` with positions and ``ln_f``)."""
        z, z_prev = carry
        if keep is not None:
            z = jnp.where(keep[:, None], z, self._fill(z))
        if self.loop_func == "mul":
            h = z * p
        else:
            h = z + (params["inject_scale"] * p if self.inject_scale else p)
        if self.skip_connection:
            h = h + z_prev
        if self.units_per_loop > 1:
            j = jnp.asarray(t, jnp.int32) % self.units_per_loop
            out = self._ln_f(params, self.layer(params, j, self._positions(params, h)))
        else:
            out = self.backbone(params, h, keep)
        return out, carry[0]

    def _unit_fn(self) -> Callable[..., Carry]:
        fn = self.unit
        return jax.checkpoint(fn) if self.remat else fn

    def run_units(self, params: Params, p: jax.Array, n_units: int, keep: jax.Array | None,
                  carry: Carry | None = None, first: int | jax.Array = 0,
                  unroll: bool = False) -> tuple[Carry, jax.Array]:
        """``n_units`` loop steps (static count) from ``carry`` (default ``init_carry``),
        returning the end carry and the predictions after every step: [n_units, ..., n].
        ``unroll`` unrolls the scan (for short gradient windows: reverse mode through a rolled
        scan costs about twice as much on a CPU)."""
        carry = self.init_carry(p) if carry is None else carry
        unit = self._unit_fn()

        def body(c: Carry, t: jax.Array) -> tuple[Carry, jax.Array]:
            c = unit(params, c, p, t, keep)
            return c, self.readout(params, c[0])

        steps = jnp.asarray(first, jnp.int32) + jnp.arange(n_units, dtype=jnp.int32)
        return lax.scan(body, carry, steps, unroll=max(1, n_units) if unroll else 1)

    def window_schedule(self, n_loops: jax.Array | int, window: int,
                        fork_window: bool = True) -> tuple[jax.Array, jax.Array]:
        """``(t0, n_window)`` in loop steps for ``n_loops`` iterations and window ``T``.

        ``t0 = max(0, K - T)`` iterations run without gradient and the rest with it. Under
        ``feed_block`` an iteration is L steps: ``fork_window`` reproduces the seed-003 code
        (``t0 = K - T`` *steps*, so ``K·L - t0`` steps carry gradient), otherwise ``t0`` is
        ``(K - T)·L`` steps and the window is ``min(K, T)·L`` steps."""
        k = jnp.asarray(n_loops, jnp.int32)
        per = self.units_per_loop
        skipped = jnp.maximum(0, k - window)
        t0 = skipped if (per > 1 and fork_window) else skipped * per
        return t0, k * per - t0

    def max_window_units(self, max_loops: int, window: int, fork_window: bool = True) -> int:
        """Static upper bound of the window length over loop counts up to ``max_loops``."""
        per = self.units_per_loop
        if per > 1 and fork_window:
            return max_loops * per - max(0, max_loops - window)
        return min(max_loops, window) * per

    def window_predictions(self, params: Params, tokens: jax.Array, n_points: jax.Array | int,
                           n_loops: jax.Array | int, window: int, max_loops: int,
                           fork_window: bool = True, z0: jax.Array | None = None,
                           ) -> tuple[jax.Array, jax.Array]:
        """Predictions of the loop steps inside the gradient window, and their weights.

        Steps ``1..t0`` run in a ``fori_loop`` (trip count traced: the loop count of the
        curriculum never recompiles) on stop-gradient parameters and their end state is a
        constant; the window is a ``scan`` of static length (the bound for ``max_loops``)
        whose steps past ``K`` carry weight 0. Returns ``preds [W, ..., n]`` and
        ``weights [W]`` (1 inside the window, 0 after it)."""
        p = self.embed(params, tokens)
        keep = self.keep_mask(n_points, tokens.shape[-2])
        t0, n_window = self.window_schedule(n_loops, window, fork_window)
        carry = self.init_carry(p)
        if z0 is not None:
            carry = (z0, carry[1])
        frozen = lax.stop_gradient(params)
        p_frozen = lax.stop_gradient(p)
        carry = lax.fori_loop(0, t0, lambda t, c: self.unit(frozen, c, p_frozen, t, keep),
                              lax.stop_gradient(carry))
        carry = lax.stop_gradient(carry)
        width = self.max_window_units(max_loops, window, fork_window)
        _, preds = self.run_units(params, p, width, keep, carry, first=t0,
                                  unroll=width <= UNROLL_WINDOW)
        weights = (jnp.arange(width, dtype=jnp.int32) < n_window).astype(preds.dtype)
        return preds, weights


_jit_init = jax.jit(LoopedTransformer._init, static_argnums=0)


def interleave(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Tokens ``[x_1, ỹ_1, x_2, ỹ_2, ...]`` with ``ỹ_i = (y_i, 0, ..., 0)``: [..., 2n, D]."""
    y_tok = jnp.zeros_like(xs).at[..., 0].set(ys)
    both = jnp.stack([xs, y_tok], axis=-2)  # [..., n, 2, D]
    return both.reshape(*xs.shape[:-2], 2 * xs.shape[-2], xs.shape[-1])


@partial(jax.jit, static_argnums=(0, 3))
def loop_predictions(model: LoopedTransformer, params: Params, tokens: jax.Array,
                     n_loops: int, n_points: jax.Array | int | None = None) -> jax.Array:
    """Predictions after every loop step 1..``n_loops·units_per_loop``: [U, ..., n]."""
    p = model.embed(params, tokens)
    keep = model.keep_mask(tokens.shape[-2] // 2 if n_points is None else n_points,
                           tokens.shape[-2])
    _, preds = model.run_units(params, p, n_loops * model.units_per_loop, keep)
    return preds


__all__ = ["Block", "CausalSelfAttention", "LSTMLayer", "LoopedTransformer", "SelectiveSSM",
           "interleave", "loop_predictions"]
