"""Fixtures of the LM tests: the offline text, a cut-down model, and the 4-device run.

The 4-device comparison needs simulated host devices, which must exist before JAX starts, so it
runs as a separate Python process (``four_devices.py``); the tiny sweep runs as the command
``python -m sgdjax.sweep``. Both start right after collection when a selected test asks for
their results, and work on the machine's other core while the in-process tests run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = "tinyshakespeare/input.txt"
SHARED_DATA = ROOT.parent / "shared" / "data"

#: A 1-layer model small enough to compile quickly; every architectural feature stays on
#: (4 query heads sharing 2 key/value heads, q/k norms, RoPE, SwiGLU, untied head).
SMALL_MODEL: dict[str, int] = {
    "model.num_layers": 1, "model.hidden_size": 32, "model.num_heads": 4,
    "model.num_kv_heads": 2, "model.head_dim": 8, "model.intermediate_size": 64}

# Background processes started after collection, by the fixture that waits for them.
_BACKGROUND = pytest.StashKey[dict[str, tuple[subprocess.Popen, Path | None]]]()


def shakespeare_dir() -> Path | None:
    for candidate in (os.environ.get("SGDJAX_DATA_DIR"), str(SHARED_DATA)):
        if candidate and (Path(candidate) / SHAKESPEARE).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def small_model() -> dict[str, int]:
    """Dotted config overrides of the cut-down model."""
    return dict(SMALL_MODEL)


@pytest.fixture(scope="session")
def shakespeare_root() -> Path:
    """The data directory holding tiny-Shakespeare, or skip."""
    found = shakespeare_dir()
    if found is None:
        pytest.skip(f"tiny-Shakespeare not found: set SGDJAX_DATA_DIR to a folder with "
                    f"{SHAKESPEARE}")
    return found


@pytest.fixture
def text_data(shakespeare_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point sgdjax at the offline tiny-Shakespeare (never downloading)."""
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(shakespeare_root))
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")
    return shakespeare_root


def _env(**extra: str) -> dict[str, str]:
    """A worker environment: the package importable, 4 host devices on CPU (and, from the
    inherited ``XLA_FLAGS``, the suite's backend optimisation level, see ``tests/conftest.py``)."""
    from sgdjax.lm.stages.scaling import worker_env

    env = worker_env("cpu", 4)
    env.update(extra)
    return env


def _start_four_devices() -> tuple[subprocess.Popen, Path | None]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("four_devices.py")),
         json.dumps(SMALL_MODEL)],
        env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, None


def _start_tiny_sweep() -> tuple[subprocess.Popen, Path | None] | None:
    data = shakespeare_dir()
    if data is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="sgdjax-lm-sweep-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgdjax.sweep", str(ROOT / "experiments/sweeps/tiny_grid.toml"),
         "--out", str(out), "--no-progress"],
        env=_env(SGDJAX_DATA_DIR=str(data), SGDJAX_OFFLINE="1"), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


_STARTERS = {"four_device_results": _start_four_devices, "tiny_sweep": _start_tiny_sweep}


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start only what will be used
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    running: dict[str, tuple[subprocess.Popen, Path | None]] = {}
    for name, start in _STARTERS.items():
        if any(name in getattr(item, "fixturenames", ()) for item in items):
            started = start()
            if started is not None:
                running[name] = started
    config.stash[_BACKGROUND] = running


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for proc, out in session.config.stash.get(_BACKGROUND, {}).values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


def _wait(request: pytest.FixtureRequest, name: str) -> tuple[str, Path | None]:
    running = request.config.stash.get(_BACKGROUND, {})
    if name not in running:
        started = _STARTERS[name]()
        if started is None:
            pytest.skip("tiny-Shakespeare not found: set SGDJAX_DATA_DIR")
        running[name] = started
        request.config.stash[_BACKGROUND] = running
    proc, out = running[name]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, out


@pytest.fixture(scope="session")
def four_device_results(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Final parameters' differences of accumulated and sharded runs from the reference run
    (see four_devices.py)."""
    stdout, _ = _wait(request, "four_device_results")
    return json.loads(stdout)


@pytest.fixture(scope="session")
def tiny_sweep(request: pytest.FixtureRequest) -> tuple[Path, str]:
    """``python -m sgdjax.sweep experiments/sweeps/tiny_grid.toml``: (results dir, stdout)."""
    stdout, out = _wait(request, "tiny_sweep")
    assert out is not None
    return out, stdout
