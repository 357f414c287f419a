"""The looped-transformer study family: in-context regression with looped blocks.

Exposes the family contract (see :mod:`sgdjax.families`): ``load_config``, ``STAGES``,
``make_context`` and ``EXECUTION_KEYS``.
"""

from __future__ import annotations

from typing import Any

from sgdjax.looped.config import EXECUTION_KEYS, LoopedConfig, load_config
from sgdjax.stages import Stage

STAGES: tuple[Stage, ...] = (
    Stage(1, "train", "sgdjax.looped.stages.train",
          "train on fresh prompts (curriculum over dims/points/loops, truncated loop window)"),
    Stage(2, "evaluate", "sgdjax.looped.stages.evaluate",
          "normalised error vs in-context examples and vs loop iterations, with baselines"),
    Stage(3, "figures", "sgdjax.looped.stages.figures",
          "error vs k with baselines, error vs loops, training curves"),
)


def make_context(cfg: LoopedConfig, store: Any, *, force: bool = False,
                 show_progress: bool = True, device: Any = None) -> Any:
    from sgdjax.looped.context import LoopedContext

    return LoopedContext(cfg, store, force=force, show_progress=show_progress, device=device)


__all__ = ["EXECUTION_KEYS", "STAGES", "LoopedConfig", "load_config", "make_context"]
