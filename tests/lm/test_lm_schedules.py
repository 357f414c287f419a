"""Learning-rate schedules at the spec's key steps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.lm.config import LMConfig, ScheduleConfig, TrainConfig
from sgdjax.lm.schedules import make_schedule, warmup_count


def values(cfg: ScheduleConfig, lr: float, horizon: int, steps: list[int]) -> np.ndarray:
    sched = make_schedule(cfg, lr, horizon)
    return np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps)), np.float64)


def test_step_down_v24_key_steps() -> None:
    cfg = ScheduleConfig(kind="step_down", lr_max=7e-4, up_end=10, hold_end=450, down_end=2000)
    got = values(cfg, 7e-5, 0, [0, 5, 10, 450, 1225, 1764, 2000, 5000])
    want = [7e-5, 3.85e-4, 7e-4, 7e-4, 3.85e-4, 7e-4 - 6.3e-4 * 1314 / 1550, 7e-5, 7e-5]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert round(got[5], 6) == 1.66e-4  # where the seed's best run ended


def test_step_down_seed_defaults_are_v24() -> None:
    got = values(ScheduleConfig(kind="step_down"), 7e-5, 0, [0, 10, 450, 2000])
    np.testing.assert_allclose(got, [7e-5, 7e-4, 7e-4, 7e-5], rtol=1e-6)


def test_triangular_v1_key_steps() -> None:
    cfg = ScheduleConfig(kind="triangular")  # lr_max 5e-4, 50 / 1300 / 1800, half-period 400
    steps = [0, 25, 50, 1300, 1550, 1800, 2000, 2200, 2400, 2600, 3000, 3400]
    got = values(cfg, 5e-5, 0, steps)
    mid = 2.75e-4
    want = [5e-5, mid, 5e-4, 5e-4, mid, 5e-5, mid, 5e-4, mid, 5e-5, 5e-4, 5e-5]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_hf_linear_cosine_constant() -> None:
    lr, horizon = 2e-3, 100  # warm-up ratio 0.1 -> ceil(10.0) = 10 steps
    steps = [0, 5, 10, 55, 100, 120]
    lin = values(ScheduleConfig(kind="linear", warmup_ratio=0.1), lr, horizon, steps)
    np.testing.assert_allclose(lin, [0, 1e-3, 2e-3, 1e-3, 0, 0], atol=1e-9)
    cos = values(ScheduleConfig(kind="cosine", warmup_ratio=0.1), lr, horizon, steps)
    # HF does not clamp the cosine's progress: past the horizon it rises again.
    past = lr * (1 + math.cos(math.pi * 110 / 90)) / 2
    np.testing.assert_allclose(cos, [0, 1e-3, 2e-3, 1e-3, 0, past], atol=1e-9)
    quarter = values(ScheduleConfig(kind="cosine", warmup_ratio=0.1), lr, horizon, [32.5])
    np.testing.assert_allclose(quarter, [lr * (1 + math.cos(math.pi / 4)) / 2], rtol=1e-5)
    # HF's "constant" ignores the warm-up; "constant_with_warmup" applies it.
    const = values(ScheduleConfig(kind="constant", warmup_ratio=0.1), lr, horizon, steps)
    np.testing.assert_allclose(const, [lr] * 6, rtol=1e-7)
    cww = values(ScheduleConfig(kind="constant_with_warmup", warmup_ratio=0.1), lr, horizon,
                 steps)
    np.testing.assert_allclose(cww, [0, 1e-3, lr, lr, lr, lr], rtol=1e-6)


def test_warmup_steps_override_ratio_and_round_up() -> None:
    assert warmup_count(0.07, None, 121_000) == 8470
    assert warmup_count(0.07, None, 15) == 2  # ceil(1.05)
    assert warmup_count(0.2, 100, 15) == 100


def test_schedule_config_errors() -> None:
    with pytest.raises(ConfigError, match="lr_max=0.0001 is below"):
        LMConfig(schedule=ScheduleConfig(kind="step_down", lr_max=1e-4))  # default lr 1e-3
    with pytest.raises(ConfigError, match="hold_end <= down_end"):
        LMConfig(schedule=ScheduleConfig(kind="step_down", lr_max=1e-2, hold_end=3000))
    with pytest.raises(ConfigError, match="set train.max_steps"):
        LMConfig(train=TrainConfig(max_steps=None, max_seconds=60.0),
                 schedule=ScheduleConfig(kind="cosine"))
