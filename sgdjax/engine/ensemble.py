"""Ensembles and sweeps: ``vmap`` of one trajectory over run keys and learning rates, in chunks.

A chunk is one compiled call over ``chunk`` (key, lr) pairs; its outputs are handed to a callback
(which writes them into pre-allocated ``.npy`` files), so an ensemble larger than memory streams to
disk and a restarted stage resumes at the first unfinished chunk. Every run's key is derived from
the setup seed with ``fold_in`` (stage, lr index, run index), so a result depends only on the
config, never on chunking or call order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgdjax.distributed import gather_reusing, put
from sgdjax.engine.trajectory import Data, Trajectory

STAGE_STREAMS = {"sgd": 1, "gd": 2, "hessians": 3, "many_runs": 4, "gd_many_runs": 5}


def run_keys(
    seed: int, stage: str | int, n_runs: int, lr_index: int | None = None, first: int = 0
) -> jax.Array:
    """Keys of runs ``first .. first+n_runs-1`` of a stage.

    ``lr_index=None`` gives common random numbers across learning rates (run r sees the same
    batches at every lr, as the original's reshuffle mode); an integer gives every lr its own
    streams."""
    stage_id = STAGE_STREAMS[stage] if isinstance(stage, str) else int(stage)
    base = jax.random.fold_in(jax.random.key(seed), stage_id)
    if lr_index is not None:
        base = jax.random.fold_in(base, 1000 + lr_index)
    runs = jnp.arange(first, first + n_runs, dtype=jnp.uint32)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(runs)


def vmapped(run: Callable[..., Trajectory], mesh: Mesh | None = None) -> Callable[..., Trajectory]:
    """``run`` vmapped over (key, lr) with shared start parameters, state and data, jitted.

    With a ``mesh`` the run axis is split over its devices by ``shard_map``: every device runs
    exactly the single-device program on its own runs, so results do not depend on the number of
    devices or hosts. The batch indices of a sampled run are then an extra argument, computed
    by ``fn.indices(keys)`` before the call: the CPU sampler sorts its permutations in a host
    callback, and callbacks of several CPU devices executing at once exhaust the runtime's
    threads and deadlock, whereas one single-device call sorts them all safely.
    ``run_chunks`` does this; ``fn.indices`` is None when no precomputation is needed."""
    batch_indices = getattr(run, "batch_indices", None)
    if mesh is None or batch_indices is None:
        fn = jax.vmap(run, in_axes=(None, None, 0, 0, None))
        if mesh is not None:
            fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P("runs"), P("runs"), P()),
                               out_specs=P("runs"), check_vma=False)
        jitted = jax.jit(fn)
        jitted_indices = None
    else:
        def with_indices(w0: Any, state0: Any, key: jax.Array, lr: jax.Array, data: Data,
                         idx: jax.Array) -> Trajectory:
            return run(w0, state0, key, lr, data, 0, None, idx)

        fn = jax.vmap(with_indices, in_axes=(None, None, 0, 0, None, 0))
        fn = jax.shard_map(fn, mesh=mesh,
                           in_specs=(P(), P(), P("runs"), P("runs"), P(), P("runs")),
                           out_specs=P("runs"), check_vma=False)
        jitted = jax.jit(fn)
        jitted_indices = jax.jit(jax.vmap(batch_indices))

    def call(*args: Any) -> Trajectory:
        return jitted(*args)

    call.lower = jitted.lower  # type: ignore[attr-defined]
    call.indices = jitted_indices  # type: ignore[attr-defined]
    # Host copies of sharded outputs, kept for every run_chunks call of this function (e.g. one
    # per learning rate): fresh host memory is slow to first touch (distributed.gather_reusing).
    call.host_buffers = {}  # type: ignore[attr-defined]
    return call


def output_bytes_per_run(run: Callable[..., Trajectory], w0: Any, state0: Any, key: jax.Array,
                         lr: jax.Array, data: Data) -> int:
    """Bytes of one run's outputs, from the traced shapes (no computation)."""
    out = jax.eval_shape(run, w0, state0, key, lr, data)
    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(out)))


#: Widest vmap per device on CPU, where wider is slower (see docs/benchmarks.md): CNN runs go
#: one at a time (15 ms per run-step at width 1 against 25 ms at width 8, float64); NanoGPT's
#: activations outgrow the caches beyond ~16 runs (float64 1.46-1.72k run-steps/s at width
#: 16, 0.93k at 117, about the width a 2 GB budget gives on two devices). Accelerators take
#: the width the memory budget allows.
MAX_CHUNK_CPU = {"cnn": 1, "nanogpt": 16}


def chunk_size(n_runs: int, bytes_per_run: int, budget_bytes: float, max_chunk: int | None = None
               ) -> int:
    """Largest chunk whose outputs fit the budget twice (``run_chunks`` writes one chunk while
    the next computes; on an accelerator the host copy is the second)."""
    fit = max(1, int(budget_bytes // max(1, 2 * bytes_per_run)))
    size = min(n_runs, fit)
    if max_chunk:
        size = min(size, max_chunk)
    return max(1, size)


def run_mesh(devices: list[Any] | None = None) -> Mesh | None:
    """A 1-D mesh over ``devices`` (default: all local devices of the default backend) with
    the axis ``"runs"``, or None with a single device. On several hosts, call
    ``jax.distributed.initialize()`` first and pass ``jax.devices()`` (all hosts' devices)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    if len(devices) < 2:
        return None
    return Mesh(np.asarray(devices), ("runs",))


def global_chunk(per_device: int, mesh: Mesh | None) -> int:
    """Runs per compiled call over the whole mesh.

    Every device always computes ``per_device`` runs, the width a single device would use: the
    per-device program is then the single-device program, so a sharded ensemble is bitwise
    identical to the same ensemble on one device (XLA's CPU kernels round differently for
    different vmap widths)."""
    return per_device if mesh is None else per_device * int(mesh.devices.size)


def run_chunks(
    fn: Callable[..., Trajectory],
    w0: Any,
    state0: Any,
    keys: jax.Array,
    lrs: jax.Array,
    data: Data,
    size: int,
    chunks: Iterable[int],
    on_chunk: Callable[[int, slice, Trajectory], None],
    progress: Callable[[int, float], None] | None = None,
    mesh: Mesh | None = None,
) -> None:
    """Run the given chunk indices of an ensemble with the vmapped ``fn``; while a chunk
    computes, the previous one's outputs are handed to ``on_chunk`` (two chunks' outputs are
    alive at once).

    Every chunk has the same static size (the last one is padded by repeating its final run and
    the padding is dropped), so the whole ensemble compiles once. ``on_chunk(chunk, rows, traj)``
    receives numpy outputs with exactly ``rows`` runs, valid during the call only (their host
    memory is reused for the next chunk, see ``distributed.gather_reusing``): copy what must be
    kept. ``progress(n_runs_done, seconds)`` is called after each chunk. With a ``mesh`` the run
    axis of every chunk is sharded over its devices (``size`` must be a multiple of the device
    count) and shared inputs are replicated."""
    n = keys.shape[0]
    if mesh is not None:
        if size % mesh.devices.size:
            raise ValueError(f"chunk size {size} is not a multiple of {mesh.devices.size} devices")
        replicated = NamedSharding(mesh, P())
        w0, state0, data = put((w0, state0, data), replicated)
        by_run = NamedSharding(mesh, P("runs"))

    # Host copies of sharded outputs, reused chunk after chunk (and call after call of a
    # ``vmapped`` function).
    host: dict[Any, np.ndarray] = getattr(fn, "host_buffers", {})

    def finish(c: int, rows: slice, out: Trajectory, t0: float) -> None:
        count = rows.stop - rows.start
        out = jax.tree.map(lambda a, n=count: a[:n], gather_reusing(out, host))
        on_chunk(c, rows, out)
        if progress is not None:
            progress(count, time.perf_counter() - t0)

    # Dispatch is asynchronous: chunk c+1 is computing while chunk c is written to disk.
    previous: tuple[int, slice, Trajectory, float] | None = None
    for c in chunks:
        rows = slice(c * size, min(n, (c + 1) * size))
        pad = size - (rows.stop - rows.start)
        k, lr = keys[rows], lrs[rows]
        if pad:
            k = jnp.concatenate([k, jnp.repeat(k[-1:], pad, axis=0)])
            lr = jnp.concatenate([lr, jnp.repeat(lr[-1:], pad, axis=0)])
        t0 = time.perf_counter()
        extra: tuple[Any, ...] = ()
        if mesh is not None:
            indices = getattr(fn, "indices", None)
            if indices is not None:
                # Every process computes the whole chunk's batches on its first local device
                # (a few ms); put() then hands each device its own runs.
                extra = (np.asarray(indices(k)),)
            k, lr, *extra = put((k, lr, *extra), by_run)
        out = fn(w0, state0, k, lr, data, *extra)
        if previous is not None:
            finish(*previous)
        previous = (c, rows, out, t0)
    if previous is not None:
        finish(*previous)


def diverged_summary(diverged_at: np.ndarray) -> dict[str, Any]:
    """JSON-ready description of diverged runs: indices and the step where each diverged."""
    diverged_at = np.asarray(diverged_at)
    runs = np.flatnonzero(diverged_at >= 0)
    return {
        "n_diverged": int(runs.size),
        "diverged_runs": [int(r) for r in runs],
        "diverged_at_step": [int(diverged_at[r]) for r in runs],
    }
