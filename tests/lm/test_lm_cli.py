"""End to end: ``python -m sgdjax.run lm tiny`` and ``python -m sgdjax.sweep FILE`` (the sweep
runs in the background, see conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sgdjax import run as run_cli
from sgdjax import sweep as sweep_cli
from sgdjax.lm.logging import read_log

FAST = [
    "train.max_steps=150", "train.eval_every=75", "train.segment_steps=75",
    "train.eval_sequences=64", "generate.max_new_tokens=24", "logging.log_every=25"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, shakespeare_root: Path,
             small_model: dict[str, int]) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("SGDJAX_DATA_DIR", str(shakespeare_root))
    mp.setenv("SGDJAX_OFFLINE", "1")
    out = tmp_path_factory.mktemp("lm_tiny")
    argv = ["lm", "tiny", "--out", str(out), "--stages", "train,evaluate", "--no-progress"]
    for item in [f"{k}={v}" for k, v in small_model.items()] + FAST:
        argv += ["--set", item]
    try:
        assert run_cli.main(argv) == 0
        # A second invocation finds both stages complete and skips them.
        assert run_cli.main(argv) == 0
    finally:
        mp.undo()
    return out


def test_tiny_run_beats_the_unigram_baseline(tiny_run: Path) -> None:
    ev = json.loads((tiny_run / "eval.json").read_text())
    logs = json.loads((tiny_run / "logs_train.json").read_text())
    assert logs["steps"] == 150 and len(logs["loss"]) == 150 and logs["diverged_at"] == -1
    assert ev["unigram_loss"] == pytest.approx(3.366, abs=0.01)  # bytes of tiny-Shakespeare
    assert ev["eval/loss"] < ev["unigram_loss"] - 0.4
    assert ev["perplexity"] == pytest.approx(np.exp(ev["eval/loss"]), rel=1e-6)
    # In-loop validation at steps 75 and 150 (on 64 held-out blocks) went down.
    assert logs["val_steps"] == [75, 150]
    assert logs["val_loss"][1] < logs["val_loss"][0] < logs["loss"][0]
    assert logs["tokens"] == 150 * 16 * 64


def test_tiny_run_files(tiny_run: Path) -> None:
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"train", "evaluate"}
    assert manifest["config"]["model"]["num_layers"] == 1
    with np.load(tiny_run / "checkpoint.npz") as ckpt:
        assert ckpt["model.embed_tokens.weight"].shape == (257, 32)
        assert ckpt["lm_head.weight"].shape == (257, 32)
        assert ckpt["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)
    log = read_log(tiny_run / "train_log.jsonl")
    steps = [r["step"] for r in log if "train/loss" in r]
    assert steps == [25, 50, 75, 100, 125, 150]
    assert [r["step"] for r in log if "eval/loss" in r] == [75, 150]
    lr = [r["lr"] for r in log if "lr" in r]
    assert lr[0] > lr[-1] > 0  # cosine decay after a warm-up of ceil(0.05 * 150) = 8 steps
    gen = (tiny_run / "generation.txt").read_text()
    assert gen.startswith("Prompt: 'ROMEO:'") and "*Metrics: eval/loss=" in gen
    ev = json.loads((tiny_run / "eval.json").read_text())
    assert 0 < ev["new_tokens"] <= 24
    assert (tiny_run / "loss_curve.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli.main(["lm", "tiny", "--set", "optim.nam=adamw", "--dry-run"]) == 2
    assert "Did you mean 'optim.name'" in capsys.readouterr().err
    assert run_cli.main(["lm", "tiny", "--set", "parallel.devices=4", "--dry-run"]) == 2
    assert "needs a sharding mode" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('method = "grid"\n[parameters]\nwarmup_ratio = { min = 0.0, max = 0.2 }\n')
    assert sweep_cli.main([str(bad)]) == 2
    assert "needs a list of values" in capsys.readouterr().err


def test_sweep_grid_runs_lr_x_seed_as_one_vmapped_call(tiny_sweep: tuple[Path, str]) -> None:
    tmp_path, printed = tiny_sweep
    result = json.loads((tmp_path / "sweep_results.json").read_text())
    runs = result["runs"]
    names = [r["name"] for r in runs]
    assert sorted(names) == sorted(
        f"bs8#ga1#lr{lr}#adamw#cosine#warmup_0.05#seed{s}" for lr in (0.001, 0.01)
        for s in (0, 1))
    assert {r["group"] for r in runs} == {1} and {r["vmapped_runs"] for r in runs} == {4}
    assert all(r["steps"] == 20 and np.isfinite(r["final_eval_loss"]) for r in runs)
    by_lr = {lr: [r["final_eval_loss"] for r in runs if r["lr"] == lr] for lr in (1e-3, 1e-2)}
    assert max(by_lr[1e-2]) < min(by_lr[1e-3])  # 20 steps: the larger lr gets further
    assert len({round(v, 6) for v in by_lr[1e-3]}) == 2  # seeds differ
    csv_head = (tmp_path / "sweep_results.csv").read_text().splitlines()[0]
    assert csv_head.startswith("name,learning_rate,seed,lr,")
    assert (tmp_path / "sweep.png").is_file() and "final_eval_loss" in printed
    assert "group 1: 4 run(s) vmapped" in printed


def test_a_sharded_run_validates_like_the_plain_run(
        tiny_run: Path, tmp_path: Path, shakespeare_root: Path, small_model: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The same setup on a 1-device mesh (ZeRO-3's code path: per-module gathers, the sharded
    # step and evaluation): the same validation steps and, to rounding, the same losses.
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(shakespeare_root))
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")
    argv = ["lm", "tiny", "--out", str(tmp_path), "--stages", "train", "--no-progress"]
    for item in [f"{k}={v}" for k, v in small_model.items()] + FAST + [
            "parallel.mode=zero3", "parallel.devices=1"]:
        argv += ["--set", item]
    assert run_cli.main(argv) == 0
    sharded = json.loads((tmp_path / "logs_train.json").read_text())
    plain = json.loads((tiny_run / "logs_train.json").read_text())
    assert sharded["val_steps"] == plain["val_steps"] == [75, 150]
    np.testing.assert_allclose(sharded["val_loss"], plain["val_loss"], rtol=1e-4)
    log = read_log(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in log if "eval/loss" in r] == [75, 150]
