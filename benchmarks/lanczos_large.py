"""Top-20 Hessian eigenvalues of a model with >= 1 M parameters by Lanczos over HVPs.

The acceptance question: does ``sgdjax.analysis.hessian.top_eigenpairs`` (full
re-orthogonalisation, so the whole ``[iters, P]`` basis is held) fit in memory for a
million-parameter model, and how long does it take? The model is the sgdjax MLP with the input
left at 28x28 (784 features) and one hidden layer wide enough to reach ``--params-target``
(``P = 795·hidden + 10``; 1258 hidden units give 1,000,120 parameters). The loss is the mean
cross-entropy on a batch of MNIST test images when ``$SGDJAX_DATA_DIR`` holds the test split,
otherwise on random images and labels. Everything runs in float32.

Printed: parameter count, data source, compile and run wall time, HVP count, peak resident memory
(``resource.getrusage``), the basis size, the 20 eigenvalues and the residual
``‖Hv − λv‖ / |λ|`` of each Ritz pair (20 extra HVPs).

Usage::

    python benchmarks/lanczos_large.py [--params-target N] [--iters K] [--k 20] [--batch B]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

# Runnable as a plain script from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sgdjax.analysis.hessian import loss_at, make_hvp, top_eigenpairs  # noqa: E402
from sgdjax.models import build_model  # noqa: E402

MLP_IN = 784  # 28x28 images, no downsampling
MLP_CLASSES = 10


def hidden_for(target: int) -> int:
    """Hidden width of a 784 -> h -> 10 MLP with at least ``target`` parameters."""
    per_unit = MLP_IN + 1 + MLP_CLASSES  # weights in, bias, weights out
    return max(1, math.ceil((target - MLP_CLASSES) / per_unit))


def load_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` MNIST test images (when the data directory has them) or random ones."""
    if os.environ.get("SGDJAX_DATA_DIR"):
        root = Path(os.environ["SGDJAX_DATA_DIR"])
        if (root / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            from sgdjax.data.mnist import load_mnist

            split = load_mnist(f"test[:{n}]", root=root)
            return split.x, split.y, f"MNIST test[:{n}] from {root}"
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, MLP_CLASSES, n).astype(np.int32)
    return x, y, f"{n} random images and labels"


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--params-target",
        type=int,
        default=1_000_000,
        help="minimum parameter count (default 1,000,000)",
    )
    ap.add_argument("--iters", type=int, default=100, help="Lanczos iterations (default 100)")
    ap.add_argument("--k", type=int, default=20, help="eigenpairs (default 20)")
    ap.add_argument("--batch", type=int, default=1000, help="images in the loss (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model = build_model("mlp", hidden=hidden_for(args.params_target), downsample=28)
    P = model.num_params
    params, state = model.init(jax.random.PRNGKey(args.seed), jnp.float32)
    w = model.flatten(params)
    x_raw, y, source = load_batch(args.batch, args.seed)
    x = model.featurize(jnp.asarray(x_raw, jnp.float32))
    y = jnp.asarray(y)
    basis_gib = args.iters * P * 4 / 2**30
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: MLP 784 -> {model.hidden} -> 10, P = {P:,} parameters, float32")
    print(f"data: {source}")
    print(
        f"Lanczos: top-{args.k}, {args.iters} iterations, full re-orthogonalisation, "
        f"basis {args.iters} x {P:,} floats = {basis_gib:.2f} GiB"
    )

    def run(w: jax.Array, state: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
        mv = make_hvp(loss_at(model, state, x, y, bn_mode="batch"), w)
        vals, vecs = top_eigenpairs(
            mv,
            P,
            args.k,
            num_iters=args.iters,
            key=jax.random.PRNGKey(args.seed + 1),
            dtype=w.dtype,
        )
        # residual check: one more HVP per Ritz vector, sequentially to bound memory
        hv = jax.lax.map(mv, vecs)
        resid = jnp.linalg.norm(hv - vals[:, None] * vecs, axis=1) / jnp.abs(vals)
        return vals, resid

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(w, state, x, y).compile()
    t1 = time.perf_counter()
    vals, resid = jax.block_until_ready(compiled(w, state, x, y))
    t2 = time.perf_counter()
    vals, resid = np.asarray(vals), np.asarray(resid)
    hvps = args.iters + args.k

    print(
        f"compile: {t1 - t0:.1f} s; run: {t2 - t1:.1f} s "
        f"({hvps} HVPs: {args.iters} Lanczos + {args.k} residual checks; "
        f"{(t2 - t1) / hvps * 1e3:.0f} ms per HVP incl. re-orthogonalisation)"
    )
    print(f"peak RSS: {peak_rss_gib():.2f} GiB")
    print(" rank   eigenvalue   ‖Hv−λv‖/|λ|")
    for i, (lam, r) in enumerate(zip(vals, resid, strict=True)):
        print(f"{i + 1:5d} {lam:12.6g}   {r:.2e}")
    print(f"max residual over the top {args.k}: {resid.max():.2e}")
    return {
        "params": P,
        "compile_s": t1 - t0,
        "run_s": t2 - t1,
        "hvps": hvps,
        "peak_rss_gib": peak_rss_gib(),
        "eigvals": vals,
        "residuals": resid,
    }


if __name__ == "__main__":
    main()
