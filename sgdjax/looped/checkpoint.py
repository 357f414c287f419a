"""Checkpoints as ``.npz`` of named arrays.

Parameters are stored under their pytree paths joined with dots (``layers.attn.c_attn.kernel``,
``read_in.Dense_0.bias``; layer tensors keep their leading layer axis), optimiser state as its
leaves in tree order (``opt.0``, ``opt.1``, ...), training logs as ``log.<name>``. Reading
rebuilds the trees from a template of the same structure, so a checkpoint from a different
architecture is reported by name, not as a shape error deep inside JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sgdjax.errors import SgdjaxError


def named_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{dotted path: array}`` of a parameter pytree."""
    flat = traverse_util.flatten_dict(dict(params), sep=".")
    return {k: np.asarray(v) for k, v in flat.items()}


def params_from_named(template: Mapping[str, Any], arrays: Mapping[str, Any],
                      where: str) -> dict[str, Any]:
    """The pytree of ``template`` filled with ``arrays`` (float32), checked name by name."""
    want = traverse_util.flatten_dict(dict(template), sep=".")
    missing = [k for k in want if k not in arrays]
    bad = [f"{k}: {tuple(np.shape(arrays[k]))} instead of {tuple(v.shape)}"
           for k, v in want.items() if k in arrays and tuple(np.shape(arrays[k])) != v.shape]
    if missing or bad:
        detail = "; ".join(([f"missing {', '.join(missing[:5])}"] if missing else []) + bad[:5])
        raise SgdjaxError(f"{where} does not match this setup's model ({detail}). It was written "
                          "for another architecture: use --out DIR for this config or --force "
                          "to retrain.")
    filled = {k: jnp.asarray(arrays[k], jnp.float32) for k in want}
    return traverse_util.unflatten_dict(filled, sep=".")


def opt_arrays(opt_state: Any) -> dict[str, np.ndarray]:
    return {f"opt.{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(opt_state))}


def opt_from_arrays(template: Any, arrays: Mapping[str, Any], where: str) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    try:
        restored = [jnp.asarray(arrays[f"opt.{i}"], leaf.dtype).reshape(leaf.shape)
                    for i, leaf in enumerate(leaves)]
    except (KeyError, ValueError, TypeError):
        raise SgdjaxError(f"{where}: the optimiser state does not match this setup; use --force "
                          "to retrain from scratch.") from None
    return jax.tree.unflatten(treedef, restored)


__all__ = ["named_params", "opt_arrays", "opt_from_arrays", "params_from_named"]
