"""The machine's practical peak FLOP/s per dtype, measured with a large matmul in this process.

Measured rather than taken from a data sheet: on a shared VM the attainable rate is what matters,
and measuring in the same process (same moment, same thread settings) makes the "% of peak"
columns comparable with the workload timings next to them. Both JAX (XLA/Eigen) and PyTorch
(with all cores) are tried and the faster one is the peak.
"""

from __future__ import annotations

import os
import time
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

_JDT = {"float32": jnp.float32, "float64": jnp.float64}


def best_rate(fn, work: float, repeats: int) -> float:  # noqa: ANN001 - a thunk
    """``work`` (FLOPs, bytes) per second of the fastest of ``repeats`` calls of ``fn``, after
    one untimed call."""
    fn()  # warm-up: compilation, first-touch of the output buffer
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return work / best


@cache
def peak_flops(dtype: str, n: int = 2048, repeats: int = 3,
               with_torch: bool = True) -> dict[str, float]:
    """``{"jax": ..., "torch": ..., "peak": max}`` in FLOP/s for an ``n×n`` matmul in ``dtype``
    (JAX on its default device; PyTorch on the CPU, unless ``with_torch`` is off).

    float64 needs JAX's x64 mode (enabled by the benchmark runner before any array exists)."""
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n)).astype(dtype)
    b_np = rng.standard_normal((n, n)).astype(dtype)
    out: dict[str, float] = {}

    a, b = jnp.asarray(a_np, _JDT[dtype]), jnp.asarray(b_np, _JDT[dtype])
    if a.dtype != np.dtype(dtype):
        raise RuntimeError(f"JAX made {a.dtype} from {dtype}: enable x64 before measuring float64")
    mm = jax.jit(jnp.matmul)
    out["jax"] = best_rate(lambda: mm(a, b).block_until_ready(), flops, repeats)

    torch = _torch() if with_torch else None
    if torch is not None:  # torch is optional (the bench extra); else JAX's number is the peak
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the machine's peak, not the reference's
        try:
            ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)
            out["torch"] = best_rate(lambda: torch.mm(ta, tb), flops, repeats)
        finally:
            torch.set_num_threads(threads)
    out["peak"] = max(out.values())
    return out


def _torch():  # noqa: ANN202 - the module, or None without the bench extra
    try:
        import torch
    except ImportError:
        return None
    return torch
