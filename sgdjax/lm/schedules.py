"""Learning-rate schedules as functions of the optimizer step count (spec §1.3-§1.5).

Every schedule is ``lr * shape(step)`` or, for the seed's custom schedules, a function of the
learning rate and the step, so that a sweep can ``vmap`` over a traced ``lr``. Steps count
*optimizer* updates (after gradient accumulation), starting at 0 for the first update, like a
PyTorch ``LambdaLR`` stepped once per update.

Hugging Face's built-ins (``transformers.get_scheduler``):

* ``linear``: ``lr * s / w`` for ``s < w``, then ``lr * max(0, (T - s) / (T - w))``;
* ``cosine``: the same warm-up, then ``lr * max(0, (1 + cos(pi * (s - w) / (T - w))) / 2)``
  (not clamped at ``T``: past the horizon it rises again, as HF's does);
* ``constant``: ``lr`` at every step -- HF ignores the warm-up for this type;
* ``constant_with_warmup``: ``lr * min(1, s / w)``.

``w = ceil(warmup_ratio * T)`` unless ``warmup_steps`` is given, ``T`` the horizon (the run's step
budget, or one epoch -- see ``ScheduleConfig.horizon``).

The seed's manual schedules (the learning rate is LR_MIN; the schedule multiplies it):

* ``triangular`` ("v1"): ramp LR_MIN -> LR_MAX over steps 0..up_end (50), hold LR_MAX until
  hold_end (1300), linear decay to LR_MIN at down_end (1800), then a triangle wave between LR_MIN
  and LR_MAX: up over half_period (400) steps, down over the next half_period, repeated.
* ``step_down`` ("v2"): ramp LR_MIN -> LR_MAX over 0..up_end, hold until hold_end, linear decay to
  LR_MIN at down_end, then constant LR_MIN. The final "v2.4": LR_MIN 7e-5, LR_MAX 7e-4, 10, 450,
  2000 (step 1764 -> 1.66e-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sgdjax.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]

#: The seed's values: (lr_max, up_end, hold_end, down_end, half_period); LR_MIN is optim.lr.
SEED_DEFAULTS: dict[str, tuple[float, int, int, int, int]] = {
    "triangular": (5e-4, 50, 1300, 1800, 400),  # v1, lr_min 5e-5
    "step_down": (7e-4, 10, 450, 2000, 400),  # v2.4, lr_min 7e-5 (half_period unused)
}


class CustomParams(NamedTuple):
    lr_max: float
    up_end: int
    hold_end: int
    down_end: int
    half_period: int


def custom_params(cfg: object, lr: float) -> CustomParams:
    """The breakpoints of a ``triangular`` / ``step_down`` schedule config, checked."""
    kind = cfg.kind  # type: ignore[attr-defined]
    base = SEED_DEFAULTS[kind]
    names = ("lr_max", "up_end", "hold_end", "down_end", "half_period")
    vals = [base[i] if getattr(cfg, n) is None else getattr(cfg, n) for i, n in enumerate(names)]
    out = CustomParams(float(vals[0]), *(int(v) for v in vals[1:]))
    if not 0 <= out.up_end <= out.hold_end <= out.down_end:
        raise ConfigError(
            f"schedule {kind}: need 0 <= up_end <= hold_end <= down_end, got up_end="
            f"{out.up_end}, hold_end={out.hold_end}, down_end={out.down_end}.")
    if out.half_period < 1:
        raise ConfigError(f"schedule.half_period must be positive, got {out.half_period}.")
    if out.lr_max < lr:
        raise ConfigError(f"schedule {kind}: lr_max={out.lr_max} is below the learning rate "
                          f"(LR_MIN) optim.lr={lr}; raise schedule.lr_max or lower optim.lr.")
    return out


def _ramp(s: jax.Array, start: float, stop: float, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Linear from ``lo`` at ``start`` to ``hi`` at ``stop``, clipped to the segment."""
    if stop <= start:
        return jnp.where(s >= stop, hi, lo)
    frac = jnp.clip((s - start) / (stop - start), 0.0, 1.0)
    return lo + (hi - lo) * frac


def step_down(step: jax.Array, lr_min: jax.Array, p: CustomParams) -> jax.Array:
    """The seed's v2 schedule at ``step``."""
    s = jnp.asarray(step, jnp.float32)
    lr_min = jnp.asarray(lr_min, jnp.float32)
    up = _ramp(s, 0.0, p.up_end, lr_min, jnp.float32(p.lr_max))
    down = _ramp(s, p.hold_end, p.down_end, jnp.float32(p.lr_max), lr_min)
    return jnp.where(s < p.up_end, up, jnp.where(s < p.hold_end, p.lr_max, down))


def triangular(step: jax.Array, lr_min: jax.Array, p: CustomParams) -> jax.Array:
    """The seed's v1 schedule at ``step``: v2's shape, then a triangle wave after down_end."""
    s = jnp.asarray(step, jnp.float32)
    lr_min = jnp.asarray(lr_min, jnp.float32)
    u = jnp.mod(s - p.down_end, 2 * p.half_period)
    wave = jnp.where(u < p.half_period,
                     _ramp(u, 0.0, p.half_period, lr_min, jnp.float32(p.lr_max)),
                     _ramp(u, p.half_period, 2 * p.half_period, jnp.float32(p.lr_max), lr_min))
    return jnp.where(s < p.down_end, step_down(s, lr_min, p), wave)


def warmup_count(ratio: float, steps: int | None, horizon: int) -> int:
    """HF: ``warmup_steps`` if given, else ``ceil(warmup_ratio * horizon)``."""
    return int(steps) if steps is not None else math.ceil(ratio * horizon)


def hf_shape(kind: str, step: jax.Array, warmup: int, total: int) -> jax.Array:
    """The multiplier of HF's ``linear`` / ``cosine`` / ``constant`` / ``constant_with_warmup``."""
    s = jnp.asarray(step, jnp.float32)
    if kind == "constant":
        return jnp.ones_like(s)
    warm = s / max(1, warmup)
    if kind == "constant_with_warmup":
        return jnp.where(s < warmup, warm, 1.0)
    progress = (s - warmup) / max(1, total - warmup)
    if kind == "linear":
        after = jnp.maximum(0.0, (total - s) / max(1, total - warmup))
    elif kind == "cosine":
        after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    else:
        raise ConfigError(f"unknown schedule kind {kind!r}")
    return jnp.where(s < warmup, warm, after)


def make_schedule(cfg: object, lr: jax.Array | float, horizon: int) -> Schedule:
    """``step -> learning rate`` for a :class:`~sgdjax.lm.config.ScheduleConfig`.

    ``lr`` may be traced (sweeps vmap over it); ``horizon`` is the number of optimizer steps
    the decaying schedules and ``warmup_ratio`` refer to."""
    kind = cfg.kind  # type: ignore[attr-defined]
    if kind in SEED_DEFAULTS:
        p = custom_params(cfg, 0.0)
        if kind == "step_down":
            return lambda step: step_down(step, lr, p)
        return lambda step: triangular(step, lr, p)
    warmup = warmup_count(cfg.warmup_ratio, cfg.warmup_steps, horizon)  # type: ignore[attr-defined]
    return lambda step: jnp.asarray(lr, jnp.float32) * hf_shape(kind, step, warmup, horizon)


__all__ = ["SEED_DEFAULTS", "CustomParams", "custom_params", "hf_shape", "make_schedule",
           "step_down", "triangular", "warmup_count"]
