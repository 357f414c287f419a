"""Models of the original project, with parameters in PyTorch layout (see :mod:`.base`).

``build_model("mlp" | "cnn" | "nanogpt", **kwargs)`` returns a model object implementing the
protocol of :class:`~sgdjax.models.base.TorchLayoutModel`.
"""

from __future__ import annotations

from typing import Any

from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.models.base import Params, ParamSpec, State, TorchLayoutModel
from sgdjax.models.cnn import CNN
from sgdjax.models.mlp import MLP, adaptive_avg_pool2d, adaptive_avg_pool_matrix
from sgdjax.models.moons_mlp import MoonsMLP
from sgdjax.models.nanogpt import NanoGPT
from sgdjax.models.objective import cross_entropy, make_loss_fn, num_correct
from sgdjax.models.torch_io import load_torch_checkpoint, save_torch_state_dict

Model = TorchLayoutModel

MODELS: dict[str, type[TorchLayoutModel]] = {"mlp": MLP, "cnn": CNN, "nanogpt": NanoGPT,
                                             "moons_mlp": MoonsMLP}


def build_model(name: str, **kwargs: Any) -> TorchLayoutModel:
    """The model called ``name`` with hyper-parameters ``kwargs`` (defaults: the spec's models)."""
    if name not in MODELS:
        raise ConfigError(
            f"unknown model '{name}'.{did_you_mean(name, MODELS)} Allowed: {', '.join(MODELS)}."
        )
    cls = MODELS[name]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        import dataclasses

        allowed = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        bad = [k for k in kwargs if k not in allowed]
        hints = "".join(did_you_mean(k, allowed) for k in bad)
        raise ConfigError(
            f"model '{name}': invalid option(s) {', '.join(bad) or str(exc)}.{hints} "
            f"Allowed: {', '.join(allowed)}."
        ) from exc


__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "MoonsMLP",
    "Model",
    "NanoGPT",
    "ParamSpec",
    "Params",
    "State",
    "TorchLayoutModel",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool_matrix",
    "build_model",
    "cross_entropy",
    "load_torch_checkpoint",
    "make_loss_fn",
    "num_correct",
    "save_torch_state_dict",
]
