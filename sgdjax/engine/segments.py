"""One long run as a sequence of compiled calls.

Stages 1 and 2 train a single run for up to 10⁶ steps. Splitting it into calls of ``seg`` steps
(each one ``lax.scan``; one compilation per distinct length) gives progress, resume points and
bounded record memory, and changes nothing numerically: samplers and curvature keys depend on the
global step index that each call receives as ``start``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from sgdjax.engine.trajectory import Data, Trajectory


def segment_length(target: int, *units: int) -> int:
    """The segment length nearest below ``target`` that is a multiple of every nonzero unit
    (validation cadence, curvature cadence), so that cadences stay aligned to global steps."""
    unit = math.lcm(*[u for u in units if u] or [1])
    return max(unit, target // unit * unit)


def run_segments(
    build: Callable[[int], Callable[..., Trajectory]],
    w: jax.Array,
    state: Any,
    key: jax.Array,
    lr: jax.Array,
    data: Data,
    *,
    start: int,
    total: int,
    seg: int,
    on_segment: Callable[[int, int, dict[str, np.ndarray], jax.Array, Any], None],
    opt_state: Any = None,
) -> tuple[jax.Array, Any, int, Any]:
    """Run steps ``start .. total-1`` in calls of ``seg`` steps; ``build(n)`` makes the
    trajectory of ``n`` steps. After each call ``on_segment(first, n, records, w, state)``
    receives the numpy records and the end point. The optimiser state (momentum, Adam moments)
    is carried from call to call (``opt_state`` resumes one; None starts fresh). Stops after the
    call in which the run diverged. Returns ``(w, state, diverged_at, opt_state)`` with
    ``diverged_at = -1`` for a finite run."""
    fns: dict[int, Callable[..., Trajectory]] = {}
    done = start
    while done < total:
        n = min(seg, total - done)
        if n not in fns:
            fns[n] = jax.jit(build(n))
        traj = fns[n](w, state, key, lr, data, done, opt_state)
        w, state, opt_state = traj.params, traj.state, traj.opt_state
        on_segment(done, n, jax.tree.map(np.asarray, traj.records), w, state)
        done += n
        diverged_at = int(traj.diverged_at)
        if diverged_at >= 0:
            return w, state, diverged_at, opt_state
    return w, state, -1, opt_state
