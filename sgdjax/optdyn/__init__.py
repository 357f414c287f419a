"""Optimizer dynamics: SGD, momentum and Adam on make_moons, diagnosed through their logs.

A 2 → 128 → 1 MLP trained with several optimisers; every logged step records gradient,
parameter and update norms (global and per layer), the effective step ‖update‖/‖grad‖, logit
saturation and train/validation loss and accuracy, all computed inside the compiled call.
Run as ``python -m sgdjax.run optdyn SETUP`` (setups in ``experiments/optdyn/``).

Stages: 1 ``train`` (the setup's runs, compared on shared plots), 2 ``sweep`` (each optimiser's
lr grid × seeds as one vmapped call).
"""

from __future__ import annotations

from collections.abc import Sequence

from sgdjax.optdyn.config import EXECUTION_KEYS, Config
from sgdjax.optdyn.context import Context, make_context
from sgdjax.stages import Stage

STAGES: tuple[Stage, ...] = (
    Stage(1, "train", "sgdjax.optdyn.stages.train",
          "the setup's runs (train.optimizers at train.lrs) with every diagnostic"),
    Stage(2, "sweep", "sgdjax.optdyn.stages.sweep",
          "each optimizer's lr grid x seeds as one vmapped call; final val accuracy vs lr"),
)


def load_config(experiment: str, setup: str, overrides: Sequence[str] = ()) -> Config:
    """The setup's config: ``_defaults.toml``, then ``SETUP.toml``, then ``--set`` overrides."""
    from sgdjax.nested_config import load_nested

    return load_nested(Config, experiment, setup, overrides)


__all__ = ["EXECUTION_KEYS", "STAGES", "Config", "Context", "load_config", "make_context"]
