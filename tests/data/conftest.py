"""Fixtures of the data tests: never touch the network, and find the real data if present."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

_REAL_DATA_DIR = os.environ.get("SGDJAX_DATA_DIR")

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data tests must never download: tests that exercise downloading unset this."""
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")


def _real_dir(*relpaths: str) -> Path:
    if not _REAL_DATA_DIR:
        pytest.skip("SGDJAX_DATA_DIR is not set, so the real data files are not available")
    root = Path(_REAL_DATA_DIR).expanduser().resolve()
    for rel in relpaths:
        if not (root / rel).is_file():
            pytest.skip(f"{root / rel} is absent")
    return root


@pytest.fixture
def mnist_test_root() -> Path:
    """The real data directory holding the official MNIST test split (else skip)."""
    return _real_dir("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def shakespeare_root() -> Path:
    """The real data directory holding tinyshakespeare/input.txt (else skip)."""
    return _real_dir("tinyshakespeare/input.txt")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (big-endian header and data)."""
    code = _IDX_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def write_idx() -> Callable[..., Path]:
    """``write_idx(path, array, gz=...)`` writes an IDX file, gzip-compressed if ``gz``."""

    def write(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
        data = idx_bytes(np.asarray(array))
        if gz is None:
            gz = path.suffix == ".gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write
