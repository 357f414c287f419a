"""End to end on a micro setup: the CLI trains, evaluates and plots; the trained model beats the
averaging baseline by far; an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.looped import load_config
from sgdjax.looped.context import MODEL, RESUME, LoopedContext
from sgdjax.looped.stages.train import _save_resume
from sgdjax.looped.train import fresh_state, run_training
from sgdjax.run import main
from sgdjax.store import Store

# tiny_loop shrunk to D = d = 1, prompts of 3 -> 5 points, loops 1 -> 2 with window 2.
MICRO = [
    "model.n_dims=1", "model.n_positions=5", "model.n_embd=32", "training.batch_size=128",
    "training.learning_rate=0.003", "training.train_steps=400", "training.steps_per_call=200",
    "training.val_every=200", "training.val_prompts=128", "training.n_loop_window=2",
    "training.curriculum.dims.start=1", "training.curriculum.dims.end=1",
    "training.curriculum.points.start=3", "training.curriculum.points.end=5",
    "training.curriculum.points.interval=200", "training.curriculum.loops.start=1",
    "training.curriculum.loops.end=2", "training.curriculum.loops.interval=100",
    "eval.n_prompts=512", "eval.n_loops=20", "eval.bootstrap=100", "eval.batch=256",
]


def _cli(out: Path, *extra: str) -> int:
    sets = [a for kv in MICRO for a in ("--set", kv)]
    return main(["looped", "tiny_loop", "--out", str(out), "--no-progress", *sets, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("micro")
    assert _cli(out) == 0
    return out


def test_cli_writes_every_output(trained: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("model.npz", "train_log.npz", "eval.npz", "eval_summary.json",
                 "error_vs_k.png", "error_vs_loops.png", "training.png", "manifest.json"):
        assert (trained / name).is_file(), name
    assert not (trained / RESUME).exists()
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["config"]["model"]["n_embd"] == 32
    assert manifest["config"]["training"]["curriculum"]["loops"]["end"] == 2
    assert set(manifest["stages"]) == {"train", "evaluate", "figures"}
    log = np.load(trained / "train_log.npz")
    assert log["loss"].shape == (400,) and log["grad_norm"].shape == (400,)
    assert log["val_loss"].shape == (2,) and int(log["diverged_at"]) == -1
    assert log["points"][[0, 199, 200, 399]].tolist() == [3, 3, 5, 5]
    assert log["loops"][[0, 99, 100, 399]].tolist() == [1, 1, 2, 2]
    # a second invocation finds every stage complete
    assert _cli(trained) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 3


def test_training_beats_the_averaging_baseline(trained: Path) -> None:
    ev = np.load(trained / "eval.npz")
    assert ev["model"].shape == (512, 5) and ev["loop_curve"].shape == (512, 20)
    model = ev["band.model.at_train_loops"][0][1:]  # k = 1..4, after the trained 2 loops
    averaging = ev["band.baseline.averaging"][0][1:]
    assert model.mean() < 0.5 * averaging.mean()
    assert model.mean() < 0.5  # predicting 0 scores 1
    log = np.load(trained / "train_log.npz")
    assert log["loss"][-100:].mean() < 0.8 * log["loss"][:20].mean()


def test_resume_equals_the_uninterrupted_run(trained: Path, tmp_path: Path) -> None:
    cfg = load_config("looped", "tiny_loop", MICRO)
    store = Store(tmp_path)
    # under the CLI's device context, so the compiled program of the first run is reused
    with jax.default_device(jax.devices("cpu")[0]):
        rs, flat = fresh_state(cfg)
        rs = run_training(cfg, rs, until=200)  # "interrupted" after the first call
    _save_resume(LoopedContext(cfg, store), rs, flat)
    assert _cli(tmp_path, "--stages", "train") == 0
    resumed, whole = np.load(tmp_path / MODEL), np.load(trained / MODEL)
    assert int(resumed["step"]) == 400
    for name in whole.files:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
    np.testing.assert_array_equal(np.load(tmp_path / "train_log.npz")["loss"],
                                  np.load(trained / "train_log.npz")["loss"])


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["looped", "tiny_loop", "--out", str(tmp_path), "--set",
                 "model.n_layr=2"]) == 2
    err = capsys.readouterr().err
    assert "model.n_layr" in err and "model.n_layer" in err and "Traceback" not in err
    assert main(["looped", "tiny_loop", "--out", str(tmp_path), "--set",
                 "model.block_type=gru"]) == 2
    assert "'attn', 'lstm', 'ssm'" in capsys.readouterr().err
    assert main(["looped", "tiny_loop", "--dry-run", "--set", "model.n_layer=2", "--set",
                 "training.curriculum.loops.end=30"]) == 0
    out = capsys.readouterr().out
    assert "model.n_layer = 2" in out and "training.curriculum.loops.end = 30" in out
    assert jnp.float32(0).dtype == jnp.float32  # no x64 switched on by the CLI


def test_compare_overlays_setups(trained: Path, tmp_path: Path) -> None:
    from sgdjax.looped.compare import load_curves
    from sgdjax.looped.compare import main as compare

    curves, baselines = load_curves([trained], trained_loops=True)
    assert set(curves) == {"tiny_loop"} and curves["tiny_loop"].shape == (3, 5)
    assert set(baselines) == {"least_squares", "averaging", "knn"}
    assert compare([str(trained), "--zoom", "2", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert compare([str(tmp_path / "nowhere")]) == 2
