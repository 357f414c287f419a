from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest


def _check_uniform(samples: np.ndarray, bound: float) -> None:
    """Samples look like U(-bound, bound): in range, reach the ends, mean 0, variance b²/3."""
    samples = np.asarray(samples, np.float64)
    n = samples.size
    assert samples.min() >= -bound and samples.max() <= bound
    assert samples.min() < -0.9 * bound and samples.max() > 0.9 * bound
    var = bound**2 / 3
    assert abs(samples.mean()) < 5 * math.sqrt(var / n)
    # Var(x²) for U(±b) is 4b⁴/45
    assert abs(samples.var() - var) < 5 * math.sqrt(4 * bound**4 / 45 / n)


def _check_normal(samples: np.ndarray, std: float) -> None:
    samples = np.asarray(samples, np.float64)
    n = samples.size
    assert abs(samples.mean()) < 5 * std / math.sqrt(n)
    # Var(x²) for N(0, s²) is 2s⁴
    assert abs(samples.var() - std**2) < 5 * math.sqrt(2 / n) * std**2
    # a normal, not a uniform: excess kurtosis ≈ 0 (uniform has -1.2)
    kurt = np.mean(samples**4) / samples.var() ** 2 - 3
    assert abs(kurt) < 0.3


@pytest.fixture
def check_uniform() -> Callable[[np.ndarray, float], None]:
    return _check_uniform


@pytest.fixture
def check_normal() -> Callable[[np.ndarray, float], None]:
    return _check_normal
