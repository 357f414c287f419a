"""Command line for the analyses of a results directory.

    python -m sgdjax.analyze diffusion results/exp1/setup1 [--lr 0.01 0.005] [--out diffusion]
                                                          [--hessian averaged|checkpoint]
                                                          [--step -1]
    python -m sgdjax.analyze spectra results/exp1/setup1 [--lr LR ...] [--out spectra]

``diffusion`` (:func:`sgdjax.analysis.diffusion.analyze_diffusion`): the SGD ensembles of stage 4
against the linearised (Ornstein–Uhlenbeck) prediction in the Hessian eigenbasis, the ensemble mean
against the GD trajectory of stage 5, and the spread vs lr; writes ``DIR/OUT/summary.json``, one
``arrays_lr{lr}.npz`` per lr and figures. ``spectra`` hands over to
``sgdjax.analysis.spectra.analyze_spectra``.

Every user error (a missing directory, missing files — the message names the stage that writes
them and the command that runs it —, a bad option) is one line on stderr and exit status 2, never
a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgdjax.errors import ConfigError, SgdjaxError

PROG = "python -m sgdjax.analyze"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one-line :class:`ConfigError` messages."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message}. See '{PROG} --help'.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Analyses of an sgdjax results directory (results/EXP/SETUP).",
        epilog="Examples:\n  python -m sgdjax.analyze diffusion results/exp1/setup1\n"
               "  python -m sgdjax.analyze diffusion results/exp1/setup1 --lr 0.01 0.005 "
               "--hessian checkpoint\n  python -m sgdjax.analyze spectra results/exp2/setup1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="{spectra,diffusion}", parser_class=_Parser)

    def common(s: argparse.ArgumentParser, default_out: str) -> None:
        s.add_argument("results_dir", type=Path, help="results directory, e.g. results/exp1/setup1")
        s.add_argument("--lr", dest="lrs", type=float, nargs="+", action="extend", metavar="LR",
                       help="learning rates to analyse (default: every lr with the inputs)")
        s.add_argument("--out", default=default_out, metavar="SUBDIR",
                       help=f"sub-directory of the results directory for the outputs "
                            f"(default: {default_out})")

    spectra = sub.add_parser("spectra", help="Hessian spectra (sgdjax.analysis.spectra)",
                             description="Hessian spectra of a results directory.")
    common(spectra, "spectra")
    diffusion = sub.add_parser(
        "diffusion", help="SGD ensembles vs the Ornstein-Uhlenbeck prediction",
        description="SGD as a diffusion: ensemble covariance per Hessian eigen-direction vs the "
                    "linearised-SGD prediction, ensemble mean vs GD, spread vs lr.")
    common(diffusion, "diffusion")
    diffusion.add_argument("--hessian", choices=("averaged", "checkpoint"), default="averaged",
                           help="the stage-7 trajectory-averaged Hessian (falls back to the "
                                "checkpoint where absent), or the full-batch Hessian at the "
                                "stage-2 checkpoint (default: averaged)")
    diffusion.add_argument("--step", type=int, default=-1,
                           help="index into the recorded steps of the ensemble to compare at "
                                "(default: -1, the last)")
    diffusion.add_argument("--top-k", type=int, default=48,
                           help="also report agreement over the k sharpest directions "
                                "(default: 48)")
    diffusion.add_argument("--no-figures", action="store_true", help="write no figures")
    return p


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise SgdjaxError(f"results directory {path} does not exist; it is written by "
                          f"'python -m sgdjax.run EXP SETUP --out {path}'.")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_diffusion(results_dir: Path, lrs: Sequence[float] | None, out: str, *,
                  hessian: str = "averaged", step: int = -1, top_k: int = 48,
                  figures: bool = True) -> int:
    """Run :func:`~sgdjax.analysis.diffusion.analyze_diffusion` and print a short report."""
    _check_dir(results_dir)
    from sgdjax.analysis.diffusion import analyze_diffusion

    summary = analyze_diffusion(results_dir, lrs=lrs, hessian=hessian, step=step, out=out,
                                top_k=top_k, figures=figures,
                                log=lambda msg: print(f"  {msg}", flush=True))
    sampler = summary["sampler"]
    print(f"diffusion analysis of {results_dir} (noise model: {sampler}; Hessian: "
          f"{summary['hessian_requested']})")
    for key, entry in summary["per_lr"].items():
        if "skipped" in entry:
            print(f"  {key}: skipped ({entry['skipped']})")
            continue
        fin = entry["comparison"][sampler]["finite_t"]
        mvg = entry["mean_vs_gd"]
        gd = (f"  mean-vs-GD/spread={_fmt(mvg['relative_last'])}" if mvg.get("available")
              else "  (no GD trajectory)")
        print(f"  {key}: step {entry['step']}, {entry['n_used']} runs, Hessian "
              f"{entry['hessian']['source']}: r(log pred, log meas)={_fmt(fin['pearson_r_log'])} "
              f"median meas/pred={_fmt(fin['median_ratio'])} over {fin['n']} directions, "
              f"spread={_fmt(entry['spread']['rms'])}{gd}")
    fit = summary["spread_vs_lr"].get("measured") or {}
    if fit.get("n", 0) >= 2:
        print(f"  spread ∝ lr^{_fmt(fit['alpha'])} (r²={_fmt(fit['r2'])})")
    print(f"  wrote {results_dir / out / 'summary.json'}")
    for name in summary["figures"]:
        print(f"  wrote {results_dir / name}")
    return 0


def run_spectra(results_dir: Path, lrs: Sequence[float] | None, out: str) -> int:
    """Hand over to ``sgdjax.analysis.spectra.analyze_spectra(results_dir, lrs=..., out=...)``
    (imported lazily; only the keyword arguments it accepts are passed)."""
    _check_dir(results_dir)
    try:
        from sgdjax.analysis.spectra import analyze_spectra
    except ImportError as exc:
        missing = getattr(exc, "name", None) == "sgdjax.analysis.spectra"
        detail = ("the module sgdjax.analysis.spectra is not part of this installation yet"
                  if missing else f"sgdjax.analysis.spectra could not be imported ({exc})")
        raise SgdjaxError(f"the spectra analysis is not available: {detail}. "
                          f"'{PROG} diffusion DIR' works without it.") from None
    params = inspect.signature(analyze_spectra).parameters
    kwargs: dict[str, Any] = {}
    if "lrs" in params:
        kwargs["lrs"] = lrs
    if "out" in params:
        kwargs["out"] = out
    result = analyze_spectra(results_dir, **kwargs)
    print(f"spectra analysis of {results_dir} written under {results_dir / out}")
    if isinstance(result, dict):
        for name in result.get("figures", []) or []:
            print(f"  wrote {results_dir / name}")
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        raise ConfigError(f"choose an analysis: '{PROG} diffusion DIR' or '{PROG} spectra DIR'.")
    if args.command == "spectra":
        return run_spectra(args.results_dir, args.lrs, args.out)
    return run_diffusion(args.results_dir, args.lrs, args.out, hessian=args.hessian,
                         step=args.step, top_k=args.top_k, figures=not args.no_figures)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    try:
        return _main(argv)
    except SgdjaxError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
