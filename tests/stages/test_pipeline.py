"""The whole exp1 pipeline on a tiny config, through the command line, on the MNIST test split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sgdjax import run as cli
from sgdjax.config import load_setup
from sgdjax.stages import STAGES
from sgdjax.stages.gd_many_runs import effective_lr


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def run_cli(out: Path, *extra: str, overrides, setup: str = "setup1") -> int:
    return cli.main(["exp1", setup, "--out", str(out), "--no-progress", *sets(*overrides),
                     *extra])


# the sharded-ensemble comparisons: two lrs, 8 runs in chunks of 2 per device (stage 4), one lr
# per device (stage 5)
ENSEMBLE = ("lrs=0.05,0.01", "chunk_runs=2", "many_runs_samples=8")
ENSEMBLE_FILES = ("sgd_weights_lr0.05.npy", "sgd_train_losses_lr0.05.npy",
                  "sgd_val_losses_lr0.05.npy", "sgd_weights_lr0.05_final.npy",
                  "sgd_diverged_at_lr0.05.npy")
GD_FILES = tuple(f"gd_weights_lr{lr}_dtypefloat64{end}.npy" for lr in ("0.05", "0.01")
                 for end in ("", "_final"))


def run_stage4(tiny, out: Path, *extra: str, env: dict | None = None, stages: str = "4"
               ) -> subprocess.Popen:
    """Stage 4 (or ``stages``) of the tiny config with ENSEMBLE in a fresh process on a copy of
    the tiny run's stages 1-2 (device counts are fixed when JAX's backends start: one process
    per layout)."""
    if not out.exists():  # the processes of one multi-host run share their folder
        shutil.copytree(tiny.base, out)
    cmd = [sys.executable, "-m", "sgdjax.run", "exp1", "setup1", "--out", str(out),
           "--no-progress", "--stages", stages, "--force", *sets(*tiny.overrides, *ENSEMBLE),
           *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def no_xla_flags() -> dict:
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


@pytest.fixture(scope="module")
def one_device(exp1_tiny, tmp_path_factory) -> Path:
    """The ENSEMBLE stages 4 and 5 on a single CPU device: what every sharded layout must
    reproduce."""
    out = tmp_path_factory.mktemp("one_device") / "res"
    finish(run_stage4(exp1_tiny, out, "--cpu-devices", "1", env=no_xla_flags(), stages="4,5"))
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["many_runs"]["devices"] == stages["gd_many_runs"]["devices"] == 1
    return out


def assert_same_ensemble(got: Path, want: Path, gd: bool = False) -> None:
    for name in ENSEMBLE_FILES + (GD_FILES if gd else ()):
        np.testing.assert_array_equal(np.load(got / name), np.load(want / name), err_msg=name)


def copy_of(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "res"
    shutil.copytree(base, out)
    return out


def test_full_pipeline_outputs(exp1_tiny, tmp_path, real_data_dir, capsys):
    out, printed = exp1_tiny.full, exp1_tiny.printed
    assert "stage 1 (sgd): complete, skipped" in printed
    assert "summary of exp1/setup1" in printed

    logs = json.loads((out / "logs_sgd.json").read_text())
    assert len(logs["train_losses"]) == 2 and len(logs["val_accs"]) == 2
    gd = json.loads((out / "logs_gd.json").read_text())
    assert {"train_losses", "val_losses", "val_accs", "grad_norms"} <= set(gd)
    assert len(gd["grad_norms"]) == 3
    assert np.load(out / "grad_norms_gd.npy").dtype == np.float64

    w = np.load(out / "sgd_weights_lr0.05.npy")
    assert w.shape == (5, 23, 386) and w.dtype == np.float32
    assert np.load(out / "sgd_train_losses_lr0.05.npy").shape == (5, 23)
    assert np.load(out / "sgd_val_losses_lr0.05.npy").shape == (5, 2)  # after steps 10, 20
    assert np.load(out / "sgd_weights_lr0.05_final.npy").shape == (5, 386)
    # all runs start from the polished checkpoint; they differ only by their batches
    np.testing.assert_array_equal(w[:, 0], np.broadcast_to(w[0, 0], (5, 386)))
    assert np.abs(w[0, -1] - w[1, -1]).max() > 0
    sgd_logs = json.loads((out / "sgd_logs_lr0.05.json").read_text())
    assert len(sgd_logs["train_losses"]) == 5 * 23 and len(sgd_logs["val_losses"]) == 5 * 2
    np.testing.assert_allclose(np.asarray(sgd_logs["train_losses"]).reshape(5, 23),
                               np.load(out / "sgd_train_losses_lr0.05.npy"))

    h = np.load(out / "hessians_traj_lr0.01.npy")
    assert h.shape == (6, 386, 386)
    np.testing.assert_allclose(h, np.swapaxes(h, 1, 2), atol=1e-5)
    eigs = np.load(out / "hessian_eigs_lr0.01.npy")
    np.testing.assert_allclose(eigs[2], np.linalg.eigvalsh(h[2].astype(np.float64)),
                               atol=1e-4 * max(1.0, np.abs(eigs[2]).max()))
    combined = json.loads((out / "logs_sgd_gd_plus_sgdEpochified_lr0.01.json").read_text())
    assert len(combined["combined_train_losses"]) == 2 + 3 + 0  # 6 steps < one 10-step epoch

    # stage 5 computes in float64 (setup 1's dtype): the weights carry more than float32 bits
    gdw = np.load(out / "gd_weights_lr0.05_dtypefloat64.npy")
    assert gdw.shape == (23, 386) and gdw.dtype == np.float64
    assert np.any(gdw[-1] != gdw[-1].astype(np.float32).astype(np.float64))
    gd5 = json.loads((out / "gd_logs_lr0.05_dtypefloat64.json").read_text())
    assert len(gd5["train_losses"]) == 23 and len(gd5["grad_norms"]) == 23

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["many_runs_samples"] == 5
    assert "jax" in manifest["versions"]
    for stage in ("hessians", "many_runs", "gd_many_runs"):
        assert manifest["stages"][stage]["wall_s"] > 0
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.progress.json"))
    assert (out / "loss_acc_sgd.png").stat().st_size > 1000

    # a second invocation finds everything complete and computes nothing
    def boom(ctx):
        raise AssertionError("a complete stage was run again")

    mp = pytest.MonkeyPatch()
    for stage in STAGES:
        mp.setattr(stage.load(), "run", boom)
    again = copy_of(out, tmp_path)
    try:
        assert run_cli(again, overrides=exp1_tiny.overrides) == 0
    finally:
        mp.undo()
    assert capsys.readouterr().out.count("complete, skipped") == len(STAGES)


def test_interrupted_ensemble_resumes_to_identical_arrays(exp1_tiny, tmp_path, real_data_dir,
                                                           monkeypatch):
    from sgdjax.stages import many_runs

    overrides = [*exp1_tiny.overrides, "chunk_runs=2"]
    ref = tmp_path / "ref"
    shutil.copytree(exp1_tiny.base, ref)
    assert run_cli(ref, "--stages", "4", overrides=overrides) == 0

    out = tmp_path / "interrupted"
    shutil.copytree(exp1_tiny.base, out)
    real = many_runs.run_chunks

    def stop_after_first_chunk(fn, w0, s0, keys, lrs, data, size, chunks, on_chunk, *rest):
        def once(c, rows, traj):
            on_chunk(c, rows, traj)
            raise KeyboardInterrupt

        return real(fn, w0, s0, keys, lrs, data, size, chunks, once, *rest)

    monkeypatch.setattr(many_runs, "run_chunks", stop_after_first_chunk)
    assert run_cli(out, "--stages", "4", overrides=overrides) == 130
    assert (out / "sgd_weights_lr0.05.npy.partial").exists()
    assert not (out / "sgd_weights_lr0.05.npy").exists()
    progress = json.loads((out / "sgd_weights_lr0.05.npy.progress.json").read_text())
    assert progress  # one chunk recorded as done

    seen = []

    def count_chunks(fn, w0, s0, keys, lrs, data, size, chunks, on_chunk, *rest):
        chunks = list(chunks)
        seen.append(chunks)
        return real(fn, w0, s0, keys, lrs, data, size, chunks, on_chunk, *rest)

    monkeypatch.setattr(many_runs, "run_chunks", count_chunks)
    assert run_cli(out, "--stages", "4", overrides=overrides) == 0
    # resumed after the first chunk of the first lr; chunks hold 2 runs per device (the CLI
    # exposes one CPU device per core unless an earlier test initialised JAX with one)
    n_dev = jax.local_device_count()
    size = min(2, -(-5 // n_dev)) * n_dev
    assert seen[0] == list(range(1, -(-5 // size)))
    for name in ("sgd_weights_lr0.05.npy", "sgd_weights_lr0.01.npy", "sgd_train_losses_lr0.05.npy",
                 "sgd_val_accs_lr0.01.npy", "sgd_weights_lr0.01_final.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(ref / name), err_msg=name)


def test_diverging_lr_is_reported_not_crashed_on(exp1_tiny, tmp_path, real_data_dir):
    out = copy_of(exp1_tiny.base, tmp_path)
    assert run_cli(out, "--stages", "4", "--force",
                   overrides=[*exp1_tiny.overrides, "lrs=0.05,1e+30"]) == 0
    logs = json.loads((out / "sgd_logs_lr1e+30.json").read_text())
    assert logs["n_diverged"] == 5 and len(logs["diverged_at_step"]) == 5
    healthy = json.loads((out / "sgd_logs_lr0.05.json").read_text())
    assert healthy["n_diverged"] == 0
    at = np.load(out / "sgd_diverged_at_lr1e+30.npy")
    losses = np.load(out / "sgd_train_losses_lr1e+30.npy")
    for r in range(5):
        assert np.all(np.isnan(losses[r, at[r] + 1:]))


def test_four_devices_give_the_same_ensemble(exp1_tiny, one_device, tmp_path, real_data_dir):
    """The run axis sharded over 4 simulated CPU devices (stage 4), the lrs over 2 of them
    (stage 5), give the arrays of 1 device."""
    out = tmp_path / "dev4"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    finish(run_stage4(exp1_tiny, out, env=env, stages="4,5"))
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["many_runs"]["devices"] == 4
    assert stages["gd_many_runs"]["devices"] == 2  # one per lr
    assert_same_ensemble(out, one_device, gd=True)


def test_gd_per_lr_is_plain_gradient_descent(exp1_tiny, real_data_dir, x64):
    """Stage 5 from the GD checkpoint: w <- w - lr * grad of the float64 full-batch loss, the
    gradient norms and losses of those points, every lr (spread over the CPU devices)."""
    from sgdjax.stages import make_context
    from sgdjax.stages.train_gd import CHECKPOINT
    from sgdjax.store import Store

    cfg = load_setup("exp1", "setup1", list(exp1_tiny.overrides))
    ctx = make_context(cfg, Store(exp1_tiny.full), show_progress=False)
    w0, state = ctx.load_checkpoint(CHECKPOINT, dtype="float64")
    data = ctx.data("float64")
    loss = ctx.loss_fns()[0]
    grad = jax.jit(jax.value_and_grad(lambda w: loss(w, state, data.train_x, data.train_y)[0]))
    manifest = json.loads((exp1_tiny.full / "manifest.json").read_text())
    assert manifest["stages"]["gd_many_runs"]["devices"] == min(2, jax.local_device_count())
    for lr in cfg.lrs:
        w, points, losses, norms = w0, [], [], []
        for _ in range(cfg.many_runs_steps):
            value, g = grad(w)
            points.append(w)
            losses.append(value)
            norms.append(np.linalg.norm(g))
            w = w - lr * g
        got = np.load(exp1_tiny.full / f"gd_weights_lr{lr}_dtypefloat64.npy")
        np.testing.assert_allclose(got, np.stack(points), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(np.load(exp1_tiny.full / f"gd_weights_lr{lr}_dtypefloat64"
                                           "_final.npy"), w, rtol=1e-13, atol=1e-15)
        logs = json.loads((exp1_tiny.full / f"gd_logs_lr{lr}_dtypefloat64.json").read_text())
        np.testing.assert_allclose(logs["train_losses"], losses, rtol=1e-13)
        np.testing.assert_allclose(logs["grad_norms"], norms, rtol=1e-11)


def test_gd_scaling_n_over_b_is_lr_times_b_over_n():
    cfg = load_setup("exp1", "setup1", ["gd_scaling=N/B"])
    assert effective_lr(cfg, 0.05, 6400) == pytest.approx(0.05 * 64 / 6400)
    assert effective_lr(cfg.replace(gd_scaling="times_N_over_B"), 0.05, 6400) == pytest.approx(5.0)
    assert effective_lr(cfg.replace(gd_scaling="default"), 0.05, 6400) == 0.05


def test_ensemble_width_capped_on_cpu_only():
    """NanoGPT and CNN ensembles run at most 16 / 1 runs per CPU device per call whatever the
    budget allows; accelerators, the MLP and an explicit ``chunk_runs`` are not capped."""
    from sgdjax.stages.many_runs import runs_per_call

    gpt = load_setup("exp2", "setup2")  # 10000 runs, 2 GB budget
    per_run = 1111 * 960 * 4  # recorded float32 weights
    assert runs_per_call(gpt, 5000, per_run, 2, "gpu") == 125  # 1 GiB per device: 2 chunks
    assert runs_per_call(gpt, 5000, per_run, 2, "cpu") == 16
    assert runs_per_call(gpt, 10, per_run, 2, "cpu") == 10
    assert runs_per_call(gpt.replace(chunk_runs=40), 5000, per_run, 2, "cpu") == 40
    cnn = load_setup("exp1", "setup3")
    assert runs_per_call(cnn, 500, per_run, 2, "cpu") == 1
    assert runs_per_call(cnn, 500, per_run, 2, "gpu") == 125
    mlp = load_setup("exp1", "setup1")
    assert runs_per_call(mlp, 500, per_run, 2, "cpu") == 125


def test_cli_errors_are_one_message(capsys, tmp_path):
    assert cli.main(["exp1", "setup9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown setup 'setup9'" in err and "Traceback" not in err
    assert cli.main(["exp1", "setup1", "--set", "many_run_samples=3"]) == 2
    assert "Did you mean 'many_runs_samples'" in capsys.readouterr().err
    assert cli.main(["exp1", "setup1", "--stages", "hesians"]) == 2
    assert "Did you mean 'hessians'" in capsys.readouterr().err


def test_cpu_device_count_errors_are_one_message(capsys, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert cli.main(["exp1", "setup1", "--dry-run", "--cpu-devices", "0"]) == 2
    assert "--cpu-devices must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert cli.main(["exp1", "setup1", "--dry-run", "--cpu-devices", "2"]) == 2
    err = capsys.readouterr().err
    assert "give one of them" in err and "Traceback" not in err


def test_ynn_fusions_only_for_dots_unless_the_user_chose(monkeypatch):
    import jaxlib

    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    cli.choose_ynn_fusions()
    assert cli.os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                           "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    cli.choose_ynn_fusions()  # idempotent
    assert cli.os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    cli.choose_ynn_fusions()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    monkeypatch.setattr(jaxlib, "__version__", "0.10.0")  # flag known, the value not yet
    monkeypatch.delenv("XLA_FLAGS")
    cli.choose_ynn_fusions()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    monkeypatch.setattr(jaxlib, "__version__", "0.11.0")  # not measured: no YNNPACK
    monkeypatch.delenv("XLA_FLAGS")
    cli.choose_ynn_fusions()
    assert cli.os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    monkeypatch.setattr(jaxlib, "__version__", "0.9.1")  # predates the flag: XLA would abort
    monkeypatch.delenv("XLA_FLAGS")
    cli.choose_ynn_fusions()
    assert "XLA_FLAGS" not in cli.os.environ


def test_cpu_devices_flag_shards_the_ensemble(exp1_tiny, one_device, tmp_path, real_data_dir):
    """``--cpu-devices 2`` splits the host into 2 devices and gives the arrays of 1 device
    (stages 4 and 5)."""
    out = tmp_path / "cpu2"
    finish(run_stage4(exp1_tiny, out, "--cpu-devices", "2", env=no_xla_flags(), stages="4,5"))
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["many_runs"]["devices"] == stages["gd_many_runs"]["devices"] == 2
    assert_same_ensemble(out, one_device, gd=True)


def test_missing_data_is_one_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")
    assert cli.main(["exp1", "setup1", "--out", str(tmp_path / "r"), "--no-progress",
                     "--stages", "1"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_list_and_dry_run(capsys):
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "exp1" in listed and "setup3" in listed and "exp2" in listed
    assert cli.main(["exp2", "setup2", "--dry-run", "--set", "many_runs_samples=7"]) == 0
    plan = capsys.readouterr().out
    assert "many_runs_samples = 7" in plan and "4 many_runs" in plan


def test_missing_gpu_fails_clearly(capsys):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    assert cli.main(["exp1", "setup1", "--device", "gpu", "--dry-run"]) == 2
    assert "no 'gpu' device" in capsys.readouterr().err


def test_two_hosts_give_the_same_ensemble(exp1_tiny, one_device, tmp_path, real_data_dir):
    """Two processes joined by jax.distributed (2 simulated CPU devices each, gloo collectives)
    write the arrays of a single device; only process 0 writes. Stage 5 runs on process 0
    alone, over its own two devices."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "hosts2"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [run_stage4(exp1_tiny, out, "--coordinator", f"localhost:{port}", "--num-processes",
                        "2", "--process-id", str(i), env=env, stages="4,5") for i in (0, 1)]
    logs = [finish(p) for p in procs]
    assert "summary of exp1/setup1" in logs[0] and "summary" not in logs[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["many_runs"]["devices"] == 4
    assert manifest["stages"]["many_runs"]["processes"] == 2
    assert manifest["stages"]["gd_many_runs"]["devices"] == 2
    assert_same_ensemble(out, one_device, gd=True)
