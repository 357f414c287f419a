"""``python -m benchmarks``: sgdjax vs the PyTorch reference, one table row per workload.

Examples::

    python -m benchmarks --quick                      # every workload on a tiny size
    python -m benchmarks --only mlp-stage4 --json out.json
    python -m benchmarks --only stage3 --dtype both --torch-threads 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, fields
from typing import Any

from benchmarks.workloads import WORKLOADS, Sizes, format_table, run_benchmarks, select


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (2 runs x 30 steps, 2 Hessian steps): a smoke test")
    ap.add_argument("--only", action="append", default=[], metavar="PATTERN",
                    help=f"workloads to run (comma list; exact, glob or substring of "
                         f"{', '.join(WORKLOADS)}); repeatable")
    ap.add_argument("--dtype", default="default",
                    choices=["default", "float32", "float64", "both"],
                    help="default: the goal's dtype (float64 for the MNIST stage-4 ensembles, "
                         "float32 otherwise)")
    ap.add_argument("--torch-threads", default="1", metavar="N[,N]",
                    help="PyTorch intra-op threads for the reference; the first one gives the "
                         "ratio (default 1; e.g. 1,2 to also report two threads)")
    ap.add_argument("--loader", default="dataloader", choices=["dataloader", "index"],
                    help="how the reference fetches batches: through DataLoader as the "
                         "original (default) or by direct tensor indexing")
    ap.add_argument("--json", metavar="PATH", help="write the results (and machine info) here")
    ap.add_argument("--cpu-devices", type=int, metavar="N",
                    help="CPU devices the stage-4 ensembles are sharded over, as the stage does "
                         "(default: one per core)")
    for f in fields(Sizes):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None,
                        help=f"override Sizes.{f.name}")
    return ap.parse_args(argv)


def machine_info() -> dict[str, Any]:
    import jax
    import numpy

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "jax": jax.__version__, "numpy": numpy.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def main(argv: list[str] | None = None) -> list[Any]:
    args = parse_args(argv)
    from sgdjax.run import split_cpu

    split_cpu(args.cpu_devices)  # before any JAX array exists
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("the benchmarks need torch for the reference: pip install -e '.[bench]'")
    patterns = [p for item in args.only for p in item.split(",") if p]
    workloads = select(patterns)
    threads = tuple(int(t) for t in args.torch_threads.split(","))
    overrides = {f.name: getattr(args, f.name) for f in fields(Sizes)
                 if getattr(args, f.name) is not None}
    info = machine_info()
    print(f"sgdjax benchmarks ({'quick' if args.quick else 'real'} sizes) on {info['cpu_count']} "
          f"CPU(s), load average {info['loadavg_at_start'][0]:.1f}; PyTorch reference with "
          f"{'/'.join(map(str, threads))} thread(s), loader={args.loader}", flush=True)

    done: list[Any] = []

    def save() -> None:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": info, "args": vars(args),
                           "results": [asdict(r) for r in done]}, fh, indent=2)

    def progress(r: Any) -> None:
        done.append(r)
        save()  # after every workload: a long run interrupted keeps what it measured
        print(f"  done {r.workload} {r.dtype}: sgdjax {r.jax_rate:.4g} {r.unit}, PyTorch "
              f"{r.torch_rate[str(threads[0])]:.4g}, ratio {r.ratio:.1f}x, "
              f"{'agree' if r.agree else 'DISAGREE'}", flush=True)

    results = run_benchmarks(workloads, quick=args.quick, dtype_mode=args.dtype,
                             threads=threads, loader=args.loader, overrides=overrides,
                             on_result=progress)
    print()
    print(format_table(results, threads))
    if args.json:
        print(f"\nwrote {args.json}")
    if not all(r.agree for r in results):
        print("\nsgdjax and the reference DISAGREE on: "
              + ", ".join(f"{r.workload} {r.dtype}" for r in results if not r.agree))
        sys.exit(1)
    return results


if __name__ == "__main__":
    from sgdjax.host import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
