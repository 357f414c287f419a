"""The exploration notebooks run headless, top to bottom, on a tiny pipeline run.

The run is the session's ``exp1_tiny`` (``sgdjax.run.main`` on the offline MNIST test split, all
seven stages, two lrs; see ``conftest.py``). Each notebook is executed by ``nbclient`` with
``SGDJAX_RESULTS`` pointing at it in the kernel's environment, as a user would run it with a real
results directory. The committed notebooks must carry no outputs, and every figure cell must
produce an image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# cells (by tag) that must show a figure on a complete run
FIGURE_CELLS = {
    "eigen_spectra.ipynb": ["tubes", "topk", "histogram", "averaged", "counts", "sharpness",
                            "slq"],
    "ensembles.ipynb": ["loss", "mean_vs_gd", "params", "pca", "val", "ou", "spread"],
}


def _ensure_kernel() -> None:
    """nbclient needs a ``python3`` kernel spec; install one for this interpreter if absent."""
    from jupyter_client.kernelspec import find_kernel_specs

    if "python3" not in find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name",
                        "python3"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tiny_run(exp1_tiny, offline_data_dir, tmp_path_factory) -> Path:
    """The session's tiny exp1/setup1 run (all seven stages, two lrs), copied so that nothing a
    kernel does can touch what other tests read."""
    _ensure_kernel()
    out = tmp_path_factory.mktemp("notebooks") / "exp1" / "setup1"
    shutil.copytree(exp1_tiny.full, out)
    mp = pytest.MonkeyPatch()
    mp.setenv("SGDJAX_DATA_DIR", str(offline_data_dir))  # the kernels inherit it (diffusion)
    mp.setenv("SGDJAX_OFFLINE", "1")
    yield out
    mp.undo()


def execute(name: str, results: Path) -> nbformat.NotebookNode:
    """Run one notebook top to bottom in a fresh kernel whose environment is ours plus
    ``SGDJAX_RESULTS`` (passed per kernel, so two can run side by side)."""
    from nbclient import NotebookClient

    env = dict(os.environ, SGDJAX_RESULTS=str(results), MPLBACKEND="Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute(env=env)
    return nb


@pytest.fixture(scope="module")
def executed(tiny_run, tmp_path_factory) -> dict[tuple[str, str], Any]:
    """Both notebooks on the complete run and on a copy holding only stages 3 and 4 (no
    Hessian matrices, GD, stage 6/7 or checkpoint: every optional cell must print a note).
    Two kernels at a time: most of a run is kernel start-up, imports and compilation, which
    overlap well. Maps (notebook, "full" | "stripped") to the executed notebook or the
    exception it raised."""
    stripped = tmp_path_factory.mktemp("stripped") / "res"
    shutil.copytree(tiny_run, stripped, ignore=shutil.ignore_patterns(
        "hessians_*", "gd_*", "val_analysis_*", "initial_after_*", "diffusion", "spectra"))
    jobs = [(name, variant) for variant in ("full", "stripped") for name in sorted(FIGURE_CELLS)]
    dirs = {"full": tiny_run, "stripped": stripped}

    def one(job: tuple[str, str]) -> Any:
        try:
            return execute(job[0], dirs[job[1]])
        except Exception as exc:  # reported by the test that looks at this notebook
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def result(executed: dict, name: str, variant: str) -> nbformat.NotebookNode:
    nb = executed[(name, variant)]
    if isinstance(nb, Exception):
        raise nb
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return cells[0]


def images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")


@pytest.mark.parametrize("name", sorted(FIGURE_CELLS))
def test_committed_notebook_is_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert 'RESULTS_DIR = "results/exp1/setup1"' in code[0].source
    assert "LR = None" in code[0].source and "STEP = -1" in code[0].source
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"
    assert any("SGDJAX_RESULTS" in c.source for c in code[1:3])  # overrides the parameters


def test_eigen_spectra_notebook(executed):
    nb = result(executed, "eigen_spectra.ipynb", "full")
    for tag in FIGURE_CELLS["eigen_spectra.ipynb"]:
        assert images(tagged(nb, tag)) >= 1, f"no figure in the {tag!r} cell"
    printed = text(nb)
    assert "showing lr=0.05" in printed
    assert "W1(SLQ, dense)" in printed and "significant ranks" in printed


def test_ensembles_notebook(executed):
    nb = result(executed, "ensembles.ipynb", "full")
    for tag in FIGURE_CELLS["ensembles.ipynb"]:
        assert images(tagged(nb, tag)) >= 1, f"no figure in the {tag!r} cell"
    assert images(tagged(nb, "ou")) >= 2  # predicted vs measured, variance vs time
    printed = text(nb)
    assert "log-correlation predicted vs measured" in printed
    assert "spread ∝ lr^" in printed


def test_notebooks_without_optional_files(executed):
    nb = result(executed, "eigen_spectra.ipynb", "stripped")
    assert images(tagged(nb, "tubes")) == 1
    assert images(tagged(nb, "slq")) == 0
    printed = text(nb)
    assert "no stored Hessian matrices" in printed and "no averaged spectrum" in printed
    nb = result(executed, "ensembles.ipynb", "stripped")
    assert images(tagged(nb, "pca")) == 1
    printed = text(nb)
    assert "no stage-5 GD trajectory" in printed
    assert "stage 6 (val_distribution) has not run" in printed
    assert "diffusion analysis not possible" in printed
