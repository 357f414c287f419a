"""The stages of the SGDiffusion study, in pipeline order, and the stage runner every study
family shares.

A stage is a module with ``outputs(ctx) -> list[str]`` (the files that make it complete) and
``run(ctx) -> dict`` (numbers for the manifest and the summary). ``run_stages`` skips a stage
whose outputs are all present unless ``force``. This package is also the SGDiffusion family
(``load_config``, ``STAGES``, ``make_context``, ``EXECUTION_KEYS``; see ``sgdjax.families``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sgdjax.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    module: str
    title: str

    def load(self) -> ModuleType:
        """The stage module: ``module`` is a full dotted path, or a name in this package."""
        path = self.module if "." in self.module else f"sgdjax.stages.{self.module}"
        return importlib.import_module(path)


STAGES: tuple[Stage, ...] = (
    Stage(1, "sgd", "train_sgd", "SGD training from random init (epochs_sgd epochs at lr)"),
    Stage(2, "gd", "train_gd", "full-batch GD polishing (epochs_gd steps at lr) with grad norms"),
    Stage(3, "hessians", "hessians", "SGD per lr with the dense minibatch Hessian at every step"),
    Stage(4, "many_runs", "many_runs", "many_runs_samples SGD runs per lr from the GD checkpoint"),
    Stage(5, "gd_many_runs", "gd_many_runs", "one GD continuation per lr (dtype, gd_scaling)"),
    Stage(6, "val_distribution", "val_distribution",
          "validation loss/accuracy distribution of the ensemble at the first and last step"),
    Stage(7, "hessian_spectrum", "hessian_spectrum",
          "spectrum of the trajectory-averaged Hessian per lr"),
)


#: SGDiffusion config keys that do not change any result.
EXECUTION_KEYS = ("description", "device", "memory_budget_gb", "steps_per_call", "chunk_runs")


def load_config(experiment: str, setup: str, overrides: Sequence[str] = ()) -> Any:
    from sgdjax.config import load_setup

    return load_setup(experiment, setup, overrides)


def make_context(cfg: Any, store: Any, *, force: bool = False, show_progress: bool = True,
                 device: Any = None) -> Any:
    from sgdjax.stages.common import Context

    return Context(cfg, store, force=force, show_progress=show_progress, device=device)


def parse_stages(text: str | Sequence[str] | None,
                 stages: Sequence[Stage] = STAGES) -> list[Stage]:
    """``"3,4"``, ``"3-5"``, ``"hessians,many_runs"`` or None (all) -> stages in pipeline order."""
    table = tuple(stages)
    if text is None:
        return list(table)
    items = text.split(",") if isinstance(text, str) else [t for s in text for t in s.split(",")]
    by_number = {str(s.number): s for s in table}
    by_name = {s.name: s for s in table}
    chosen: set[int] = set()
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        if "-" in raw and all(p.strip().isdigit() for p in raw.split("-", 1)):
            lo, hi = (int(p) for p in raw.split("-", 1))
            chosen.update(n for n in range(lo, hi + 1) if str(n) in by_number)
            continue
        stage = by_number.get(raw) or by_name.get(raw)
        if stage is None:
            names = [*by_number, *by_name]
            raise ConfigError(
                f"unknown stage '{raw}'; stages are "
                + ", ".join(f"{s.number}={s.name}" for s in table) + "." + did_you_mean(raw, names)
            )
        chosen.add(stage.number)
    return [s for s in table if s.number in chosen]


def is_complete(stage: Stage, ctx: Any) -> bool:
    return ctx.store.exists(*stage.load().outputs(ctx))


def run_stages(ctx: Any, stages: Sequence[Stage], log: Any = print) -> dict[str, Any]:
    """Run ``stages`` in order; skip complete ones unless ``ctx.force``; record each in the
    manifest with its wall time. Returns {stage name: info}.

    On several hosts (``sgdjax.distributed``) process 0 decides and writes; a stage module with
    ``DISTRIBUTED = True`` runs on every process, any other only on process 0 while the rest wait.
    """
    from sgdjax.distributed import barrier, broadcast, is_main

    main = is_main()
    say = log if main else (lambda *_: None)
    results: dict[str, Any] = {}
    for stage in stages:
        module = stage.load()
        complete = not ctx.force and ctx.store.exists(*module.outputs(ctx))
        if broadcast([int(complete)] if main else [])[0]:
            say(f"stage {stage.number} ({stage.name}): complete, skipped (use --force to redo)")
            results[stage.name] = {"skipped": True,
                                   **ctx.store.manifest().get("stages", {}).get(stage.name, {})}
            continue
        if ctx.force and main:  # recompute from scratch: no finished file or partial chunk reused
            for name in module.outputs(ctx):
                ctx.store.remove(name, f"{name}.partial", f"{name}.progress.json")
        if not main and not getattr(module, "DISTRIBUTED", False):
            barrier(f"stage-{stage.name}")
            continue
        say(f"stage {stage.number} ({stage.name}): {stage.title}")
        t0 = time.perf_counter()
        info = module.run(ctx) or {}
        wall = time.perf_counter() - t0
        if main:
            ctx.store.record_stage(stage.name, wall_s=wall, **info)
        results[stage.name] = {"wall_s": wall, **info}
        say(f"stage {stage.number} ({stage.name}): done in {wall:.1f} s")
        barrier(f"stage-{stage.name}")
    return results
