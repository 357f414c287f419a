"""Setup configuration: frozen dataclasses loaded from ``experiments/EXP/SETUP.toml``.

Keys are the original study's variable names in lower case (``batch_size``, ``lrs``,
``many_runs_samples`` ...), so ``--set many_runs_samples=10`` means what a user of the original
expects. Everything a user can mistype is validated here, before JAX is touched, with messages
that name the key, the allowed values and the closest match.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.values import coerce, expected


def _experiments_dir() -> Path:
    """Where setup files live: $SGDJAX_EXPERIMENTS, else the checkout's ``experiments/``, else
    ``./experiments`` (for a non-editable install run from a checkout)."""
    env = os.environ.get("SGDJAX_EXPERIMENTS")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parent.parent / "experiments"
    return beside if beside.is_dir() else Path.cwd() / "experiments"


EXPERIMENTS_DIR = _experiments_dir()

# Allowed values of the enumerated keys. The original's spellings come first.
CHOICES: dict[str, tuple[str, ...]] = {
    "model": ("mlp", "cnn", "nanogpt"),
    "dataset_train": ("mnist", "mnist_similar", "shakespeare"),
    "dataset_val": ("mnist", "shakespeare"),
    "dataloader": ("default", "replacement"),
    # "N/B" is the original's spelling; it multiplies lr by B/N (spec §10 #10).
    "gd_scaling": ("default", "N/B", "none", "times_B_over_N", "times_N_over_B"),
    "dtype": ("float32", "float64"),
    "compute_dtype": ("float32", "float64"),
    "device": ("cpu", "gpu"),
    "stage1_sampler": ("auto", "default", "replacement"),
    "stage3_sampler": ("auto", "default", "replacement"),
    "lr_streams": ("common", "independent"),
    "log_point": ("original", "pre_update"),
    "curvature_batch": ("step", "full"),
}


@dataclass(frozen=True)
class SetupConfig:
    """One setup of one experiment: every knob of every stage.

    Defaults are the values the original's scripts would use when a variable is not set
    (spec §6: DEVICE cpu, DTYPE float32, GD_SCALING default, DATALOADER default).
    """

    experiment: str = "exp1"
    setup: str = "setup1"
    description: str = ""

    # --- data and model -----------------------------------------------------------------
    dataset_train: str = "mnist"
    dataset_val: str = "mnist"
    model: str = "mlp"
    #: tfds-like split strings for MNIST (train = first 6400 training images, val = first 6400
    #: test images). Offline, where only the test split exists: ``test[:6400]`` / ``test[6400:]``.
    train_split: str = "train[:6400]"
    val_split: str = "test[:6400]"
    sample_size: int = 6400
    # Shakespeare preprocessing (spec §2.4); n_train 4736 = 74·64 is what the stored results used.
    max_chars: int = 6000
    vocab_size: int = 25
    block_size: int = 16
    n_train: int = 4736
    # Model sizes (the study's defaults give 386 / 395 / 960 parameters).
    hidden: int = 8
    input_downsample: int = 6
    cnn_channels: int = 12
    cnn_hidden: int = 11
    n_embd: int = 8
    n_head: int = 1
    n_layer: int = 1
    mlp_ratio: int = 1

    # --- optimisation --------------------------------------------------------------------
    batch_size: int = 64
    lr: float = 0.1
    epochs_sgd: int = 10000
    epochs_gd: int = 10000
    seed: int = 42
    hessian_steps: int = 1000
    many_runs_steps: int = 1111
    many_runs_samples: int = 1000
    dataloader: str = "default"
    gd_scaling: str = "default"
    lrs: tuple[float, ...] = (0.05, 0.01, 0.005, 0.001)
    #: dtype of the stage-5 GD continuation (the original's DTYPE, which affects stage 5 only).
    dtype: str = "float32"
    #: dtype of every other stage (float32 in the original).
    compute_dtype: str = "float32"
    device: str = "cpu"

    # --- choices the original made implicitly (spec §10) ----------------------------------
    #: Sampler of stage 1 / stage 3. "auto" reproduces the original: exp1 always reshuffles,
    #: exp2 honours ``dataloader``.
    stage1_sampler: str = "auto"
    stage3_sampler: str = "auto"
    #: "common": run r sees the same batches at every lr (the original's reshuffle mode);
    #: "independent": every (lr, run) pair has its own stream.
    lr_streams: str = "common"
    #: "original": stage-2/5 validation after the update, as the original logs it;
    #: "pre_update": train and val at the same (pre-update) point.
    log_point: str = "original"
    #: Validation cadence of stage 4 in steps; 0 = one epoch (100 for exp1, 74 for exp2).
    val_every: int = 0
    #: Record the stage-4 weights every k-th step (1 = every step, as the original).
    record_every: int = 1
    #: Also store the dense minibatch Hessians of stage 3 (the eigenvalues are always stored).
    store_hessians: bool = True
    #: Curvature along training (stages 1, 2, 4): every this many steps record the top
    #: ``curvature_k`` Hessian eigenvalues by Lanczos (0 = off), e.g. for λ_max vs 2/lr.
    curvature_every: int = 0
    curvature_k: int = 1
    #: Lanczos steps per measurement (0 = 2k + 20).
    curvature_iters: int = 0
    #: Hutchinson probes for a trace estimate per measurement (0 = no trace).
    curvature_probes: int = 0
    #: Whose Hessian: the step's minibatch ("step") or the whole training set ("full").
    curvature_batch: str = "step"
    #: Number of exp2 val-distribution points (the original's bash passes 50).
    val_dist_points: int = 50

    # --- execution -----------------------------------------------------------------------
    #: Memory budget (GiB) for one compiled chunk of an ensemble; decides the chunk size.
    memory_budget_gb: float = 2.0
    #: Runs per compiled ensemble chunk; 0 = the largest that fits ``memory_budget_gb`` (on
    #: CPU at most 1 CNN or 16 NanoGPT runs per device: wider vmaps run slower there).
    chunk_runs: int = 0
    #: SGD steps per compiled call in long stages (progress, checkpoint and resume granularity).
    steps_per_call: int = 100_000

    # ---------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        validate(self)

    @property
    def x64(self) -> bool:
        """Whether any stage computes in float64 (x64 must then be enabled at start-up)."""
        return "float64" in (self.dtype, self.compute_dtype)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lrs"] = list(self.lrs)
        return out

    def replace(self, **changes: Any) -> SetupConfig:
        return dataclasses.replace(self, **changes)


_IDENTITY_KEYS = ("experiment", "setup", "description")
KEYS: tuple[str, ...] = tuple(f.name for f in fields(SetupConfig))
_HINTS = get_type_hints(SetupConfig)


def validate(cfg: SetupConfig) -> None:
    """Check every value; raise ConfigError naming the key, the allowed values and a close match."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(
                f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}."
                + did_you_mean(str(value), allowed)
            )
    positive = (
        "batch_size", "sample_size", "max_chars", "vocab_size", "block_size", "n_train",
        "hidden", "input_downsample", "cnn_channels", "cnn_hidden", "n_embd", "n_head",
        "n_layer", "mlp_ratio", "record_every", "val_dist_points", "steps_per_call",
    )
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be a positive integer.")
    non_negative = (
        "epochs_sgd", "epochs_gd", "hessian_steps", "many_runs_steps", "many_runs_samples",
        "val_every", "chunk_runs", "curvature_every", "curvature_iters", "curvature_probes",
    )
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be >= 0.")
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be a positive number.")
    if not cfg.lrs:
        raise ConfigError("lrs is empty; give at least one learning rate, e.g. lrs=0.01,0.001.")
    for lr in cfg.lrs:
        if not lr > 0:
            raise ConfigError(f"lrs contains {lr}; every learning rate must be positive.")
    if len(set(cfg.lrs)) != len(cfg.lrs):
        raise ConfigError(f"lrs={list(cfg.lrs)} repeats a learning rate.")
    if cfg.memory_budget_gb <= 0:
        raise ConfigError("memory_budget_gb must be positive.")
    if cfg.model == "nanogpt" and cfg.dataset_train != "shakespeare":
        raise ConfigError(
            f"model=nanogpt needs dataset_train=shakespeare (got {cfg.dataset_train!r})."
        )
    if cfg.model in ("mlp", "cnn") and cfg.dataset_train == "shakespeare":
        raise ConfigError(f"model={cfg.model} is an image model; dataset_train=shakespeare "
                          "needs model=nanogpt.")
    if cfg.curvature_k < 1:
        raise ConfigError(f"curvature_k={cfg.curvature_k} must be at least 1.")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}.")


# --------------------------------------------------------------------------------------------
# Parsing values (TOML values and --set strings)
# --------------------------------------------------------------------------------------------

def _coerce(key: str, value: Any) -> Any:
    """Convert a TOML value or a ``--set`` string to the type of field ``key``."""
    hint = _HINTS[key]
    try:
        return coerce(hint, value)
    except ValueError:
        pass
    raise ConfigError(f"{key}={value!r} is not valid: expected {expected(hint)}.")


def _check_key(key: str, where: str) -> None:
    if key not in KEYS:
        raise ConfigError(
            f"unknown key '{key}' in {where}." + did_you_mean(key, KEYS)
            + " Run 'python -m sgdjax.run EXP SETUP --dry-run' to see every key."
        )


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` strings into typed values (keys checked, values coerced)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must have the form key=value, e.g. --set seed=1.")
        key, value = item.split("=", 1)
        key = key.strip()
        _check_key(key, "--set")
        if key in ("experiment", "setup"):
            raise ConfigError(
                f"--set {key}=... is not allowed; name the setup on the command line.")
        out[key] = _coerce(key, value.strip().strip("'\""))
    return out


# --------------------------------------------------------------------------------------------
# Experiments on disk
# --------------------------------------------------------------------------------------------

def list_experiments(root: Path = EXPERIMENTS_DIR) -> dict[str, dict[str, str]]:
    """{experiment: {setup: description}} for every setup file under ``root``."""
    out: dict[str, dict[str, str]] = {}
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        setups = {}
        for f in sorted(exp_dir.glob("*.toml"), key=lambda p: _natural(p.stem)):
            if f.stem.startswith("_"):
                continue
            with f.open("rb") as fh:
                setups[f.stem] = str(tomllib.load(fh).get("description", ""))
        if setups:
            out[exp_dir.name] = setups
    return out


def _natural(name: str) -> tuple[Any, ...]:
    digits = "".join(c for c in name if c.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


def setup_path(experiment: str, setup: str, root: Path = EXPERIMENTS_DIR) -> Path:
    """Resolve an experiment/setup pair to its TOML file, with helpful errors."""
    if not root.is_dir():
        raise ConfigError(
            f"no experiments directory at {root}; run from a checkout of sgdjax or set "
            "SGDJAX_EXPERIMENTS to the folder holding EXP/SETUP.toml files."
        )
    experiments = list_experiments(root)
    if experiment not in experiments:
        raise ConfigError(
            f"unknown experiment '{experiment}'; available: {', '.join(experiments)}."
            + did_you_mean(experiment, experiments)
        )
    setups = experiments[experiment]
    if setup not in setups and f"setup{setup}" in setups:
        setup = f"setup{setup}"
    if setup not in setups:
        raise ConfigError(
            f"unknown setup '{setup}' for {experiment}; available: {', '.join(setups)}."
            + did_you_mean(setup, setups)
            + f" Setups are the files in {root / experiment}."
        )
    return root / experiment / f"{setup}.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_setup(
    experiment: str,
    setup: str,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    root: Path = EXPERIMENTS_DIR,
) -> SetupConfig:
    """Load ``experiments/EXP/SETUP.toml`` (over ``_defaults.toml`` of the experiment, if any)
    and apply overrides (a mapping of typed values or ``key=value`` strings)."""
    path = setup_path(experiment, setup, root)
    values: dict[str, Any] = {}
    defaults = path.parent / "_defaults.toml"
    for source in ([defaults] if defaults.exists() else []) + [path]:
        for key, value in _read_toml(source).items():
            _check_key(key, str(source))
            values[key] = _coerce(key, value)
    values["experiment"] = experiment
    values["setup"] = path.stem
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    for key, value in overrides.items():
        _check_key(key, "overrides")
        values[key] = _coerce(key, value)
    try:
        return SetupConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def from_dict(values: Mapping[str, Any]) -> SetupConfig:
    """Rebuild a config from ``to_dict()`` output (e.g. a results manifest)."""
    clean = {}
    for key, value in values.items():
        _check_key(key, "the config mapping")
        clean[key] = _coerce(key, value)
    return SetupConfig(**clean)


__all__ = [
    "CHOICES", "EXPERIMENTS_DIR", "KEYS", "SetupConfig", "from_dict", "list_experiments",
    "load_setup", "parse_overrides", "setup_path", "validate",
]
