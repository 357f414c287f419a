"""Regenerate every figure of a results directory from its saved files.

    python -m sgdjax.plot results/exp1/setup1

Each figure whose inputs are present is (re)written through the store, one printed line per PNG;
figures whose inputs are absent are skipped silently. A file that cannot be read or plotted is
reported on stderr (one line) and the exit status is 1; a missing directory gives status 2.

Recognised inputs (``{lr}`` is the learning rate as in the file names, e.g. ``0.01``, ``5e-05``):

* ``logs_sgd.json`` -> ``loss_acc_sgd.png``
* ``logs_gd.json`` (or ``grad_norms_gd.npy``) -> ``loss_acc_gd.png``, ``grad_norm_loglog_gd.png``
* ``logs_sgd_gd_plus_sgdEpochified_lr{lr}.json`` -> ``loss_sgd_gd_plus_sgdEpochified_lr{lr}.png``
* ``hessian_eigs_lr{lr}.npy`` ([T, P]) -> ``significant_eigs_lr{lr}.png``
* ``sgd_logs_lr{lr}.json`` -> ``sgd_loss_ensemble_lr{lr}.png``
* ``gd_logs_lr{lr}_dtype{dtype}.json`` -> ``gd_logs_lr{lr}_dtype{dtype}.png``
* ``val_analysis_*/{prefix}__{start,end}_val_metrics.csv`` (+ ``{prefix}__summary.json``) ->
  ``val_analysis_*/val_loss_distribution/{prefix}__{start,end}_{loss,acc}_hist.png``
* ``hessians_averaged_eigs_lr{lr}.npy`` ([P] eigenvalues, or a [P, P] matrix) ->
  ``hessians_averaged_lr{lr}_eigenvalues.png``, and with two or more learning rates
  ``hessian_comparison.png``
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgdjax import plots
from sgdjax.store import Store

_LR = r"(?P<lr>\d[\d.eE+-]*)"
PATTERNS = {
    "combined": re.compile(rf"logs_sgd_gd_plus_sgdEpochified_lr{_LR}\.json"),
    "tubes": re.compile(rf"hessian_eigs_lr{_LR}\.npy"),
    "ensemble": re.compile(rf"sgd_logs_lr{_LR}\.json"),
    "gd": re.compile(rf"gd_logs_lr{_LR}_dtype(?P<dtype>\w+)\.json"),
    "averaged": re.compile(rf"hessians_averaged_eigs_lr{_LR}\.npy"),
    "val_csv": re.compile(r"(?P<prefix>.+)__(?P<tag>start|end)_val_metrics\.csv"),
}


def parse_lr(tag: str) -> float | None:
    """The float of a file-name lr tag, or None if it is not a number."""
    try:
        return float(tag)
    except ValueError:
        return None


def _matches(root: Path, key: str) -> Iterator[tuple[Path, re.Match[str], float]]:
    """Files directly under ``root`` matching ``PATTERNS[key]``, sorted by lr."""
    found = []
    for p in root.iterdir():
        m = PATTERNS[key].fullmatch(p.name)
        if m and p.is_file():
            lr = parse_lr(m["lr"])
            if lr is not None:
                found.append((lr, p.name, p, m))
    for lr, _name, p, m in sorted(found):
        yield p, m, lr


def _read_csv_columns(text: str) -> dict[str, np.ndarray]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        try:
            out[col] = np.array([float(r[col]) if r[col] not in ("", None) else np.nan
                                 for r in rows])
        except (TypeError, ValueError):
            continue
    return out


def _column(cols: dict[str, np.ndarray], *names: str) -> np.ndarray | None:
    for n in names:
        if n in cols:
            return cols[n]
    return None


def _diverged_mask(entry: Any, n_runs: int) -> np.ndarray | None:
    """``diverged_runs`` as stored (run indices, ``{"run": r, ...}`` records, or a bool list of
    length R) -> bool [R]."""
    if entry is None:
        return None
    items = list(entry)
    if len(items) == n_runs and all(isinstance(v, bool) for v in items):
        return np.array(items, dtype=bool)
    mask = np.zeros(n_runs, dtype=bool)
    for v in items:
        r = v.get("run") if isinstance(v, dict) else v
        if r is not None and 0 <= int(r) < n_runs:
            mask[int(r)] = True
    return mask


class _Plotter:
    def __init__(self, root: Path) -> None:
        self.store = Store(root)
        self.root = root
        self.written: list[Path] = []
        self.failed: list[str] = []

    def emit(self, name: str, make: Callable[[], Any]) -> None:
        fig = make()
        path = self.store.save_figure(name, fig)
        self.written.append(path)
        print(path, flush=True)

    def attempt(self, source: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:  # one unreadable file must not stop the others
            msg = f"sgdjax.plot: skipped {source}: {type(exc).__name__}: {exc}"
            self.failed.append(msg)
            print(msg.splitlines()[0], file=sys.stderr, flush=True)

    # -- individual figures ----------------------------------------------------------------

    def stage1(self) -> None:
        if self.store.exists("logs_sgd.json"):
            logs = self.store.load_json("logs_sgd.json")
            self.emit("loss_acc_sgd.png", lambda: plots.loss_acc_sgd(logs))

    def stage2(self) -> None:
        logs: dict[str, Any] = {}
        if self.store.exists("logs_gd.json"):
            logs = self.store.load_json("logs_gd.json")
            self.emit("loss_acc_gd.png", lambda: plots.loss_acc_gd(logs))
        norms = logs.get("grad_norms")
        if norms is None and self.store.exists("grad_norms_gd.npy"):
            norms = self.store.load_npy("grad_norms_gd.npy")
        if norms is not None:
            self.emit("grad_norm_loglog_gd.png", lambda: plots.grad_norm_loglog(norms))

    def combined(self, path: Path, m: re.Match[str], lr: float) -> None:
        logs = self.store.load_json(path.name)
        self.emit(f"loss_sgd_gd_plus_sgdEpochified_lr{m['lr']}.png",
                  lambda: plots.combined_curve(logs.get("sgd_train_losses"),
                                               logs.get("gd_train_losses"),
                                               logs.get("current_sgd_epochified_losses"), lr))

    def tubes(self, path: Path, m: re.Match[str], lr: float) -> None:
        eigs = self.store.load_npy(path.name, mmap=True)
        self.emit(f"significant_eigs_lr{m['lr']}.png", lambda: plots.eigenvalue_tubes(eigs, lr))

    def ensemble(self, path: Path, m: re.Match[str], lr: float) -> None:
        logs = self.store.load_json(path.name)
        flat = np.asarray(logs["train_losses"], dtype=np.float64).ravel()
        n_runs, n_steps = logs.get("n_runs"), logs.get("n_steps")
        weights = self.store.path(f"sgd_weights_lr{m['lr']}.npy")
        if (n_runs is None or n_steps is None) and weights.is_file():
            shape = np.load(weights, mmap_mode="r").shape
            n_runs, n_steps = shape[0], shape[1]
        if n_runs is None and n_steps:
            n_runs = flat.size // int(n_steps)
        if n_steps is None and n_runs:
            n_steps = flat.size // int(n_runs)
        if not n_runs or not n_steps or int(n_runs) * int(n_steps) != flat.size:
            raise ValueError(f"cannot shape {flat.size} train losses as [n_runs={n_runs}, "
                             f"n_steps={n_steps}]")
        losses = flat.reshape(int(n_runs), int(n_steps))
        diverged = _diverged_mask(logs.get("diverged_runs"), int(n_runs))
        self.emit(f"sgd_loss_ensemble_lr{m['lr']}.png",
                  lambda: plots.ensemble_loss(losses, lr, diverged))

    def gd(self, path: Path, m: re.Match[str], lr: float) -> None:
        logs = self.store.load_json(path.name)
        title = f"Stage 5: GD continuation, lr={lr:g}, dtype {m['dtype']}"
        self.emit(path.with_suffix(".png").name, lambda: plots.gd_logs(logs, lr, title=title))

    def val_analysis(self) -> None:
        for vdir in sorted(p for p in self.root.glob("val_analysis_*") if p.is_dir()):
            for csv_path in sorted(vdir.iterdir()):
                m = PATTERNS["val_csv"].fullmatch(csv_path.name)
                if m and csv_path.is_file():
                    rel = csv_path.relative_to(self.root).as_posix()
                    self.attempt(rel, lambda v=vdir, c=csv_path, mm=m: self._val_hists(v, c, mm))

    def _val_hists(self, vdir: Path, csv_path: Path, m: re.Match[str]) -> None:
        prefix, tag = m["prefix"], m["tag"]
        cols = _read_csv_columns(csv_path.read_text(encoding="utf-8"))
        summary_path = vdir / f"{prefix}__summary.json"
        summary: dict[str, Any] = {}
        if summary_path.is_file():
            summary = self.store.load_json(summary_path.relative_to(self.root).as_posix())
        out_dir = vdir.relative_to(self.root).as_posix() + "/val_loss_distribution"
        for metric, names, xlabel in (("loss", ("val_loss", "val_losses"), "validation loss"),
                                      ("acc", ("val_acc", "val_accs"), "validation accuracy")):
            values = _column(cols, *names)
            if values is None:
                continue
            ref = summary.get(f"{tag}_mean_model_val_{metric}")
            ref = float(ref) if isinstance(ref, int | float) else None
            title = f"{prefix}: {tag}, {xlabel} over runs"
            self.emit(f"{out_dir}/{prefix}__{tag}_{metric}_hist.png",
                      lambda v=values, r=ref, x=xlabel, t=title: plots.val_histogram(v, r, x, t))

    def averaged(self) -> None:
        rows: list[tuple[float, dict[str, float]]] = []
        for path, m, lr in _matches(self.root, "averaged"):
            def job(path: Path = path, m: re.Match[str] = m, lr: float = lr) -> None:
                e = np.asarray(self.store.load_npy(path.name), dtype=np.float64)
                if e.ndim == 2 and e.shape[0] == e.shape[1]:  # the averaged matrix itself
                    e = np.linalg.eigvalsh(0.5 * (e + e.T))
                base = f"hessians_averaged_lr{m['lr']}"
                self.emit(f"{base}_eigenvalues.png",
                          lambda: plots.spectrum(e, f"Trajectory-averaged Hessian, lr={lr:g}"))
                rows.append((lr, plots.spectrum_summary(e)))
            self.attempt(path.name, job)
        if len(rows) >= 2:
            def comparison() -> Any:
                return plots.hessian_comparison(
                    [r[0] for r in rows], [r[1]["max"] for r in rows],
                    [r[1]["min"] for r in rows], [r[1]["trace"] for r in rows],
                    [r[1]["condition_number"] for r in rows])
            self.attempt("hessian_comparison", lambda: self.emit("hessian_comparison.png",
                                                                 comparison))

    def run_all(self) -> None:
        self.attempt("logs_sgd.json", self.stage1)
        self.attempt("logs_gd.json", self.stage2)
        for key, fn in (("combined", self.combined), ("tubes", self.tubes),
                        ("ensemble", self.ensemble), ("gd", self.gd)):
            for path, m, lr in _matches(self.root, key):
                self.attempt(path.name, lambda f=fn, p=path, mm=m, r=lr: f(p, mm, r))
        self.val_analysis()
        self.averaged()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sgdjax.plot DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sgdjax.plot",
        description="Regenerate every figure from the saved files of a results directory.")
    parser.add_argument("dir", help="results directory, e.g. results/exp1/setup1")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        print(f"sgdjax.plot: results directory {str(root)!r} does not exist "
              "(run `python -m sgdjax.run EXP SETUP` first, or pass --out's directory)",
              file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    plotter = _Plotter(root)
    plotter.run_all()
    if not plotter.written and not plotter.failed:
        print(f"sgdjax.plot: nothing to plot in {root}", file=sys.stderr)
    return 1 if plotter.failed else 0


if __name__ == "__main__":
    sys.exit(main())
