"""Configuration of the optimizer-dynamics study: nested frozen dataclasses read from
``experiments/optdyn/_defaults.toml`` and ``experiments/optdyn/SETUP.toml``.

A setup names *runs* (stage ``train``: one optimiser at one learning rate each, all compared on
the same plots) and *sweeps* (stage ``sweep``: every learning rate of an optimiser's log-spaced
grid × seeds as one vmapped call). Either list may be empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sgdjax.errors import ConfigError
from sgdjax.optdyn.optimizers import OPTIMIZERS, OptimizerSpec


@dataclass(frozen=True)
class DataConfig:
    """make_moons points, noise and the stratified validation share."""

    n: int = 4000
    noise: float = 0.25
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.n < 10:
            raise ConfigError(f"data.n={self.n} is too small; use at least 10 points.")
        if not self.noise >= 0:
            raise ConfigError(f"data.noise must be >= 0, got {self.noise}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got "
                              f"{self.val_fraction}.")


@dataclass(frozen=True)
class ModelConfig:
    """The MLP 2 → hidden → 1."""

    hidden: int = 128
    activation: Literal["relu", "leakyrelu", "gelu", "tanh"] = "relu"
    init: Literal["torch_default", "he"] = "torch_default"

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be positive, got {self.hidden}.")


@dataclass(frozen=True)
class OptimConfig:
    """Hyper-parameters shared by every optimiser of the setup (the lr is per run)."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        # checked here, not only in OptimizerSpec, so that a sweep-only setup fails at load
        # time (and --dry-run) with the dotted key rather than when its stage builds the
        # optimiser
        for key in ("b1", "b2"):
            value = getattr(self, key)
            _check_range(f"optim.{key}", value, 0.0 <= value < 1.0, f"0 <= {key} < 1")
        _check_range("optim.eps", self.eps, self.eps >= 0, "eps >= 0")
        _check_range("optim.weight_decay", self.weight_decay, self.weight_decay >= 0,
                     "weight_decay >= 0")
        if self.clip_norm is not None:
            _check_range("optim.clip_norm", self.clip_norm, self.clip_norm > 0,
                         "clip_norm > 0, or none for no clipping")


@dataclass(frozen=True)
class LogConfig:
    """Logging cadence (steps 0 .. first-1, then every ``every``-th) and saturation threshold."""

    every: int = 50
    first: int = 10
    sat_logit_thr: float = 8.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.first < 0:
            raise ConfigError(f"log.every must be >= 1 and log.first >= 0, got every="
                              f"{self.every}, first={self.first}.")
        _check_range("log.sat_logit_thr", self.sat_logit_thr, self.sat_logit_thr > 0,
                     "sat_logit_thr > 0 (a logit counts as saturated when |logit| exceeds it)")


@dataclass(frozen=True)
class TrainConfig:
    """Stage ``train``: run i uses ``optimizers[i]`` at ``lrs[i]`` with ``momenta[i]`` and
    ``nesterov[i]`` (these two may be left empty: momentum 0.9, no Nesterov)."""

    steps: int = 2000
    batch_size: int = 256
    seeds: int = 1
    optimizers: tuple[str, ...] = ()
    lrs: tuple[float, ...] = ()
    momenta: tuple[float, ...] = ()
    nesterov: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seeds < 1:
            raise ConfigError(f"train.steps, train.batch_size and train.seeds must be positive, "
                              f"got {self.steps}, {self.batch_size}, {self.seeds}.")
        _check_names("train.optimizers", self.optimizers)
        n = len(self.optimizers)
        for key in ("lrs", "momenta", "nesterov"):
            values = getattr(self, key)
            if (key == "lrs" or values) and len(values) != n:
                raise ConfigError(
                    f"train.{key} has {len(values)} entries but train.optimizers has {n}; give "
                    f"one per run{'' if key == 'lrs' else ' (or none for the defaults)'}."
                )
        if any(not lr > 0 for lr in self.lrs):
            raise ConfigError(f"train.lrs must be positive, got {list(self.lrs)}.")


@dataclass(frozen=True)
class SweepConfig:
    """Stage ``sweep``: optimiser i over ``num_lrs`` log-spaced lrs from ``lr_min[i]`` to
    ``lr_max[i]`` (``numpy.logspace``), ``seeds`` runs each, all in one vmapped call.
    ``good_tol``: an lr is in the good region when its mean final validation accuracy is within
    ``good_tol`` of the best lr's."""

    steps: int = 1500
    seeds: int = 5
    num_lrs: int = 9
    optimizers: tuple[str, ...] = ()
    lr_min: tuple[float, ...] = ()
    lr_max: tuple[float, ...] = ()
    good_tol: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seeds < 1 or self.num_lrs < 1:
            raise ConfigError(f"sweep.steps, sweep.seeds and sweep.num_lrs must be positive, "
                              f"got {self.steps}, {self.seeds}, {self.num_lrs}.")
        _check_names("sweep.optimizers", self.optimizers)
        # one results file and one lr range per optimiser: a repeat would overwrite the first
        repeated = sorted({n for n in self.optimizers if self.optimizers.count(n) > 1})
        if repeated:
            raise ConfigError(f"sweep.optimizers repeats {', '.join(map(repr, repeated))}: "
                              f"{list(self.optimizers)}; list each optimizer once.")
        n = len(self.optimizers)
        for key in ("lr_min", "lr_max"):
            if len(getattr(self, key)) != n:
                raise ConfigError(f"sweep.{key} has {len(getattr(self, key))} entries but "
                                  f"sweep.optimizers has {n}; give one per optimizer.")
        for lo, hi in zip(self.lr_min, self.lr_max, strict=True):
            if not 0 < lo <= hi:
                raise ConfigError(f"sweep lr range [{lo}, {hi}] must satisfy 0 < lr_min <= "
                                  "lr_max.")
        _check_range("sweep.good_tol", self.good_tol, self.good_tol >= 0,
                     "good_tol >= 0 (an accuracy difference)")


def _check_range(key: str, value: float, ok: bool, allowed: str) -> None:
    """One message for an out-of-range value: the dotted key, the value and what is allowed.
    ``ok`` is the condition written so that NaN fails it."""
    if not ok:
        raise ConfigError(f"{key}={value} is out of range; allowed: {allowed}.")


def _check_names(key: str, names: Sequence[str]) -> None:
    for name in names:
        # OptimizerSpec names the allowed values and the closest match
        try:
            OptimizerSpec(name)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


@dataclass(frozen=True)
class Config:
    """One optimizer-dynamics setup."""

    experiment: str = "optdyn"
    setup: str = ""
    description: str = ""
    device: Literal["cpu", "gpu"] = "cpu"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        n_train = self.data.n - math.ceil(self.data.n * self.data.val_fraction)
        if self.train.batch_size > n_train:
            raise ConfigError(f"train.batch_size={self.train.batch_size} exceeds the "
                              f"{n_train} training points; lower it or raise data.n.")
        for i in range(len(self.train.optimizers)):
            self.train_spec(i)  # validates momentum / Nesterov combinations
        for name in self.sweep.optimizers:
            self.sweep_spec(name)  # a sweep-only setup fails here, not in its stage

    @property
    def x64(self) -> bool:
        """Everything is float32 (the reference's precision)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        from sgdjax.nested_config import to_dict

        return to_dict(self)

    def optimizer(self, name: str, momentum: float = 0.9, nesterov: bool = False
                  ) -> OptimizerSpec:
        o = self.optim
        return OptimizerSpec(name, momentum=momentum, nesterov=nesterov, b1=o.b1, b2=o.b2,
                             eps=o.eps, weight_decay=o.weight_decay, clip_norm=o.clip_norm)

    def train_spec(self, i: int) -> OptimizerSpec:
        """The optimiser of run ``i`` of stage ``train``."""
        t = self.train
        try:
            return self.optimizer(t.optimizers[i], t.momenta[i] if t.momenta else 0.9,
                                  t.nesterov[i] if t.nesterov else False)
        except ConfigError as exc:
            raise ConfigError(f"train run {i} ({t.optimizers[i]}): {exc}") from None

    def sweep_spec(self, name: str) -> OptimizerSpec:
        """The optimiser ``name`` of stage ``sweep`` (default momentum 0.9, no Nesterov)."""
        try:
            return self.optimizer(name)
        except ConfigError as exc:
            raise ConfigError(f"sweep optimizer {name}: {exc}") from None


#: Dotted keys that do not change any result.
EXECUTION_KEYS: tuple[str, ...] = ("description", "device")

__all__ = ["OPTIMIZERS", "Config", "DataConfig", "EXECUTION_KEYS", "LogConfig", "ModelConfig",
           "OptimConfig", "SweepConfig", "TrainConfig"]
