"""The LM-training study: small Qwen3-style decoders trained with the knobs of an HF-Trainer
homework (schedules, accumulation, optimizers, sweeps) and sharded over a device mesh
(data parallel, ZeRO-1/2/3).

A study family (see ``sgdjax.families``): ``python -m sgdjax.run lm SETUP`` runs the stages
``train``, ``evaluate`` and ``scaling`` of ``experiments/lm/SETUP.toml``; sweeps over setups run
with ``python -m sgdjax.sweep FILE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sgdjax.lm.config import EXECUTION_KEYS, LMConfig
from sgdjax.stages import Stage

STAGES: tuple[Stage, ...] = (
    Stage(1, "train", "sgdjax.lm.stages.train",
          "train the decoder for the step / wall-clock budget; JSONL log, checkpoint"),
    Stage(2, "evaluate", "sgdjax.lm.stages.evaluate",
          "eval loss and perplexity on the held-out text vs the unigram baseline; a sample"),
    Stage(3, "scaling", "sgdjax.lm.stages.scaling",
          "dp / ZeRO-1/2/3 on 1, 2, 4 devices: tokens/s, steps in budget, memory, eval loss"),
)


def load_config(experiment: str, setup: str, overrides: Sequence[str] = ()) -> LMConfig:
    """``experiments/EXP/_defaults.toml`` then ``SETUP.toml``, then dotted overrides."""
    from sgdjax.nested_config import load_nested

    return load_nested(LMConfig, experiment, setup, overrides)


def make_context(cfg: LMConfig, store: Any, *, force: bool = False, show_progress: bool = True,
                 device: Any = None) -> Any:
    from sgdjax.lm.context import LMContext

    return LMContext(cfg, store, force=force, show_progress=show_progress, device=device)


__all__ = ["EXECUTION_KEYS", "STAGES", "LMConfig", "load_config", "make_context"]
