"""The three-counter curriculum, traced and on the host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.looped.config import LoopedConfig, TrainingConfig
from sgdjax.looped.curriculum import Counter, Curriculum
from sgdjax.looped.train import curriculum_log


def test_counter_formula_traced_and_host() -> None:
    c = Counter(start=15, end=30, inc=2, interval=500)
    steps = np.array([0, 499, 500, 1000, 3499, 3500, 4000, 10**6])
    expected = [15, 15, 17, 19, 27, 29, 30, 30]
    traced = jax.jit(jax.vmap(c.value))(jnp.asarray(steps))
    assert traced.dtype == jnp.int32
    assert traced.tolist() == expected
    assert [c.at(int(s)) for s in steps] == expected


def test_curriculum_log_matches_traced_values() -> None:
    cur = Curriculum(Counter(5, 20, 1, 7), Counter(11, 41, 2, 5), Counter(3, 9, 2, 4))
    cfg = LoopedConfig(training=TrainingConfig(curriculum=cur))
    log = curriculum_log(cfg, 60)
    d, n, k = jax.vmap(cur.values)(jnp.arange(60))
    assert log["dims"].tolist() == d.tolist()
    assert log["points"].tolist() == n.tolist()
    assert log["loops"].tolist() == k.tolist()
    assert log["points"][-1] == min(41, 11 + 2 * (59 // 5))


@pytest.mark.parametrize("counter", [Counter(5, 3, 1, 1), Counter(1, 5, -1, 1),
                                     Counter(1, 5, 1, 0)])
def test_bad_counters_are_config_errors(counter: Counter) -> None:
    with pytest.raises(ConfigError, match="training.curriculum.points"):
        Curriculum(points=counter).check()
