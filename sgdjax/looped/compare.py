"""Overlay the error-vs-k curves of several evaluated setups (the seed write-ups' comparisons).

``python -m sgdjax.looped.compare results/looped/loop_L1 results/looped/last20 ...
--out cmp.png [--zoom 20]`` draws every directory's model curve (after the evaluation's loop
count) with its bootstrap band, and the baselines of the first directory; ``--zoom K`` shows
only k >= K on a free y-range (the seed-002 zoom figures). Labels are the setup names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgdjax.errors import SgdjaxError
from sgdjax.looped import plots
from sgdjax.looped.context import EVAL
from sgdjax.store import Store


def load_curves(dirs: Sequence[Path], trained_loops: bool = False,
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``({setup: band [3, N]}, {baseline: band})`` from the ``eval.npz`` of each directory."""
    curves: dict[str, np.ndarray] = {}
    baselines: dict[str, np.ndarray] = {}
    for d in dirs:
        store = Store(d)
        if not store.exists(EVAL):
            raise SgdjaxError(f"{store.path(EVAL)} is missing: evaluate that setup first "
                              f"(python -m sgdjax.run looped SETUP --stages train,evaluate).")
        arrays = store.load_npz(EVAL)
        key = "band.model.at_train_loops" if trained_loops and \
            "band.model.at_train_loops" in arrays else "band.model"
        label = store.manifest().get("config", {}).get("setup") or d.name
        curves[label] = arrays[key]
        if not baselines:
            baselines = {n.removeprefix("band.baseline."): arrays[n] for n in arrays
                         if n.startswith("band.baseline.")}
    lengths = {c.shape[1] for c in curves.values()}
    if len(lengths) > 1:
        raise SgdjaxError(f"the setups were evaluated on different numbers of points "
                          f"({sorted(lengths)}); compare setups with the same eval.n_points.")
    return curves, baselines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgdjax.looped.compare",
                                description="Overlay error-vs-k curves of evaluated setups.")
    p.add_argument("dirs", nargs="+", type=Path, help="results directories (with eval.npz)")
    p.add_argument("--out", type=Path, default=Path("compare_error_vs_k.png"))
    p.add_argument("--zoom", type=int, default=0, help="show only k >= ZOOM")
    p.add_argument("--title", default="normalised squared error vs in-context examples")
    p.add_argument("--trained-loops", action="store_true",
                   help="use the prediction after the trained loop count, not the last one")
    args = p.parse_args(argv)
    try:
        curves, baselines = load_curves(args.dirs, args.trained_loops)
    except SgdjaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fig = plots.compare_error_vs_k(curves, baselines, args.title, k_from=args.zoom)
    out = args.out.resolve()
    Store(out.parent).save_figure(out.name, fig)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
