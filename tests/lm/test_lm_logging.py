"""JSONL logs always; TensorBoard and wandb only when installed."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from sgdjax.lm.logging import RunLog, read_log


def test_jsonl_lines(tmp_path: Path) -> None:
    with RunLog(tmp_path, tensorboard=False, wandb=False) as log:
        log.log(5, {"train/loss": 4.5, "lr": 1e-3})
        log.log(10, {"eval/loss": float("nan")})
        assert log.backends == ["jsonl"]
    assert read_log(tmp_path / "train_log.jsonl") == [
        {"step": 5, "train/loss": 4.5, "lr": 1e-3}, {"step": 10, "eval/loss": "nan"}]


def _fake(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def test_optional_backends_are_used_when_importable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    class Run:
        def log(self, metrics: dict, step: int) -> None:
            calls.append(("wandb.log", (metrics, step)))

        def finish(self) -> None:
            calls.append(("wandb.finish", None))

    class Writer:
        def __init__(self, logdir: str) -> None:
            calls.append(("tb.init", logdir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append(("tb.scalar", (tag, value, step)))

        def close(self) -> None:
            calls.append(("tb.close", None))

    def init(**kwargs: Any) -> Run:
        calls.append(("wandb.init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", _fake("wandb", init=init))
    monkeypatch.setitem(sys.modules, "tensorboardX", _fake("tensorboardX", SummaryWriter=Writer))
    with RunLog(tmp_path, run_name="lm/tiny", config={"seed": 1}) as log:
        assert log.backends == ["jsonl", "tensorboard", "wandb"]
        log.log(3, {"train/loss": 2.0})
    init_kwargs = dict(calls)["wandb.init"]
    assert init_kwargs["mode"] == "offline" and init_kwargs["name"] == "lm/tiny"
    assert ("tb.scalar", ("train/loss", 2.0, 3)) in calls
    assert ("wandb.log", ({"train/loss": 2.0}, 3)) in calls
    assert ("wandb.finish", None) in calls and ("tb.close", None) in calls
