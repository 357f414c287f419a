"""Per-step diagnostics of the optimizer-dynamics study, computed inside the compiled step.

:func:`make_step_extras` returns the engine's ``step_extras`` hook. On a logging step (steps
``0 .. log_first-1`` and every ``log_every``-th) it computes every quantity below; on other steps
it returns NaN without computing anything (a ``lax.cond`` on the step index, which is not batched
under ``vmap``, so sweeps skip the work too). The host keeps the logged steps
(:func:`logged_steps`).

=====================  =====================================================================
key                    definition
=====================  =====================================================================
train.loss, train.acc  BCE and accuracy of the step's minibatch, before the update
val.loss, val.acc      BCE and accuracy on the whole validation split, after the update
grad.*                 L2 norm of the gradient the optimiser used (after clipping, if any)
param.*                L2 norm of the parameters after the update
update.*               L2 norm of the update the optimiser applied (``θ_after − θ_before`` as
                       the optimiser computed it, before float rounding of the addition)
eff_step.*             ``update.* / (grad.* + 1e-12)``; exactly lr for plain SGD
logits.mean, .std      over the minibatch logits (population std), before the update
sat_rate               share of minibatch logits with ``|logit| > sat_logit_thr``
z1.mean, z1.std        hidden pre-activations of the minibatch
active_frac            share of positive hidden pre-activations (active ReLUs)
=====================  =====================================================================

``*`` is ``global`` (all parameters) or a layer (``fc1``, ``fc2``: weight and bias together).
Per-layer update norms and effective steps extend the reference's global ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.engine.trajectory import StepExtras, StepInfo
from sgdjax.models.moons_mlp import MoonsMLP, bce_with_logits
from sgdjax.optdyn.optimizers import clip_global_norm

TINY = 1e-12  # keeps the effective step finite for a zero gradient


@dataclass(frozen=True)
class LogSpec:
    """When and what to log."""

    every: int = 50
    first: int = 10
    sat_logit_thr: float = 8.0
    clip_norm: float | None = None  # to report the gradient the optimiser really used


def diagnostic_keys(layers: tuple[str, ...] = ("fc1", "fc2")) -> tuple[str, ...]:
    """Every record name, in a stable order."""
    parts = ("global", *layers)
    return (
        "train.loss", "train.acc", "val.loss", "val.acc",
        *(f"{kind}.{p}" for kind in ("grad", "param", "update", "eff_step") for p in parts),
        "logits.mean", "logits.std", "sat_rate", "z1.mean", "z1.std", "active_frac",
    )


def logged_steps(num_steps: int, log_first: int, log_every: int) -> np.ndarray:
    """Global step indices that are logged: ``0 .. log_first-1`` and multiples of ``log_every``
    below ``num_steps`` (ascending, int64)."""
    steps = np.arange(num_steps)
    return steps[(steps < log_first) | (steps % log_every == 0)]


def is_logged(step: jax.Array, log_first: int, log_every: int) -> jax.Array:
    """The traced counterpart of :func:`logged_steps` for one step."""
    return (step < log_first) | (step % log_every == 0)


def l2(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v * v))


def _acc(logit: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(((logit > 0) == (y > 0)).astype(logit.dtype))


def diagnostics(model: MoonsMLP, spec: LogSpec, info: StepInfo) -> dict[str, jax.Array]:
    """All diagnostics of one step (see the module docstring), as float scalars."""
    logit, z1, _ = model.forward(info.params, info.x)
    g = clip_global_norm(info.grad, spec.clip_norm)
    parts = {"global": (0, info.params.shape[0]), **model.layers}
    out: dict[str, jax.Array] = {
        "train.loss": info.loss,
        "train.acc": _acc(logit, info.y),
    }
    data = info.data
    val_logit, _, _ = model.forward(info.new_params, data.val_x)
    out["val.loss"] = bce_with_logits(val_logit, data.val_y)
    out["val.acc"] = _acc(val_logit, data.val_y)
    for name, (a, b) in parts.items():
        out[f"grad.{name}"] = l2(g[a:b])
        out[f"param.{name}"] = l2(info.new_params[a:b])
        out[f"update.{name}"] = l2(info.updates[a:b])
    for name in parts:
        out[f"eff_step.{name}"] = out[f"update.{name}"] / (out[f"grad.{name}"] + TINY)
    out["logits.mean"] = jnp.mean(logit)
    out["logits.std"] = jnp.std(logit)
    out["sat_rate"] = jnp.mean((jnp.abs(logit) > spec.sat_logit_thr).astype(logit.dtype))
    out["z1.mean"] = jnp.mean(z1)
    out["z1.std"] = jnp.std(z1)
    out["active_frac"] = jnp.mean((z1 > 0).astype(z1.dtype))
    dtype = info.params.dtype
    return {k: out[k].astype(dtype) for k in diagnostic_keys(tuple(model.layers))}


def make_step_extras(model: MoonsMLP, spec: LogSpec) -> StepExtras:
    """The engine hook: diagnostics on logging steps, NaN elsewhere."""
    keys = diagnostic_keys(tuple(model.layers))

    def extras(info: StepInfo) -> dict[str, jax.Array]:
        dtype = info.params.dtype

        def skip(_: StepInfo) -> dict[str, jax.Array]:
            return {k: jnp.full((), jnp.nan, dtype) for k in keys}

        return jax.lax.cond(is_logged(info.step, spec.first, spec.every),
                            lambda i: diagnostics(model, spec, i), skip, info)

    return extras
