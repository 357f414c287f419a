"""Optimizers of the seed (AdamW, its fused twin, Adafactor), clipping and gradient accumulation.

The update of one optimizer step is HF ``Trainer``'s: the gradient (mean over the micro-batches
of an accumulation window) is clipped to global norm ``max_grad_norm`` and handed to the
optimizer, whose learning rate follows the schedule of the optimizer-step count.

* ``adamw`` / ``adamw_fused``: decoupled weight decay applied to every parameter (as the seed's
  ``torch.optim.AdamW``): ``p <- p - lr * (adam(g) + wd * p)``. PyTorch's fused kernel computes
  the same update, so both names give the same optax transform.
* ``adafactor``: HF Trainer's ``Adafactor(scale_parameter=False, relative_step=False,
  warmup_init=False)``: factored second moments for every matrix, decay ``1 - t^-0.8``, update
  clipping at RMS 1, no momentum, ``eps = 1e-30``.

Accumulation over ``k`` micro-batches is ``optax.MultiSteps``: the inner optimizer (and with it
the schedule's step count) advances once per ``k`` gradients, with their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from sgdjax.lm.config import OptimConfig

Schedule = Callable[[jax.Array], jax.Array]


def optimizer(cfg: OptimConfig, schedule: Schedule) -> optax.GradientTransformation:
    """Clipping followed by the named optimizer with a learning-rate schedule."""
    if cfg.name in ("adamw", "adamw_fused"):
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay)
    else:
        opt = optax.adafactor(
            schedule, min_dim_size_to_factor=1, decay_rate=0.8, decay_offset=0,
            multiply_by_parameter_scale=False, clipping_threshold=1.0, momentum=None,
            weight_decay_rate=cfg.weight_decay or None, eps=1e-30, factored=True,
        )
    if cfg.max_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), opt)
    return opt


def accumulate(opt: optax.GradientTransformation, every: int) -> optax.GradientTransformation:
    """``opt`` applied once per ``every`` gradients, to their mean (identity for 1)."""
    if every == 1:
        return opt
    return optax.MultiSteps(opt, every_k_schedule=every).gradient_transformation()


def on_pytree(inner: optax.GradientTransformation, to_tree: Callable[[jax.Array], Any],
              to_flat: Callable[[Any], jax.Array]) -> optax.GradientTransformation:
    """``inner`` driven with flat vectors: gradients and parameters are unflattened into the
    model's pytree first, so per-tensor optimizers (Adafactor's factored moments) see matrices,
    and the updates are flattened back."""

    def init(w: jax.Array) -> Any:
        return inner.init(to_tree(w))

    def update(g: jax.Array, state: Any, w: jax.Array | None = None) -> tuple[jax.Array, Any]:
        updates, state = inner.update(to_tree(g), state, None if w is None else to_tree(w))
        return to_flat(updates), state

    return optax.GradientTransformation(init, update)


__all__ = ["accumulate", "on_pytree", "optimizer"]
