"""What the stages of one optimizer-dynamics invocation share: config, store, data, model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sgdjax.data.moons import MoonsData, load_moons
from sgdjax.engine.trajectory import Data
from sgdjax.models.moons_mlp import MoonsMLP
from sgdjax.optdyn.config import Config
from sgdjax.optdyn.diagnostics import LogSpec
from sgdjax.optdyn.runs import data_key, to_device
from sgdjax.store import Store


@dataclass
class Context:
    """The resolved setup and everything built from it once."""

    cfg: Config
    store: Store
    force: bool = False
    show_progress: bool = True
    device: Any = None

    @cached_property
    def moons(self) -> MoonsData:
        d = self.cfg.data
        return load_moons(data_key(self.cfg.seed), d.n, d.noise, d.val_fraction)

    @cached_property
    def data(self) -> Data:
        m = self.moons
        return to_device(m.train.x, m.train.y, m.val.x, m.val.y)

    @property
    def n_train(self) -> int:
        return int(self.moons.train.x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.moons.val.x.shape[0])

    @cached_property
    def model(self) -> MoonsMLP:
        m = self.cfg.model
        return MoonsMLP(hidden=m.hidden, activation=m.activation, init_scheme=m.init)

    @property
    def log_spec(self) -> LogSpec:
        lg = self.cfg.log
        return LogSpec(every=lg.every, first=lg.first, sat_logit_thr=lg.sat_logit_thr,
                       clip_norm=self.cfg.optim.clip_norm)


def make_context(cfg: Config, store: Store, *, force: bool = False, show_progress: bool = True,
                 device: Any = None) -> Context:
    return Context(cfg, store, force=force, show_progress=show_progress, device=device)
