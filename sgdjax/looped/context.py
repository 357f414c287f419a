"""What the stages of one looped setup share: the config, the store and the model's flat view."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax

from sgdjax.errors import SgdjaxError
from sgdjax.looped.checkpoint import params_from_named
from sgdjax.looped.config import LoopedConfig
from sgdjax.looped.train import INIT_STREAM, setup_key
from sgdjax.progress import Progress
from sgdjax.store import Store

MODEL = "model.npz"
TRAIN_LOG = "train_log.npz"
RESUME = "train.resume.npz"
EVAL = "eval.npz"
EVAL_SUMMARY = "eval_summary.json"


@dataclass
class LoopedContext:
    cfg: LoopedConfig
    store: Store
    force: bool = False
    show_progress: bool = True
    device: Any = None

    @cached_property
    def param_template(self) -> Any:
        """Shapes and dtypes of the parameter pytree (nothing computed)."""
        return jax.eval_shape(self.cfg.model.init, setup_key(self.cfg, INIT_STREAM))

    def load_params(self, name: str = MODEL) -> Any:
        if not self.store.exists(name):
            raise SgdjaxError(f"{self.store.path(name)} is missing: it is written by the train "
                              "stage. Run it first (e.g. without --stages).")
        arrays = self.store.load_npz(name)
        params = params_from_named(self.param_template, arrays, str(self.store.path(name)))
        return jax.device_put(params, self.device)

    def progress(self, desc: str, total: int, unit: str = "steps") -> Progress:
        return Progress(desc, total, unit=unit, enabled=self.show_progress)

    @property
    def label(self) -> str:
        """A short name of the model for legends."""
        m = self.cfg.model
        block = {"attn": "", "lstm": " LSTM", "ssm": " SSM"}[m.block_type]
        if m.family == "gpt2":
            return f"transformer{block} L={m.n_layer}"
        if m.family == "gpt2_tying":
            return f"tied{block} x{m.n_layer}"
        return f"looped{block} L={m.n_layer}"


__all__ = ["EVAL", "EVAL_SUMMARY", "MODEL", "RESUME", "TRAIN_LOG", "LoopedContext"]
