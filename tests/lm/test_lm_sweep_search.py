"""Sweep files, run names and the Bayesian search (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.lm.config import LMConfig
from sgdjax.sweep import (
    ALIASES,
    config_value,
    draw,
    encode,
    expected_improvement,
    grid,
    load_sweep,
    run_name,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_seeds_sweep_file_and_run_names() -> None:
    sweep = load_sweep(ROOT / "experiments" / "sweeps" / "hw1.toml")
    assert sweep.method == "bayes" and sweep.count == 15 and sweep.metric == "final_eval_loss"
    assert [p.name for p in sweep.params] == [
        "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "optim",
        "lr_scheduler_type", "torch_compile", "warmup_ratio"]
    assert len(grid(sweep.params)) == 4 * 3 * 4 * 3 * 3 * 2 * 3
    point = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4,
             "learning_rate": 5e-4, "optim": "adamw_torch", "lr_scheduler_type": "cosine",
             "torch_compile": True, "warmup_ratio": 0.1}
    assert run_name(point, LMConfig(), sweep.params) == (
        "bs16#ga4#lr0.0005#adamw_torch#cosine#warmup_0.1")
    assert run_name({**point, "learning_rate": 5e-5}, LMConfig(), sweep.params).startswith(
        "bs16#ga4#lr5e-05#")
    optim = next(p for p in sweep.params if p.name == "optim")
    assert [config_value(optim, v) for v in optim.values] == ["adamw", "adamw_fused",
                                                              "adafactor"]
    assert ALIASES["torch_compile"] == "train.jit"


def test_sweep_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('methd = "grid"\n[parameters]\nlearning_rate = { values = [1e-3] }\n')
    with pytest.raises(ConfigError, match="Did you mean 'method'"):
        load_sweep(f)
    f.write_text('method = "bayes"\n[metric]\nname = "eval_los"\n'
                 "[parameters]\nlearning_rate = { values = [1e-3] }\n")
    with pytest.raises(ConfigError, match="final_eval_loss"):
        load_sweep(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")


def test_draw_and_encode_ranges(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('method = "random"\n[parameters]\n'
                 'learning_rate = { min = 1e-5, max = 1e-3, distribution = "log_uniform_values" }\n'
                 'optim = { values = ["adamw_torch", "adafactor"] }\n')
    params = load_sweep(f).params
    pt = draw(params, np.array([0.5, 0.99]))
    assert pt["learning_rate"] == pytest.approx(1e-4) and pt["optim"] == "adafactor"
    np.testing.assert_allclose(encode(params, pt), [0.5, 0.0, 1.0])


def test_expected_improvement_prefers_promising_unexplored_points() -> None:
    # f(x) = (x - 0.7)^2 observed at 0, 0.5, 1: EI is highest between 0.5 and 1.
    x = np.array([[0.0], [0.5], [1.0]])
    y = (x[:, 0] - 0.7) ** 2
    cand = np.linspace(0, 1, 21)[:, None]
    ei = expected_improvement(x, y, cand)
    best = float(cand[np.argmax(ei), 0])
    assert 0.5 < best < 1.0
    assert ei[0] < 1e-3 * ei.max()  # an observed, bad point has no expected improvement
