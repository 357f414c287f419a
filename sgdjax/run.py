"""Command line: ``python -m sgdjax.run EXP SETUP [--stages ..] [--set key=value ..] [--out DIR]``.

Runs a whole study setup end to end (or a part of it), writing results under
``results/EXP/SETUP/``. Every user error is one message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgdjax.config import list_experiments, setup_path
from sgdjax.errors import ConfigError, DeviceError, SgdjaxError
from sgdjax.families import family_for
from sgdjax.host import cpu_cores
from sgdjax.nested_config import flatten


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise ConfigError(f"{message}. See 'python -m sgdjax.run --help'.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m sgdjax.run",
        description="Run an sgdjax study setup end to end (or some of its stages).",
        epilog="Examples:\n  python -m sgdjax.run exp1 setup1\n"
               "  python -m sgdjax.run exp2 setup1 --stages 3,4 --set many_runs_samples=10\n"
               "  python -m sgdjax.run exp1 setup1 --set train_split='test[:6400]' "
               "--set val_split='test[6400:]'   (offline)\n  python -m sgdjax.run --list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", help="experiment family, e.g. exp1")
    p.add_argument("setup", nargs="?", help="setup name, e.g. setup1 (or just 1)")
    p.add_argument("--list", action="store_true", help="list experiments and setups")
    p.add_argument("--stages", help="stages to run, e.g. 3,4 or 2-5 or hessians (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set many_runs_samples=10")
    p.add_argument("--out", type=Path, help="results directory (default results/EXP/SETUP)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="where to compute (overrides config)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the stage plan, run nothing")
    p.add_argument("--force", action="store_true",
                   help="recompute stages even if their outputs exist")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--cpu-devices", type=int, metavar="N",
                   help="CPU devices that ensembles are sharded over (default: one per core; "
                        "1 runs every ensemble as a single vmap)")
    hosts = p.add_argument_group(
        "several hosts", "start the same command on every host (results dir on a shared "
        "filesystem); ensembles are sharded over all hosts' devices, process 0 writes")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, reachable from every host")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
    hosts.add_argument("--distributed", action="store_true",
                       help="join a cluster JAX detects itself (SLURM, Open MPI, Kubernetes)")
    return p


def print_list() -> None:
    from sgdjax.families import FAMILIES

    for exp, setups in list_experiments().items():
        if exp not in FAMILIES:  # e.g. a folder of sweep files
            continue
        print(exp)
        width = max(len(s) for s in setups)
        for name, desc in setups.items():
            print(f"  {name:<{width}}  {desc}")


def format_config(cfg: Any) -> str:
    """One ``dotted.key = value`` line per leaf: exactly what ``--set`` accepts."""
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in
                     flatten(cfg.to_dict()).items())


def select_device(name: str) -> Any:
    """This process's first JAX device of the requested platform, or a DeviceError saying what
    to do."""
    import jax

    try:
        devices = jax.local_devices(backend=name)
    except RuntimeError:
        devices = []
    if not devices:
        hint = (" Install a CUDA build of JAX (pip install -U 'jax[cuda12]') on a machine with an "
                "NVIDIA GPU, or run with --device cpu.") if name == "gpu" else ""
        raise DeviceError(f"no '{name}' device is visible to JAX "
                          f"(available: {', '.join(sorted({d.platform for d in jax.devices()}))})."
                          + hint)
    return devices[0]


def check_consistent(store: Any, cfg: Any, force: bool,
                     execution_keys: Sequence[str] = ()) -> None:
    """Refuse to mix results of different configs in one directory."""
    old = store.manifest().get("config")
    if not old or force:
        return
    old, new = flatten(old), flatten(cfg.to_dict())
    # Keys a newer sgdjax added are absent from older manifests: their defaults match.
    try:
        defaults = flatten(type(cfg)().to_dict())
    except (TypeError, SgdjaxError):
        defaults = {}
    changed = sorted(k for k in new if k not in execution_keys
                     and old.get(k, defaults.get(k, new[k])) != new[k])
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed[:6])
        raise ConfigError(
            f"{store.root} holds results of a different config ({details}). Use --out DIR for a "
            "new results directory, or --force to recompute the stages you run."
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(stage or '  lr...', wall seconds, key=value numbers) rows of the summary table."""
    rows = []
    for stage, info in results.items():
        wall = info.get("wall_s")
        flat = [f"{k}={_fmt(v)}" for k, v in info.items()
                if k not in ("wall_s", "skipped", "finished") and v is not None
                and not isinstance(v, dict | list)]
        status = "skipped" if info.get("skipped") else ""
        rows.append((stage, f"{wall:.1f}" if isinstance(wall, float) else status,
                     "  ".join(flat)))
        for key, value in info.items():
            if isinstance(value, dict):
                inner = [f"{k}={_fmt(v)}" for k, v in value.items()
                         if v is not None and not isinstance(v, dict | list)]
                rows.append((f"  {key}", "", "  ".join(inner)))
    return rows


def print_summary(cfg: Any, results: dict[str, Any], total: float, out: Path) -> None:
    print(f"\nsummary of {cfg.experiment}/{cfg.setup} ({out})")
    rows = summary_rows(results)
    width = max([len(r[0]) for r in rows] + [5])
    print(f"  {'stage':<{width}}  {'wall s':>8}  numbers")
    for stage, wall, numbers in rows:
        print(f"  {stage:<{width}}  {wall:>8}  {numbers}")
    print(f"  {'total':<{width}}  {total:>8.1f}")


# XLA's CPU backend (jaxlib >= 0.10) hands elementwise chains next to small matmuls to YNNPACK
# fusions; for these models that splits the softmax's exp into a separate, ~5x slower loop
# (measured with jax.profiler on the MLP step), and the MLP ensemble step ran ~30% faster with
# the fusions off. YNNPACK's kernels for standalone dots ("individual_dot") are faster than
# XLA's own for these skinny products, though: the CNN ensemble +17%, NanoGPT's +25%, the MLP's
# unchanged (2-vCPU machine, jaxlib 0.10.2). Older jaxlibs do not know the flag (or that value)
# and would abort on it.
_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def choose_ynn_fusions() -> None:
    """Append ``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` (YNNPACK for standalone
    dots only, on jaxlib 0.10.2 and later 0.10 releases; no value, i.e. none at all, on the
    others) to ``XLA_FLAGS`` unless the user set that flag or the jaxlib predates it. XLA reads
    the flags when the backends start, so this only takes effect before the first JAX array
    exists."""
    import jaxlib

    flags = os.environ.get("XLA_FLAGS", "")
    if _CPU_FLAG.lstrip("-") in flags:
        return
    try:
        version = tuple(int(v) for v in jaxlib.__version__.split(".")[:3])
    except ValueError:
        return
    if version >= (0, 10):
        # individual_dot is measured and tested on 0.10.2; other versions get no YNNPACK.
        value = "individual_dot" if (0, 10, 2) <= version < (0, 11) else ""
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_FLAG}={value}".strip()


def split_cpu(n: int | None) -> None:
    """Expose ``n`` CPU devices (default: one per core) so that an ensemble's runs are sharded
    over every core: XLA's CPU backend runs the ops of one small-model computation on one core
    at a time, while separate devices execute concurrently (results are bitwise identical for
    any device count, see ``engine/ensemble.py``), and chooses the YNNPACK fusions that suit
    these models (``choose_ynn_fusions``). Leaves an explicit
    ``--xla_force_host_platform_device_count`` alone, and does nothing once JAX's backends exist
    (a caller in the same process chose already)."""
    import jax

    choose_ynn_fusions()
    if n is not None and n < 1:
        raise ConfigError(f"--cpu-devices must be at least 1, got {n}")
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        if n is not None:
            raise ConfigError("--cpu-devices and XLA_FLAGS=--xla_force_host_platform_device_count "
                              "both set the CPU device count; give one of them")
        return
    try:
        jax.config.update("jax_num_cpu_devices", n or cpu_cores())
    except RuntimeError:  # backends already initialised in this process
        pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except SgdjaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished chunks are saved; run the same command again to resume.",
              file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print_list()
        return 0
    if not args.experiment or not args.setup:
        raise ConfigError("give an experiment and a setup, e.g. 'python -m sgdjax.run exp1 "
                          "setup1', or --list to see them")
    setup_path(args.experiment, args.setup)  # names an unknown experiment/setup first
    family = family_for(args.experiment)
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    cfg = family.load_config(args.experiment, args.setup, overrides)
    from sgdjax.stages import parse_stages, run_stages

    stages = parse_stages(args.stages, family.STAGES)
    out = args.out or Path("results") / cfg.experiment / cfg.setup

    # x64 and the CPU device count must be decided before any JAX array exists.
    import jax

    jax.config.update("jax_enable_x64", cfg.x64)
    split_cpu(args.cpu_devices)
    multi = [args.coordinator, args.num_processes, args.process_id]
    if args.distributed or any(v is not None for v in multi):
        if not args.distributed and any(v is None for v in multi):
            raise ConfigError("several hosts need all of --coordinator HOST:PORT, "
                              "--num-processes N and --process-id I (or --distributed)")
        from sgdjax.distributed import initialize

        initialize(*multi)
    device = select_device(cfg.device)
    main_process = jax.process_index() == 0

    if args.dry_run:
        print(f"# {cfg.experiment}/{cfg.setup}: {cfg.description}")
        print(format_config(cfg))
        print(f"\n# results: {out}\n# device: {device}\n# stages:")
        for s in stages:
            print(f"  {s.number} {s.name:<17} {s.title}")
        return 0

    from sgdjax.store import Store, git_commit, now_iso, package_versions

    store = Store(out)
    check_consistent(store, cfg, args.force, family.EXECUTION_KEYS)
    if main_process:
        store.update_manifest(
            config=cfg.to_dict(), versions=package_versions(), device=str(device),
            platform=device.platform, git_commit=git_commit(Path(__file__).parent),
            started=now_iso(), processes=jax.process_count(),
            command=" ".join(["python -m sgdjax.run",
                              *(argv if argv is not None else sys.argv[1:])]),
        )
    ctx = family.make_context(cfg, store, force=args.force,
                              show_progress=not args.no_progress and main_process, device=device)
    t0 = time.perf_counter()
    with jax.default_device(device):
        results = run_stages(ctx, stages)
    total = time.perf_counter() - t0
    if main_process:
        store.update_manifest(finished=now_iso(), wall_s_last_invocation=total)
        store.save_json("summary.json", results)
        print_summary(cfg, results, total, out)
    return 0


if __name__ == "__main__":
    from sgdjax.host import reexec_with_huge_pages

    reexec_with_huge_pages()
    sys.exit(main())
