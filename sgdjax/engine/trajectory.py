"""One training trajectory as a single ``lax.scan``.

Every stage of every study is this computation with different ingredients: a loss over the flat
parameter vector, a dataset held on the device, a sampler that turns a key into each step's batch
indices, an optax update rule, and a :class:`Recorder` saying what to keep from each step. GD is
the same function with the full-batch sampler. ``vmap`` of :func:`make_trajectory`'s result over
keys and learning rates gives an ensemble or a sweep (see ``engine/ensemble.py``).

Conventions (those of the original study):

* every per-step record is taken *before* the update of that step (loss, parameters, gradient
  norm, Hessian of the same minibatch);
* validation runs *after* every ``val_every``-th update, i.e. at the parameters reached after
  steps ``val_every, 2·val_every, ...``;
* a run that produces a non-finite loss or parameters is frozen at its last finite point; every
  record from the step after that on is NaN, and ``diverged_at`` holds that step (-1 if never).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgdjax.analysis.hessian import dense_hessian
from sgdjax.data.sampling import Sampler
from sgdjax.slices import map_slices

# f(w_flat, state, x, y) -> (loss, (new_state, n_correct))
LossFn = Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, jax.Array]]]
# lr -> optax transformation (lr may be a traced scalar: sweeps vmap over it)
UpdateRule = Callable[[jax.Array], optax.GradientTransformation]
# (key, step) -> (x, y): a batch generated on the device inside the step (tasks drawn from a
# distribution instead of indexed from a stored dataset); x and y may be pytrees.
BatchFn = Callable[[jax.Array, jax.Array], tuple[Any, Any]]


class StepInfo(NamedTuple):
    """Everything one step knows, handed to a ``step_extras`` hook for diagnostics."""

    step: jax.Array  # global step index (int32)
    params: jax.Array  # parameters before the update
    state: Any
    x: Any  # the step's batch
    y: Any
    loss: jax.Array
    grad: jax.Array
    updates: jax.Array  # new_params - params, as the optimiser computed it
    new_params: jax.Array
    data: Any  # the Data the trajectory reads (e.g. for validation inside the hook)


# StepInfo -> {name: array}: extra per-step records (norms, saturation, ...), computed inside
# the compiled step so diagnostics never leave the device per step.
StepExtras = Callable[[StepInfo], dict[str, jax.Array]]


def sgd_rule(lr: jax.Array) -> optax.GradientTransformation:
    """Plain SGD: theta <- theta - lr * grad (no momentum, no weight decay)."""
    return optax.sgd(lr)


class Data(NamedTuple):
    """Arrays the trajectory reads; passed as arguments so jit never embeds them as constants."""

    train_x: jax.Array
    train_y: jax.Array
    val_x: jax.Array | None = None
    val_y: jax.Array | None = None


@dataclass(frozen=True)
class Recorder:
    """What one trajectory keeps.

    params_every: record the flat parameters every k-th step (0 = never). Must divide the block
        length (``val_every`` when validating, else the number of steps of the call).
    grad_norm: record the global L2 norm of the (minibatch or full-batch) gradient.
    hessian: record the dense Hessian of the step's minibatch loss at the pre-update point.
    eigvals: record the eigenvalues (ascending) of that Hessian.
    val_every: evaluate validation loss/accuracy after every ``val_every``-th update (0 = never).
    val_batch: validation is computed in slices of this many examples (memory bound), then
        weighted by examples (spec §10 #13); 0: the eval loss's ``eval_batch`` (the model's
        choice, see ``models.objective.make_loss_fn``), else 1024.
    """

    params_every: int = 0
    grad_norm: bool = False
    hessian: bool = False
    eigvals: bool = False
    val_every: int = 0
    val_batch: int = 0
    hessian_chunk: int = 0
    curvature_every: int = 0
    curvature_k: int = 1
    curvature_iters: int = 0
    curvature_probes: int = 0
    curvature_batch: str = "step"


class Trajectory(NamedTuple):
    """Outputs of one call: the end state and the stacked records."""

    params: jax.Array  # [P] parameters after the last step
    state: Any  # model state after the last step (BatchNorm running statistics)
    opt_state: Any
    records: dict[str, jax.Array]  # loss [T], params [ceil(T/k), P], grad_norm [T],
    # hessian [T,P,P], eigvals [T,P], val_loss [T//val_every], val_acc [...]
    diverged_at: jax.Array  # int32 scalar, -1 if the run stayed finite


def _mask_if(flag: jax.Array, x: jax.Array) -> jax.Array:
    """NaN where ``flag`` (floating records); integer records (counters) are kept."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.where(flag, jnp.nan, x)
    return x


def evaluate(
    eval_loss: LossFn, w: jax.Array, state: Any, x: jax.Array, y: jax.Array, batch: int
) -> tuple[jax.Array, jax.Array]:
    """Example-weighted mean loss and accuracy over (x, y), computed in slices of ``batch``.

    Slices keep the CNN's activations bounded (6400 images x 12 maps in float64 is 0.5 GB per run).
    Accuracy counts every target (tokens for language models)."""
    n = x.shape[0]
    batch = min(batch, n)
    targets_per_example = max(1, y[0].size)

    def one(xs: jax.Array, ys: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, (_, correct) = eval_loss(w, state, xs, ys)
        return loss * xs.shape[0], correct.astype(jnp.int32)

    # map_slices takes each slice inside the loop: slicing first would copy the whole set
    # whenever batch does not divide n (200 MB per validation of the CNN's float64 features).
    (losses, corrects), tail = map_slices(one, x, y, size=batch)
    total_loss, total_correct = losses.sum(), corrects.sum()
    if tail is not None:
        total_loss, total_correct = total_loss + tail[0], total_correct + tail[1]
    acc = total_correct.astype(total_loss.dtype) / (n * targets_per_example)
    return total_loss / n, acc


def make_curvature_probe(train_loss: LossFn, rec: Recorder) -> Callable[..., dict[str, Any]]:
    """``probe(w, state, x, y, key, prev_vecs) -> {"curv_eigs", "curv_trace", "vecs"}``.

    Lanczos starts from the sum of the previous measurement's top vectors when there is one
    (``prev_vecs`` nonzero): along a trajectory the top eigenspace moves slowly, so the warm
    start converges in fewer steps; the very first measurement starts from a random vector."""
    from sgdjax.analysis.hessian import hutchinson_trace, make_hvp, top_eigenpairs

    k = rec.curvature_k
    iters = rec.curvature_iters

    def probe(w: jax.Array, state: Any, x: jax.Array, y: jax.Array, key: jax.Array,
              prev: jax.Array) -> dict[str, Any]:
        dim = w.shape[0]
        n_iter = min(dim, iters or max(2 * k + 20, 3 * k))
        mv = make_hvp(lambda v: train_loss(v, state, x, y)[0], w)
        k_lanczos, k_trace = jax.random.split(key)
        rand = jax.random.normal(k_lanczos, (dim,), w.dtype)
        warm = jnp.sum(prev / jnp.maximum(jnp.linalg.norm(prev, axis=1, keepdims=True), 1e-30),
                       axis=0)
        has_prev = jnp.any(prev != 0)
        v0 = jnp.where(has_prev, warm, rand)
        v0 = v0 / jnp.linalg.norm(v0)
        vals, vecs = top_eigenpairs(mv, dim, k, num_iters=n_iter, key=k_lanczos, v0=v0,
                                    dtype=w.dtype)
        out = {"curv_eigs": vals, "vecs": vecs}
        if rec.curvature_probes:
            out["curv_trace"] = hutchinson_trace(mv, dim, rec.curvature_probes, k_trace,
                                                 dtype=w.dtype)[0]
        return out

    return probe


def blocks(
    carry: Any,
    first: jax.Array,
    n: int,
    length: int,
    body: Callable[[Any, jax.Array], tuple[Any, dict, dict]],
    tail: Callable[[Any, jax.Array], tuple[Any, dict]],
) -> tuple[Any, dict[str, Any]]:
    """Scan ``body`` over ``n`` blocks of ``length`` steps starting at step ``first``, then run
    ``tail`` on the remaining steps.

    ``body(carry, block_first) -> (carry, own, nested)``: ``own`` records come once per block
    (validation, curvature), ``nested`` ones are already in step order within the block and are
    flattened across blocks. The result has every record in step order along axis 0."""
    records: dict[str, Any] = {}
    if n:
        def scan_body(c: Any, b: jax.Array) -> tuple[Any, tuple[dict, dict]]:
            c, own, nested = body(c, first + b * length)
            return c, (own, nested)

        carry, (own, nested) = jax.lax.scan(scan_body, carry, jnp.arange(n, dtype=jnp.int32))
        records = dict(own)
        records.update({k: jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), v)
                        for k, v in nested.items()})
    else:
        # Shorter than one block: the per-block records still exist, with no rows, so that a
        # trajectory's record keys (and the files written from them) do not depend on its length.
        _, own, nested = jax.eval_shape(body, carry, first)
        records = {k: jax.tree.map(lambda s: jnp.zeros((0, *s.shape), s.dtype), v)
                   for k, v in own.items()}
        records.update({k: jax.tree.map(lambda s: jnp.zeros((0, *s.shape[1:]), s.dtype), v)
                        for k, v in nested.items()})
    carry, rest = tail(carry, first + n * length)
    for k, v in rest.items():
        records[k] = v if k not in records else jax.tree.map(
            lambda a, b: jnp.concatenate([a, b]), records[k], v)
    return carry, records


def make_trajectory(
    train_loss: LossFn,
    sampler: Sampler,
    num_steps: int,
    recorder: Recorder = Recorder(),
    *,
    eval_loss: LossFn | None = None,
    update_rule: UpdateRule = sgd_rule,
    batch_fn: BatchFn | None = None,
    step_extras: StepExtras | None = None,
    hessian_fn: Callable[[jax.Array, Any, Any, Any], jax.Array] | None = None,
) -> Callable[..., Trajectory]:
    """Build ``run(w0, state0, key, lr, data, start=0, opt_state=None, indices=None)``.

    ``run`` is a pure function (jit it, vmap it over ``key`` and ``lr``). ``start`` is the global
    index of the first step: samplers depend on it, so a long run split into several calls draws
    exactly the batches of one uninterrupted run. When validating, ``start`` must be a multiple of
    ``val_every`` (the caller's segments are).

    ``batch_fn(fold_in(key, step), step) -> (x, y)`` replaces the sampler for tasks generated on
    the device (``sampler`` may then be None). ``step_extras(StepInfo) -> dict`` adds per-step
    records (masked to NaN after a divergence like every other float record).
    ``hessian_fn(w, state, x, y)`` replaces autodiff for the recorded Hessian where a model has
    a closed form (the MLP's ``loss_hessian``).

    ``indices`` (``[num_steps, batch]``) are the sampler's batches of ``key`` from ``start``,
    computed beforehand; ``run.batch_indices(key, start)`` computes them. Ensembles sharded over
    several CPU devices pass them in: the CPU sampler sorts on the host, and host callbacks of
    several devices executing at once can deadlock (see ``engine/ensemble.py``).
    """
    rec = recorder
    if rec.val_every and eval_loss is None:
        raise ValueError("val_every needs an eval_loss")
    val_batch = rec.val_batch or getattr(eval_loss, "eval_batch", 1024)
    if rec.val_every and rec.curvature_every and rec.curvature_every % rec.val_every:
        raise ValueError(f"curvature_every={rec.curvature_every} must be a multiple of "
                         f"val_every={rec.val_every}")
    inner = rec.val_every or rec.curvature_every or max(num_steps, 1)
    if rec.params_every and inner % rec.params_every:
        raise ValueError(
            f"params_every={rec.params_every} must divide the block length {inner} "
            "(val_every, else curvature_every, else the number of steps)"
        )
    if sampler is None and batch_fn is None:
        raise ValueError("give a sampler or a batch_fn")
    full_batch = batch_fn is None and sampler.kind == "full"
    measure = make_curvature_probe(train_loss, rec) if rec.curvature_every else None

    grad_fn = jax.value_and_grad(train_loss, has_aux=True)

    def run(
        w0: jax.Array,
        state0: Any,
        key: jax.Array,
        lr: jax.Array,
        data: Data,
        start: jax.Array | int = 0,
        opt_state: Any = None,
        indices: jax.Array | None = None,
    ) -> Trajectory:
        opt = update_rule(lr)
        if opt_state is None:
            opt_state = opt.init(w0)
        start = jnp.asarray(start, jnp.int32)
        if full_batch or batch_fn is not None:
            indices = None
        elif indices is None:
            indices = sampler.batches(key, start, num_steps)  # [T, B] int32

        def step(carry: tuple, i: jax.Array) -> tuple[tuple, dict[str, jax.Array]]:
            w, state, ostate, diverged_at, kept = carry
            xb, yb = batch_at(i)
            (loss, (new_state, _)), g = grad_fn(w, state, xb, yb)
            out: dict[str, jax.Array] = {"loss": loss}
            if rec.grad_norm:
                out["grad_norm"] = jnp.sqrt(jnp.sum(g * g))
            if rec.hessian or rec.eigvals:
                if hessian_fn is not None:
                    h = hessian_fn(w, state, xb, yb)
                else:
                    h = dense_hessian(lambda v: train_loss(v, state, xb, yb)[0], w,
                                      batch_size=rec.hessian_chunk or None)
                if rec.hessian:
                    out["hessian"] = h
                if rec.eigvals:
                    out["eigvals"] = jnp.linalg.eigvalsh(h)
            updates, new_ostate = opt.update(g, ostate, w)
            new_w = optax.apply_updates(w, updates)
            if step_extras is not None:
                out.update(step_extras(StepInfo(start + i, w, state, xb, yb, loss, g, updates,
                                                new_w, data)))

            already = diverged_at >= 0
            # Records of a run that diverged earlier are NaN, so statistics cannot silently mix
            # them with healthy runs; the step where it happened keeps its (finite) pre-update
            # records.
            out = jax.tree.map(lambda r: _mask_if(already, r), out)
            if rec.params_every:
                kept = record_point(kept, i, already, w, state)
            bad = ~(jnp.isfinite(loss) & jnp.all(jnp.isfinite(new_w)))
            t = start + i
            diverged_at = jnp.where(~already & bad, t, diverged_at)
            frozen = diverged_at >= 0
            keep = lambda old, new: jnp.where(frozen, old, new)  # noqa: E731
            w = keep(w, new_w)
            state = jax.tree.map(keep, state, new_state)
            ostate = jax.tree.map(keep, ostate, new_ostate)
            return (w, state, ostate, diverged_at, kept), out

        def record_point(kept: dict, i: jax.Array, already: jax.Array, w: jax.Array,
                         state: Any) -> dict:
            # The recorded points are written in place into buffers carried through the scans
            # (row i // params_every) rather than stacked as scan outputs: stacking, joining the
            # blocks and moving the vmapped run axis to the front each filled a fresh
            # [runs, steps, P] array, and on CPU filling those arrays' fresh pages took about a
            # third of an MLP ensemble's time.
            point = {"params": w}
            if jax.tree.leaves(state):
                # BatchNorm running statistics belong to the recorded point as much as the
                # parameters do: evaluating a recorded CNN needs them (spec §10 #4).
                point["state"] = state
            point = jax.tree.map(lambda r: _mask_if(already, r), point)
            k = rec.params_every
            row = i // k
            if k > 1:
                point = jax.tree.map(
                    lambda r, buf: jnp.where(i % k == 0, r, buf[row]), point, kept)
            return jax.tree.map(
                lambda buf, r: jax.lax.dynamic_update_index_in_dim(buf, r, row, 0), kept, point)

        def steps_span(carry: tuple, first: jax.Array, length: int) -> tuple[tuple, dict]:
            return jax.lax.scan(step, carry, first + jnp.arange(length, dtype=jnp.int32))

        def validated(carry: tuple, first: jax.Array) -> tuple[tuple, dict, dict]:
            carry, outs = steps_span(carry, first, rec.val_every)
            w, state, _, diverged_at, _ = carry
            vl, va = evaluate(eval_loss, w, state, data.val_x, data.val_y, val_batch)
            frozen = diverged_at >= 0
            own = {"val_loss": jnp.where(frozen, jnp.nan, vl),
                   "val_acc": jnp.where(frozen, jnp.nan, va)}
            return carry, own, outs

        def val_span(carry: tuple, first: jax.Array, length: int) -> tuple[tuple, dict]:
            """``length`` steps with validation after every ``val_every``-th."""
            if not rec.val_every:
                return steps_span(carry, first, length) if length else (carry, {})
            n, tail = divmod(length, rec.val_every)
            return blocks(carry, first, n, rec.val_every, validated,
                          lambda c, f: steps_span(c, f, tail) if tail else (c, {}))

        def curvature_block(carry: tuple, first: jax.Array) -> tuple[tuple, dict, dict]:
            inner, vecs = carry
            w, state, _, diverged_at, _ = inner
            xb, yb = batch_at(first, curvature=True)
            # A stream of its own: the samplers use fold_in(key, step) and fold_in(key, epoch).
            ckey = jax.random.fold_in(jax.random.fold_in(key, 2**31 - 1), start + first)
            curv = measure(w, state, xb, yb, ckey, vecs)
            frozen = diverged_at >= 0
            own = {k: _mask_if(frozen, v) for k, v in curv.items() if k != "vecs"}
            inner, nested = val_span(inner, first, rec.curvature_every)
            return (inner, curv["vecs"]), own, nested

        def curvature_tail(c: tuple, first: jax.Array, length: int) -> tuple[tuple, dict]:
            if not length:
                return c, {}
            inner, outs = val_span(c[0], first, length)
            return (inner, c[1]), outs

        def batch_at(i: jax.Array, curvature: bool = False) -> tuple[Any, Any]:
            if batch_fn is not None:
                t = start + i  # the step's batch is a function of (key, global step) only
                return batch_fn(jax.random.fold_in(key, t), t)
            if full_batch or (curvature and rec.curvature_batch == "full"):
                return data.train_x, data.train_y
            idx = indices[i]
            return data.train_x[idx], data.train_y[idx]

        kept: dict[str, Any] = {}
        if rec.params_every:
            n_rec = -(-num_steps // rec.params_every)
            kept["params"] = jnp.zeros((n_rec, *w0.shape), w0.dtype)
            if jax.tree.leaves(state0):
                kept["state"] = jax.tree.map(
                    lambda a: jnp.zeros((n_rec, *jnp.shape(a)), jnp.result_type(a)), state0)
        carry = (w0, state0, opt_state, jnp.asarray(-1, jnp.int32), kept)
        if rec.curvature_every:
            n_c, tail_c = divmod(num_steps, rec.curvature_every)
            vecs0 = jnp.zeros((rec.curvature_k, w0.shape[0]), w0.dtype)
            (carry, _), records = blocks(
                (carry, vecs0), jnp.int32(0), n_c, rec.curvature_every, curvature_block,
                lambda c, f: curvature_tail(c, f, tail_c),
            )
        else:
            carry, records = val_span(carry, jnp.int32(0), num_steps)
        w, state, ostate, diverged_at, kept = carry
        records.update(kept)
        return Trajectory(w, state, ostate, records, diverged_at)

    if not full_batch and batch_fn is None:
        run.batch_indices = lambda key, start=0: sampler.batches(key, start, num_steps)
    else:
        run.batch_indices = None
    return run
