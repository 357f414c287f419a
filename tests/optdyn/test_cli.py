"""The family through the command line: a tiny setup end to end, resume, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgdjax import run as cli
from sgdjax.families import FAMILIES, family_for
from sgdjax.optdyn.diagnostics import diagnostic_keys


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_family_contract():
    fam = family_for("optdyn")
    assert FAMILIES["optdyn"] == "sgdjax.optdyn"
    assert [s.name for s in fam.STAGES] == ["train", "sweep"]
    assert all(hasattr(s.load(), "outputs") and hasattr(s.load(), "run") for s in fam.STAGES)
    assert set(fam.EXECUTION_KEYS) == {"description", "device"}
    for setup in ("sgd_vs_adam", "lr_sweep", "momentum", "lr_sweep_wide", "tiny"):
        cfg = fam.load_config("optdyn", setup, ())
        assert cfg.setup == setup and not cfg.x64 and cfg.to_dict()["data"]["n"] > 0
    cfg = fam.load_config("optdyn", "lr_sweep", ())
    assert cfg.sweep.optimizers == ("sgd", "adam") and cfg.sweep.lr_max == (1.0, 0.01)
    m = fam.load_config("optdyn", "momentum", ())
    assert [m.train_spec(i).label for i in range(4)] == [
        "momentum0", "momentum0.9", "momentum0.95", "nesterov0.9"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_sgd):
    out = tmp_path_factory.mktemp("optdyn") / "tiny"
    assert cli.main(["optdyn", "tiny", "--out", str(out), "--no-progress", *sets(*tiny_sgd)]) == 0
    return out


def test_end_to_end_outputs(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"history_sgd_lr0.1.npz", "train_summary.json", "sweep_sgd.npz",
            "sweep_summary.json", "manifest.json", "compare.png", "effective_step.png",
            "curves_sgd_lr0.1.png", "norms_sgd_lr0.1.png", "logits.png",
            "sweep_final_val.png", "sweep_dynamics_sgd.png"} <= names
    with np.load(tiny_run / "history_sgd_lr0.1.npz") as h:
        assert h["step"].tolist() == [*range(10), 20, 40]
        assert h["val.acc"].shape == (1, 12) and set(diagnostic_keys()) <= set(h.files)
        np.testing.assert_allclose(h["eff_step.global"], 0.1, rtol=1e-5)
    with np.load(tiny_run / "sweep_sgd.npz") as s:
        np.testing.assert_allclose(s["lrs"], [0.01, 0.1, 1.0], rtol=1e-6)
        assert s["val.acc"].shape == (3, 1, 12)
        # seed 0 at lr 0.1 of the sweep is the train stage's run (same keys, same steps)
        with np.load(tiny_run / "history_sgd_lr0.1.npz") as h:
            np.testing.assert_allclose(s["val.loss"][1], h["val.loss"], rtol=2e-5)
    summary = json.loads((tiny_run / "sweep_summary.json").read_text())["optimizers"]["sgd"]
    assert summary["best_lr"] in summary["good_lrs"] and len(summary["lrs"]) == 3
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["config"]["train"]["lrs"] == [0.1]
    assert set(manifest["stages"]) == {"train", "sweep"}


def test_rerun_skips_and_other_config_is_refused(tiny_run, tiny_sgd, capsys):
    assert cli.main(["optdyn", "tiny", "--out", str(tiny_run), "--no-progress",
                     *sets(*tiny_sgd)]) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 2
    assert cli.main(["optdyn", "tiny", "--out", str(tiny_run), "--no-progress",
                     *sets(*tiny_sgd, "train.lrs=0.2")]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=0.1", "Did you mean 'train.lrs'"),
    ("train.lrs=0.1,0.2", "train.lrs has 2 entries but train.optimizers has 3"),
    ("sweep.optimizers=sgd,adma", "Did you mean 'adam'"),
    ("model.init=kaiming", "one of 'torch_default', 'he'"),
    ("train.batch_size=1000", "exceeds the 320 training points"),
])
def test_config_errors_are_one_message(override, message, capsys, tmp_path):
    assert cli.main(["optdyn", "tiny", "--out", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("override", "message"), [
    ("optim.b1=1.5", "optim.b1=1.5 is out of range; allowed: 0 <= b1 < 1."),
    ("optim.b2=nan", "optim.b2=nan is out of range; allowed: 0 <= b2 < 1."),
    ("optim.eps=-1e-8", "optim.eps=-1e-08 is out of range; allowed: eps >= 0."),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is out of range"),
    ("optim.clip_norm=0", "optim.clip_norm=0.0 is out of range; allowed: clip_norm > 0, or none"),
    ("sweep.good_tol=-0.01", "sweep.good_tol=-0.01 is out of range; allowed: good_tol >= 0"),
    ("log.sat_logit_thr=0", "log.sat_logit_thr=0.0 is out of range; allowed: sat_logit_thr > 0"),
    ("sweep.optimizers=sgd,adam,sgd", "sweep.optimizers repeats 'sgd': ['sgd', 'adam', 'sgd']"),
])
def test_sweep_only_setup_fails_at_load_time(override, message, capsys):
    # lr_sweep has no train runs: these values must still be refused before any stage, so
    # --dry-run reports them with the key, the value and the allowed range
    assert cli.main(["optdyn", "lr_sweep", "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_range_edges_are_allowed():
    from sgdjax.optdyn import load_config

    cfg = load_config("optdyn", "lr_sweep", ("optim.b1=0", "optim.b2=0", "optim.eps=0",
                                             "optim.clip_norm=1e-3", "sweep.good_tol=0",
                                             "log.sat_logit_thr=1e-3"))
    assert cfg.sweep_spec("adam").b1 == 0.0 and cfg.sweep_spec("sgd").clip_norm == 1e-3
    assert cfg.sweep.good_tol == 0.0 and cfg.log.sat_logit_thr == 1e-3


def test_dry_run_lists_dotted_keys(capsys):
    assert cli.main(["optdyn", "lr_sweep", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'sweep.lr_max = [1.0, 0.01]' in out and "2 sweep" in out
