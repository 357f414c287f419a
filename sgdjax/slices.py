"""A function of a batch computed slice by slice along the batch's leading axis, in one loop
inside the compiled call.

Large batches (a validation pass, a full-batch GD step of the CNN) run faster in slices whose
intermediates stay in cache. Each slice is taken inside the loop (``dynamic_slice``): reshaping
the batch into ``[n_slices, size, ...]`` would copy all of it first whenever ``size`` does not
divide it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def map_slices(fn: Callable[..., Any], *arrays: jax.Array, size: int) -> tuple[Any, Any]:
    """``(full, tail)``: ``fn`` of every whole slice of ``size`` rows of ``arrays`` (stacked
    along a new leading axis, None if there is none) and of the remaining rows (None if
    ``size`` divides the batch)."""
    n = arrays[0].shape[0]
    n_full, rest = divmod(n, size)

    def one(i: jax.Array) -> Any:
        return fn(*(lax.dynamic_slice_in_dim(a, i * size, size) for a in arrays))

    full = lax.map(one, jnp.arange(n_full)) if n_full else None
    tail = fn(*(a[n_full * size:] for a in arrays)) if rest else None
    return full, tail


def join_slices(fn: Callable[..., Any], *arrays: jax.Array, size: int) -> Any:
    """``fn(*arrays)`` for an ``fn`` whose outputs are per row (pytrees of arrays with the
    batch's leading axis), computed by :func:`map_slices` and joined in row order."""
    full, tail = map_slices(fn, *arrays, size=size)
    parts = []
    if full is not None:
        parts.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), full))
    if tail is not None:
        parts.append(tail)
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *parts)
