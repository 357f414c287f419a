"""Stage 7 on synthetic Hessian stacks with a known signed spectrum."""

from __future__ import annotations

import numpy as np
import pytest

from sgdjax.config import SetupConfig
from sgdjax.errors import SgdjaxError
from sgdjax.stages import hessian_spectrum as hs
from sgdjax.stages.common import Context
from sgdjax.store import Store

P, T = 20, 30


def _stack(eigs: np.ndarray, seed: int, nan_steps: tuple[int, ...] = ()) -> np.ndarray:
    """[T, P, P] float32 symmetric matrices Q diag(eigs + noise_t) Qᵀ; the noise has zero mean
    over t and vanishes on the null directions, so the average is Q diag(eigs) Qᵀ. NaN matrices
    (a diverged stage-3 run) are inserted before ``nan_steps``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    noise = rng.standard_normal((T, P)) * 0.3
    noise -= noise.mean(axis=0)
    noise[:, eigs == 0] = 0.0
    stack = np.einsum("ij,tj,kj->tik", q, eigs + noise, q).astype(np.float32)
    for t in nan_steps:
        stack = np.insert(stack, t, np.nan, axis=0)
    return stack


def _context(tmp_path, lrs, **cfg) -> Context:
    return Context(SetupConfig(lrs=lrs, **cfg), Store(tmp_path / "results"),
                   show_progress=False)


def test_signed_spectrum_counts_and_trace(tmp_path, monkeypatch):
    monkeypatch.setattr(hs, "BLOCK_BYTES", 7 * P * P * 8)  # several blocks, the last partial
    eigs = np.array([-0.5, -0.1, -0.02, 0.0, 0.0] + list(np.geomspace(0.01, 5.0, P - 5)))
    ctx = _context(tmp_path, (0.05, 0.01))
    stacks = {0.05: _stack(eigs, 0, nan_steps=(T - 2,)), 0.01: _stack(eigs * 2, 1)}
    for lr, stack in stacks.items():
        ctx.store.save_npy(hs.hessians_file(lr), stack)
    info = hs.run(ctx)
    store = ctx.store
    assert all(store.exists(n) for n in hs.outputs(ctx))
    assert hs.COMPARISON in hs.outputs(ctx)
    summary = store.load_json(hs.SUMMARY)
    for lr, stack in stacks.items():
        names = hs.files(lr)
        finite = np.isfinite(stack).all(axis=(1, 2))
        expected = stack[finite].astype(np.float64).mean(axis=0)
        mean = store.load_npy(names["matrix"])
        np.testing.assert_allclose(mean, 0.5 * (expected + expected.T), atol=1e-12)
        got = store.load_npy(names["eigvals"])
        np.testing.assert_allclose(got, np.linalg.eigvalsh(mean), atol=1e-12)
        assert np.all(np.diff(got) >= 0)
        s = summary[f"lr{lr}"]
        assert (s["n_negative"], s["n_zero"], s["n_positive"]) == (3, 2, P - 5)
        assert s["n_params"] == P and s["rank"] == P - 2
        assert s["trace"] == pytest.approx(np.trace(mean), rel=1e-10)
        assert s["trace"] == pytest.approx(s["matrix_trace"], rel=1e-10)
        assert s["min"] == pytest.approx(got[0]) and s["max"] == pytest.approx(got[-1])
        assert s["det_sign"] == 0  # two (numerically) zero eigenvalues
        assert s["rank_tol"] == pytest.approx(P * np.finfo(np.float32).eps * np.abs(got).max())
        assert s["n_steps_averaged"] == finite.sum()
        assert s["condition_number"] == pytest.approx(got[-1] / got[got > s["rank_tol"]][0])
    assert summary["lr0.05"]["n_steps_nonfinite"] == 1
    assert info["lr0.01"]["min"] == pytest.approx(-1.0, rel=1e-5)
    assert info["throughput_hessians_per_s"] > 0


def test_nonsingular_determinant_sign(tmp_path):
    eigs = np.array([-3.0, -1.0, -0.2] + list(np.linspace(0.1, 4.0, P - 3)))
    ctx = _context(tmp_path, (0.01,))
    ctx.store.save_npy(hs.hessians_file(0.01), _stack(eigs, 2))
    hs.run(ctx)
    s = ctx.store.load_json(hs.SUMMARY)["lr0.01"]
    assert (s["n_negative"], s["n_zero"], s["det_sign"]) == (3, 0, -1)
    assert s["condition_number"] == pytest.approx(40.0, rel=1e-4)
    assert hs.COMPARISON not in hs.outputs(ctx)


def test_eigenvalues_only_is_a_clear_error(tmp_path):
    ctx = _context(tmp_path, (0.01,), store_hessians=False)
    ctx.store.save_npy("hessian_eigs_lr0.01.npy", np.zeros((T, P), np.float32))
    with pytest.raises(SgdjaxError, match="store_hessians=true"):
        hs.run(ctx)
    ctx.store.path("hessian_eigs_lr0.01.npy").unlink()
    with pytest.raises(SgdjaxError, match="Run stage 3 first"):
        hs.run(ctx)
