"""The tiny optdyn setup shared by the tests of this folder.

Tests that train use exactly the shapes of ``TINY_SGD`` (one SGD run of 60 steps on 320
points, and a 3-lr sweep), so the compiled groups are shared through
``sgdjax.optdyn.runs.compiled_group``'s cache within a test session."""

from __future__ import annotations

import pytest

#: Overrides of experiments/optdyn/tiny.toml: one SGD run, one SGD sweep of 3 lrs, one seed.
TINY_SGD = (
    "train.optimizers=sgd", "train.lrs=0.1", "train.seeds=1",
    "sweep.optimizers=sgd", "sweep.lr_min=0.01", "sweep.lr_max=1", "sweep.seeds=1",
)


@pytest.fixture(scope="session")
def tiny_sgd() -> tuple[str, ...]:
    return TINY_SGD


@pytest.fixture(scope="session")
def tiny_cfg():
    from sgdjax.optdyn import load_config

    return load_config("optdyn", "tiny", TINY_SGD)


@pytest.fixture(scope="session")
def tiny_ctx(tiny_cfg, tmp_path_factory):
    from sgdjax.optdyn import make_context
    from sgdjax.store import Store

    return make_context(tiny_cfg, Store(tmp_path_factory.mktemp("optdyn_ctx")),
                        show_progress=False)
