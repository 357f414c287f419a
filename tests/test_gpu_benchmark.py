"""``python -m benchmarks.gpu``: the accelerator goals' benchmark runs end to end on a tiny size
(on the CPU here), its projection is the line through its two measurements, and a goal is judged
only at the goal's ensemble size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import gpu


@pytest.fixture(autouse=True)
def _data(offline_data_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    if offline_data_dir is None or not (offline_data_dir / "tinyshakespeare").is_dir():
        pytest.skip("exp2 needs tinyshakespeare (SGDJAX_DATA_DIR)")
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(offline_data_dir))


def test_quick_run_measures_every_part(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    result = gpu.main(["--quick", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text())["parts"] == result["parts"]
    roof = result["roofline"]
    assert roof["device"] == "cpu"
    assert all(roof[k] > 0 for k in ("bandwidth", "disk_write"))
    assert roof["flops"]["float32"] > 0 and roof["flops"]["float64"] > 0
    mlp, exp2 = result["parts"]
    assert (mlp["name"], exp2["name"]) == ("mlp", "exp2")
    d = mlp["detail"]
    assert (d["runs"], d["steps"]) == (gpu.QUICK["mlp_runs"], gpu.QUICK["mlp_steps"])
    assert mlp["rate"] == pytest.approx(d["runs"] * d["steps"] / mlp["seconds"])
    assert np.isfinite(d["mean_final_loss"]) and d["flops_per_run_step"] > 0
    assert mlp["met"] is None and exp2["met"] is None  # tiny sizes judge no goal
    e = exp2["detail"]
    assert e["measured_steps"] == list(gpu.QUICK["exp2_steps"]) and e["steps"] == 1111
    assert exp2["seconds"] == pytest.approx(e["fixed_s"] + 1111 * e["seconds_per_step"])
    assert exp2["rate"] == pytest.approx(exp2["seconds"] / 60)
    # 4 runs x (1111 + 1) weight rows of 960 float32 dominate the projected files
    assert e["disk_bytes"] > 4 * 1112 * 960 * 4
    # the stage's own files, from its last (8-step) run: shorter than one validation epoch
    res = tmp_path / "work" / "exp2_setup2"
    assert np.load(res / "sgd_weights_lr0.001.npy").shape == (4, 8, 960)
    assert np.load(res / "sgd_val_losses_lr0.001.npy").shape == (4, 0)


def test_fit_line_and_goal_judgement() -> None:
    assert gpu.fit_line((10, 30), (7.0, 11.0)) == (5.0, 0.2)
    small = gpu.Part("mlp", 2e7, "run-steps/s", 1e7, 1.0, detail={"runs": 8, "goal_runs": 10000})
    full = gpu.Part("mlp", 2e7, "run-steps/s", 1e7, 1.0, detail={"runs": 10000,
                                                                  "goal_runs": 10000})
    slow = gpu.Part("exp2", 31.0, "minutes", 30.0, 1860.0, bound_s=93.0,
                    detail={"runs": 10000, "goal_runs": 10000})
    assert (small.met, full.met, slow.met) == (None, True, False)
    assert slow.of_roofline == pytest.approx(0.05)


def test_bad_input_is_one_message(tmp_path) -> None:
    with pytest.raises(SystemExit, match="unknown part"):
        gpu.main(["--quick", "--only", "mlp,gpus"])
    work = ["--quick", "--only", "exp2", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit, match="many_runs_stepz"):  # the config's own message
        gpu.main([*work, "--set", "many_runs_stepz=3"])
    with pytest.raises(SystemExit, match="--exp2-steps"):
        gpu.main([*work, "--set", "many_runs_steps=3"])
    for bad in ("20,10", "ten,20", "5"):
        with pytest.raises(SystemExit, match="two increasing step counts"):
            gpu.main([*work, "--exp2-steps", bad])
