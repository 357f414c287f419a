"""Shared fixtures: the offline data directory and isolation of JAX's global x64 switch."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from sgdjax.run import choose_ynn_fusions

# The tests run with the CPU compiler settings that `python -m sgdjax.run` uses (XLA reads
# XLA_FLAGS when its backends start, after this import).
choose_ynn_fusions()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def mnist_test_dir() -> Path | None:
    """A data directory holding the official MNIST test split, or None."""
    for candidate in (os.environ.get("SGDJAX_DATA_DIR"), str(SHARED_DATA)):
        if candidate and (Path(candidate) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def offline_data_dir() -> Path | None:
    """The offline data directory, or None (for module-scoped fixtures that skip themselves)."""
    return mnist_test_dir()


@pytest.fixture
def real_data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point sgdjax at the offline data (MNIST test split, tiny-shakespeare) or skip."""
    found = mnist_test_dir()
    if found is None:
        pytest.skip("offline data not found: set SGDJAX_DATA_DIR to a folder with mnist/t10k-*")
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(found))
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")
    return found


@pytest.fixture(autouse=True)
def _restore_x64():
    """Commands under test may enable x64 for float64 setups; never leak it to other tests."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)
