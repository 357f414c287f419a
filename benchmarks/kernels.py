"""Where one compiled computation spends its time, kernel by kernel (XLA CPU thunks).

    python -m benchmarks.kernels nanogpt step            # 50 steps of 20 vmapped runs
    python -m benchmarks.kernels nanogpt hessian --top 15
    python -m benchmarks.kernels cnn step --dtype float64 --runs 1 --hlo step.txt

The computation (``--steps`` steps of ``--runs`` vmapped stage-4 trajectories on the benchmark
data, with the benchmark's sampler, or one dense minibatch Hessian as stage 3 computes it)
runs once to compile, then once under ``jax.profiler`` with XLA's per-thunk trace events
(``--xla_cpu_enable_xprof_traceme``). The table lists the kernels by total time per call of the
computation, with their share, and the fusion kinds summed; ``--hlo`` writes the optimised HLO,
where each kernel's name (``fusion.12``, ``dot.3``) can be looked up with what it computes and
the ``op_name`` of the JAX code it came from. One CPU device, so the figures are one core's work
plus whatever XLA runs in its intra-op thread pool.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

#: Trace events that are not kernels: the executor's own spans and thread-pool waits.
_NOT_KERNELS = ("ThunkExecutor", "SlinkyThreadPool", "while", "call", "conditional")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["mlp", "cnn", "nanogpt"])
    ap.add_argument("what", choices=["step", "hessian"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--runs", type=int, default=20, help="vmapped runs per step (step only)")
    ap.add_argument("--steps", type=int, default=50, help="steps in the scan (step only)")
    ap.add_argument("--top", type=int, default=25, help="kernels listed")
    ap.add_argument("--hlo", metavar="PATH", help="write the optimised HLO text here")
    return ap.parse_args(argv)


def kernel_times(xspace_path: str) -> dict[str, float]:
    """Total nanoseconds per trace-event name over the non-Python threads of a profile."""
    from jax.profiler import ProfileData

    totals: dict[str, float] = defaultdict(float)
    for plane in ProfileData.from_file(xspace_path).planes:
        for line in plane.lines:
            if "python" in line.name.lower():
                continue
            for event in line.events:
                totals[event.name] += event.duration_ns
    return dict(totals)


def is_kernel(name: str) -> bool:
    return not name.startswith(_NOT_KERNELS)


def kind_of(name: str) -> str:
    """``add_bitcast_fusion.3`` -> ``add_bitcast_fusion``: the kernel's kind without its index."""
    return re.sub(r"[._0-9]+$", "", name)


def format_report(totals: dict[str, float], calls: int, top: int) -> str:
    kernels = {k: v / calls for k, v in totals.items() if is_kernel(k)}
    total = sum(kernels.values())
    if total <= 0:
        raise RuntimeError("the profile holds no kernel events: was "
                           "--xla_cpu_enable_xprof_traceme set before JAX started?")
    lines = [f"{total / 1e3:.1f} us of kernels per call", "", "   us/call  share  kernel"]
    for name, ns in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{ns / 1e3:10.1f}  {100 * ns / total:4.1f}%  {name}")
    kinds: dict[str, float] = defaultdict(float)
    for name, ns in kernels.items():
        kinds[kind_of(name)] += ns
    lines += ["", "   us/call  share  kind (summed)"]
    for name, ns in sorted(kinds.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{ns / 1e3:10.1f}  {100 * ns / total:4.1f}%  {name}")
    return "\n".join(lines)


def build(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...], int]:
    """The jitted computation, its arguments, and how many units (steps) one call holds."""
    import jax
    import jax.numpy as jnp

    from benchmarks.workloads import LR_CONT, SEED, STAGE4_SAMPLER, _batch, make_problem
    from sgdjax.analysis.hessian import dense_hessian
    from sgdjax.data.sampling import make_sampler
    from sgdjax.engine.ensemble import run_keys, vmapped
    from sgdjax.engine.trajectory import make_trajectory

    p = make_problem(args.model, args.dtype)
    if args.what == "hessian":
        closed = getattr(p.model, "loss_hessian", None)

        def hess(w: Any, x: Any, y: Any) -> Any:
            if closed is not None:
                return closed(w, p.state0, x, y)
            return dense_hessian(lambda v: p.train_loss(v, p.state0, x, y)[0], w)

        return jax.jit(hess), (p.w0, *_batch(p)), 1

    # The stage-4 engine itself: vmapped trajectories with the benchmark's sampler, losses only.
    sampler = make_sampler(STAGE4_SAMPLER[p.name], p.n_train, p.batch)
    fn = vmapped(make_trajectory(p.train_loss, sampler, args.steps))
    keys = run_keys(SEED, "many_runs", args.runs)
    lrs = jnp.full((args.runs,), LR_CONT[p.name], p.w0.dtype)
    return fn, (p.w0, p.state0, keys, lrs, p.data), args.steps


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    flag = "--xla_cpu_enable_xprof_traceme=true"
    if "jax" in sys.modules and flag not in os.environ.get("XLA_FLAGS", ""):
        print("error: run as `python -m benchmarks.kernels` (JAX was imported before the "
              "trace flag could be set)", file=sys.stderr)
        return 2
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    from sgdjax.run import split_cpu

    split_cpu(1)
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    fn, fargs, units = build(args)
    jax.block_until_ready(fn(*fargs))  # compile and warm up
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*fargs))
    wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        jax.block_until_ready(fn(*fargs))
        jax.profiler.stop_trace()
        traces = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        if not traces:
            print("error: jax.profiler wrote no trace", file=sys.stderr)
            return 1
        totals = kernel_times(traces[0])
    unit = "Hessian" if args.what == "hessian" else f"step of {args.runs} runs"
    print(f"{args.model} {args.what} ({args.dtype}): {wall / units * 1e3:.3f} ms per {unit} "
          f"untraced; kernels per {unit}:")
    print(format_report(totals, units, args.top))
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(fn.lower(*fargs).compile().as_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
