"""Study families: which package runs which experiment folder.

Every family is a package exposing the same four names, so the CLI, the store and the manifest
treat all studies alike:

* ``load_config(experiment, setup, overrides) -> cfg`` -- a frozen dataclass with
  ``experiment``, ``setup``, ``description``, ``device``, ``x64`` and ``to_dict()``;
* ``STAGES`` -- :class:`sgdjax.stages.Stage` entries in pipeline order;
* ``make_context(cfg, store, *, force, show_progress, device)`` -- what the stages share;
* ``EXECUTION_KEYS`` -- dotted config keys that do not change any result.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sgdjax.config import EXPERIMENTS_DIR, list_experiments
from sgdjax.errors import ConfigError, did_you_mean

#: experiment folder under ``experiments/`` -> family package.
FAMILIES: dict[str, str] = {
    "exp1": "sgdjax.stages",
    "exp2": "sgdjax.stages",
    "optdyn": "sgdjax.optdyn",
    "looped": "sgdjax.looped",
    "lm": "sgdjax.lm",
}

_REQUIRED = ("load_config", "STAGES", "make_context", "EXECUTION_KEYS")


def family_for(experiment: str) -> ModuleType:
    """The family package that runs ``experiment`` (a folder of ``experiments/``)."""
    name = FAMILIES.get(experiment)
    if name is None:
        known = sorted(set(FAMILIES) | set(list_experiments(EXPERIMENTS_DIR)
                                          if EXPERIMENTS_DIR.is_dir() else {}))
        raise ConfigError(
            f"unknown experiment '{experiment}'; available: {', '.join(known)}."
            + did_you_mean(experiment, known)
        )
    module = importlib.import_module(name)
    missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
    if missing:
        raise ConfigError(f"study package {name} lacks {', '.join(missing)}; a family exposes "
                          f"{', '.join(_REQUIRED)}.")
    return module


__all__ = ["FAMILIES", "family_for"]
