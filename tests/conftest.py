"""Shared fixtures: the offline data directory, one tiny exp1 pipeline run, isolation of JAX's
global x64 switch, and a compilation cache private to the session."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

from sgdjax.run import choose_ynn_fusions

# Many tests (and the commands they start as subprocesses, which inherit the environment)
# compile the same programs; a compilation cache private to this session compiles each once.
# It starts empty, so no test depends on an earlier session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sgdjax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# The tests run with the CPU compiler settings that `python -m sgdjax.run` uses (XLA reads
# XLA_FLAGS when its backends start, after this import).
choose_ynn_fusions()

# The suite is compile-bound on two cores, so LLVM's optimisation of the generated CPU code is
# off, here and in the commands tests start with this environment. XLA's own passes, which
# decide fusions, layouts, kernels and the order of every sum, are those of a normal run; only
# the emitted loops are less tuned (whole suite on two cores 828 -> 685-703 s). An explicit
# level in XLA_FLAGS wins, e.g. ``XLA_FLAGS=--xla_backend_optimization_level=3`` to test the
# code users run bit for bit.
_BACKEND_LEVEL = "--xla_backend_optimization_level"
if _BACKEND_LEVEL not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_BACKEND_LEVEL}=0".strip()

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


# exp1/setup1 small enough for seconds on two cores: 640 training images, 23 many-run steps
EXP1_TINY = (
    "train_split=test[:640]", "val_split=test[640:960]", "epochs_sgd=2", "epochs_gd=3",
    "hessian_steps=6", "many_runs_steps=23", "many_runs_samples=5", "lrs=0.05,0.01",
)


@dataclass(frozen=True)
class Exp1Run:
    overrides: tuple[str, ...]  # the --set items of the tiny config
    base: Path      # stages 1 and 2 only (copy before writing into it)
    full: Path      # then all seven stages on a copy of ``base`` (read only)
    printed: str    # what the all-stages command printed


@pytest.fixture(scope="session")
def exp1_tiny(tmp_path_factory, offline_data_dir) -> Exp1Run:
    """One tiny exp1/setup1 run through ``sgdjax.run.main``, shared by the pipeline tests and
    the notebooks: stages 1-2 first, then every stage on a copy (so 1-2 are found complete)."""
    if offline_data_dir is None:
        pytest.skip("offline MNIST test split not found (set SGDJAX_DATA_DIR)")
    from sgdjax import run as cli

    root = tmp_path_factory.mktemp("exp1_tiny")
    base, full = root / "base", root / "full" / "exp1" / "setup1"
    sets = [a for item in EXP1_TINY for a in ("--set", item)]
    mp = pytest.MonkeyPatch()
    mp.setenv("SGDJAX_DATA_DIR", str(offline_data_dir))
    mp.setenv("SGDJAX_OFFLINE", "1")
    before = jax.config.jax_enable_x64
    try:
        args = ["exp1", "setup1", "--no-progress", *sets]
        assert cli.main([*args, "--out", str(base), "--stages", "1,2"]) == 0
        shutil.copytree(base, full)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli.main([*args, "--out", str(full)]) == 0
    finally:
        jax.config.update("jax_enable_x64", before)  # main enables x64 for float64 setups
        mp.undo()
    return Exp1Run(EXP1_TINY, base, full, printed.getvalue())


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


@pytest.fixture
def x64() -> None:
    """Enable float64 for one test (``_restore_x64`` puts the previous setting back)."""
    jax.config.update("jax_enable_x64", True)
