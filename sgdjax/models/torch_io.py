"""Reading and writing PyTorch checkpoints of the original project.

torch is imported lazily: it is only needed here, and only to read ``.pt`` files.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from sgdjax.errors import ConfigError, SgdjaxError
from sgdjax.models.base import Params, State, TorchLayoutModel

_NESTED_KEYS = ("model_state_dict", "state_dict")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise SgdjaxError(
            "Reading or writing PyTorch checkpoints needs torch: `pip install torch` "
            "(the CPU build is enough)."
        ) from exc
    return torch


def _extract_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
        if all(hasattr(v, "shape") for v in obj.values()):
            return obj
    raise ConfigError(
        f"{path}: not a PyTorch state dict; expected a dict of tensors or a dict with a "
        f"'model_state_dict' or 'state_dict' entry (found {type(obj).__name__}"
        + (f" with keys {', '.join(map(str, obj))}" if isinstance(obj, Mapping) else "")
        + ")."
    )


def load_torch_checkpoint(
    path: str | os.PathLike[str],
    model: TorchLayoutModel,
    *,
    dtype: Any = None,
    weights_only: bool = True,
) -> tuple[Params, State]:
    """Params and state from a checkpoint written by ``torch.save(model.state_dict())`` (or a dict
    holding it under ``model_state_dict``/``state_dict``).

    Tensors are matched by name; when the names differ from ours (e.g. the original's MLP
    attribute names) but the tensors' number, order and shapes match, they are matched by
    position with a warning. ``weights_only=False`` allows arbitrary pickled objects -- only for
    files you trust.
    """
    torch = _import_torch()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SgdjaxError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        raise SgdjaxError(
            f"{path}: torch refused to unpickle it with weights_only=True ({exc}). If you trust "
            "the file, load it with weights_only=False."
        ) from exc
    sd = {k: _tensor_to_numpy(v) for k, v in _extract_state_dict(obj, path).items()}
    try:
        return model.from_state_dict(sd, dtype=dtype)
    except ConfigError as by_name:
        try:
            result = model.from_state_dict(sd, dtype=dtype, by_order=True)
        except ConfigError:
            raise by_name from None
        warnings.warn(
            f"{path}: state-dict names differ from model '{model.name}' "
            f"({', '.join(sd)}); matched tensors by position and shape.",
            stacklevel=2,
        )
        return result


def save_torch_state_dict(
    path: str | os.PathLike[str], model: TorchLayoutModel, params: Params, state: State
) -> None:
    """Write params and state as a PyTorch state dict (``torch.save``), readable by the original
    modules with the same names (see each model's docstring)."""
    torch = _import_torch()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in model.to_state_dict(params, state).items()}
    torch.save(sd, os.fspath(path))


def _tensor_to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        # numpy has no bfloat16; widen such tensors rather than fail.
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return value
