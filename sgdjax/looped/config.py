"""Setup configuration of the looped-transformer study: nested frozen dataclasses.

The layout follows the original's YAML (``model.*``, ``training.*``,
``training.curriculum.{dims,points,loops}.*``), so ``--set model.n_layer=2 --set
training.curriculum.loops.end=30`` means what a user of the original expects. ``model`` is the
model's own hyper-parameter dataclass (:class:`sgdjax.models.looped.LoopedTransformer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sgdjax.errors import ConfigError
from sgdjax.looped.curriculum import Curriculum
from sgdjax.looped.tasks import Task, TaskName
from sgdjax.models.looped import LoopedTransformer
from sgdjax.nested_config import load_nested, to_dict

BaselineName = Literal["least_squares", "averaging", "knn", "lasso"]


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, task and curriculum (the original's ``training`` section)."""

    task: TaskName = "linear_regression"
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    train_steps: int = 20001
    #: T: the loss averages the last T loop iterations, and only they carry gradient.
    n_loop_window: int = 15
    #: Under model.feed_block: True counts the no-gradient prefix K - T in single-layer steps as
    #: the seed-003 code does (the window then holds K·L - (K - T) steps); False scales it by L.
    fork_window: bool = True
    seed: int = 42
    noise_std: float = 0.1
    sparsity: int = 3
    curriculum: Curriculum = field(default_factory=Curriculum)
    #: Test loss on a fixed set of prompts (full dims and points, loops.end iterations) every
    #: val_every steps; 0 switches it off.
    val_every: int = 0
    val_prompts: int = 1280
    #: Steps per compiled call: the granularity of progress, resume checkpoints and the log.
    steps_per_call: int = 1000


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation on fresh prompts (spec §3)."""

    n_prompts: int = 1280
    batch: int = 128
    #: Points per test prompt and live dims; 0 = the curriculum's end values.
    n_points: int = 0
    n_dims: int = 0
    #: Loop iterations at inference (the error-vs-loops curve runs this far).
    n_loops: int = 500
    bootstrap: int = 1000
    baselines: tuple[BaselineName, ...] = ("least_squares", "averaging", "knn")
    knn_neighbours: int = 3
    lasso_alpha: float = 0.01


@dataclass(frozen=True)
class LoopedConfig:
    """One setup of the looped study."""

    experiment: str = "looped"
    setup: str = "tiny_loop"
    description: str = ""
    device: Literal["cpu", "gpu"] = "cpu"
    model: LoopedTransformer = field(default_factory=LoopedTransformer)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        m, t, e = self.model, self.training, self.eval
        c = t.curriculum
        c.check()
        if c.dims.end > m.n_dims:
            raise ConfigError(f"training.curriculum.dims.end={c.dims.end} exceeds model.n_dims="
                              f"{m.n_dims}; the live dimension cannot exceed the token width.")
        for name, n in (("training.curriculum.points.end", c.points.end),
                        ("eval.n_points", self.eval_points)):
            if n > m.n_positions:
                raise ConfigError(f"{name}={n} exceeds model.n_positions={m.n_positions}; raise "
                                  "model.n_positions or lower the number of points.")
        if self.eval_dims > m.n_dims:
            raise ConfigError(f"eval.n_dims={e.n_dims} exceeds model.n_dims={m.n_dims}.")
        positive = {"training.batch_size": t.batch_size, "training.train_steps": t.train_steps,
                    "training.n_loop_window": t.n_loop_window,
                    "training.steps_per_call": t.steps_per_call, "eval.n_prompts": e.n_prompts,
                    "eval.batch": e.batch, "eval.n_loops": e.n_loops,
                    "eval.knn_neighbours": e.knn_neighbours}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1.")
        if t.learning_rate <= 0 or t.weight_decay < 0 or t.noise_std < 0:
            raise ConfigError("training.learning_rate must be positive, training.weight_decay "
                              "and training.noise_std non-negative.")
        if t.task == "sparse_linear_regression" and not 1 <= t.sparsity <= m.n_dims:
            raise ConfigError(f"training.sparsity={t.sparsity} must lie in 1..model.n_dims="
                              f"{m.n_dims}.")
        if t.val_every < 0 or (t.val_every and t.val_prompts < 1):
            raise ConfigError("training.val_every must be >= 0 and training.val_prompts >= 1.")
        if e.bootstrap < 0:
            raise ConfigError("eval.bootstrap must be >= 0 (0 switches the bands off).")
        if "lasso" in e.baselines and t.task != "sparse_linear_regression":
            raise ConfigError("the 'lasso' baseline is for training.task="
                              "'sparse_linear_regression'; remove it from eval.baselines.")

    @property
    def x64(self) -> bool:
        """Every computation is float32 (the reference runs are fp32); baselines use NumPy
        float64 on the host without switching JAX to x64."""
        return False

    @property
    def looped(self) -> bool:
        return self.model.family == "gpt2_loop"

    @property
    def eval_points(self) -> int:
        return self.eval.n_points or self.training.curriculum.points.end

    @property
    def eval_dims(self) -> int:
        return self.eval.n_dims or self.training.curriculum.dims.end

    @property
    def task(self) -> Task:
        t = self.training
        return Task(t.task, self.model.n_dims, t.noise_std, t.sparsity)

    @property
    def baselines(self) -> tuple[str, ...]:
        """Evaluated baselines: the configured ones, plus Lasso for sparse regression."""
        names = tuple(self.eval.baselines)
        if self.training.task == "sparse_linear_regression" and "lasso" not in names:
            names += ("lasso",)
        return names

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


#: Dotted keys that change no result (they may differ when resuming into a results directory).
EXECUTION_KEYS: tuple[str, ...] = ("description", "device", "training.steps_per_call",
                                   "eval.batch", "model.remat")


def load_config(experiment: str, setup: str,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> LoopedConfig:
    """``experiments/EXP/_defaults.toml`` then ``SETUP.toml``, then dotted overrides."""
    return load_nested(LoopedConfig, experiment, setup, overrides)


__all__ = ["EXECUTION_KEYS", "EvalConfig", "LoopedConfig", "TrainingConfig", "load_config"]
