"""Stage 2: evaluation on fresh prompts, with the baselines and bootstrap bands."""

from __future__ import annotations

from typing import Any

from sgdjax.looped.context import EVAL, EVAL_SUMMARY, LoopedContext
from sgdjax.looped.evaluate import evaluate, summary


def outputs(ctx: LoopedContext) -> list[str]:
    return [EVAL, EVAL_SUMMARY]


def run(ctx: LoopedContext) -> dict[str, Any]:
    arrays = evaluate(ctx.cfg, ctx.load_params())
    numbers = summary(ctx.cfg, arrays)
    ctx.store.save_npz(EVAL, arrays)
    ctx.store.save_json(EVAL_SUMMARY, numbers, indent=2)
    return numbers
