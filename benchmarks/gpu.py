"""The accelerator goals, measured in one command, each against the machine's roofline.

    python -m benchmarks.gpu                       # on a GPU machine, the goals' sizes
    python -m benchmarks.gpu --json gpu.json --set memory_budget_gb=40
    python -m benchmarks.gpu --quick               # tiny sizes on any platform (a smoke test)

Three parts, on JAX's default device:

``roofline``  the practical peaks of this device in this process: FLOP/s of a large matmul in
              float32 and float64, memory bandwidth of a large elementwise pass (read + write),
              and the write bandwidth of the results disk (one file written and fsynced).
``mlp``       the exp1 MLP ensemble in float64 with loss-only recording (the per-step minibatch
              loss, no weights, no validation): ``--runs`` runs of ``--steps`` steps, vmapped
              in chunks of ``--chunk`` runs over every local device as stage 4 runs them.
              Goal: 1e7 run-steps/s on one H100.
``exp2``      stage 4 of ``python -m sgdjax.run exp2 setup2`` itself (10000 NanoGPT runs × 1111
              steps, every weight recorded and streamed to ``.npy`` files, 42.7 GB): run through
              the command line at two shorter step counts from a quick stage-1/2 checkpoint
              (``epochs_sgd=epochs_gd=1``: the cost of a step does not depend on where it
              starts), and projected linearly to ``many_runs_steps``. Goal: 30 minutes.

Each part prints its rate, the FLOP/s and bytes/s it achieves, and the roofline: the time the
work would take at the device's peak FLOP/s or bandwidth, whichever binds, so ``of roofline`` is
that bound over the measured time. FLOPs and bytes come from XLA's cost analysis of one compiled
step; its bytes are every kernel's operands and results, an upper estimate of memory traffic
(above 100 % of roofline, caches served part of it). For ``exp2`` the memory side is the bytes
written to disk at the disk's measured bandwidth. Whether a goal is met is printed only at the
goal's ensemble size (10000 runs), not for ``--quick`` or smaller ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks.peak import best_rate, peak_flops

#: The goals' sizes, and the tiny ones of ``--quick``.
REAL = {"mlp_runs": 10_000, "mlp_steps": 1111, "cpu_chunk": 500, "exp2_steps": (111, 222),
        "matmul": 8192, "stream_mib": 1024, "disk_mib": 1024, "exp2_set": ()}
QUICK = {"mlp_runs": 8, "mlp_steps": 20, "cpu_chunk": 4, "exp2_steps": (4, 8), "matmul": 256,
         "stream_mib": 16, "disk_mib": 8, "exp2_set": ("many_runs_samples=4",)}
GOALS = {"mlp": 1e7, "exp2_minutes": 30.0}


@dataclass
class Roofline:
    device: str
    flops: dict[str, float]  # dtype -> FLOP/s of the matmul
    bandwidth: float  # device memory, bytes/s (read + write)
    disk_write: float  # bytes/s to the results directory's filesystem


@dataclass
class Part:
    name: str
    rate: float
    unit: str
    goal: float | None
    seconds: float
    flop_per_s: float | None = None
    bytes_per_s: float | None = None
    bound_s: float | None = None  # the roofline time of the same work
    bound_by: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def of_roofline(self) -> float | None:
        return self.bound_s / self.seconds if self.bound_s else None

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.detail.get("runs", 0) < self.detail.get("goal_runs", 0):
            return None
        return self.rate <= self.goal if self.unit == "minutes" else self.rate >= self.goal


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--only", default="roofline,mlp,exp2",
                    help="comma list of parts (roofline is always measured)")
    ap.add_argument("--runs", type=int, help="MLP ensemble runs (default 10000)")
    ap.add_argument("--steps", type=int, help="MLP ensemble steps (default 1111)")
    ap.add_argument("--chunk", type=int, help="MLP runs per compiled call (default: all of "
                    "them on an accelerator, 500 on the CPU)")
    ap.add_argument("--exp2-steps", help="two stage-4 step counts to fit, e.g. 111,222")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for the exp2 runs (repeatable), e.g. "
                         "memory_budget_gb=40")
    ap.add_argument("--workdir", help="where the exp2 results go (default: a temporary "
                                      "directory, removed afterwards)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    return ap.parse_args(argv)


# -- roofline ----------------------------------------------------------------------------------


def memory_bandwidth(mib: int) -> float:
    """Bytes/s of ``x * 0.5`` over a float32 array of ``mib`` MiB (one read, one write), in place:
    the input is donated, so no call pays for first-touching a fresh output buffer."""
    import jax
    import jax.numpy as jnp

    x = [jnp.ones((mib * 2**18,), jnp.float32)]
    nbytes = x[0].nbytes
    halve = jax.jit(lambda a: a * 0.5, donate_argnums=0)

    def call() -> None:
        x[0] = halve(x[0])
        x[0].block_until_ready()

    return best_rate(call, 2.0 * nbytes, repeats=5)


def disk_write_bandwidth(directory: str, mib: int) -> float:
    """Bytes/s of writing one ``mib`` MiB file to ``directory`` and fsyncing it."""
    block = os.urandom(2**20)
    path = os.path.join(directory, "disk_probe.bin")
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - t0
    os.remove(path)
    return mib * 2**20 / seconds


def measure_roofline(sizes: dict[str, Any], workdir: str) -> Roofline:
    import jax

    return Roofline(
        device=str(jax.devices()[0].device_kind),
        # JAX's own matmul on this device: PyTorch's would be the CPU's.
        flops={dt: peak_flops(dt, sizes["matmul"], 5, with_torch=False)["jax"]
               for dt in ("float32", "float64")},
        bandwidth=memory_bandwidth(sizes["stream_mib"]),
        disk_write=disk_write_bandwidth(workdir, sizes["disk_mib"]),
    )


def bound(flops: float, nbytes: float, dtype: str, roof: Roofline) -> tuple[float, str]:
    """Roofline seconds of ``flops`` and ``nbytes`` of device memory traffic, and which binds."""
    t_flops, t_bytes = flops / roof.flops[dtype], nbytes / roof.bandwidth
    return (t_flops, "FLOP/s") if t_flops >= t_bytes else (t_bytes, "memory bandwidth")


def step_cost(run: Callable[..., Any], args: tuple[Any, ...]) -> tuple[float, float]:
    """(FLOPs, bytes accessed) XLA's cost analysis gives one compiled call of ``run``."""
    import jax

    fn = run if hasattr(run, "lower") else jax.jit(run)
    ca = fn.lower(*args).compile().cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


# -- the MLP ensemble, losses only -------------------------------------------------------------


def bench_mlp(runs: int, steps: int, chunk: int | None, roof: Roofline) -> Part:
    """The ensemble as stage 4 runs it: chunks of runs over every local device, every chunk's
    losses brought to host memory; one untimed chunk first (compilation)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.workloads import LR_CONT, SEED, STAGE4_SAMPLER, make_problem
    from sgdjax.data.sampling import make_sampler
    from sgdjax.engine.ensemble import global_chunk, run_chunks, run_keys, run_mesh, vmapped
    from sgdjax.engine.trajectory import make_trajectory

    p = make_problem("mlp", "float64")
    sampler = make_sampler(STAGE4_SAMPLER["mlp"], p.n_train, p.batch)
    mesh = run_mesh()
    n_dev = 1 if mesh is None else int(mesh.devices.size)
    size = global_chunk(-(-min(chunk or runs, runs) // n_dev), mesh)
    n_chunks = -(-runs // size)
    keys = run_keys(SEED, "many_runs", size * (n_chunks + 1))
    lrs = jnp.full((keys.shape[0],), LR_CONT["mlp"], p.w0.dtype)
    fn = vmapped(make_trajectory(p.train_loss, sampler, steps), mesh)  # Recorder(): losses
    final: list[float] = []

    def keep(c: int, rows: slice, out: Any) -> None:
        final.extend(out.records["loss"][:, -1].tolist())

    t0 = time.perf_counter()
    run_chunks(fn, p.w0, p.state0, keys, lrs, p.data, size, range(1), keep, mesh=mesh)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_chunks(fn, p.w0, p.state0, keys, lrs, p.data, size, range(1, n_chunks + 1), keep,
               mesh=mesh)
    seconds = time.perf_counter() - t0
    timed = n_chunks * size
    if not all(math.isfinite(x) for x in final):
        raise RuntimeError("the MLP ensemble diverged: its rate would be meaningless")
    # XLA counts a loop body once, so the cost is that of the engine's one-step trajectory of
    # a chunk with its batch indices given (the sampler's once-per-epoch permutations left out).
    idx = jax.random.randint(jax.random.key(0), (size, 1, p.batch), 0, p.n_train)
    one = jax.vmap(make_trajectory(p.train_loss, sampler, 1),
                   in_axes=(None, None, 0, 0, None, None, None, 0))
    flops, nbytes = step_cost(one, (p.w0, p.state0, keys[:size], lrs[:size], p.data, 0, None,
                                    idx))
    flops, nbytes = flops / size * timed * steps, nbytes / size * timed * steps
    bound_s, by = bound(flops, nbytes, "float64", roof)
    return Part("mlp", timed * steps / seconds, "run-steps/s", GOALS["mlp"], seconds,
                flops / seconds, nbytes / seconds, bound_s, by,
                {"runs": timed, "goal_runs": REAL["mlp_runs"], "steps": steps,
                 "runs_per_call": size, "devices": n_dev, "dtype": "float64",
                 "source": p.source, "compile_and_first_chunk_s": first,
                 "flops_per_run_step": flops / (timed * steps),
                 "bytes_per_run_step": nbytes / (timed * steps),
                 "mean_final_loss": float(np.mean(final))})


# -- exp2 setup 2, stage 4 through the command line --------------------------------------------


def _cli(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "sgdjax.run", "exp2", "setup2", "--no-progress", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _stage_seconds(out: str, stage: str) -> float:
    with open(os.path.join(out, "manifest.json")) as fh:
        return float(json.load(fh)["stages"][stage]["wall_s"])


def _npy_bytes(out: str) -> int:
    return sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
               if f.startswith("sgd_") and f.endswith(".npy"))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of the line through two points."""
    (x1, x2), (y1, y2) = xs, ys
    slope = (y2 - y1) / (x2 - x1)
    return y1 - slope * x1, slope


def bench_exp2(step_counts: tuple[int, int], overrides: Sequence[str], device: str,
               workdir: str, roof: Roofline) -> Part:
    from benchmarks.workloads import make_problem, step_flops
    from sgdjax.config import load_setup
    from sgdjax.errors import ConfigError

    fixed = {"many_runs_steps": "--exp2-steps", "epochs_sgd": None, "epochs_gd": None}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in fixed:
            how = f"give the step counts with {fixed[key]}" if fixed[key] else "it is fixed"
            raise ConfigError(f"--set {key}: the benchmark sets it itself ({how})")
    sets = ["epochs_sgd=1", "epochs_gd=1", *overrides]
    cfg = load_setup("exp2", "setup2", sets)  # names a bad override before anything runs
    target = cfg.many_runs_steps
    out = os.path.join(workdir, "exp2_setup2")
    flags = [a for s in sets for a in ("--set", s)] + ["--device", device, "--out", out]
    t0 = time.perf_counter()
    _cli(["--stages", "1,2", "--set", f"many_runs_steps={step_counts[0]}", *flags])
    checkpoint_s = time.perf_counter() - t0
    walls, sizes = [], []
    for steps in step_counts:
        _cli(["--stages", "4", "--force", "--set", f"many_runs_steps={steps}", *flags])
        walls.append(_stage_seconds(out, "many_runs"))
        sizes.append(_npy_bytes(out))
    a, b = fit_line(step_counts, walls)
    seconds = a + b * target
    d0, d1 = fit_line(step_counts, sizes)
    disk_bytes = d0 + d1 * target

    p = make_problem("nanogpt", cfg.dtype)
    flops_step = step_flops(p)[0]
    flops = flops_step * cfg.many_runs_samples * len(cfg.lrs) * target
    t_flops = flops / roof.flops[cfg.dtype]
    t_disk = disk_bytes / roof.disk_write
    bound_s, by = (t_flops, "FLOP/s") if t_flops >= t_disk else (t_disk, "disk write")
    return Part("exp2", seconds / 60, "minutes", GOALS["exp2_minutes"], seconds,
                flops / seconds, disk_bytes / seconds, bound_s, by,
                {"runs": cfg.many_runs_samples * len(cfg.lrs), "goal_runs": 10_000,
                 "steps": target,
                 "measured_steps": list(step_counts), "measured_wall_s": walls,
                 "fixed_s": a, "seconds_per_step": b, "disk_bytes": disk_bytes,
                 "checkpoint_s": checkpoint_s, "overrides": list(sets), "device": device,
                 "flops_per_run_step": flops_step})


# -- report ------------------------------------------------------------------------------------


def _si(x: float | None, unit: str) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _yes_no(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "no")


def format_report(roof: Roofline, parts: list[Part]) -> str:
    lines = [f"device: {roof.device}",
             f"peak: {_si(roof.flops['float32'], 'FLOP/s')} float32, "
             f"{_si(roof.flops['float64'], 'FLOP/s')} float64; memory "
             f"{_si(roof.bandwidth, 'B/s')}; disk write {_si(roof.disk_write, 'B/s')}", "",
             "| part | result | goal | met | FLOP/s | bytes/s | roofline bound | of roofline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in parts:
        goal = "-" if p.goal is None else (f"≤ {p.goal:g} {p.unit}" if p.unit == "minutes"
                                           else f"≥ {_si(p.goal, p.unit)}")
        rate = f"{p.rate:.1f} {p.unit}" if p.unit == "minutes" else _si(p.rate, p.unit)
        frac = "-" if p.of_roofline is None else f"{100 * p.of_roofline:.1f} %"
        lines.append(f"| {p.name} | {rate} | {goal} | {_yes_no(p.met)} | "
                     f"{_si(p.flop_per_s, 'FLOP/s')} | {_si(p.bytes_per_s, 'B/s')} | "
                     f"{p.bound_s:.3g} s ({p.bound_by}) | {frac} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from sgdjax.errors import SgdjaxError

    try:
        return _main(argv)
    except SgdjaxError as exc:
        sys.exit(f"error: {exc}")


def _main(argv: Sequence[str] | None) -> dict[str, Any]:
    args = parse_args(argv)
    from sgdjax.run import split_cpu

    split_cpu(None)  # as stage 4 runs: one CPU device per core and its YNNPACK choice
    import jax

    jax.config.update("jax_enable_x64", True)  # the MLP goal is float64
    sizes = dict(QUICK if args.quick else REAL)
    platform = jax.default_backend()
    if platform == "cpu" and not args.quick:
        sizes["matmul"] = 2048  # as benchmarks/peak.py: 8192 in float64 takes minutes on a CPU
    parts_wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = parts_wanted - {"roofline", "mlp", "exp2"}
    if unknown:
        sys.exit(f"error: unknown part(s) {', '.join(sorted(unknown))}; parts are roofline, "
                 "mlp, exp2")
    try:
        steps = (tuple(int(s) for s in args.exp2_steps.split(",")) if args.exp2_steps
                 else sizes["exp2_steps"])
    except ValueError:
        steps = ()
    if len(steps) != 2 or not 0 < steps[0] < steps[1]:
        sys.exit("error: --exp2-steps takes two increasing step counts, e.g. 111,222")
    if platform == "cpu" and not args.quick:
        print("note: no accelerator: JAX runs on the CPU; these goals are stated for one H100",
              flush=True)
    own_dir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="sgdjax-gpu-") if own_dir else args.workdir
    os.makedirs(workdir, exist_ok=True)
    from benchmarks.__main__ import machine_info

    info = machine_info()
    parts: list[Part] = []
    result: dict[str, Any] = {}

    def save(roof: Roofline) -> None:
        # after every part: a run cut short (a device's time limit) keeps what it measured
        result.update({"machine": info, "args": vars(args), "roofline": asdict(roof),
                       "parts": [{**asdict(p), "of_roofline": p.of_roofline, "met": p.met}
                                 for p in parts]})
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)

    try:
        roof = measure_roofline(sizes, workdir)
        save(roof)
        if "mlp" in parts_wanted:
            chunk = args.chunk or (sizes["cpu_chunk"] if platform == "cpu" else None)
            parts.append(bench_mlp(args.runs or sizes["mlp_runs"],
                                   args.steps or sizes["mlp_steps"], chunk, roof))
            save(roof)
            print(f"  done mlp: {parts[-1].rate:.4g} run-steps/s", flush=True)
        if "exp2" in parts_wanted:
            device = "gpu" if platform == "gpu" else "cpu"
            parts.append(bench_exp2(steps, [*sizes["exp2_set"], *args.set], device, workdir,
                                    roof))
            save(roof)
            print(f"  done exp2: {parts[-1].rate:.3g} minutes projected", flush=True)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(format_report(roof, parts))
    if args.json:
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    from sgdjax.host import reexec_with_huge_pages

    reexec_with_huge_pages()
    main()
