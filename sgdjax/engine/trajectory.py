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

from sgdjax.data.sampling import Sampler

# f(w_flat, state, x, y) -> (loss, (new_state, n_correct))
LossFn = Callable[[jax.Array, Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, jax.Array]]]
# lr -> optax transformation (lr may be a traced scalar: sweeps vmap over it)
UpdateRule = Callable[[jax.Array], optax.GradientTransformation]


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
        weighted by examples (spec §10 #13).
    """

    params_every: int = 0
    grad_norm: bool = False
    hessian: bool = False
    eigvals: bool = False
    val_every: int = 0
    val_batch: int = 1024


class Trajectory(NamedTuple):
    """Outputs of one call: the end state and the stacked records."""

    params: jax.Array  # [P] parameters after the last step
    state: Any  # model state after the last step (BatchNorm running statistics)
    opt_state: Any
    records: dict[str, jax.Array]  # loss [T], params [T//k, P], grad_norm [T], hessian [T,P,P],
    # eigvals [T,P], val_loss [T//val_every], val_acc [...]
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
    n_full, rest = divmod(n, batch)
    targets_per_example = max(1, y[0].size)

    def one(xs: jax.Array, ys: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, (_, correct) = eval_loss(w, state, xs, ys)
        return loss * xs.shape[0], correct.astype(jnp.int32)

    xs = x[: n_full * batch].reshape(n_full, batch, *x.shape[1:])
    ys = y[: n_full * batch].reshape(n_full, batch, *y.shape[1:])
    losses, corrects = jax.lax.map(lambda a: one(*a), (xs, ys))
    total_loss, total_correct = losses.sum(), corrects.sum()
    if rest:
        tail_loss, tail_correct = one(x[n_full * batch :], y[n_full * batch :])
        total_loss, total_correct = total_loss + tail_loss, total_correct + tail_correct
    acc = total_correct.astype(total_loss.dtype) / (n * targets_per_example)
    return total_loss / n, acc


def make_trajectory(
    train_loss: LossFn,
    sampler: Sampler,
    num_steps: int,
    recorder: Recorder = Recorder(),
    *,
    eval_loss: LossFn | None = None,
    update_rule: UpdateRule = sgd_rule,
) -> Callable[..., Trajectory]:
    """Build ``run(w0, state0, key, lr, data, start=0, opt_state=None) -> Trajectory``.

    ``run`` is a pure function (jit it, vmap it over ``key`` and ``lr``). ``start`` is the global
    index of the first step: samplers depend on it, so a long run split into several calls draws
    exactly the batches of one uninterrupted run. When validating, ``start`` must be a multiple of
    ``val_every`` (the caller's segments are).
    """
    rec = recorder
    if rec.val_every and eval_loss is None:
        raise ValueError("val_every needs an eval_loss")
    block = rec.val_every if rec.val_every else max(num_steps, 1)
    if rec.params_every and block % rec.params_every:
        raise ValueError(
            f"params_every={rec.params_every} must divide the block length {block} "
            "(val_every, or the number of steps when not validating)"
        )
    n_blocks, tail = divmod(num_steps, block)
    full_batch = sampler.kind == "full"

    grad_fn = jax.value_and_grad(train_loss, has_aux=True)

    def run(
        w0: jax.Array,
        state0: Any,
        key: jax.Array,
        lr: jax.Array,
        data: Data,
        start: jax.Array | int = 0,
        opt_state: Any = None,
    ) -> Trajectory:
        opt = update_rule(lr)
        if opt_state is None:
            opt_state = opt.init(w0)
        start = jnp.asarray(start, jnp.int32)
        if full_batch:
            indices = None
        else:
            indices = sampler.batches(key, start, num_steps)  # [T, B] int32

        def step(carry: tuple, i: jax.Array) -> tuple[tuple, dict[str, jax.Array]]:
            w, state, ostate, diverged_at = carry
            if full_batch:
                xb, yb = data.train_x, data.train_y
            else:
                idx = indices[i]
                xb, yb = data.train_x[idx], data.train_y[idx]
            (loss, (new_state, _)), g = grad_fn(w, state, xb, yb)
            out: dict[str, jax.Array] = {"loss": loss}
            if rec.params_every:
                out["params"] = w
                if jax.tree.leaves(state):
                    # BatchNorm running statistics belong to the recorded point as much as the
                    # parameters do: evaluating a recorded CNN needs them (spec §10 #4).
                    out["state"] = state
            if rec.grad_norm:
                out["grad_norm"] = jnp.sqrt(jnp.sum(g * g))
            if rec.hessian or rec.eigvals:
                h = jax.hessian(lambda v: train_loss(v, state, xb, yb)[0])(w)
                if rec.hessian:
                    out["hessian"] = h
                if rec.eigvals:
                    out["eigvals"] = jnp.linalg.eigvalsh(0.5 * (h + h.T))
            updates, new_ostate = opt.update(g, ostate, w)
            new_w = optax.apply_updates(w, updates)

            already = diverged_at >= 0
            # Records of a run that diverged earlier are NaN, so statistics cannot silently mix
            # them with healthy runs; the step where it happened keeps its (finite) pre-update
            # records.
            out = jax.tree.map(lambda r: _mask_if(already, r), out)
            bad = ~(jnp.isfinite(loss) & jnp.all(jnp.isfinite(new_w)))
            t = start + i
            diverged_at = jnp.where(~already & bad, t, diverged_at)
            frozen = diverged_at >= 0
            keep = lambda old, new: jnp.where(frozen, old, new)  # noqa: E731
            w = keep(w, new_w)
            state = jax.tree.map(keep, state, new_state)
            ostate = jax.tree.map(keep, ostate, new_ostate)
            return (w, state, ostate, diverged_at), out

        def thin(outs: dict[str, jax.Array]) -> dict[str, jax.Array]:
            if rec.params_every > 1:
                for name in ("params", "state"):
                    if name in outs:
                        outs[name] = jax.tree.map(lambda a: a[:: rec.params_every], outs[name])
            return outs

        def run_block(carry: tuple, first: jax.Array, length: int) -> tuple[tuple, dict]:
            carry, outs = jax.lax.scan(step, carry, first + jnp.arange(length, dtype=jnp.int32))
            return carry, thin(outs)

        def block_with_val(carry: tuple, b: jax.Array) -> tuple[tuple, dict]:
            carry, outs = run_block(carry, b * block, block)
            w, state, _, diverged_at = carry
            vl, va = evaluate(eval_loss, w, state, data.val_x, data.val_y, rec.val_batch)
            frozen = diverged_at >= 0
            outs["val_loss"] = jnp.where(frozen, jnp.nan, vl)
            outs["val_acc"] = jnp.where(frozen, jnp.nan, va)
            return carry, outs

        carry = (w0, state0, opt_state, jnp.asarray(-1, jnp.int32))
        pieces: list[dict[str, jax.Array]] = []
        if n_blocks:
            body = block_with_val if rec.val_every else (
                lambda c, b: run_block(c, b * block, block)
            )
            carry, outs = jax.lax.scan(body, carry, jnp.arange(n_blocks, dtype=jnp.int32))
            # [n_blocks, block, ...] -> [n_blocks * block, ...]; validation stays per block.
            pieces.append({
                k: v if k.startswith("val_") else jax.tree.map(
                    lambda a: a.reshape(-1, *a.shape[2:]), v)
                for k, v in outs.items()
            })
        if tail:
            carry, outs = run_block(carry, jnp.asarray(n_blocks * block, jnp.int32), tail)
            pieces.append(outs)
        records: dict[str, Any] = {}
        for k in pieces[0] if pieces else ():
            parts = [p[k] for p in pieces if k in p]
            records[k] = parts[0] if len(parts) == 1 else jax.tree.map(
                lambda *a: jnp.concatenate(a), *parts)
        w, state, ostate, diverged_at = carry
        return Trajectory(w, state, ostate, records, diverged_at)

    return run
