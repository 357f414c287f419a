"""The model protocol shared by every model family.

A model is a Flax linen module plus a frozen dataclass (a subclass of :class:`TorchLayoutModel`)
that knows the module's parameter layout in the original PyTorch project's coordinates.

Parameters are stored in PyTorch layout (a Linear weight is ``[out, in]``, a conv weight is
``[out, in, kh, kw]``), so the flat parameter vector of the original -- the concatenation of
``model.parameters()`` flattened row-major -- is a plain concatenation of the leaves listed in
``layout``. ``layout`` is the single source of truth for the flat order, the flax pytree paths and
the PyTorch state-dict names; flatten/unflatten and the state-dict conversions all read it.

Non-trainable state (BatchNorm running statistics) lives in a separate ``state`` pytree that is
described the same way by ``buffers``. Models without state use ``{}``.

Initial values come from ``Model.init``, which draws every tensor as its ``ParamSpec.init`` says;
the linen modules only declare names, shapes and dtypes (``module().init`` gives zeros).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.errors import ConfigError

Params = dict[str, Any]
State = dict[str, Any]

# Suffixes that mark a BatchNorm buffer in a PyTorch state dict, whatever the module is called.
_BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of a model: its PyTorch state-dict key, its flax pytree path and its shape."""

    torch_name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    # Initial distribution, PyTorch's default for the tensor: ("uniform", b) is U(-b, b),
    # ("normal", s) is N(0, s²), ("ones", 0) / ("zeros", 0) constants, ("count", 0) an int32 zero
    # (BatchNorm's num_batches_tracked). The single source of truth for ``Model.init``.
    init: tuple[str, float] = ("zeros", 0.0)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        node = node[key]
    return node


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


class TorchLayoutModel(ABC):
    """Base of every sgdjax model (the ``Model`` protocol).

    Subclasses are frozen dataclasses holding the architecture hyper-parameters; they implement
    ``name``, ``layout``, ``buffers``, ``module()``, ``init`` and ``apply``. Everything that only
    depends on the layout (flat vectors, state dicts) is implemented here once.
    """

    name: str

    # -- to implement -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def layout(self) -> tuple[ParamSpec, ...]:
        """Trainable tensors in PyTorch ``parameters()`` order."""

    @property
    def buffers(self) -> tuple[ParamSpec, ...]:
        """Non-trainable state tensors (in state-dict order); empty for stateless models."""
        return ()

    @abstractmethod
    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        """The flax linen module; called as ``module(feats, train=...)``."""

    @abstractmethod
    def example_features(self, batch: int, dtype: Any = jnp.float32) -> jax.Array:
        """Zeros shaped like a batch of ``featurize`` output (for tracing, shapes, benchmarks)."""

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> tuple[Params, State]:
        """Random parameters in ``dtype`` drawn as each ``ParamSpec.init`` says (PyTorch's default
        distributions), and the initial state.

        All uniform entries come from one draw and all normal entries from another, split in
        layout order: a draw per tensor would compile one threefry kernel per tensor, which takes
        seconds on a small CPU.
        """
        return _jit_init(self, key, jnp.dtype(dtype))

    def apply(
        self, params: Params, state: State, feats: jax.Array, *, train: bool
    ) -> tuple[jax.Array, State]:
        """Logits for ``feats`` (float features are cast to the parameters' dtype).

        ``train=True`` uses batch statistics in BatchNorm and returns the updated running
        statistics; ``train=False`` uses the running statistics and returns ``state`` unchanged.
        """
        if not self.buffers or not train:
            return _jit_apply(self, params, state, feats, train), state
        return _jit_apply(self, params, state, feats, train)

    def featurize(self, x: jax.Array) -> jax.Array:
        """Parameter-free preprocessing, applied once to a whole dataset (identity by default)."""
        return jnp.asarray(x)

    @property
    def eval_batch(self) -> int:
        """Examples per slice when a whole validation set is evaluated inside a trajectory
        (``Recorder.val_batch``): large slices for small features, cache-sized ones for
        models with large activations."""
        return 1024

    # Keys of a PyTorch state dict that are known non-parameter buffers of the original and carry
    # no information we need (e.g. nanoGPT's causal-mask buffer); matched by suffix.
    ignored_state_dict_suffixes: tuple[str, ...] = ()

    # Optional ``objective(params, state, feats, labels) -> (mean cross-entropy, number
    # correct)``, which ``make_loss_fn`` then uses instead of ``apply`` and ``cross_entropy``:
    # the same function arranged for speed (NanoGPT's). Stateless models only.
    objective: Callable[..., tuple[jax.Array, jax.Array]] | None = None

    # -- derived ----------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(spec.size for spec in self.layout)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``torch_name -> (start, stop)`` of every trainable tensor in the flat vector."""
        out: dict[str, tuple[int, int]] = {}
        start = 0
        for spec in self.layout:
            out[spec.torch_name] = (start, start + spec.size)
            start += spec.size
        return out

    def flatten(self, params: Params) -> jax.Array:
        """The flat parameter vector ``[P]`` in the original's coordinates."""
        return _jit_flatten(self, params)

    def unflatten(self, vec: jax.Array) -> Params:
        """Inverse of :meth:`flatten`; static slices only, so it composes with jit/vmap/hessian."""
        if vec.shape[-1] != self.num_params:
            raise ConfigError(
                f"{self.name}: flat parameter vector has length {vec.shape[-1]}, "
                f"expected {self.num_params}."
            )
        return _jit_unflatten(self, vec)

    def param_dtype(self, params: Params) -> Any:
        return _get(params, self.layout[0].path).dtype

    # -- PyTorch state dicts ----------------------------------------------------------------------
    def to_state_dict(self, params: Params, state: State | None = None) -> dict[str, np.ndarray]:
        """``{torch_name: numpy array}`` for parameters and buffers, as PyTorch would save it."""
        sd: dict[str, np.ndarray] = {}
        for spec in self.layout:
            sd[spec.torch_name] = np.asarray(_get(params, spec.path))
        state = state or {}
        for spec in self.buffers:
            value = np.asarray(_get(state, spec.path))
            # PyTorch stores the batch counter as int64; JAX (without x64) holds it as int32.
            if not np.issubdtype(value.dtype, np.floating):
                value = value.astype(np.int64)
            sd[spec.torch_name] = value
        return sd

    def from_state_dict(
        self,
        sd: Mapping[str, Any],
        *,
        dtype: Any = None,
        by_order: bool = False,
    ) -> tuple[Params, State]:
        """Params and state from a PyTorch state dict (values: numpy arrays, tensors, lists).

        ``dtype``: float dtype of the result (default: keep each array's float dtype).
        ``by_order``: match tensors by position (parameters in order, BatchNorm buffers
        recognised by their suffix) instead of by name -- for checkpoints whose module
        attribute names differ from ours but whose architecture is the same.
        Missing, unexpected or wrongly shaped entries raise :class:`ConfigError` naming them.
        """
        entries = {
            k: _to_numpy(v)
            for k, v in sd.items()
            if not any(k.endswith(s) for s in self.ignored_state_dict_suffixes)
        }
        if by_order:
            entries = self._rename_by_order(entries)
        expected = {s.torch_name: s for s in (*self.layout, *self.buffers)}
        missing = [k for k in expected if k not in entries]
        unexpected = [k for k in entries if k not in expected]
        bad_shape = [
            f"{k} has shape {list(entries[k].shape)}, expected {list(s.shape)}"
            for k, s in expected.items()
            if k in entries and tuple(entries[k].shape) != s.shape
        ]
        if missing or unexpected or bad_shape:
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(unexpected))
            if bad_shape:
                parts.append("wrong shapes: " + "; ".join(bad_shape))
            raise ConfigError(
                f"state dict does not match model '{self.name}' ({'; '.join(parts)}). "
                f"Expected keys: {', '.join(expected)}."
            )
        params: Params = {}
        for spec in self.layout:
            _set(params, spec.path, _as_jax(entries[spec.torch_name], dtype))
        state: State = {}
        for spec in self.buffers:
            value = entries[spec.torch_name]
            if np.issubdtype(value.dtype, np.floating):
                _set(state, spec.path, _as_jax(value, dtype))
            else:
                _set(state, spec.path, jnp.asarray(value, dtype=jnp.int32))
        return params, state

    def _rename_by_order(self, entries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        param_keys = [k for k in entries if not k.endswith(_BN_BUFFER_SUFFIXES)]
        buffer_keys = [k for k in entries if k.endswith(_BN_BUFFER_SUFFIXES)]
        if len(param_keys) != len(self.layout) or len(buffer_keys) != len(self.buffers):
            raise ConfigError(
                f"state dict cannot be matched by order to model '{self.name}': it has "
                f"{len(param_keys)} parameter tensors and {len(buffer_keys)} buffers "
                f"({', '.join(entries)}), expected {len(self.layout)} and {len(self.buffers)}."
            )
        renamed: dict[str, np.ndarray] = {}
        for keys, specs in ((param_keys, self.layout), (buffer_keys, self.buffers)):
            for key, spec in zip(keys, specs, strict=True):
                if tuple(entries[key].shape) != spec.shape:
                    raise ConfigError(
                        f"state dict entry '{key}' (position of '{spec.torch_name}') has shape "
                        f"{list(entries[key].shape)}, expected {list(spec.shape)} "
                        f"for model '{self.name}'."
                    )
                renamed[spec.torch_name] = entries[key]
        return renamed


def _init(model: TorchLayoutModel, key: jax.Array, dtype: Any) -> tuple[Params, State]:
    specs = (*model.layout, *model.buffers)
    totals = {"uniform": 0, "normal": 0}
    for spec in specs:
        if spec.init[0] in totals:
            totals[spec.init[0]] += spec.size
    k_uniform, k_normal = jax.random.split(key)
    draws = {
        "uniform": jax.random.uniform(k_uniform, (totals["uniform"],), dtype, -1.0, 1.0),
        "normal": jax.random.normal(k_normal, (totals["normal"],), dtype),
    }
    used = {"uniform": 0, "normal": 0}
    trees: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for i, spec in enumerate(specs):
        kind, scale = spec.init
        if kind in draws:
            start = used[kind]
            used[kind] += spec.size
            value = scale * draws[kind][start : used[kind]].reshape(spec.shape)
        elif kind == "ones":
            value = jnp.ones(spec.shape, dtype)
        elif kind == "zeros":
            value = jnp.zeros(spec.shape, dtype)
        elif kind == "count":
            value = jnp.zeros(spec.shape, jnp.int32)
        else:
            raise ValueError(f"{model.name}: unknown init {spec.init!r} for {spec.torch_name}")
        _set(trees[0 if i < len(model.layout) else 1], spec.path, value)
    return trees


# Compiled once per (model, dtype): eagerly, every random draw and dummy-forward op would be
# compiled on its own, which costs seconds on a small CPU. Models are frozen dataclasses, hence
# hashable static arguments.
_jit_init = jax.jit(_init, static_argnums=(0, 2))


def _flatten(model: TorchLayoutModel, params: Params) -> jax.Array:
    return jnp.concatenate([jnp.ravel(_get(params, s.path)) for s in model.layout])


def _unflatten(model: TorchLayoutModel, vec: jax.Array) -> Params:
    params: Params = {}
    start = 0
    for spec in model.layout:
        leaf = vec[..., start : start + spec.size].reshape(vec.shape[:-1] + spec.shape)
        _set(params, spec.path, leaf)
        start += spec.size
    return params


# Jitted for the same reason as ``_jit_apply``; inside a trace they are inlined.
_jit_flatten = jax.jit(_flatten, static_argnums=0)
_jit_unflatten = jax.jit(_unflatten, static_argnums=0)


def _apply(
    model: TorchLayoutModel, params: Params, state: State, feats: jax.Array, train: bool
) -> Any:
    dtype = model.param_dtype(params)
    module = model.module(dtype)
    feats = cast_input(feats, dtype)
    if not model.buffers:
        return module.apply({"params": params}, feats, train=train)
    variables = {"params": params, "batch_stats": state}
    if train:
        logits, updated = module.apply(variables, feats, train=True, mutable=["batch_stats"])
        return logits, dict(updated["batch_stats"])
    return module.apply(variables, feats, train=False)


# A jit boundary around the forward pass: inside the engine's jit it is simply inlined, and
# called eagerly (notebooks, tests) it avoids compiling every primitive on its own.
_jit_apply = jax.jit(_apply, static_argnums=(0, 4))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_jax(value: np.ndarray, dtype: Any) -> jax.Array:
    # canonicalize: a float64 checkpoint without x64 becomes float32 quietly, as any jnp array
    return jnp.asarray(value, dtype=dtype or jax.dtypes.canonicalize_dtype(value.dtype))


def cast_input(x: jax.Array, dtype: Any) -> jax.Array:
    """Cast float inputs to the parameters' dtype so a float64 dataset never silently promotes a
    float32 model (or a float32 dataset truncates a float64 one)."""
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def declared(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Initializer of every ``self.param`` in the linen modules: zeros.

    The modules only *declare* parameters (names, shapes, dtype); their initial values come from
    ``Model.init``, which draws them as the layout's ``ParamSpec.init`` says. Keeping the
    distributions in the layout alone means there is one place that states them.
    """
    del key
    return jnp.zeros(shape, dtype)


class TorchLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` stored in PyTorch's ``[out, in]`` layout."""

    in_features: int
    out_features: int
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.out_features, self.in_features)
        w = self.param("weight", declared, shape, self.param_dtype)
        y = x @ w.T
        if self.use_bias:
            y = y + self.param("bias", declared, (self.out_features,), self.param_dtype)
        return y
