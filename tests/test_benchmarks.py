"""The benchmarks' PyTorch reference must compute what sgdjax computes.

Every workload runs at the ``--quick`` size (a few runs and steps, two Hessian steps, a small
batch and validation set) and the test asserts the point of the benchmark: the reference, fed the
same initial parameters, data and batch indices, agrees with sgdjax number by number; and that
each result row has positive throughputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference as tr  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    MODELS,
    TOL,
    WORKLOADS,
    Result,
    compare,
    make_problem,
    run_benchmarks,
    select,
)

EXPECTED = {
    1: {"loss", "val_loss", "final"},
    3: {"hessians", "weights", "loss"},
    4: {"weights", "loss", "val_loss", "final"},
}


@pytest.fixture(autouse=True)
def _data(offline_data_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real MNIST / Shakespeare when the offline copy exists; random data of the same shapes
    otherwise (the agreement check does not depend on which)."""
    if offline_data_dir is not None:
        monkeypatch.setenv("SGDJAX_DATA_DIR", str(offline_data_dir))


@pytest.mark.parametrize("model", MODELS)
def test_reference_loads_the_same_flat_vector(model: str) -> None:
    """The reference's state-dict names and parameter order are sgdjax's: loading the state dict
    (strictly) gives the identical flat vector."""
    p = make_problem(model, "float32", batch=8, n_val=16)
    ref = tr.flat_params(p.torch_model()).numpy()
    np.testing.assert_array_equal(ref, np.asarray(p.w0))


def test_compare_flags_a_real_difference() -> None:
    absd, reld = compare({"w": (np.array([1.0, 2.0]), np.array([1.0, 2.5]))})
    assert absd["w"] == pytest.approx(0.5) and reld["w"] > TOL["float32"]


def check(r: Result) -> None:
    assert set(r.max_abs_diff) == EXPECTED[r.stage]
    assert r.agree, f"sgdjax and the PyTorch reference disagree: {r.rel_diff}"
    assert r.jax_rate > 0 and r.torch_rate["1"] > 0 and r.ratio > 0
    assert r.flops_per_unit and r.flops_per_unit > 0 and r.peak_flops > 0


# mlp-stage1 runs through the CLI below (compiling a workload is most of a test's time).
@pytest.mark.parametrize("workload", [w for w in WORKLOADS if w != "mlp-stage1"])
def test_quick_workload_agrees_with_reference(workload: str) -> None:
    (r,) = run_benchmarks([workload], quick=True)
    check(r)


def test_cli_quick_mlp_stage1_agrees_and_writes_json(tmp_path) -> None:
    from benchmarks.__main__ import main

    out = tmp_path / "bench.json"
    results = main(["--quick", "--only", "mlp-stage1", "--json", str(out)])
    assert [r.workload for r in results] == ["mlp-stage1"]
    check(results[0])
    saved = json.loads(out.read_text())
    assert saved["results"][0]["agree"] is True and saved["results"][0]["jax_rate"] > 0
    assert saved["machine"]["cpu_count"] >= 1


def test_select_patterns() -> None:
    assert select(["mlp-stage4"]) == ["mlp-stage4"]
    assert select(["stage3"]) == ["mlp-stage3", "cnn-stage3", "nanogpt-stage3"]
    assert select(["nanogpt"]) == ["nanogpt-stage4", "nanogpt-stage3", "nanogpt-stage1"]
    with pytest.raises(SystemExit):
        select(["resnet"])
