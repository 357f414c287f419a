"""The three-counter curriculum (dims, points, loops) as functions of the traced step.

``value(step) = min(end, start + inc * floor(step / interval))``, updated after every optimiser
step as in the original. Computed from the step inside the compiled training step, so the
curriculum advances without recompiling: prompts are generated at the largest shape (the
``end`` values) and the live part is masked (coordinates beyond ``d`` are zero, points beyond
``n`` are padding after the prompt that causal attention cannot see and the loss ignores; the
loop count is a trip count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from sgdjax.errors import ConfigError


@dataclass(frozen=True)
class Counter:
    """One curriculum counter."""

    start: int = 1
    end: int = 1
    inc: int = 0
    interval: int = 1

    def check(self, name: str) -> None:
        if self.interval < 1 or self.inc < 0 or self.start > self.end or self.start < 0:
            raise ConfigError(
                f"training.curriculum.{name} = (start={self.start}, end={self.end}, "
                f"inc={self.inc}, interval={self.interval}) is not a valid counter: it needs "
                "0 <= start <= end, inc >= 0 and interval >= 1.")

    def value(self, step: jax.Array | int) -> jax.Array:
        """The counter after ``step`` optimiser steps (int32; ``step`` may be traced)."""
        step = jnp.asarray(step, jnp.int32)
        return jnp.minimum(self.end, self.start + self.inc * (step // self.interval)).astype(
            jnp.int32)

    def at(self, step: int) -> int:
        """The same value on the host (Python ints, for summaries and schedules)."""
        return min(self.end, self.start + self.inc * (int(step) // self.interval))


@dataclass(frozen=True)
class Curriculum:
    """Live input dimension ``d``, points per prompt ``n`` and loop count ``K``."""

    dims: Counter = field(default_factory=lambda: Counter(5, 20, 1, 5000))
    points: Counter = field(default_factory=lambda: Counter(11, 41, 2, 5000))
    loops: Counter = field(default_factory=lambda: Counter(15, 30, 2, 500))

    def check(self) -> None:
        for name in ("dims", "points", "loops"):
            getattr(self, name).check(name)
        if self.dims.start < 1 or self.points.start < 1 or self.loops.start < 1:
            raise ConfigError("training.curriculum: dims, points and loops must start at 1 or "
                              "more.")

    def values(self, step: jax.Array | int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(d, n, K)`` at ``step``."""
        return self.dims.value(step), self.points.value(step), self.loops.value(step)


__all__ = ["Counter", "Curriculum"]
