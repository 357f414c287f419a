"""Training: the shared engine for plain runs and sweeps, a mesh step for sharded runs.

*Plain and swept runs* go through :func:`sgdjax.engine.trajectory.make_trajectory` on the flat
parameter vector: the engine's sampler draws block indices of the packed corpus, one engine step
is one micro-batch, and the update rule is ``MultiSteps(clip -> optimizer(schedule))``, so the
optimizer (and its schedule) advances once per ``grad_accum`` micro-batches exactly as HF's
Trainer does. Runs that differ only in seed and learning rate are ``vmap``-ed in one compiled call
(a plain run is the one-run case).

*Sharded runs* (data parallel, ZeRO-1/2/3) need parameters, gradients and optimizer state as
pytrees whose leaves carry their own ``NamedSharding`` and sharding constraints placed between
the micro-batch gradients and the update (reduce-scatter for ZeRO-2/3, gathers of the updated
parameters for ZeRO-1); the engine's flat vector cannot express a per-tensor layout and has no
place for those constraints. So :func:`make_sharded_segment` is one jitted ``lax.scan`` over
optimizer steps, each an inner scan over the micro-batches, reusing the same loss, optimizer,
schedule and sampler (with the same keys it draws exactly the batches of the engine path, which
the tests use to check that both paths agree). ZeRO-3's per-layer gathers live in the model
(``Plan.use_params``); validation reuses the engine's ``evaluate`` between segments.

Budgets: ``max_steps`` optimizer steps and/or ``max_seconds`` of wall clock (compilation
included, as the seed's 30-minute callback counted it), checked between compiled segments.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgdjax.data.sampling import Sampler, make_sampler
from sgdjax.engine.trajectory import Data, Recorder, evaluate, make_trajectory
from sgdjax.errors import ConfigError
from sgdjax.lm.config import LMConfig, segment_length
from sgdjax.lm.data import Corpus
from sgdjax.lm.loss import EngineLoss, eval_sums, flat_loss, tree_loss
from sgdjax.lm.optim import accumulate, on_pytree, optimizer
from sgdjax.lm.schedules import make_schedule
from sgdjax.lm.sharding import Plan, make_plan, state_bytes_per_device
from sgdjax.models.qwen3 import Qwen3

# fold_in streams of the setup seed
INIT_STREAM, DATA_STREAM, GENERATE_STREAM = 0, 1, 2
# validation blocks per slice, in both paths (the same slices give the same rounding)
VAL_BATCH = 64

# (optimizer steps done, {name: [R, ...] numpy records of the segment}) after each segment
SegmentHook = Callable[[int, dict[str, np.ndarray]], None]


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def init_params(model: Qwen3, seed: int, param_dtype: str = "float32") -> Any:
    """The initial parameters of a run with setup seed ``seed``."""
    params, _ = model.init(stream_key(seed, INIT_STREAM), jnp.dtype(param_dtype))
    return params


def sampler_for(cfg: LMConfig, corpus: Corpus, global_micro_batch: int) -> Sampler:
    n = corpus.train.tokens.shape[0]
    if global_micro_batch > n:
        raise ConfigError(
            f"a micro-batch of {global_micro_batch} sequences needs at least that many training "
            f"blocks, but the corpus gives {n} of seq_len+1={cfg.data.seq_len + 1} tokens; lower "
            "train.batch_size (or parallel.devices) or data.seq_len, or use a longer text."
        )
    return make_sampler(cfg.train.sampler, n, global_micro_batch)


def horizon(cfg: LMConfig, n_train_blocks: int) -> int:
    """Optimizer steps the schedules refer to: the step budget, or one epoch (HF's choice)."""
    if cfg.schedule.horizon == "budget" and cfg.train.max_steps is not None:
        return int(cfg.train.max_steps)
    return max(1, n_train_blocks // cfg.global_batch)


def update_rule(cfg: LMConfig, model: Qwen3, steps: int, *, flat: bool
                ) -> Callable[[jax.Array], optax.GradientTransformation]:
    """``lr -> transform``: clip + optimizer with the schedule (``flat``: on the flat vector,
    with gradient accumulation; else on the pytree, accumulation done by the caller)."""

    def rule(lr: jax.Array) -> optax.GradientTransformation:
        opt = optimizer(cfg.optim, make_schedule(cfg.schedule, lr, steps))
        if not flat:
            return opt
        if cfg.optim.name == "adafactor":
            # Elementwise optimizers (AdamW) are the same on the flat vector; Adafactor's
            # factored moments need the matrices.
            opt = on_pytree(opt, model.unflatten, model.flatten)
        return accumulate(opt, cfg.train.grad_accum)

    return rule


def lr_values(cfg: LMConfig, lr: float, steps: int, upto: int) -> np.ndarray:
    """The learning rate of optimizer steps ``0 .. upto-1``."""
    sched = make_schedule(cfg.schedule, lr, steps)
    return np.asarray(jax.jit(jax.vmap(sched))(jnp.arange(upto)), np.float64)


@dataclass
class Budget:
    """Stops after ``max_steps`` optimizer steps or ``max_seconds`` of wall clock; seconds spent
    compiling count unless ``count_compile`` is False (then ``compile_s`` is subtracted).

    The clock is read between segments only, so a run ends with the first segment that reaches
    the deadline; the first segment always runs (like the step HF's per-step callback lets
    finish), so a run under any budget reports something."""

    max_steps: int | None
    max_seconds: float | None
    count_compile: bool = True
    compile_s: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def next_length(self, done: int, seg: int) -> int:
        used = self.elapsed - (0.0 if self.count_compile else self.compile_s)
        if done and self.max_seconds is not None and used >= self.max_seconds:
            return 0
        if self.max_steps is None:
            return seg
        return max(0, min(seg, self.max_steps - done))

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start


class _Compiled:
    """Compiled callables by segment length, with the time spent compiling."""

    def __init__(self, build: Callable[[int], Callable[..., Any]], use_jit: bool = True):
        self.build, self.use_jit = build, use_jit
        self.fns: dict[int, Callable[..., Any]] = {}
        self.compile_s = 0.0

    def __call__(self, n: int, *args: Any) -> Any:
        if n not in self.fns:
            fn = self.build(n)
            if self.use_jit:
                t0 = time.perf_counter()
                fn = fn.lower(*args).compile()
                self.compile_s += time.perf_counter() - t0
            self.fns[n] = fn
        if self.use_jit:
            return self.fns[n](*args)
        with jax.disable_jit():
            return self.fns[n](*args)


# --------------------------------------------------------------------------------------------
# plain runs and sweeps: the engine


@dataclass
class FlatResult:
    """R runs trained together (R = 1 for a plain run)."""

    w: np.ndarray  # [R, P] final flat parameters
    loss: np.ndarray  # [R, steps] training loss per optimizer step (mean of its micro-batches)
    val_steps: np.ndarray  # [V] optimizer steps after which validation ran
    val_loss: np.ndarray  # [R, V]
    steps: int
    diverged_at: np.ndarray  # [R] optimizer step, -1 if finite
    wall_s: float
    compile_s: float
    tokens: int  # tokens processed per run

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second of all runs together, compilation excluded."""
        run_s = max(self.wall_s - self.compile_s, 1e-9)
        return self.tokens * self.w.shape[0] / run_s


def engine_data(cfg: LMConfig, corpus: Corpus) -> Data:
    val_n = corpus.val.tokens.shape[0]
    if cfg.train.eval_sequences is not None:
        val_n = min(val_n, cfg.train.eval_sequences)
    return Data(jnp.asarray(corpus.train.tokens), jnp.asarray(corpus.train.mask),
                jnp.asarray(corpus.val.tokens[:val_n]), jnp.asarray(corpus.val.mask[:val_n]))


def train_flat(
    cfg: LMConfig,
    model: Qwen3,
    corpus: Corpus,
    *,
    seeds: Sequence[int],
    lrs: Sequence[float],
    on_segment: SegmentHook | None = None,
    progress: Any = None,
) -> FlatResult:
    """Train ``len(seeds)`` runs (seed r, lr r) in one vmapped, segmented engine call.

    Run r starts from ``init_params(model, seeds[r])`` and draws its batches from
    ``stream_key(seeds[r], DATA_STREAM)``. ``progress.update(n)`` receives optimizer steps."""
    if len(seeds) != len(lrs) or not seeds:
        raise ValueError("seeds and lrs must be non-empty and of equal length")
    t, g = cfg.train, cfg.train.grad_accum
    sampler = sampler_for(cfg, corpus, t.batch_size)
    steps_h = horizon(cfg, corpus.train.tokens.shape[0])
    rule = update_rule(cfg, model, steps_h, flat=True)
    loss = flat_loss(model)
    seg = segment_length(cfg)
    recorder = (Recorder(val_every=t.eval_every * g, val_batch=VAL_BATCH) if t.eval_every
                else Recorder())

    def build(n_opt: int) -> Callable[..., Any]:
        # Segments start at multiples of eval_every, so validation falls on the same global
        # steps whatever the segmentation (a short last segment validates where it reaches one).
        run = make_trajectory(loss, sampler, n_opt * g, recorder, eval_loss=loss,
                              update_rule=rule)
        batched = jax.vmap(run, in_axes=(0, None, 0, 0, None, None, 0))
        return jax.jit(batched) if t.jit else batched

    keys = jnp.stack([stream_key(s, DATA_STREAM) for s in seeds])
    lr_arr = jnp.asarray(lrs, jnp.float32)
    w = jnp.stack([model.flatten(init_params(model, s, cfg.model.param_dtype)) for s in seeds])
    opt_state = jax.jit(jax.vmap(lambda w_, lr: rule(lr).init(w_)))(w, lr_arr)
    data = engine_data(cfg, corpus)
    fns = _Compiled(build, use_jit=t.jit)
    budget = Budget(t.max_steps, t.max_seconds, t.count_compile)

    losses: list[np.ndarray] = []
    val_losses: list[np.ndarray] = []
    val_steps: list[int] = []
    diverged = np.full(len(seeds), -1)
    done = 0
    while (n := budget.next_length(done, seg)) > 0:
        traj = fns(n, w, {}, keys, lr_arr, data, jnp.int32(done * g), opt_state)
        budget.compile_s = fns.compile_s
        w, opt_state = traj.params, traj.opt_state
        rec = jax.tree.map(np.asarray, traj.records)
        step_loss = rec["loss"].reshape(len(seeds), n, g).mean(axis=2)
        losses.append(step_loss)
        seg_records = {"loss": step_loss}
        if "val_loss" in rec:
            k = rec["val_loss"].shape[1]
            val_losses.append(rec["val_loss"])
            val_steps.extend(done + t.eval_every * (i + 1) for i in range(k))
            seg_records["val_loss"] = rec["val_loss"]
        div = np.asarray(traj.diverged_at)
        newly = (diverged < 0) & (div >= 0)
        diverged[newly] = div[newly] // g
        done += n
        if progress is not None:
            progress.update(n)
        if on_segment is not None:
            on_segment(done, seg_records)
        if np.all(diverged >= 0):
            break
    wall = budget.elapsed
    return FlatResult(
        w=np.asarray(w), loss=np.concatenate(losses, axis=1) if losses else
        np.zeros((len(seeds), 0)),
        val_steps=np.asarray(val_steps, np.int64),
        val_loss=np.concatenate(val_losses, axis=1) if val_losses else
        np.zeros((len(seeds), 0)),
        steps=done, diverged_at=diverged, wall_s=wall, compile_s=fns.compile_s,
        tokens=done * cfg.global_batch * cfg.data.seq_len,
    )


def evaluate_flat(model: Qwen3, w: np.ndarray | jax.Array, tokens: np.ndarray,
                  mask: np.ndarray, batch: int = 64) -> np.ndarray:
    """Token-weighted validation loss of each row of ``w [R, P]`` (vmapped)."""
    total, count, _ = _vmapped_eval(model, batch)(jnp.asarray(w), jnp.asarray(tokens),
                                                  jnp.asarray(mask))
    return np.asarray(total) / np.maximum(np.asarray(count), 1.0)


@functools.lru_cache(maxsize=16)
def _vmapped_eval(model: Qwen3, batch: int) -> Callable[..., Any]:
    # One compiled evaluation per (model, batch) and shapes, reused by every sweep group.
    return jax.jit(jax.vmap(lambda v, x, m: eval_sums(model, model.unflatten(v), x, m, batch),
                            in_axes=(0, None, None)))


# --------------------------------------------------------------------------------------------
# sharded runs: one jitted scan on a mesh


def sharded_loss(model: Qwen3, plan: Plan) -> EngineLoss:
    """The engine-style loss of the parameter pytree as a sharded step computes it: ZeRO-3
    gathers each module's weights inside it (``plan.use_params``); the replicated modes pin the
    parameters as replicated, which costs nothing but keeps the sharded gradient buffer's or
    optimizer state's layout from propagating into the model's matmuls."""
    loss = tree_loss(model, plan.use_params)
    if plan.use_params is not None:
        return loss

    def pinned(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        return loss(jax.lax.with_sharding_constraint(params, plan.replicated_params), state, x, y)

    return pinned


def make_sharded_eval(model: Qwen3, plan: Plan) -> Callable[..., jax.Array]:
    """``val_loss(params, val_x, val_y)``: the engine's validation (same slices, same
    example-weighted mean) of sharded parameters, the validation blocks split over the mesh."""
    loss = sharded_loss(model, plan)

    def split(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        if x.shape[0] % plan.n == 0:  # a short last slice that does not divide stays whole
            x = jax.lax.with_sharding_constraint(x, plan.batch)
            y = jax.lax.with_sharding_constraint(y, plan.batch)
        return loss(params, state, x, y)

    def val_loss(params: Any, val_x: jax.Array, val_y: jax.Array) -> jax.Array:
        return evaluate(split, params, None, val_x, val_y, VAL_BATCH)[0]

    rep = plan.replicated
    return jax.jit(val_loss, in_shardings=(plan.params, rep, rep), out_shardings=rep)


def make_sharded_segment(model: Qwen3, opt: optax.GradientTransformation, plan: Plan,
                         grad_accum: int) -> Callable[..., Any]:
    """``segment(params, opt_state, tokens, mask, idx [n, G, B], start, diverged_at) ->
    (params, opt_state, diverged_at, {"loss": [n], "grad_norm": [n]})``, jitted with the plan's
    layouts. The micro-batches of one step are summed into a float32 gradient buffer laid out as
    the plan says (replicated: all-reduce; sharded: reduce-scatter), averaged, clipped and
    applied; a non-finite step freezes the run like the engine does."""
    constrain = jax.lax.with_sharding_constraint
    loss_of = sharded_loss(model, plan)

    def loss_fn(params: Any, x: jax.Array, m: jax.Array) -> jax.Array:
        return loss_of(params, None, x, m)[0]

    grad_fn = jax.value_and_grad(loss_fn)

    def segment(params: Any, opt_state: Any, tokens: jax.Array, mask: jax.Array,
                idx: jax.Array, start: jax.Array, diverged_at: jax.Array) -> Any:
        def step(carry: tuple, inp: tuple) -> tuple[tuple, dict[str, jax.Array]]:
            params, ostate, diverged_at = carry
            idx_g, t = inp

            def micro(acc: tuple, idx_b: jax.Array) -> tuple[tuple, None]:
                gsum, lsum = acc
                x = constrain(tokens[idx_b], plan.batch)
                m = constrain(mask[idx_b], plan.batch)
                loss, g = grad_fn(params, x, m)
                g = constrain(jax.tree.map(lambda a: a.astype(jnp.float32), g), plan.grads)
                gsum = constrain(jax.tree.map(jnp.add, gsum, g), plan.grads)
                return (gsum, lsum + loss), None

            zeros = constrain(jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), params),
                              plan.grads)
            (gsum, lsum), _ = jax.lax.scan(micro, (zeros, jnp.float32(0)), idx_g)
            grads = jax.tree.map(lambda a, p: (a / grad_accum).astype(p.dtype), gsum, params)
            loss = lsum / grad_accum
            updates, new_ostate = opt.update(grads, ostate, params)
            new_ostate = constrain(new_ostate, plan.opt_state)
            new_params = constrain(optax.apply_updates(params, updates), plan.params)
            already = diverged_at >= 0
            bad = ~(jnp.isfinite(loss) & jnp.all(jnp.stack(
                [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(new_params)])))
            diverged_at = jnp.where(~already & bad, t, diverged_at)
            frozen = diverged_at >= 0
            keep = lambda old, new: jnp.where(frozen, old, new)  # noqa: E731
            params = jax.tree.map(keep, params, new_params)
            ostate = jax.tree.map(keep, ostate, new_ostate)
            out = {"loss": jnp.where(already, jnp.nan, loss),
                   "grad_norm": jnp.where(already, jnp.nan, optax.tree.norm(grads))}
            return (params, ostate, diverged_at), out

        n = idx.shape[0]
        steps = start + jnp.arange(n, dtype=jnp.int32)
        (params, opt_state, diverged_at), recs = jax.lax.scan(
            step, (params, opt_state, diverged_at), (idx, steps))
        return params, opt_state, diverged_at, recs

    rep = plan.replicated
    return jax.jit(
        segment,
        in_shardings=(plan.params, plan.opt_state, rep, rep, rep, rep, rep),
        out_shardings=(plan.params, plan.opt_state, rep, rep),
        donate_argnums=(0, 1),
    )


@dataclass
class ShardedResult:
    params: Any  # pytree of jax.Arrays laid out as the plan says (see tree_to_flat)
    loss: np.ndarray  # [steps]
    val_steps: np.ndarray  # [V] optimizer steps after which validation ran
    val_loss: np.ndarray  # [V]
    steps: int
    diverged_at: int
    wall_s: float
    compile_s: float
    tokens: int
    memory: dict[str, int]  # analytic bytes per device (params, grads, opt_state, total)
    xla_memory: dict[str, int]  # XLA's compiled memory analysis of one segment, per device
    device_memory_peak: int | None  # measured peak bytes on device 0 (GPU), else None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s - self.compile_s, 1e-9)


@dataclass(frozen=True)
class ShardedSetup:
    """What a sharded run compiles, from shapes alone."""

    plan: Plan
    opt: optax.GradientTransformation
    params_shape: Any  # pytree of ShapeDtypeStruct
    opt_shape: Any
    segment: Any  # make_sharded_segment's jitted function


def sharded_setup(cfg: LMConfig, model: Qwen3, mesh: Any, mode: str, n_train_blocks: int,
                  lr: float | None = None) -> ShardedSetup:
    opt = update_rule(cfg, model, horizon(cfg, n_train_blocks), flat=False)(
        jnp.float32(cfg.optim.lr if lr is None else lr))
    # The initial point's shapes do not depend on the seed.
    params_shape = jax.eval_shape(lambda: init_params(model, 0, cfg.model.param_dtype))
    opt_shape = jax.eval_shape(opt.init, params_shape)
    plan = make_plan(mesh, mode, params_shape, opt_shape)
    return ShardedSetup(plan, opt, params_shape, opt_shape,
                        make_sharded_segment(model, opt, plan, cfg.train.grad_accum))


def lower_sharded_segment(cfg: LMConfig, model: Qwen3, mesh: Any, mode: str,
                          n_train_blocks: int, steps: int = 1) -> Any:
    """A sharded run's segment of ``steps`` optimizer steps lowered for abstract inputs
    (nothing is allocated), e.g. to read the collectives of ``.compile().as_text()``."""
    setup = sharded_setup(cfg, model, mesh, mode, n_train_blocks)
    plan, rep = setup.plan, setup.plan.replicated

    def abstract(shape: tuple[int, ...], dtype: Any, sharding: Any = rep) -> Any:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def like(tree: Any, shardings: Any) -> Any:
        return jax.tree.map(lambda a, s: abstract(a.shape, a.dtype, s), tree, shardings)

    block = (n_train_blocks, cfg.data.seq_len + 1)
    micro = cfg.train.batch_size * plan.n
    return setup.segment.lower(
        like(setup.params_shape, plan.params), like(setup.opt_shape, plan.opt_state),
        abstract(block, jnp.int32), abstract(block, jnp.bool_),
        abstract((steps, cfg.train.grad_accum, micro), jnp.int32), abstract((), jnp.int32),
        abstract((), jnp.int32))


def train_sharded(
    cfg: LMConfig,
    model: Qwen3,
    corpus: Corpus,
    mesh: Any,
    mode: str,
    *,
    seed: int | None = None,
    lr: float | None = None,
    on_segment: SegmentHook | None = None,
    progress: Any = None,
) -> ShardedResult:
    """One run sharded over ``mesh`` (global micro-batch = devices x ``train.batch_size``),
    for the budget of ``cfg.train``. ``cfg.parallel.devices`` should equal the mesh size (it
    sets the global batch the epoch horizon refers to). Validation runs after every
    ``train.eval_every`` steps on the blocks, slices and loss of :func:`train_flat`'s, so both
    paths give the same curve; each compiled segment therefore ends at a validation step."""
    seed = cfg.seed if seed is None else seed
    n_dev = int(mesh.devices.size)
    t, g = cfg.train, cfg.train.grad_accum
    global_micro = t.batch_size * n_dev
    sampler = sampler_for(cfg, corpus, global_micro)
    setup = sharded_setup(cfg, model, mesh, mode, corpus.train.tokens.shape[0], lr)
    plan, rep = setup.plan, setup.plan.replicated
    params = jax.jit(lambda: init_params(model, seed, cfg.model.param_dtype),
                     out_shardings=plan.params)()
    opt_state = jax.jit(setup.opt.init, out_shardings=plan.opt_state)(params)
    data = jax.device_put(engine_data(cfg, corpus), rep)
    data_key = stream_key(seed, DATA_STREAM)
    segments = _Compiled(lambda n: setup.segment)
    val_loss = _Compiled(lambda _: make_sharded_eval(model, plan))
    budget = Budget(t.max_steps, t.max_seconds, t.count_compile)

    xla_memory: dict[str, int] = {}
    diverged = jnp.int32(-1)
    losses: list[np.ndarray] = []
    val_steps: list[int] = []
    val_losses: list[float] = []
    done = 0
    while (n := budget.next_length(done, t.eval_every or segment_length(cfg))) > 0:
        idx = sampler.batches(data_key, done * g, n * g).reshape(n, g, global_micro)
        params, opt_state, diverged, recs = segments(
            n, params, opt_state, data.train_x, data.train_y, jax.device_put(idx, rep),
            jax.device_put(jnp.int32(done), rep), jax.device_put(diverged, rep))
        xla_memory = xla_memory or _memory_analysis(segments.fns[n])
        losses.append(np.asarray(recs["loss"]))
        done += n
        records = {"loss": losses[-1][None]}
        if t.eval_every and done % t.eval_every == 0:
            value = float(val_loss(0, params, data.val_x, data.val_y))
            val_steps.append(done)
            val_losses.append(float("nan") if int(diverged) >= 0 else value)  # as the engine
            records["val_loss"] = np.array([val_losses[-1:]])
        budget.compile_s = segments.compile_s + val_loss.compile_s
        if progress is not None:
            progress.update(n)
        if on_segment is not None:
            on_segment(done, records)
        if int(diverged) >= 0:
            break
    jax.block_until_ready(params)
    return ShardedResult(
        params=params, loss=np.concatenate(losses) if losses else np.zeros(0),
        val_steps=np.asarray(val_steps, np.int64), val_loss=np.asarray(val_losses, np.float64),
        steps=done, diverged_at=int(diverged), wall_s=budget.elapsed,
        compile_s=budget.compile_s, tokens=done * g * global_micro * cfg.data.seq_len,
        memory=state_bytes_per_device(setup.params_shape, setup.opt_shape, mode, n_dev),
        xla_memory=xla_memory, device_memory_peak=_peak_memory(mesh),
    )


def _memory_analysis(compiled: Any) -> dict[str, int]:
    """Per-device bytes XLA planned for one compiled segment (empty when unavailable)."""
    with contextlib.suppress(Exception):
        ma = compiled.memory_analysis()
        if ma is not None:
            return {"arguments": int(ma.argument_size_in_bytes),
                    "outputs": int(ma.output_size_in_bytes),
                    "temporaries": int(ma.temp_size_in_bytes),
                    "aliased": int(ma.alias_size_in_bytes)}
    return {}


def _peak_memory(mesh: Any) -> int | None:
    """Measured peak bytes in use on the mesh's first device (GPU backends report it)."""
    with contextlib.suppress(Exception):
        stats = mesh.devices.flat[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    return None


def tree_to_flat(model: Qwen3, params: Any) -> np.ndarray:
    """The flat vector of a parameter pytree (numpy, or arrays laid out on a mesh)."""
    return np.asarray(model.flatten(jax.tree.map(jnp.asarray, jax.device_get(params))))


__all__ = ["DATA_STREAM", "GENERATE_STREAM", "INIT_STREAM", "VAL_BATCH", "Budget", "FlatResult",
           "ShardedResult", "ShardedSetup", "engine_data", "evaluate_flat", "horizon",
           "init_params", "lower_sharded_segment", "lr_values", "make_sharded_eval",
           "make_sharded_segment", "sampler_for", "sharded_loss", "sharded_setup", "stream_key",
           "train_flat", "train_sharded", "tree_to_flat", "update_rule"]
