"""The sgdjax side of each benchmark, the agreement checks against the PyTorch reference, and
the timing helpers.

A workload is (model, stage, dtype). For each one, both sides get identical inputs in this
process: the same initial parameters (sgdjax's ``to_state_dict`` loaded into the PyTorch model),
the same data, and the same batch indices (drawn with sgdjax's sampler and fed to the PyTorch
loop), so the two trajectories must agree number by number; the check runs on what both sides
computed. Timings exclude compilation (reported separately) and a warm-up call, and wait for
the results with ``block_until_ready``.

The stages follow the spec (§4): stage 1 = SGD training (losses + validation each epoch), stage 3
= SGD with the dense minibatch Hessian and the parameters recorded every step, stage 4 = many
independent SGD runs from one point with the parameters recorded every step and validation every
epoch (100 steps for MNIST, 74 for Shakespeare).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.data.sampling import make_sampler
from sgdjax.engine.ensemble import (
    MAX_CHUNK_CPU,
    global_chunk,
    run_chunks,
    run_keys,
    run_mesh,
    vmapped,
)
from sgdjax.engine.trajectory import Data, Recorder, make_trajectory
from sgdjax.models import build_model
from sgdjax.models.objective import make_loss_fn

MODELS = ("mlp", "cnn", "nanogpt")
STAGES = (4, 3, 1)
WORKLOADS = tuple(f"{m}-stage{s}" for s in STAGES for m in MODELS)
DTYPES = ("float32", "float64")
_JDT = {"float32": jnp.float32, "float64": jnp.float64}

#: The goals' dtypes: stage-4 ensembles of setups 1–3 (MNIST) in float64 and exp2 in float32;
#: stages 1 and 3 are float32 everywhere in the original.
DEFAULT_DTYPE = {"mlp-stage4": "float64", "cnn-stage4": "float64"}
#: Learning rates of the original's setups: stage 1 uses LR (0.1 MNIST, 0.01 Shakespeare); stages
#: 3/4 one entry of LRS_LIST (0.01 exp1, 0.001 exp2).
LR = {("mlp", 1): 0.1, ("cnn", 1): 0.1, ("nanogpt", 1): 0.01}
LR_CONT = {"mlp": 0.01, "cnn": 0.01, "nanogpt": 0.001}
#: Stage-4 samplers of the setups benchmarked: exp1 setup 1 (MLP, reshuffle), exp1 setup 3 (CNN,
#: replacement), exp2 setup 2 (NanoGPT, replacement). Stages 1 and 3 always reshuffle (exp1).
STAGE4_SAMPLER = {"mlp": "default", "cnn": "replacement", "nanogpt": "replacement"}
BATCH = 64
SEED = 42
#: Relative agreement tolerance, max|a - b| / max(1, max|b|), for trajectories computed with the
#: same inputs by two libraries (different summation orders, so float32 drifts by rounding).
TOL = {"float32": 1e-3, "float64": 1e-8}


@dataclass(frozen=True)
class Sizes:
    """How much work each side does for one workload."""

    runs: int = 1000  # stage 4: sgdjax runs timed (after one warm-up chunk)
    chunk: int = 250  # stage 4: runs per vmapped call
    ref_runs: int = 10  # stage 4: PyTorch runs timed (then extrapolated linearly)
    steps: int = 1111  # stage 4: steps per run
    hess_steps: int = 50  # stage 3: sgdjax trajectory length
    ref_hess_steps: int = 5  # stage 3: PyTorch steps timed
    train_steps: int = 2000  # stage 1: steps of the single run (both sides)
    val_every: int | None = None  # None: one epoch (100 MNIST, 74 Shakespeare)
    full_runs: int = 1000  # stage 4: ensemble size the extrapolations are stated for
    batch: int = BATCH  # minibatch size (64 in every setup; smaller only for smoke tests)
    n_val: int = 0  # validation examples used (0 = the whole validation split)
    warmup: bool = True  # time after an untimed warm-up call on each side (off: smoke tests)


#: Real sizes, chosen so that each side of each measurement takes about one to two minutes on
#: the 2-vCPU machine (measured per-step costs). Per-step costs are constant along a run, so the
#: CNN's stage-4 runs are cut to 300 steps (3 validations) to stay in that bound; its runs go in
#: one at a time, NanoGPT's 16 per device: the stage's CPU widths (``MAX_CHUNK_CPU``).
REAL: dict[str, Sizes] = {
    "mlp": Sizes(runs=1000, chunk=250, ref_runs=10, hess_steps=100, ref_hess_steps=20,
                 train_steps=5000),
    "cnn": Sizes(runs=8, chunk=MAX_CHUNK_CPU["cnn"], ref_runs=1, steps=300, hess_steps=50,
                 ref_hess_steps=2, train_steps=1000),
    "nanogpt": Sizes(runs=2 * MAX_CHUNK_CPU["nanogpt"], chunk=MAX_CHUNK_CPU["nanogpt"],
                     ref_runs=2, hess_steps=6, ref_hess_steps=3, train_steps=2000),
}
#: Smoke-test sizes: every code path (vmapped runs, validation, Hessians, both loops) on little
#: work. The batch and the validation set are small because the reference's row-by-row Hessians
#: of the CNN and NanoGPT cost seconds per step at batch 64.
QUICK = Sizes(runs=2, chunk=2, ref_runs=2, steps=30, hess_steps=2, ref_hess_steps=2,
              train_steps=30, val_every=10, full_runs=2, batch=8, n_val=256, warmup=False)


@dataclass
class Result:
    """One row of the table (and of the JSON file)."""

    workload: str
    model: str
    stage: int
    dtype: str
    unit: str  # "run-steps/s", "Hessians/s" or "steps/s"
    jax_rate: float
    torch_rate: dict[str, float]  # threads ("1", "2") -> rate
    ratio: float  # sgdjax / PyTorch with the first thread count
    compile_s: float
    flops_per_unit: float | None
    flops_source: str
    peak_flops: float
    pct_peak_jax: float | None
    pct_peak_torch: float | None
    max_abs_diff: dict[str, float]
    rel_diff: dict[str, float]
    tolerance: float
    agree: bool
    jax_units: float
    jax_seconds: float
    torch_units: float
    torch_seconds: float
    sizes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- timing helpers ----------------------------------------------------------------------------


def block(tree: Any) -> Any:
    """Wait for every array of ``tree`` (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    out = [0.0]
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - t0


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Ahead-of-time compile ``jax.jit(fn)`` for ``args``: (compiled executable, seconds)."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    with stopwatch() as t:
        compiled = jitted.lower(*args).compile()
    return compiled, t[0]


def _time_jax(compiled: Callable[..., Any], args: tuple[Any, ...], warmup: bool
              ) -> tuple[Any, float]:
    """(output, seconds) of one call of ``compiled``, after an untimed identical call when
    ``warmup`` (first-touch of the output buffers, thread-pool start-up)."""
    if warmup:
        block(compiled(*args))
    with stopwatch() as t:
        out = block(compiled(*args))
    return out, t[0]


def cost_flops(fn: Callable[..., Any], *args: Any) -> float | None:
    """FLOPs XLA's cost analysis assigns to one call of ``fn`` (None where unavailable).

    Loops (scan, while) are counted once, not per iteration, so callers apply it to loop-free
    pieces (one step, one Hessian, one validation pass) and multiply by the counts."""
    lowered = jax.jit(fn).lower(*args)
    try:
        ca = lowered.cost_analysis()  # of the unoptimised HLO: no compilation needed
    except Exception:  # noqa: BLE001 - not offered: ask the compiled executable
        try:
            ca = lowered.compile().cost_analysis()
        except Exception:  # noqa: BLE001 - a backend without cost analysis
            return None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else None
    flops = (ca or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def analytic_forward_flops(model: str, batch: int) -> float:
    """Rough forward FLOPs of one batch (multiply-adds × 2), the fallback of cost analysis."""
    if model == "mlp":
        return batch * (784 + 2 * (36 * 8 + 8 * 10) + 8 * 5)
    if model == "cnn":
        conv = 2 * 9 * 12 * 784
        return batch * (conv + 12 * 784 * 8 + 2 * (12 * 11 + 11 * 10))
    t, c, v = 16, 8, 25
    per_token = 2 * (c * 3 * c + c * c + 2 * c * c + c * v) + 4 * t * c + 30 * c
    return batch * t * per_token


# -- data and problems -------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Benchmarks never download: the loaders may only read what is already on disk."""
    old = os.environ.get("SGDJAX_OFFLINE")
    os.environ["SGDJAX_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SGDJAX_OFFLINE"]
        else:
            os.environ["SGDJAX_OFFLINE"] = old


_DATA_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = {}


def load_arrays(model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(train_x, train_y, val_x, val_y, source) as numpy arrays.

    MNIST: the official test split, ``test[:6400]`` for training and ``test[6400:]`` (3600
    images) for validation, when ``$SGDJAX_DATA_DIR`` holds it (the training-image file is not
    available offline); otherwise random images of the same shapes. Shakespeare: the exp2 windows
    (4736 train / 1248 val) when the text is available, else random tokens of the same shapes."""
    family = "shakespeare" if model == "nanogpt" else "mnist"
    if family in _DATA_CACHE:
        return _DATA_CACHE[family]
    rng = np.random.default_rng(SEED)
    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str] | None = None
    if family == "mnist":
        root = os.environ.get("SGDJAX_DATA_DIR")
        if root and os.path.isfile(os.path.join(root, "mnist", "t10k-images-idx3-ubyte.gz")):
            from sgdjax.data import load_mnist

            with _offline():
                train, val = load_mnist("test[:6400]"), load_mnist("test[6400:]")
            out = (train.x, train.y, val.x, val.y, "MNIST test split")
        else:
            out = (rng.random((6400, 1, 28, 28), dtype=np.float32),
                   rng.integers(0, 10, 6400).astype(np.int32),
                   rng.random((3600, 1, 28, 28), dtype=np.float32),
                   rng.integers(0, 10, 3600).astype(np.int32), "random images")
    else:
        try:
            from sgdjax.data import load_shakespeare

            with _offline():
                sh = load_shakespeare()
            out = (sh.train.x, sh.train.y, sh.val.x, sh.val.y, "tiny-shakespeare")
        except Exception:  # noqa: BLE001 - missing text (offline): same shapes, random tokens
            tokens = rng.integers(0, 25, 6000).astype(np.int32)
            win = np.lib.stride_tricks.sliding_window_view(tokens, 17)[:5984]
            x, y = np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])
            out = (x[:4736], y[:4736], x[4736:], y[4736:], "random tokens")
    _DATA_CACHE[family] = out
    return out


@dataclass
class Problem:
    """Everything both sides need for one (model, dtype): model, start point, data."""

    name: str
    dtype: str
    model: Any  # sgdjax model
    w0: jax.Array
    state0: Any
    state_dict: dict[str, np.ndarray]
    data: Data  # featurized, on the device
    raw: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    source: str
    train_loss: Callable[..., Any]
    eval_loss: Callable[..., Any]
    batch: int = BATCH

    @property
    def n_train(self) -> int:
        return int(self.raw[0].shape[0])

    @property
    def epoch(self) -> int:
        return self.n_train // self.batch

    def torch_data(self) -> Any:
        from benchmarks.torch_reference import TorchData

        return TorchData.from_numpy(*self.raw, dtype=self.dtype)

    def torch_model(self) -> Any:
        from benchmarks.torch_reference import build

        return build(self.name, self.state_dict, self.dtype)


def make_problem(name: str, dtype: str, batch: int = BATCH, n_val: int = 0) -> Problem:
    """The model at a PyTorch-default random initialisation (seed 42) and its data (the first
    ``n_val`` validation examples when ``n_val`` > 0)."""
    jdt = _JDT[dtype]
    model = build_model(name)
    params, state = model.init(jax.random.key(SEED), jdt)
    w0 = model.flatten(params)
    if w0.dtype != np.dtype(dtype):
        raise RuntimeError(f"sgdjax made {w0.dtype} parameters for {dtype}: x64 is not enabled")
    tx, ty, vx, vy, source = load_arrays(name)
    if n_val:
        vx, vy = vx[:n_val], vy[:n_val]

    def feats(x: np.ndarray) -> jax.Array:
        if np.issubdtype(x.dtype, np.integer):
            return jnp.asarray(x, jnp.int32)
        return model.featurize(jnp.asarray(x, jdt))  # the MLP's pooling, once per dataset

    data = Data(feats(tx), jnp.asarray(ty, jnp.int32), feats(vx), jnp.asarray(vy, jnp.int32))
    return Problem(name, dtype, model, w0, state, model.to_state_dict(params, state), data,
                   (tx, ty, vx, vy), source, make_loss_fn(model, train=True),
                   make_loss_fn(model, train=False), batch)


# -- FLOPs of the workload ---------------------------------------------------------------------


def _batch(p: Problem) -> tuple[jax.Array, jax.Array]:
    return p.data.train_x[:p.batch], p.data.train_y[:p.batch]


def step_flops(p: Problem) -> tuple[float, str]:
    """FLOPs of one SGD step (loss, gradient, update) on one batch."""
    xb, yb = _batch(p)
    grad = jax.value_and_grad(p.train_loss, has_aux=True)
    f = cost_flops(grad, p.w0, p.state0, xb, yb)
    if f is not None:
        return f + 2 * p.w0.size, "cost_analysis"
    return 3 * analytic_forward_flops(p.name, p.batch) + 2 * p.w0.size, "analytic"


def val_flops(p: Problem) -> float:
    """FLOPs of one validation pass over the whole validation set."""
    f = cost_flops(p.eval_loss, p.w0, p.state0, p.data.val_x, p.data.val_y)
    return f if f is not None else analytic_forward_flops(p.name, int(p.data.val_x.shape[0]))


def hessian_flops(p: Problem) -> float:
    """FLOPs of the dense minibatch Hessian (forward-over-reverse) of one batch."""
    xb, yb = _batch(p)
    hess = jax.hessian(lambda v, s: p.train_loss(v, s, xb, yb)[0])
    f = cost_flops(hess, p.w0, p.state0)
    # analytic: one Hessian-vector product costs about 4 forward passes, P of them
    return f if f is not None else 4 * p.w0.size * analytic_forward_flops(p.name, p.batch)


# -- agreement ---------------------------------------------------------------------------------


def compare(pairs: dict[str, tuple[Any, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Max absolute and relative (to max(1, max|reference|)) differences per quantity."""
    absd: dict[str, float] = {}
    reld: dict[str, float] = {}
    for key, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise AssertionError(f"{key}: sgdjax shape {a.shape} != reference shape {b.shape}")
        if a.size == 0:
            continue
        d = float(np.max(np.abs(a - b)))
        absd[key] = d if np.isfinite(d) else float("inf")
        reld[key] = absd[key] / max(1.0, float(np.max(np.abs(b))))
    return absd, reld


# -- the three stages --------------------------------------------------------------------------


@dataclass
class Measured:
    """Raw measurements of one workload before they become a :class:`Result`."""

    unit: str
    jax_units: float
    jax_seconds: float
    compile_s: float
    torch: dict[str, tuple[float, float]]  # threads -> (units, seconds)
    pairs: dict[str, tuple[Any, Any]]
    flops_per_unit: float
    flops_source: str
    notes: list[str]
    # FLOPs of what sgdjax executes when it is not the reference's algorithm (closed-form
    # Hessians); None: the same as ``flops_per_unit``
    jax_flops_per_unit: float | None = None


def _time_torch(threads: tuple[int, ...], run_once: Callable[[], Any], p: Problem,
                batches: np.ndarray, loader: str, warmup: bool = True
                ) -> tuple[dict[str, float], Any]:
    """Run the reference once per thread count; (threads -> seconds, first run's output).

    Each thread count is warmed up first with a few untimed SGD steps and one validation (the
    first calls of PyTorch's kernels and of the DataLoader pay one-off initialisation costs), as
    sgdjax's side is timed after a warm-up call."""
    import torch

    from benchmarks.torch_reference import set_threads, sgd_run

    before = torch.get_num_threads()
    seconds: dict[str, float] = {}
    first = None
    tdata = p.torch_data()
    few = np.asarray(batches).reshape(-1, p.batch)[:3]
    try:
        for n in threads:
            set_threads(n)
            if warmup:
                sgd_run(p.torch_model(), tdata, few, 0.0, val_every=3, val_batch=64,
                        record_params=True, loader=loader)
            with stopwatch() as t:
                out = run_once()
            seconds[str(n)] = t[0]
            if first is None:
                first = out
    finally:
        torch.set_num_threads(before)
    return seconds, first


def bench_stage4(p: Problem, sz: Sizes, threads: tuple[int, ...], loader: str) -> Measured:
    """Many runs: a vmapped chunk of runs (sgdjax) vs a sequential loop over runs (PyTorch)."""
    from benchmarks.torch_reference import sgd_run

    ve = sz.val_every or p.epoch
    lr = LR_CONT[p.name]
    sampler = make_sampler(STAGE4_SAMPLER[p.name], p.n_train, p.batch)
    traj = make_trajectory(p.train_loss, sampler, sz.steps,
                           Recorder(params_every=1, val_every=ve), eval_loss=p.eval_loss)
    # As the stage runs it: the run axis sharded over every local device (one CPU device per
    # core, see sgdjax.run.split_cpu), each device computing ``sz.chunk`` runs per call, and
    # every chunk's outputs brought to host memory (where the stage writes them to disk).
    mesh = run_mesh()
    chunk = global_chunk(min(sz.chunk, sz.runs), mesh)
    n_chunks = math.ceil(sz.runs / chunk)
    first = 1 if sz.warmup else 0
    n_all = chunk * (n_chunks + first)
    keys = run_keys(SEED, "many_runs", n_all)
    lrs = jnp.full((n_all,), lr, _JDT[p.dtype])
    fn = vmapped(traj, mesh)
    n_ref = min(sz.ref_runs, chunk)
    kept: dict[int, Any] = {}

    def keep_chunk0(c: int, rows: slice, out: Any) -> None:
        if c == 0:  # the runs the reference recomputes
            kept[0] = jax.tree.map(lambda a: np.array(a[:n_ref]), (out.records, out.params))

    # Chunk 0 is the warm-up call (compilation included) unless warm-up is off.
    with stopwatch() as t0:
        run_chunks(fn, p.w0, p.state0, keys, lrs, p.data, chunk, range(first),
                   keep_chunk0, mesh=mesh)
    with stopwatch() as t:
        run_chunks(fn, p.w0, p.state0, keys, lrs, p.data, chunk,
                   range(first, first + n_chunks), keep_chunk0, mesh=mesh)
    jax_seconds = t[0]
    compile_s = max(0.0, t0[0] - jax_seconds / n_chunks) if first else float("nan")
    warm_rec = kept.pop(0)

    batches = [np.asarray(sampler.batches(keys[r], 0, sz.steps)) for r in range(n_ref)]
    tdata = p.torch_data()
    val_batch = 512 if STAGE4_SAMPLER[p.name] == "replacement" and p.name != "nanogpt" else 64

    def reference() -> list[Any]:
        # as the original: every run starts from a fresh copy of the template parameters
        return [sgd_run(p.torch_model(), tdata, b, lr, val_every=ve, val_batch=val_batch,
                        record_params=True, loader=loader) for b in batches]

    seconds, ref = _time_torch(threads, reference, p, batches[0], loader, sz.warmup)
    rec, final = warm_rec
    pairs = {
        "weights": (rec["params"][:n_ref], np.stack([r.params for r in ref])),
        "loss": (rec["loss"][:n_ref], np.stack([r.loss for r in ref])),
        "val_loss": (rec["val_loss"][:n_ref], np.stack([r.val_loss for r in ref])),
        "final": (final[:n_ref], np.stack([r.final for r in ref])),
    }
    sf, src = step_flops(p)
    per_step = sf + val_flops(p) / ve
    units = chunk * n_chunks * sz.steps
    ref_units = n_ref * sz.steps
    jax_rate = units / jax_seconds
    torch_rate = ref_units / seconds[str(threads[0])]
    full = sz.full_runs * sz.steps
    notes = [
        f"sgdjax: {chunk * n_chunks} runs timed in {n_chunks} vmapped call(s) of {chunk} on "
        f"{1 if mesh is None else mesh.devices.size} device(s) after a warm-up call; "
        f"PyTorch: {n_ref} runs timed, the {sz.full_runs}-run time is "
        f"extrapolated linearly (a sequential loop: constant cost per run)",
        f"est. {sz.full_runs} runs x {sz.steps} steps: sgdjax {full / jax_rate:.0f} s, "
        f"PyTorch {full / torch_rate:.0f} s",
        f"sampler {STAGE4_SAMPLER[p.name]}, lr {lr}, val every {ve} steps",
    ]
    return Measured("run-steps/s", units, jax_seconds, compile_s,
                    {k: (ref_units, s) for k, s in seconds.items()}, pairs, per_step, src, notes)


def bench_stage3(p: Problem, sz: Sizes, threads: tuple[int, ...], loader: str) -> Measured:
    """Per-step dense minibatch Hessians: ``Recorder(hessian=True)`` vs row-by-row autograd.

    sgdjax computes them as stage 3 does: with the model's own Hessian (closed forms for the
    MLP and CNN, NanoGPT's structured one)."""
    from benchmarks.torch_reference import hessian_run

    lr = LR_CONT[p.name]
    sampler = make_sampler("default", p.n_train, p.batch)
    traj = make_trajectory(p.train_loss, sampler, sz.hess_steps,
                           Recorder(params_every=1, hessian=True),
                           hessian_fn=getattr(p.model, "loss_hessian", None))
    key = run_keys(SEED, "hessians", 1)[0]
    lr_a = jnp.asarray(lr, _JDT[p.dtype])
    compiled, compile_s = compile_timed(traj, p.w0, p.state0, key, lr_a, p.data)
    out, jax_seconds = _time_jax(compiled, (p.w0, p.state0, key, lr_a, p.data), sz.warmup)
    rec = jax.tree.map(np.asarray, out.records)
    del out

    n_ref = min(sz.ref_hess_steps, sz.hess_steps)
    batches = np.asarray(sampler.batches(key, 0, n_ref))
    tdata = p.torch_data()
    seconds, ref = _time_torch(
        threads, lambda: hessian_run(p.torch_model(), tdata, batches, lr, loader=loader),
        p, batches, loader, sz.warmup)
    pairs = {
        "hessians": (rec["hessian"][:n_ref], ref.hessian),
        "weights": (rec["params"][:n_ref], ref.params),
        "loss": (rec["loss"][:n_ref], ref.loss),
    }
    sf, src = step_flops(p)
    notes = [f"sgdjax: {sz.hess_steps} steps in one scan; PyTorch: {n_ref} steps, {p.w0.size} "
             f"double-backprop rows each; lr {lr}"]
    closed = getattr(p.model, "loss_hessian", None)
    jax_flops = None
    if closed is not None:
        xb, yb = _batch(p)
        if "chunk" in inspect.signature(closed).parameters:
            # all products in one loop iteration: cost analysis counts a loop body once
            closed = functools.partial(closed, chunk=int(p.w0.size))
        f = cost_flops(closed, p.w0, p.state0, xb, yb)
        jax_flops = None if f is None else f + sf
        notes.append("sgdjax's %peak counts the FLOPs of the model's own (closed-form or "
                     "structured) Hessian "
                     f"({'n/a' if f is None else f'{f:.3g}'}); PyTorch's those of autodiff")
    return Measured("Hessians/s", sz.hess_steps, jax_seconds, compile_s,
                    {k: (n_ref, s) for k, s in seconds.items()}, pairs,
                    hessian_flops(p) + sf, src, notes, jax_flops)


def bench_stage1(p: Problem, sz: Sizes, threads: tuple[int, ...], loader: str) -> Measured:
    """SGD training of a single run: losses every step, validation every epoch."""
    from benchmarks.torch_reference import sgd_run

    ve = sz.val_every or p.epoch
    lr = LR[(p.name, 1)]
    sampler = make_sampler("default", p.n_train, p.batch)
    traj = make_trajectory(p.train_loss, sampler, sz.train_steps, Recorder(val_every=ve),
                           eval_loss=p.eval_loss)
    key = run_keys(SEED, "sgd", 1)[0]
    lr_a = jnp.asarray(lr, _JDT[p.dtype])
    compiled, compile_s = compile_timed(traj, p.w0, p.state0, key, lr_a, p.data)
    out, jax_seconds = _time_jax(compiled, (p.w0, p.state0, key, lr_a, p.data), sz.warmup)
    rec, final = jax.tree.map(np.asarray, (out.records, out.params))
    del out

    batches = np.asarray(sampler.batches(key, 0, sz.train_steps))
    tdata = p.torch_data()
    seconds, ref = _time_torch(
        threads, lambda: sgd_run(p.torch_model(), tdata, batches, lr, val_every=ve,
                                 val_batch=64, record_params=False, loader=loader),
        p, batches, loader, sz.warmup)
    pairs = {"loss": (rec["loss"], ref.loss), "val_loss": (rec["val_loss"], ref.val_loss),
             "final": (final, ref.final)}
    sf, src = step_flops(p)
    notes = [f"one run of {sz.train_steps} steps on both sides; lr {lr}, val every {ve} steps"]
    return Measured("steps/s", sz.train_steps, jax_seconds, compile_s,
                    {k: (sz.train_steps, s) for k, s in seconds.items()}, pairs,
                    sf + val_flops(p) / ve, src, notes)


BENCH = {4: bench_stage4, 3: bench_stage3, 1: bench_stage1}


# -- driver ------------------------------------------------------------------------------------


def select(patterns: list[str] | None) -> list[str]:
    """Workload names matching any pattern (exact, glob, or substring: "mlp", "stage4",
    "mlp-stage4", "*-stage3"); all when ``patterns`` is empty."""
    if not patterns:
        return list(WORKLOADS)
    chosen = [w for w in WORKLOADS
              if any(w == p or fnmatch.fnmatch(w, p) or p in w for p in patterns)]
    if not chosen:
        raise SystemExit(f"no workload matches {patterns}; choose from {', '.join(WORKLOADS)}")
    return chosen


def dtypes_for(workload: str, mode: str) -> list[str]:
    """``mode``: "default" (the goal's dtype), "float32", "float64" or "both"."""
    if mode == "default":
        return [DEFAULT_DTYPE.get(workload, "float32")]
    if mode == "both":
        return list(DTYPES)
    return [mode]


def run_workload(workload: str, dtype: str, sizes: Sizes, threads: tuple[int, ...] = (1,),
                 loader: str = "dataloader", quick: bool = False) -> Result:
    """Measure one workload in one dtype (x64 must already be on for float64)."""
    from benchmarks.peak import peak_flops

    name, stage = workload.split("-stage")[0], int(workload.split("-stage")[1])
    p = make_problem(name, dtype, sizes.batch, sizes.n_val)
    m = BENCH[stage](p, sizes, threads, loader)
    absd, reld = compare(m.pairs)
    tol = TOL[dtype]
    jax_rate = m.jax_units / m.jax_seconds
    torch_rate = {k: u / s for k, (u, s) in m.torch.items()}
    first = torch_rate[str(threads[0])]
    peak = peak_flops(dtype, *((256, 2) if quick else (2048, 3)))["peak"]
    return Result(
        workload=workload, model=name, stage=stage, dtype=dtype, unit=m.unit,
        jax_rate=jax_rate, torch_rate=torch_rate, ratio=jax_rate / first,
        compile_s=m.compile_s, flops_per_unit=m.flops_per_unit, flops_source=m.flops_source,
        peak_flops=peak,
        pct_peak_jax=100 * jax_rate * (m.jax_flops_per_unit or m.flops_per_unit) / peak,
        pct_peak_torch=100 * first * m.flops_per_unit / peak,
        max_abs_diff=absd, rel_diff=reld, tolerance=tol,
        agree=all(v <= tol for v in reld.values()),
        jax_units=m.jax_units, jax_seconds=m.jax_seconds,
        torch_units=m.torch[str(threads[0])][0], torch_seconds=m.torch[str(threads[0])][1],
        sizes=asdict(sizes), notes=[f"data: {p.source}", *m.notes],
    )


def run_benchmarks(workloads: list[str], *, quick: bool = False, dtype_mode: str = "default",
                   threads: tuple[int, ...] = (1,), loader: str = "dataloader",
                   overrides: dict[str, int] | None = None,
                   on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run the selected workloads; ``overrides`` replace fields of :class:`Sizes`."""
    plan = [(w, d) for w in workloads for d in dtypes_for(w, dtype_mode)]
    if any(d == "float64" for _, d in plan):
        # float64 needs x64, switched on before the first array of the run; float32 workloads
        # create every array with an explicit dtype, so they are unaffected.
        jax.config.update("jax_enable_x64", True)
    results = []
    for w, d in plan:
        sz = QUICK if quick else REAL[w.split("-stage")[0]]
        if overrides:
            sz = replace(sz, **overrides)
        r = run_workload(w, d, sz, threads, loader, quick)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results


# -- presentation ------------------------------------------------------------------------------


def _rate(x: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def format_table(results: list[Result], threads: tuple[int, ...] = (1,)) -> str:
    """A plain-text table with one row per result, then the notes."""
    head = ["workload", "dtype", "unit", "sgdjax"]
    head += [f"torch {n}t" for n in threads]
    head += ["ratio", "%peak jax", "%peak torch", "max|diff|", "agree", "compile s"]
    rows = []
    for r in results:
        row = [r.workload, r.dtype, r.unit, _rate(r.jax_rate)]
        row += [_rate(r.torch_rate[str(n)]) if str(n) in r.torch_rate else "-" for n in threads]
        row += [f"{r.ratio:.1f}x",
                f"{r.pct_peak_jax:.2f}" if r.pct_peak_jax is not None else "n/a",
                f"{r.pct_peak_torch:.3f}" if r.pct_peak_torch is not None else "n/a",
                f"{max(r.max_abs_diff.values(), default=0.0):.1e}",
                "ok" if r.agree else "FAIL", f"{r.compile_s:.1f}"]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    for r in results:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in r.max_abs_diff.items())
        lines.append(f"{r.workload} {r.dtype}: max|diff| {diffs} (rel. tol {r.tolerance:g}); "
                     f"{r.flops_per_unit:.3g} FLOP per {r.unit[:-3]} ({r.flops_source}); "
                     f"peak {r.peak_flops / 1e9:.0f} GFLOP/s")
        for note in r.notes:
            lines.append(f"    {note}")
    return "\n".join(lines)
