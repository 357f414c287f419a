"""``python -m sgdjax.analyze``: one-line errors with exit status 2, and a full diffusion run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sgdjax import analyze


def synthetic_results(root: Path, mp: pytest.MonkeyPatch) -> None:
    """A tiny MLP setup (55 parameters, 48 random images): a checkpoint, a synthetic random-walk
    ensemble of 24 runs x 12 recorded steps, and a GD trajectory."""
    from sgdjax.config import SetupConfig
    from sgdjax.data.types import ArraySplit
    from sgdjax.stages.common import Context
    from sgdjax.store import Store

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 48)
    x = np.kron(rng.standard_normal((48, 1, 2, 2)), np.ones((14, 14))).astype(np.float32)
    train = ArraySplit(x, y)
    mp.setattr(Context, "splits", property(lambda self: (train, train)))
    cfg = SetupConfig(experiment="exp1", setup="cli", hidden=3, input_downsample=2,
                      batch_size=8, lrs=(0.05,), many_runs_steps=12, many_runs_samples=24)
    store = Store(root)
    store.update_manifest(config=cfg.to_dict())
    ctx = Context(cfg, store, show_progress=False)
    w0 = rng.normal(0, 0.5, ctx.model.num_params)
    ctx.save_checkpoint("initial_after_sgd_and_gd.npz", w0, {})
    steps = np.cumsum(rng.normal(0, 1e-3, (24, 12, w0.size)), axis=1)
    steps[:, 0] = 0.0
    store.save_npy("sgd_weights_lr0.05.npy", (w0 + steps).astype(np.float32))
    store.save_npy("sgd_diverged_at_lr0.05.npy", np.full(24, -1, np.int32))
    store.save_npy("gd_weights_lr0.05_dtypefloat32.npy",
                   w0 + np.linspace(0, 1e-3, 12)[:, None] * np.ones(w0.size))


def test_missing_directory_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "no_such_results"
    assert analyze.main(["diffusion", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(missing) in err
    assert "python -m sgdjax.run" in err and "Traceback" not in err
    assert not missing.exists()


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert analyze.main(["diffusion", str(tmp_path), "--lr", "abc"]) == 2
    assert analyze.main(["bogus", str(tmp_path)]) == 2
    assert analyze.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert analyze.main(["--help"]) == 0


def test_missing_ensemble_names_stage_4(tmp_path, capsys, monkeypatch):
    root = tmp_path / "res"
    synthetic_results(root, monkeypatch)
    assert analyze.main(["diffusion", str(root), "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage 4" in err and "--stages 4" in err

    assert analyze.main(["diffusion", str(root), "--out", "diff"]) == 0
    out = capsys.readouterr().out
    assert "lr0.05" in out and "summary.json" in out
    summary = json.loads((root / "diff" / "summary.json").read_text())
    assert summary["lrs"] == [0.05] and summary["sampler"] == "reshuffle"
    entry = summary["per_lr"]["lr0.05"]
    assert entry["hessian"]["source"] == "checkpoint"  # no stage-7 matrix: falls back
    assert entry["mean_vs_gd"]["available"] and entry["n_used"] == 24
    for name in ("pred_vs_measured_lr0.05.png", "variance_vs_time_lr0.05.png",
                 "mean_vs_gd.png", "spread_vs_lr.png"):
        assert (root / "diff" / name).stat().st_size > 5000, name


def test_spectra_hook(tmp_path, capsys, monkeypatch):
    import sys
    import types

    assert analyze.main(["spectra", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    calls = []
    fake = types.ModuleType("sgdjax.analysis.spectra")
    fake.analyze_spectra = lambda results_dir, lrs=None, out="spectra": calls.append(
        (results_dir, lrs, out)) or {"figures": []}
    monkeypatch.setitem(sys.modules, "sgdjax.analysis.spectra", fake)
    assert analyze.main(["spectra", str(tmp_path), "--lr", "0.1", "--lr", "0.01"]) == 0
    assert calls == [(tmp_path, [0.1, 0.01], "spectra")]
    monkeypatch.setitem(sys.modules, "sgdjax.analysis.spectra", None)  # import fails
    assert analyze.main(["spectra", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spectra analysis is not available" in err
