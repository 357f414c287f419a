"""Hessian spectra: the pure helpers on constructed spectra, and the driver on a hand-written
results directory whose Hessians have known eigenvalues."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sgdjax import analyze
from sgdjax.analysis.spectra import (
    Track,
    analyze_spectra,
    available_lrs,
    bottomk_trajectory,
    count_above,
    counts_figure,
    curvature_tracks,
    histogram_figure,
    sharpness_figure,
    slq_vs_dense,
    spectrum_at,
    symlog_edges,
    topk_figure,
    topk_trajectory,
)
from sgdjax.config import SetupConfig
from sgdjax.errors import SgdjaxError

T, P, LR = 6, 20, 0.01
# One spectrum per step: |λ| > 1e-3 for 5 positive and 3 negative values, 1e-5 < |λ| <= 1e-3 for
# 2 positive and 1 negative, and 9 values below 1e-5 (in float32 too, as stage 3 stores them).
BASE = np.array([3.0, 1.0, 0.5, 0.02, 0.005, 8e-4, 2e-4, 5e-6, 1e-6, 0.0, 0.0, 0.0, -1e-6,
                 -2e-6, -3e-6, -4e-6, -2e-4, -0.004, -0.05, -0.3])
assert BASE.size == P


def step_spectrum(t: int) -> np.ndarray:
    """Step t: the base spectrum with the outliers moving a little (λ_max = 3 + 0.1 t)."""
    lam = BASE.copy()
    lam[0] += 0.1 * t
    lam[-1] -= 0.01 * t
    return np.sort(lam)  # ascending, as stage 3 stores them


def random_orthogonal(rng: np.random.Generator, p: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((p, p)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------------------------
# helpers


def test_topk_and_bottomk_order():
    rng = np.random.default_rng(0)
    eigs = np.stack([rng.permutation(step_spectrum(t)) for t in range(T)])
    top = topk_trajectory(eigs, 3)
    assert top.shape == (T, 3)
    np.testing.assert_array_equal(top[:, 0], 3.0 + 0.1 * np.arange(T))
    np.testing.assert_array_equal(top[2], [3.2, 1.0, 0.5])
    assert (np.diff(top, axis=1) <= 0).all()
    low = bottomk_trajectory(eigs, 2)
    np.testing.assert_allclose(low[:, 0], -0.3 - 0.01 * np.arange(T))
    np.testing.assert_array_equal(low[0], [-0.3, -0.05])
    assert topk_trajectory(eigs, 50).shape == (T, P)  # k is clamped to P
    eigs[4, 7] = np.nan  # a diverged step becomes a gap, never a sorted-out value
    assert np.isnan(topk_trajectory(eigs, 3)[4]).all()
    assert np.isfinite(topk_trajectory(eigs, 3)[[0, 1, 2, 3, 5]]).all()
    with pytest.raises(ValueError):
        topk_trajectory(eigs, 0)


def test_count_above_exact():
    eigs = np.stack([step_spectrum(t) for t in range(T)])
    eigs[3] = np.nan
    counts = count_above(eigs, (1e-3, 1e-5))
    assert set(counts) == {1e-3, 1e-5}
    ok = np.array([0, 1, 2, 4, 5])
    np.testing.assert_array_equal(counts[1e-3]["positive"][ok], 5)
    np.testing.assert_array_equal(counts[1e-3]["negative"][ok], 3)
    np.testing.assert_array_equal(counts[1e-5]["positive"][ok], 7)
    np.testing.assert_array_equal(counts[1e-5]["negative"][ok], 4)
    assert np.isnan(counts[1e-3]["positive"][3]) and np.isnan(counts[1e-5]["negative"][3])
    one = count_above(np.array([0.5, -0.5, 0.0]), (0.0,))
    np.testing.assert_array_equal(one[0.0]["positive"], [1])
    np.testing.assert_array_equal(one[0.0]["negative"], [1])
    edge = count_above(np.array([1e-3, -1e-3, 2e-3]), (1e-3,))  # strictly above
    np.testing.assert_array_equal(edge[1e-3]["positive"], [1])
    np.testing.assert_array_equal(edge[1e-3]["negative"], [0])


def test_spectrum_at_and_symlog_edges():
    eigs = np.stack([step_spectrum(t) for t in range(T)])
    np.testing.assert_array_equal(spectrum_at(eigs, -1), step_spectrum(T - 1))
    np.testing.assert_array_equal(spectrum_at(eigs[::-1], 0), step_spectrum(T - 1))
    with pytest.raises(IndexError):
        spectrum_at(eigs, T)
    edges = symlog_edges(eigs, bins=40)
    assert edges.size == 41 and (np.diff(edges) > 0).all()
    assert edges[0] == eigs.min() and edges[-1] == eigs.max()
    counts, _ = np.histogram(eigs.ravel(), bins=edges)
    assert counts.sum() == eigs.size
    # the bins resolve the bulk: the values near zero do not share a bin with 1e-3 or 0.02
    inner = np.searchsorted(edges, [0.0, 1e-3, 0.02], side="right")
    assert len(set(inner.tolist())) == 3


def test_slq_vs_dense_known_spectrum():
    rng = np.random.default_rng(1)
    lam = np.concatenate([np.linspace(-0.5, 0.5, P - 2), [2.0, 4.0]])
    q = random_orthogonal(rng, P)
    # the driver's settings (16 probes, min(P, 80) iterations): one compilation for both tests
    res = slq_vs_dense(q @ np.diag(lam) @ q.T, num_probes=16)
    np.testing.assert_allclose(res.eigvals, lam, atol=1e-12)
    assert res.nodes.shape == (16, P)
    np.testing.assert_allclose(np.sort(res.nodes[0]), lam, atol=1e-10)  # Lanczos to P: exact
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-10)
    for p in (res.slq_density, res.dense_density):
        assert np.trapezoid(p, res.grid) == pytest.approx(1.0, abs=1e-9)
    # With Lanczos run to P the nodes are exact; what is left is the randomness of the weights
    # z_i²/|z|² of 16 probes in P = 20 dimensions: about 2.5% of the range 4.5 (W1 = 0.114).
    assert res.wasserstein1 < 0.16
    assert res.wasserstein1_relative < 0.035


def test_figures_survive_a_diverged_step():
    """Non-finite spectra (a diverged stage-3 run) become gaps, never exceptions."""
    eigs = np.stack([step_spectrum(t) for t in range(T)])
    eigs[-1] = np.nan
    fig = histogram_figure(eigs, LR, steps=(0, -1))
    assert "steps [0]" in fig.axes[0].get_title()  # the empty last step is left out
    topk_figure(eigs, LR, k=3)
    counts_figure(count_above(eigs), LR)
    ens = np.full((2, 3, 1), 2.0)
    ens[1, 2] = np.nan
    fig = sharpness_figure([Track("stage4", "ensemble", np.arange(3.0), ens, LR),
                            Track("stage3", "stage 3", np.arange(T, dtype=float),
                                  topk_trajectory(eigs, 2), LR)], LR)
    assert len(fig.axes) == 2


# --------------------------------------------------------------------------------------------
# the driver on a synthetic results directory


def write_results(root: Path, *, matrices: bool = True, stage7: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    cfg = SetupConfig(model="mlp", lrs=(LR,), hessian_steps=T, curvature_every=5, lr=0.1)
    (root / "manifest.json").write_text(json.dumps({"config": cfg.to_dict()}))
    eigs = np.stack([step_spectrum(t) for t in range(T)]).astype(np.float32)
    np.save(root / f"hessian_eigs_lr{LR}.npy", eigs)
    np.save(root / f"weights_traj_lr{LR}.npy", rng.standard_normal((T, P)).astype(np.float32))
    if matrices:
        hs = []
        for t in range(T):
            q = random_orthogonal(rng, P)
            hs.append(q @ np.diag(step_spectrum(t)) @ q.T)
        np.save(root / f"hessians_traj_lr{LR}.npy", np.asarray(hs, np.float32))
    if stage7:
        np.save(root / f"hessians_averaged_eigs_lr{LR}.npy", step_spectrum(0))
    # curvature tracks of stage 1 (at cfg.lr) and of a 3-run stage-4 ensemble (at LR)
    np.savez(root / "curvature_sgd.npz", steps=np.array([5, 10, 15]),
             eigs=np.array([[4.0], [12.0], [25.0]]))
    np.save(root / f"sgd_curv_eigs_lr{LR}.npy", np.full((3, 4, 1), 3.0, np.float32))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("spectra") / "res"
    write_results(root)
    return root, analyze_spectra(root, slq_probes=16)


def test_analyze_spectra_outputs(analysed):
    root, summary = analysed
    tag = f"{LR}"
    expected = {f"spectra/{name}_lr{tag}.png" for name in (
        "significant_eigs", "topk", "histogram", "counts", "lambda_max", "slq_vs_dense",
        "averaged_spectrum")}
    assert set(summary["figures"]) == expected
    for name in expected:
        assert (root / name).stat().st_size > 1000
    on_disk = json.loads((root / "spectra" / "summary.json").read_text())
    assert on_disk["lrs"] == [LR] and on_disk["model"] == "mlp"
    entry = on_disk["per_lr"][f"lr{tag}"]
    assert {"n_steps", "topk_first", "topk_last", "counts", "tubes", "lambda_max", "slq",
            "averaged", "arrays", "figures"} <= set(entry)
    assert entry["n_steps"] == T and entry["n_params"] == P
    assert entry["topk_last"][:2] == pytest.approx([3.5, 1.0])
    assert entry["counts"]["0.001"]["positive"] == {"first": 5.0, "last": 5.0, "mean": 5.0}
    assert entry["counts"]["1e-05"]["negative"]["last"] == 4.0
    assert entry["tubes"]["n_negative"] == 4  # 4 ranks with mean < -1e-5
    assert entry["averaged"]["max"] == pytest.approx(3.0)

    tracks = entry["lambda_max"]
    assert set(tracks) == {"curvature_sgd", "stage3", "stage4"}
    assert tracks["stage3"]["lambda_max_peak"] == pytest.approx(3.5)
    assert tracks["stage3"]["peak_over_threshold"] == pytest.approx(3.5 * LR / 2)
    # stage 1 runs at the config's lr = 0.1: 2/lr = 20, crossed at 25
    assert tracks["curvature_sgd"]["two_over_lr"] == pytest.approx(20.0)
    assert tracks["curvature_sgd"]["peak_over_threshold"] == pytest.approx(1.25)
    assert tracks["stage4"]["n_runs"] == 3

    slq = entry["slq"]
    assert slq["available"] and slq["step"] == T - 1
    assert slq["dense_max"] == pytest.approx(3.5, rel=1e-6)
    # SLQ of the stored float32 matrix vs its dense spectrum. With P = 20 every probe weighs
    # each eigenvalue by a random z_i²/|z|², so 16 probes leave ~1% of the range as W1 (0.05).
    assert slq["wasserstein1"] < 0.08
    assert slq["wasserstein1_relative"] < 0.02
    arrays = np.load(root / entry["arrays"])
    assert arrays["topk"].shape == (T, 10)
    np.testing.assert_array_equal(arrays["count_negative_0.001"], 3)


def test_tracks_and_lrs(analysed):
    root, _ = analysed
    assert available_lrs(root) == [LR]
    names = [t.name for t in curvature_tracks(root, LR)]
    assert names == ["curvature_sgd", "stage3", "stage4"]
    stage4 = curvature_tracks(root, LR)[-1]
    np.testing.assert_array_equal(stage4.steps, [0, 5, 10, 15])  # every curvature_every steps


def test_without_matrices_and_figures(tmp_path):
    root = tmp_path / "res"
    write_results(root, matrices=False, stage7=False)
    summary = analyze_spectra(root, lrs=[LR], out="sp", figures=False)
    entry = summary["per_lr"][f"lr{LR}"]
    assert not entry["slq"]["available"] and "store_hessians=false" in entry["slq"]["reason"]
    assert not entry["averaged"]["available"] and "stage 7" in entry["averaged"]["reason"]
    assert summary["figures"] == [] and not list((root / "sp").glob("*.png"))
    assert (root / "sp" / "summary.json").is_file()


def test_missing_stage3_names_stage_and_command(tmp_path):
    root = tmp_path / "res"
    root.mkdir()
    cfg = SetupConfig(model="mlp", lrs=(0.05, LR))
    (root / "manifest.json").write_text(json.dumps({"config": cfg.to_dict()}))
    with pytest.raises(SgdjaxError, match="stage 3") as err:
        analyze_spectra(root)
    assert f"python -m sgdjax.run exp1 setup1 --out {root} --stages 1-3" in str(err.value)
    write_results(root, matrices=False, stage7=False)
    with pytest.raises(SgdjaxError, match=r"hessian_eigs_lr0\.05\.npy missing.*stage 3"):
        analyze_spectra(root, lrs=[0.05])
    with pytest.raises(SgdjaxError, match="does not exist"):
        analyze_spectra(tmp_path / "nowhere")


def test_cli_end_to_end(tmp_path, capsys):
    root = tmp_path / "res"
    write_results(root, stage7=False)
    assert analyze.main(["spectra", str(root), "--lr", str(LR), "--out", "cli"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {root / 'cli' / f'slq_vs_dense_lr{LR}.png'}" in printed
    assert (root / "cli" / "summary.json").is_file()
    assert analyze.main(["spectra", str(root), "--lr", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage 3" in err
