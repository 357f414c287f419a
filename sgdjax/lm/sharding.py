"""Data-parallel training on a device mesh, with the ZeRO stages as sharding choices.

One 1-D mesh with the axis ``"data"``; every batch is split over it. What else is split is the
mode (the DeepSpeed / FSDP names of the seed's HW2):

======  ===================  ==========================  ===================================
mode    parameters           gradients                   optimizer state
======  ===================  ==========================  ===================================
dp      replicated           all-reduced, replicated     replicated (DDP, ZeRO-0)
zero1   replicated           all-reduced, replicated     sharded; updated parameters gathered
zero2   replicated           reduce-scattered, sharded   sharded
zero3   sharded, gathered    reduce-scattered, sharded   sharded (FSDP full_shard)
        per layer
======  ===================  ==========================  ===================================

A tensor is sharded along its largest axis that the device count divides (small vectors such as
norm weights stay replicated when none does). The layout is stated with ``NamedSharding``s on
every leaf and ``with_sharding_constraint`` inside the step; XLA's SPMD partitioner inserts the
collectives (all-reduce, reduce-scatter, all-gather) that the layouts imply.

ZeRO-3 gathers inside each module (:attr:`Plan.use_params`, the model's ``use_params`` hook):
the forward pass gathers one decoder layer's weights at a time, and the backward pass gathers
them again (the layers are rematerialised without keeping the gathered weights), so besides its
shard a device holds about one module's full weights at a time -- FSDP's
``reshard_after_forward``. The replicated modes pin the parameters the loss reads as replicated,
so that sharding propagation from the sharded gradient buffer or optimizer state cannot split
the forward and backward computation along weight axes.

Memory per device is given analytically from the shapes and the layouts (bytes of parameters,
gradient buffers and optimizer state that one device holds, plus ZeRO-3's gathered module) for
any mode, device count and model size -- the ``paper`` model included, without allocating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgdjax.errors import ConfigError
from sgdjax.models.qwen3 import ParamsHook

AXIS = "data"
MODES: tuple[str, ...] = ("dp", "zero1", "zero2", "zero3")


def make_mesh(n_devices: int, devices: list[Any] | None = None) -> Mesh:
    """A mesh over the first ``n_devices`` devices (of the default backend unless given)."""
    devices = list(devices) if devices is not None else jax.devices()
    if n_devices > len(devices):
        platform = devices[0].platform if devices else "cpu"
        hint = (" On CPU, simulate host devices by setting XLA_FLAGS="
                f"--xla_force_host_platform_device_count={n_devices} before Python starts."
                if platform == "cpu" else "")
        raise ConfigError(f"parallel.devices={n_devices} but only {len(devices)} {platform} "
                          f"device(s) are visible.{hint}")
    return Mesh(np.asarray(devices[:n_devices]), (AXIS,))


def leaf_spec(shape: tuple[int, ...], n: int) -> P:
    """Shard the largest axis that ``n`` divides; replicate when none does (or ``n == 1``)."""
    if n > 1:
        for axis in sorted(range(len(shape)), key=lambda a: (-shape[a], a)):
            if shape[axis] % n == 0 and shape[axis] >= n:
                spec: list[str | None] = [None] * len(shape)
                spec[axis] = AXIS
                return P(*spec)
    return P()


def _specs(tree: Any, n: int, sharded: bool) -> Any:
    return jax.tree.map(lambda a: leaf_spec(tuple(a.shape), n) if sharded else P(), tree)


@dataclass(frozen=True)
class Plan:
    """Where every array of a training step lives, for one mode on one mesh."""

    mesh: Mesh
    mode: str
    params: Any  # pytree of NamedSharding (stored parameters)
    grads: Any  # pytree of NamedSharding (gradient accumulation buffers)
    opt_state: Any  # pytree of NamedSharding
    replicated_params: Any  # pytree of NamedSharding: parameters as the forward pass uses them

    @property
    def n(self) -> int:
        return int(self.mesh.devices.size)

    def named(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def batch(self) -> NamedSharding:
        """Blocks ``[B, L+1]`` split over the data axis."""
        return self.named(P(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return self.named(P())

    @property
    def use_params(self) -> ParamsHook | None:
        """The model's ``use_params`` hook: ZeRO-3 all-gathers each module's weights inside
        that module; the other modes store them replicated and need none."""
        if self.mode != "zero3":
            return None
        constrain = jax.lax.with_sharding_constraint

        def gather(a: jax.Array) -> jax.Array:
            # Stating the stored layout first keeps the gather after the rematerialisation's
            # barrier in the backward pass; otherwise propagation hoists it before the barrier,
            # where XLA merges it with the forward pass's gather (one gather, held throughout).
            stored = constrain(a, self.named(leaf_spec(tuple(a.shape), self.n)))
            return constrain(stored, self.replicated)

        return lambda tree: jax.tree.map(gather, tree)


def make_plan(mesh: Mesh, mode: str, params: Any, opt_state: Any) -> Plan:
    """Layouts of ``params`` and ``opt_state`` (arrays or ShapeDtypeStructs) for ``mode``."""
    if mode not in MODES:
        raise ConfigError(f"unknown sharding mode '{mode}'; choose one of {', '.join(MODES)}.")
    n = int(mesh.devices.size)

    def named(specs: Any) -> Any:
        return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                            is_leaf=lambda x: isinstance(x, P))

    return Plan(
        mesh=mesh, mode=mode,
        params=named(_specs(params, n, mode == "zero3")),
        grads=named(_specs(params, n, mode in ("zero2", "zero3"))),
        opt_state=named(_specs(opt_state, n, mode != "dp")),
        replicated_params=named(_specs(params, n, False)),
    )


def _bytes(shape: tuple[int, ...], dtype: Any, spec: P, n: int) -> int:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    return size // n if any(s is not None for s in spec) else size


def gathered_bytes(params: Any) -> int:
    """Full size of the largest top-level module (embedding, one decoder layer, norm, head):
    what ZeRO-3 holds gathered besides its shards. Modules follow one another in the forward
    and (gathering again) in the backward pass, so one is alive at a time, give or take the
    overlap of neighbours that XLA's scheduler allows."""
    modules = params.values() if isinstance(params, dict) else [params]
    return max((sum(_bytes(a.shape, a.dtype, P(), 1) for a in jax.tree.leaves(m))
                for m in modules), default=0)


def state_bytes_per_device(params: Any, opt_state: Any, mode: str, n: int,
                           grad_dtype: Any = np.float32) -> dict[str, int]:
    """Bytes one device holds for parameters, the gradient accumulation buffer and the optimizer
    state, and ZeRO-3's transient of one gathered module (``gathered``, 0 for the replicated
    modes), from shapes alone (``jax.eval_shape`` output is enough)."""
    p_specs = _specs(params, n, mode == "zero3")
    g_specs = _specs(params, n, mode in ("zero2", "zero3"))
    o_specs = _specs(opt_state, n, mode != "dp")
    leaves = jax.tree.leaves(params)
    out = {
        "params": sum(_bytes(a.shape, a.dtype, s, n) for a, s in
                      zip(leaves, jax.tree.leaves(p_specs), strict=True)),
        "grads": sum(_bytes(a.shape, grad_dtype, s, n) for a, s in
                     zip(leaves, jax.tree.leaves(g_specs), strict=True)),
        "opt_state": sum(_bytes(a.shape, a.dtype, s, n) for a, s in
                         zip(jax.tree.leaves(opt_state), jax.tree.leaves(o_specs), strict=True)),
        "gathered": gathered_bytes(params) if mode == "zero3" and n > 1 else 0,
    }
    out["total"] = sum(out.values())
    return out


def activation_bytes(model: Any, micro_batch: int, seq_len: int, remat: bool) -> int:
    """A rough estimate of the activations one device keeps for the backward pass of one
    micro-batch: per layer about 16 hidden-size and 3 intermediate-size vectors per token plus
    the float32 attention probabilities; with rematerialisation only each layer's input and one
    layer's full set. Logits (float32, twice for log-softmax) are added once."""
    itemsize = 2 if model.compute_dtype == "bfloat16" else 4
    tokens = micro_batch * seq_len
    per_layer = tokens * (16 * model.hidden_size + 3 * model.intermediate_size) * itemsize
    per_layer += micro_batch * model.num_heads * seq_len * seq_len * 4
    layers = (model.num_layers * tokens * model.hidden_size * itemsize + per_layer if remat
              else model.num_layers * per_layer)
    return int(layers + 2 * tokens * model.vocab_size * 4)


__all__ = ["AXIS", "MODES", "Plan", "activation_bytes", "gathered_bytes", "leaf_spec",
           "make_mesh", "make_plan", "state_bytes_per_device"]
