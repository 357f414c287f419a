"""The study's optimisers as optax update rules, in PyTorch's formulas.

==============  ============================================================================
name            update (g: gradient, after optional global-norm clipping)
==============  ============================================================================
sgd             θ ← θ − lr·(g + wd·θ)
sgd_momentum    v ← μ·v + (g + wd·θ);  θ ← θ − lr·v          (heavy ball, no dampening)
                Nesterov: θ ← θ − lr·(g + wd·θ + μ·v)         (v already updated)
adam            Adam with coupled L2 (g + wd·θ), eps added to √v̂ (PyTorch ``Adam``)
adamw           Adam with decoupled decay: θ ← θ − lr·(adam step + wd·θ) (PyTorch ``AdamW``)
==============  ============================================================================

optax's ``sgd(momentum=μ)`` keeps ``v ← g + μ·v`` starting from ``v = 0``, which is PyTorch's
buffer (initialised to the first gradient) step for step; its Nesterov form adds ``μ·v`` to the
gradient after the buffer update, as PyTorch does. ``sgd_momentum`` with μ = 0 is plain SGD.

Clipping follows optax's ``clip_by_global_norm``: ``g·c/‖g‖`` when ``‖g‖ ≥ c`` (PyTorch's
``clip_grad_norm_`` divides by ``‖g‖ + 1e-6`` instead, a relative difference below 1e-6/‖g‖).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from sgdjax.engine.trajectory import UpdateRule
from sgdjax.errors import ConfigError, did_you_mean

OPTIMIZERS: tuple[str, ...] = ("sgd", "sgd_momentum", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser with every hyper-parameter but the learning rate (which sweeps vmap)."""

    name: str = "sgd"
    momentum: float = 0.9  # sgd_momentum only
    nesterov: bool = False  # sgd_momentum only
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer '{self.name}'; choose one of {', '.join(OPTIMIZERS)}."
                f"{did_you_mean(self.name, OPTIMIZERS)}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}.")
        if self.nesterov and self.name != "sgd_momentum":
            raise ConfigError(f"nesterov applies to sgd_momentum only, not to '{self.name}'.")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs momentum > 0 (PyTorch refuses it too).")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ConfigError(f"Adam betas must lie in [0, 1), got ({self.b1}, {self.b2}).")
        if self.eps < 0 or self.weight_decay < 0:
            raise ConfigError(f"eps and weight_decay must be non-negative, got eps={self.eps}, "
                              f"weight_decay={self.weight_decay}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive (or left out for no clipping), got "
                              f"{self.clip_norm}.")

    @property
    def label(self) -> str:
        """A short file-name-safe name: ``sgd``, ``momentum0.9``, ``nesterov0.9``, ``adam``."""
        if self.name == "sgd_momentum":
            return f"{'nesterov' if self.nesterov else 'momentum'}{self.momentum:g}"
        return self.name


def clip_global_norm(g: jax.Array, clip_norm: float | None) -> jax.Array:
    """The gradient the optimiser uses: ``g`` itself, or ``g·c/‖g‖`` when ``‖g‖ ≥ c``
    (the formula of ``optax.clip_by_global_norm``, for the diagnostics)."""
    if clip_norm is None:
        return g
    norm = jnp.sqrt(jnp.sum(g * g))
    return jnp.where(norm < clip_norm, g, g / norm * clip_norm)


def make_update_rule(spec: OptimizerSpec) -> UpdateRule:
    """``lr -> optax transformation`` (``lr`` may be traced: sweeps vmap over it)."""

    def rule(lr: jax.Array) -> optax.GradientTransformation:
        parts: list[optax.GradientTransformation] = []
        if spec.clip_norm is not None:
            parts.append(optax.clip_by_global_norm(spec.clip_norm))
        if spec.weight_decay and spec.name != "adamw":
            parts.append(optax.add_decayed_weights(spec.weight_decay))  # coupled L2
        if spec.name == "sgd":
            parts.append(optax.sgd(lr))
        elif spec.name == "sgd_momentum":
            parts.append(optax.sgd(lr, momentum=spec.momentum, nesterov=spec.nesterov))
        elif spec.name == "adam":
            parts.append(optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps))
        else:
            parts.append(optax.adamw(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps,
                                     weight_decay=spec.weight_decay))
        return parts[0] if len(parts) == 1 else optax.chain(*parts)

    return rule
