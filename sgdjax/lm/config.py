"""Configuration of the LM-training study: nested frozen dataclasses (dotted ``--set`` keys).

Names follow the seed's Hugging Face ``TrainingArguments`` where one exists
(``train.batch_size`` = ``per_device_train_batch_size``, ``train.grad_accum`` =
``gradient_accumulation_steps``, ``optim.lr`` = ``learning_rate``, ``schedule.kind`` =
``lr_scheduler_type``, ``schedule.warmup_ratio``). Budgets and schedule positions are counted in
*optimizer* steps (one step = ``grad_accum`` micro-batches), as in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sgdjax.errors import ConfigError
from sgdjax.models.qwen3 import Qwen3
from sgdjax.nested_config import to_dict

ScheduleKind = Literal["linear", "cosine", "constant", "constant_with_warmup", "triangular",
                       "step_down"]
ParallelMode = Literal["none", "dp", "zero1", "zero2", "zero3"]
SHARDED_MODES: tuple[str, ...] = ("dp", "zero1", "zero2", "zero3")


@dataclass(frozen=True)
class ModelConfig:
    """A size preset; any field given explicitly replaces the preset's value."""

    preset: Literal["tiny", "small", "paper"] = "tiny"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # bfloat16 compute with float32 master weights (HF bf16=True), or everything in bf16.
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # Recompute each decoder layer in the backward pass (activation checkpointing).
    remat: bool = False

    def build(self, vocab_size: int) -> Qwen3:
        sizes = {k: getattr(self, k) for k in ("hidden_size", "num_layers", "num_heads",
                                               "num_kv_heads", "head_dim", "intermediate_size")
                 if getattr(self, k) is not None}
        return Qwen3.preset(self.preset, vocab_size, rope_theta=self.rope_theta,
                            norm_eps=self.norm_eps, init_std=self.init_std,
                            compute_dtype=self.compute_dtype, remat=self.remat, **sizes)


@dataclass(frozen=True)
class DataConfig:
    # "tinyshakespeare" (read through the data cache, $SGDJAX_DATA_DIR) or a local text file.
    source: str = "tinyshakespeare"
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: int = 1024  # BPE only: bytes + merges + end-of-text
    seq_len: int = 64
    # packed: documents joined by end-of-text and cut into blocks; padded: each document
    # truncated/padded to seq_len+1 tokens with padding masked out of the loss (the seed's HW).
    mode: Literal["packed", "padded"] = "packed"
    documents: Literal["blank_lines", "lines", "whole"] = "blank_lines"
    val_split: Literal["last_fraction", "first_documents"] = "last_fraction"
    val_fraction: float = 0.1
    val_documents: int = 5000
    max_chars: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # sequences per device per micro-batch
    grad_accum: int = 1
    max_steps: int | None = 300  # optimizer steps
    max_seconds: float | None = None  # wall-clock budget (the seed: 1800 s)
    count_compile: bool = True  # compilation counts against max_seconds (as in the seed)
    eval_every: int = 50  # optimizer steps between validations (0: only at the end)
    eval_sequences: int | None = 256  # validation sequences used during training
    segment_steps: int = 50  # optimizer steps per compiled call (clock checks, progress)
    sampler: Literal["reshuffle", "replacement"] = "reshuffle"
    jit: bool = True  # the seed's torch_compile knob: False runs op by op


@dataclass(frozen=True)
class OptimConfig:
    # adamw_fused is the same update as adamw (PyTorch's fused kernel changes speed, not math).
    name: Literal["adamw", "adamw_fused", "adafactor"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleKind = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_ratio when set (HF semantics)
    # Steps the decaying schedules and warmup_ratio refer to: the run's step budget (sensible)
    # or one epoch at the global batch (what HF did in the seed's 30-minute runs).
    horizon: Literal["budget", "epoch"] = "budget"
    # triangular / step_down (the lr is LR_MIN; the seed's values when unset):
    lr_max: float | None = None
    up_end: int | None = None
    hold_end: int | None = None
    down_end: int | None = None
    half_period: int | None = None


@dataclass(frozen=True)
class ParallelConfig:
    mode: ParallelMode = "none"
    devices: int = 1


@dataclass(frozen=True)
class GenerateConfig:
    prompt: str = "ROMEO:"
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.9


@dataclass(frozen=True)
class ScalingConfig:
    devices: tuple[int, ...] = (1, 2, 4)
    modes: tuple[Literal["dp", "zero1", "zero2", "zero3"], ...] = ("dp", "zero1", "zero2",
                                                                   "zero3")
    max_seconds: float = 10.0  # training budget of every row
    max_steps: int | None = None  # optional cap as well
    remat: bool = False
    timeout_s: float = 900.0  # of the worker process


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = 5
    tensorboard: bool = True  # when tensorboardX / tensorboard is installed
    wandb: bool = True  # offline mode, when wandb is installed
    project: str = "sgdjax-lm"


@dataclass(frozen=True)
class LMConfig:
    experiment: str = "lm"
    setup: str = ""
    description: str = ""
    device: Literal["cpu", "gpu"] = "cpu"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def x64(self) -> bool:
        return False  # float32 / bfloat16 only

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step."""
        return self.train.batch_size * self.parallel.devices * self.train.grad_accum


EXECUTION_KEYS: tuple[str, ...] = (
    "description", "device", "train.segment_steps", "logging.log_every", "logging.tensorboard",
    "logging.wandb", "logging.project", "scaling.timeout_s",
)


def _positive(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}.")


def validate(cfg: LMConfig) -> None:
    """Cross-field checks, each failure naming the key and the fix."""
    t, d, s, p, g = cfg.train, cfg.data, cfg.schedule, cfg.parallel, cfg.generate
    for name in ("batch_size", "grad_accum", "segment_steps"):
        _positive(f"train.{name}", getattr(t, name))
    _positive("train.max_steps", t.max_steps, allow_none=True)
    _positive("train.max_seconds", t.max_seconds, allow_none=True)
    if t.max_steps is None and t.max_seconds is None:
        raise ConfigError("give a training budget: train.max_steps (optimizer steps) and/or "
                          "train.max_seconds (wall clock).")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0 (0: evaluate only at the end), got "
                          f"{t.eval_every}.")
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len must be at least 2, got {d.seq_len}.")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got "
                          f"{d.val_fraction}.")
    _positive("data.val_documents", d.val_documents)
    if not 0 <= s.warmup_ratio < 1:
        raise ConfigError(f"schedule.warmup_ratio must lie in [0, 1), got {s.warmup_ratio}.")
    if s.warmup_steps is not None and s.warmup_steps < 0:
        raise ConfigError(f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}.")
    needs_horizon = s.kind in ("linear", "cosine") or (
        s.kind == "constant_with_warmup" and s.warmup_steps is None and s.warmup_ratio > 0)
    if needs_horizon and s.horizon == "budget" and t.max_steps is None:
        raise ConfigError(
            f"schedule.kind={s.kind!r} with schedule.horizon='budget' needs a step budget to "
            "decay over, but only train.max_seconds is set: set train.max_steps (the planned "
            "number of optimizer steps), or schedule.horizon='epoch' (HF's behaviour)."
        )
    if s.kind in ("triangular", "step_down"):
        from sgdjax.lm.schedules import custom_params

        custom_params(s, cfg.optim.lr)  # raises on inconsistent breakpoints
    _positive("optim.lr", cfg.optim.lr)
    if cfg.optim.max_grad_norm < 0:
        raise ConfigError(f"optim.max_grad_norm must be >= 0 (0 disables clipping), got "
                          f"{cfg.optim.max_grad_norm}.")
    _positive("parallel.devices", p.devices)
    if p.mode == "none" and p.devices != 1:
        raise ConfigError(f"parallel.devices={p.devices} needs a sharding mode: set "
                          f"parallel.mode to one of {', '.join(SHARDED_MODES)}.")
    if p.mode != "none" and not t.jit:
        raise ConfigError("sharded training is compiled by construction; set train.jit=true "
                          "or parallel.mode='none'.")
    if g.temperature < 0:
        raise ConfigError(f"generate.temperature must be >= 0 (0 = greedy), got "
                          f"{g.temperature}.")
    if not 0 < g.top_p <= 1:
        raise ConfigError(f"generate.top_p must lie in (0, 1], got {g.top_p}.")
    if g.max_new_tokens < 0:
        raise ConfigError(f"generate.max_new_tokens must be >= 0, got {g.max_new_tokens}.")
    if not cfg.scaling.devices or min(cfg.scaling.devices) < 1:
        raise ConfigError(f"scaling.devices must list positive device counts, got "
                          f"{cfg.scaling.devices}.")
    if cfg.model.param_dtype == "bfloat16" and cfg.model.compute_dtype != "bfloat16":
        raise ConfigError("model.param_dtype='bfloat16' (pure bf16) needs "
                          "model.compute_dtype='bfloat16' as well.")


def segment_length(cfg: LMConfig) -> int:
    """Optimizer steps per compiled call: ``train.segment_steps`` rounded to a multiple of the
    validation cadence, so validation always falls on the same global steps."""
    every = cfg.train.eval_every
    seg = cfg.train.segment_steps
    if not every:
        return seg
    return max(every, seg // every * every)


__all__ = ["EXECUTION_KEYS", "SHARDED_MODES", "DataConfig", "GenerateConfig", "LMConfig",
           "LoggingConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "ScalingConfig",
           "ScheduleConfig", "TrainConfig", "segment_length", "validate"]
