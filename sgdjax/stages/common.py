"""What every stage shares: the resolved setup, its data on the device, the model, the store.

Stages are thin: they choose a sampler and a recorder, call the engine, and hand arrays to the
store. Everything here is built once per ``python -m sgdjax.run`` invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.config import SetupConfig
from sgdjax.data import load_mnist, load_mnist_similar, load_shakespeare
from sgdjax.data.sampling import Sampler, make_sampler
from sgdjax.engine.trajectory import Data, Recorder
from sgdjax.errors import ConfigError, SgdjaxError
from sgdjax.models import build_model
from sgdjax.models.objective import make_loss_fn
from sgdjax.progress import Progress
from sgdjax.store import Store

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def model_for(cfg: SetupConfig) -> Any:
    """The setup's model with the setup's sizes."""
    if cfg.model == "mlp":
        return build_model("mlp", hidden=cfg.hidden, downsample=cfg.input_downsample)
    if cfg.model == "cnn":
        return build_model("cnn", channels=cfg.cnn_channels, hidden=cfg.cnn_hidden)
    return build_model(
        "nanogpt", vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_embd=cfg.n_embd,
        n_head=cfg.n_head, n_layer=cfg.n_layer, mlp_ratio=cfg.mlp_ratio,
    )


def load_splits(cfg: SetupConfig) -> tuple[Any, Any]:
    """(train, val) as numpy ArraySplits, by the setup's dataset rules (spec §2)."""
    if cfg.dataset_train == "shakespeare":
        sh = load_shakespeare(max_chars=cfg.max_chars, vocab_size=cfg.vocab_size,
                              block_size=cfg.block_size, n_train=cfg.n_train)
        return sh.train, sh.val
    if cfg.dataset_train == "mnist_similar":
        train = load_mnist_similar(cfg.sample_size)
    else:
        train = load_mnist(cfg.train_split)
    val = load_mnist(cfg.val_split)
    return train, val


@dataclass
class Context:
    """The resolved setup and everything built from it, shared by the stages of one run."""

    cfg: SetupConfig
    store: Store
    force: bool = False
    show_progress: bool = True
    device: Any = None

    @cached_property
    def model(self) -> Any:
        return model_for(self.cfg)

    @cached_property
    def splits(self) -> tuple[Any, Any]:
        return load_splits(self.cfg)

    @property
    def platform(self) -> str | None:
        """The chosen device's platform ("cpu", "gpu"; None: JAX's default backend)."""
        return self.device.platform if self.device else None

    @property
    def n_train(self) -> int:
        return int(self.splits[0].x.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.cfg.batch_size

    def data(self, dtype: str | None = None) -> Data:
        """Featurized train/val arrays on the device in ``dtype`` (default: compute_dtype).

        Parameter-free preprocessing (the MLP's pooling) is applied once here, not per step."""
        dtype = dtype or self.cfg.compute_dtype
        return self._data(dtype)

    def _data(self, dtype: str) -> Data:
        cache = self.__dict__.setdefault("_data_cache", {})
        if dtype not in cache:
            train, val = self.splits
            jdt = DTYPES[dtype]

            def prep(x: np.ndarray) -> jax.Array:
                if np.issubdtype(x.dtype, np.integer):
                    return jax.device_put(jnp.asarray(x, jnp.int32), self.device)
                return jax.device_put(self.model.featurize(jnp.asarray(x, jdt)), self.device)

            cache[dtype] = Data(
                prep(train.x), jax.device_put(jnp.asarray(train.y, jnp.int32), self.device),
                prep(val.x), jax.device_put(jnp.asarray(val.y, jnp.int32), self.device),
            )
        return cache[dtype]

    def loss_fns(self) -> tuple[Callable, Callable]:
        """(train-mode loss, eval-mode loss) over the flat parameter vector."""
        return make_loss_fn(self.model, train=True), make_loss_fn(self.model, train=False)

    def sampler(self, kind: str) -> Sampler:
        """A sampler over the training set; ``kind`` is default/replacement/full."""
        return make_sampler(kind, self.n_train, self.cfg.batch_size)

    def stage_sampler(self, option: str) -> Sampler:
        """Resolve stage1_sampler / stage3_sampler: "auto" is the original's behaviour (exp1's
        stages 1 and 3 always reshuffle; exp2 honours DATALOADER; spec §10 #1)."""
        if option == "auto":
            option = self.cfg.dataloader if self.cfg.dataset_train == "shakespeare" else "default"
        return self.sampler(option)

    def recorder(self, block: int, **fields: Any) -> Recorder:
        """A Recorder with the setup's curvature tracking; ``block`` is the stage's validation
        cadence, which ``curvature_every`` must be a multiple of."""
        c = self.cfg
        if c.curvature_every and c.curvature_every % block:
            raise ConfigError(
                f"curvature_every={c.curvature_every} must be a multiple of this stage's "
                f"validation cadence ({block} steps), e.g. --set curvature_every={block * 10}."
            )
        return Recorder(
            **fields, curvature_every=c.curvature_every, curvature_k=c.curvature_k,
            curvature_iters=c.curvature_iters, curvature_probes=c.curvature_probes,
            curvature_batch=c.curvature_batch,
        )

    def save_curvature(self, name: str, records: list[dict[str, np.ndarray]], first_step: int,
                       lr: float, title: str) -> None:
        """Curvature measured along a single run: ``{name}.npz`` (steps, eigs [n, k], trace)
        and ``{name}.png`` (λ_max against 2/lr)."""
        from sgdjax import plots

        if not self.cfg.curvature_every or not records:
            return
        eigs = np.concatenate([r["curv_eigs"] for r in records])
        arrays = {"steps": first_step + self.cfg.curvature_every * np.arange(len(eigs)),
                  "eigs": eigs}
        if "curv_trace" in records[0]:
            arrays["trace"] = np.concatenate([r["curv_trace"] for r in records])
        self.store.save_npz(f"{name}.npz", arrays)
        self.store.save_figure(f"{name}.png", plots.sharpness(arrays["steps"], eigs, lr, title))

    def progress(self, desc: str, total: int, unit: str = "run-steps") -> Progress:
        return Progress(desc, total, unit=unit, enabled=self.show_progress)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, name: str, w: jax.Array, state: Any,
                        extra: dict[str, np.ndarray] | None = None) -> None:
        """A checkpoint is an .npz of named arrays under the original's state-dict names
        (BatchNorm buffers included); ``extra`` arrays are stored beside them."""
        params = self.model.unflatten(jnp.asarray(w))
        self.store.save_npz(name, {**self.model.to_state_dict(params, state), **(extra or {})})

    def load_checkpoint(self, name: str, dtype: str | None = None) -> tuple[jax.Array, Any]:
        """(flat parameters, model state) of a checkpoint, cast to ``dtype``."""
        if not self.store.exists(name):
            raise SgdjaxError(
                f"{self.store.path(name)} is missing: it is written by an earlier stage. "
                "Run the earlier stages first (e.g. without --stages)."
            )
        arrays = self.store.load_npz(name)
        names = {spec.torch_name for spec in (*self.model.layout, *self.model.buffers)}
        params, state = self.model.from_state_dict(
            {k: v for k, v in arrays.items() if k in names})
        jdt = DTYPES[dtype or self.cfg.compute_dtype]
        w = jnp.asarray(self.model.flatten(params), jdt)
        state = jax.tree.map(
            lambda a: jnp.asarray(a, jdt) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
            else jnp.asarray(a), state,
        )
        return jax.device_put(w, self.device), jax.device_put(state, self.device)
