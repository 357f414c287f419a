"""Training logs: JSON lines always; TensorBoard and wandb (offline) when they are installed.

Every record is one line of ``train_log.jsonl`` (``{"step": 5, "train/loss": ..., "lr": ...}``,
HF's metric names), written and flushed as training goes, so a long run can be followed with
``tail -f``. If ``tensorboardX`` (or ``tensorboard`` with PyTorch) is importable, the same scalars
go to event files under ``tensorboard/``; if ``wandb`` is importable they go to an offline wandb run
under ``wandb/`` (``wandb sync`` uploads it later). Neither is ever required, and neither is
imported unless asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
from pathlib import Path
from types import TracebackType
from typing import Any


def _tensorboard_writer(logdir: Path) -> Any | None:
    """A ``SummaryWriter`` from tensorboardX or PyTorch, or None when neither is usable."""
    if importlib.util.find_spec("tensorboardX") is not None:
        with contextlib.suppress(Exception):
            return importlib.import_module("tensorboardX").SummaryWriter(str(logdir))
    if (importlib.util.find_spec("tensorboard") is not None
            and importlib.util.find_spec("torch") is not None):
        with contextlib.suppress(Exception):
            module = importlib.import_module("torch.utils.tensorboard")
            return module.SummaryWriter(str(logdir))
    return None


def _wandb_run(root: Path, project: str, name: str, config: dict[str, Any]) -> Any | None:
    """An offline wandb run, or None when wandb is not installed (or fails to start)."""
    if importlib.util.find_spec("wandb") is None:
        return None
    with contextlib.suppress(Exception):
        wandb = importlib.import_module("wandb")
        return wandb.init(project=project, name=name, dir=str(root), mode="offline",
                          config=config, reinit=True)
    return None


def _plain(value: Any) -> Any:
    v = float(value)
    return v if math.isfinite(v) else str(v)  # NaN/inf as strings keep every line strict JSON


class RunLog:
    """Writes metrics of one run to ``root/name`` and the optional backends."""

    def __init__(self, root: str | Path, *, name: str = "train_log.jsonl", run_name: str = "run",
                 config: dict[str, Any] | None = None, tensorboard: bool = True,
                 wandb: bool = True, project: str = "sgdjax-lm") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / name
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = _tensorboard_writer(self.root / "tensorboard") if tensorboard else None
        self._wandb = (_wandb_run(self.root, project, run_name, config or {})
                       if wandb else None)

    @property
    def backends(self) -> list[str]:
        return ["jsonl"] + (["tensorboard"] if self._tb is not None else []) + (
            ["wandb"] if self._wandb is not None else [])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))
        if self._wandb is not None:
            self._wandb.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["RunLog", "read_log"]
