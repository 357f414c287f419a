"""The 2 → 128 → 1 MLP of the optimizer-dynamics study, with binary cross-entropy on logits.

``z1 = W1 x + b1``, ``a1 = act(z1)``, ``logit = W2 a1 + b2``. Parameters in PyTorch layout and
order, so the flat vector is ``model.parameters()`` of the equivalent ``nn.Sequential``:

=============  ==========  ================
name           shape       flat indices
=============  ==========  ================
fc1.weight     [128, 2]    [0..255]
fc1.bias       [128]       [256..383]
fc2.weight     [1, 128]    [384..511]
fc2.bias       [1]         [512]
=============  ==========  ================

Two initialisations: ``torch_default`` (PyTorch's Linear default, weights and biases
``U(±1/√fan_in)``; expected initial norm ≈ 8.0, the scheme that produced the reference runs)
and ``he`` (``W1 ~ N(0, 2/fan_in)`` for ReLU, ``W2 ~ N(0, 1/fan_in)`` with the linear gain,
zero biases; expected initial norm ≈ √257 ≈ 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.models.base import ParamSpec, TorchLayoutModel, TorchLinear

Activation = Literal["relu", "leakyrelu", "gelu", "tanh"]
Init = Literal["torch_default", "he"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leakyrelu": lambda z: jax.nn.leaky_relu(z, negative_slope=0.01),
    # PyTorch's nn.GELU() is the exact (erf) form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "tanh": jnp.tanh,
}
INITS: tuple[str, ...] = ("torch_default", "he")


class MoonsMLPModule(nn.Module):
    """Linear → activation → Linear; returns ``[N, 1]`` logits."""

    in_features: int
    hidden: int
    activation: str
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout, no BatchNorm
        z1 = TorchLinear(self.in_features, self.hidden, param_dtype=self.param_dtype,
                         name="fc1")(x)
        return TorchLinear(self.hidden, 1, param_dtype=self.param_dtype,
                           name="fc2")(ACTIVATIONS[self.activation](z1))


@dataclass(frozen=True)
class MoonsMLP(TorchLayoutModel):
    """MLP ``in_features → hidden → 1``; defaults give the study's 513-parameter model."""

    hidden: int = 128
    activation: str = "relu"
    init_scheme: str = "torch_default"
    in_features: int = 2
    name: str = "moons_mlp"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation '{self.activation}'; choose one of "
                f"{', '.join(ACTIVATIONS)}.{did_you_mean(self.activation, ACTIVATIONS)}"
            )
        if self.init_scheme not in INITS:
            raise ConfigError(
                f"unknown init '{self.init_scheme}'; choose one of {', '.join(INITS)}."
                f"{did_you_mean(self.init_scheme, INITS)}"
            )
        if self.hidden < 1 or self.in_features < 1:
            raise ConfigError(f"the MLP needs positive sizes, got in_features="
                              f"{self.in_features}, hidden={self.hidden}.")

    @property
    def layout(self) -> tuple[ParamSpec, ...]:
        d, h = self.in_features, self.hidden
        if self.init_scheme == "he":
            # Kaiming-normal: gain √2 for the ReLU layer, gain 1 for the linear read-out.
            w1, b1 = ("normal", math.sqrt(2.0 / d)), ("zeros", 0.0)
            w2, b2 = ("normal", 1.0 / math.sqrt(h)), ("zeros", 0.0)
        else:
            w1 = b1 = ("uniform", 1.0 / math.sqrt(d))
            w2 = b2 = ("uniform", 1.0 / math.sqrt(h))
        return (
            ParamSpec("fc1.weight", ("fc1", "weight"), (h, d), w1),
            ParamSpec("fc1.bias", ("fc1", "bias"), (h,), b1),
            ParamSpec("fc2.weight", ("fc2", "weight"), (1, h), w2),
            ParamSpec("fc2.bias", ("fc2", "bias"), (1,), b2),
        )

    @property
    def layers(self) -> dict[str, tuple[int, int]]:
        """``layer -> (start, stop)`` in the flat vector, weight and bias together."""
        off = self.offsets()
        return {name: (off[f"{name}.weight"][0], off[f"{name}.bias"][1])
                for name in ("fc1", "fc2")}

    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return MoonsMLPModule(self.in_features, self.hidden, self.activation,
                              param_dtype=param_dtype)

    def example_features(self, batch: int, dtype: Any = jnp.float32) -> jax.Array:
        return jnp.zeros((batch, self.in_features), dtype=dtype)

    def forward(self, w: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(logit [N], z1 [N, hidden], a1 [N, hidden])`` from the flat vector ``w``.

        The hidden pre-activations come out too, for the activation diagnostics."""
        p = self.unflatten(w)
        z1 = x.astype(w.dtype) @ p["fc1"]["weight"].T + p["fc1"]["bias"]
        a1 = ACTIVATIONS[self.activation](z1)
        logit = a1 @ p["fc2"]["weight"][0] + p["fc2"]["bias"][0]
        return logit, z1, a1


def bce_with_logits(logit: jax.Array, y: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of labels ``y`` in {0, 1} given logits (PyTorch's
    ``BCEWithLogitsLoss``): ``log(1 + e^l) - y·l``, stable for large ``|l|``."""
    y = y.astype(logit.dtype)
    return jnp.mean(jnp.logaddexp(0.0, logit) - y * logit)


def n_correct(logit: jax.Array, y: jax.Array) -> jax.Array:
    """Number of points whose predicted class (``logit > 0``) is the label (int32)."""
    return jnp.sum((logit > 0) == (y > 0)).astype(jnp.int32)


def make_bce_loss(
    model: MoonsMLP,
) -> Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, jax.Array]]]:
    """``f(w, state, x, y) -> (loss, (state, n_correct))``, the engine's loss signature."""

    def loss_fn(w: jax.Array, state: Any, x: jax.Array, y: jax.Array
                ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        logit, _, _ = model.forward(w, x)
        return bce_with_logits(logit, y), (state, n_correct(logit, y))

    return loss_fn
