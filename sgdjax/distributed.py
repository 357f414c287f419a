"""Several hosts as one ensemble: ``jax.distributed`` process identity, barriers and gathers.

Runs of an ensemble are independent, so hosts need to talk only twice per chunk: each computes
its devices' share of the chunk's runs (the run axis is sharded over the global device mesh,
every device at the single-device width, so results do not depend on the host count), then the
chunk's outputs are gathered to process 0, which alone writes the results directory (a shared
filesystem). Stages that are not ensembles run on process 0 while the others wait at a barrier.

Start one process per host with the same command plus ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or ``--distributed`` where JAX detects the cluster itself,
e.g. under SLURM)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sgdjax.errors import DeviceError


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the cluster; must run before any JAX array exists."""
    # CPU hosts exchange chunk outputs through gloo collectives (GPUs use NCCL).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(
            f"could not join the cluster ({exc}). Give every process the same --coordinator "
            "HOST:PORT (reachable from all hosts) and --num-processes N, and each its own "
            "--process-id 0..N-1; or use --distributed only where JAX detects the cluster "
            "(SLURM, Open MPI, Kubernetes)."
        ) from None


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True on the process that writes results (always, on a single host)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (no-op on a single host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(tree: Any) -> Any:
    """Full numpy copies of (possibly multi-host sharded) arrays, on every process."""
    def one(a: Any) -> np.ndarray:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def gather_reusing(tree: Any, buffers: dict[Any, np.ndarray]) -> Any:
    """Like :func:`gather`, but an array sharded over several local devices is copied into a
    host buffer kept in ``buffers`` (by leaf position, shape and dtype) and reused on the next
    call, and a single-device array comes back as a view of its device buffer (zero-copy on
    CPU). On these VMs the first write to fresh host memory runs at about 0.5 GB/s against
    ~12 GB/s warm: copying an MLP chunk's recorded weights (1.7 GB) took 3.5 s into a fresh
    array and 0.14 s into a reused one, on a machine where the chunk computes in 5 s.
    The returned arrays are only valid until the next call: copy what must be kept."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, a in enumerate(leaves):
        if not isinstance(a, jax.Array) or not a.is_fully_addressable:
            out.append(gather(a))
            continue
        shards = a.addressable_shards
        if len(shards) == 1:
            out.append(np.asarray(a))
            continue
        key = (i, a.shape, a.dtype)
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = np.empty(a.shape, a.dtype)
        for shard in shards:
            if shard.replica_id == 0:
                buf[shard.index] = np.asarray(shard.data)
        out.append(buf)
    return jax.tree.unflatten(treedef, out)


def put(tree: Any, sharding: Any) -> Any:
    """``jax.device_put(tree, sharding)`` that also works for a mesh spanning several hosts
    (every process holds the same full value and contributes its own devices' shards)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x))
            return jax.jit(jax.random.wrap_key_data, out_shardings=sharding)(data)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def broadcast(values: list[int]) -> list[int]:
    """Process 0's list of ints, on every process (e.g. which chunks are still pending)."""
    if jax.process_count() == 1:
        return list(values)
    from jax.experimental import multihost_utils

    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
    arr = np.zeros(n, np.int32)
    if is_main():
        arr[:] = values
    return [int(v) for v in multihost_utils.broadcast_one_to_all(arr)] if n else []


__all__ = ["barrier", "broadcast", "gather", "initialize", "is_main", "process_count", "put"]
