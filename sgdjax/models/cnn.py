"""FlexibleCNN of exp1 (spec §3.2).

Conv2d(1→12, 3×3, stride 1, padding 1, no bias) → BatchNorm2d(12) → SiLU → global average pool
→ Linear(12→11) → SiLU → Linear(11→10), on NCHW images ``[N, 1, 28, 28]``.

Trainable layout (395): ``conv.weight [12,1,3,3]`` [0..107], ``bn.weight`` [108..119],
``bn.bias`` [120..131], ``fc1.weight [11,12]`` [132..263], ``fc1.bias`` [264..274],
``fc2.weight [10,11]`` [275..384], ``fc2.bias`` [385..394].
State (``buffers``): ``{"bn": {"running_mean", "running_var", "num_batches_tracked"}}`` with
state-dict names ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``.

BatchNorm follows PyTorch: eps 1e-5, momentum 0.1; training normalises with the biased batch
variance over (N, H, W) and moves the running variance towards the *unbiased* one; evaluation uses
the running statistics.

XLA's CPU convolution is slow for this shape (one input channel, float64 especially), so the
convolution has several interchangeable implementations (``conv_impl``):

* ``"folded"`` (default): im2col patches; BatchNorm's batch statistics of the conv output are
  computed from the 9×9 patch covariance (mean = w·m, var = wᵀSw), and the BN affine map is folded
  into the conv weight and a bias, so the 12-channel map is produced once, already normalised.
  ``CNN.featurize`` computes the patches and their per-image moments once per dataset
  (:func:`patch_features`), keeping only the patches that are not all zero (on a zero patch the
  map is the channel's bias, so the rest enter in closed form: 1.8× less per-position work on
  MNIST); raw images are accepted too. :func:`conv_silu_pool` carries the derivative.
* ``"im2col"``: patches ``[N, C·9, H·W]`` then one matmul; BN applied to the map.
* ``"shift"``: nine shifted multiply-adds on the zero-padded input; BN applied to the map.
* ``"lax"``: ``lax.conv_general_dilated``; BN applied to the map.

All four compute the same function (tests check it). Measured on the 2-vCPU development machine
(jit, batch 64, train-mode forward+gradient of the mean CE loss; best of 5×50 calls):

=========  =========  =========
impl       float32    float64
=========  =========  =========
folded     3.3 ms     5.1 ms
im2col     6.8 ms     9.8 ms
shift      6.5 ms     40 ms
lax        7.9 ms     10.7 ms
=========  =========  =========

A dense float64 Hessian (``jax.hessian``) of that loss took 16 s folded, 65 s im2col, 75 s lax.
These are from raw images; from the packed features of :meth:`CNN.featurize`, with the float64
SiLU of :mod:`sgdjax.models.fastmath`, the folded float64 gradient (gather included) took 4.7 ms
on one core, 3.3 ms with the derivative of :func:`conv_silu_pool`, and about half that on MNIST
once zero patches are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.models import fastmath
from sgdjax.models.base import ParamSpec, TorchLayoutModel, TorchLinear, declared
from sgdjax.slices import join_slices

CONV_IMPLS = ("folded", "im2col", "shift", "lax")


def im2col(x: jax.Array, kernel: int, padding: int) -> jax.Array:
    """``[N, C, H, W]`` → patches ``[N, C·k·k, H'·W']`` ordered (c, ky, kx) like a flattened
    PyTorch conv weight ``[out, C, k, k]`` (stride 1)."""
    n, c, h, w = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    cols = [xp[:, :, dy : dy + ho, dx : dx + wo] for dy in range(kernel) for dx in range(kernel)]
    patches = jnp.stack(cols, axis=2)  # [N, C, k·k, H', W']
    return patches.reshape(n, c * kernel * kernel, ho * wo)


def patch_features(x: jax.Array, kernel: int, padding: int, compact: bool = True) -> jax.Array:
    """Images ``[N, C, H, W]`` → packed features ``[N, M + 2 + K, K]`` (``K = C·k·k`` patch
    entries, ``P = H'·W'`` positions): rows ``0..M-1`` are patches, row ``M`` their per-image
    sum ``Σ_p x_p``, rows ``M+1..M+K`` the per-image second moments ``Σ_p x_p x_pᵀ`` and the
    last row ``[P, 0, …]``.

    Patches and moments have no parameters, so :meth:`CNN.featurize` computes them once per
    dataset: a training step then gets BatchNorm's batch statistics of the conv output from the
    summed moments (mean ``w·m``, variance ``wᵀ(E[xxᵀ] − mmᵀ)w``) and skips the per-step
    im2col, the two largest costs after the conv itself (float64, batch 64: 8.2 → 5.3 ms per
    gradient on one core).

    With ``compact`` (and concrete images, not traced ones), only the patches that are not all
    zero are kept, in position order, each image's list padded with zero patches to the
    dataset's largest count rounded up to a multiple of 8 (``M``; ``M = P = H'·W'`` when
    nothing can be dropped): on a zero patch the conv + BatchNorm value is the channel's bias,
    so the model accounts for the ``P − M`` dropped patches of every image in closed form
    (:func:`conv_silu_pool`). MNIST (pixel/255, black background) has 251 non-zero patches of
    784 on average and at most 430 per image, so the per-position work of a step shrinks 1.8×.
    ``P`` travels with the features (exact in float32 up to 2^24) so that the model needs no
    image size."""
    patches = jnp.swapaxes(im2col(x, kernel, padding), 1, 2)  # [N, P, K]
    s1 = jnp.sum(patches, axis=1)
    s2 = jnp.einsum("npk,npl->nkl", patches, patches)
    n, p, k = patches.shape
    meta = jnp.zeros((n, 1, k), patches.dtype).at[:, 0, 0].set(p)
    if compact and not isinstance(patches, jax.core.Tracer):
        patches = _nonzero_patches(patches)
    return jnp.concatenate([patches, s1[:, None, :], s2, meta], axis=1)


def _nonzero_patches(patches: jax.Array) -> jax.Array:
    """``[N, P, K]`` → ``[N, M, K]``: each image's non-zero patches first (position order),
    then zero patches, cut to ``M`` rows (the largest non-zero count, rounded up to 8)."""
    nonzero = jnp.any(patches != 0, axis=-1)  # [N, P]
    m = int(jnp.max(jnp.sum(nonzero, axis=1))) if patches.shape[0] else 0
    m = min(patches.shape[1], max(8, -(-m // 8) * 8))
    order = jnp.argsort(~nonzero, axis=1, stable=True)[:, :m]
    return jnp.take_along_axis(patches, order[:, :, None], axis=1)


def patch_rows(feats: jax.Array) -> int:
    """``M``, the rows of packed features (:func:`patch_features`) that are patches."""
    return feats.shape[-2] - 2 - feats.shape[-1]


def unpack_patch_features(feats: jax.Array
                          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(patches [N, M, K], sums [N, K], second moments [N, K, K], positions [N])`` of packed
    features (:func:`patch_features`)."""
    k, m = feats.shape[-1], patch_rows(feats)
    return feats[:, :m], feats[:, m], feats[:, m + 1: m + 1 + k], feats[:, -1, 0]


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def conv_silu_pool(patches: jax.Array, weight: jax.Array, bias: jax.Array,
                   positions: jax.Array, rows: int | None = None) -> jax.Array:
    """``mean_p silu(patches[n, p] · weight[o] + bias[o])`` over ``positions[n]`` positions:
    patches ``[N, M, K]``, weight ``[O, K]``, bias ``[O]``, positions ``[N]`` → ``[N, O]``, the
    folded conv + BatchNorm + SiLU + average pool. Image ``n`` has ``positions[n] − M`` further
    patches that are zero (see :func:`patch_features`), each adding ``silu(bias)``.

    Its derivative is written so that reverse mode has almost nothing left to do per position.
    With ``d = silu'(h)``, the tangent in the weight is ``Σ_k A[n, o, k] dw[o, k]`` where
    ``A[n, o, k] = mean_p d[n, p, o] patches[n, p, k]``: ``A`` (64·12·9 numbers) is computed
    with the primal, one batched product over the images, and the gradient is then a
    contraction of ``A`` with the pooled cotangent. Plain autodiff stores the ``[N, P, O]`` map's
    derivatives, transposes the cotangent map and contracts it with the patches over all
    ``N·P`` rows, a product XLA's CPU kernels run slowly (float64 gradient of the block on one
    core: 2.9 → 2.0 ms). The tangent in the patches (features are data, normally a symbolic
    zero) is kept for completeness; the position counts are integers and have none.

    Large batches (full-batch GD) go through the maps in slices of :data:`IMAGE_SLICE` images
    (:func:`by_image_slices`), which stay in cache; images do not interact here. With ``rows``,
    only ``patches[:, :rows]`` are patches: the packed features of :func:`patch_features` can
    be passed whole, and each slice cuts its own patches (slicing all of them first would copy
    every patch of the batch, 0.2 GB for 6400 float64 images)."""

    def block(pt: jax.Array, pos: jax.Array) -> jax.Array:
        pt = pt[:, :rows]
        h = _conv(pt, weight, bias)
        p, zeros = _counts(pt, pos)
        return (jnp.sum(fastmath.silu(h), axis=1) + zeros * fastmath.silu(bias)) / p

    return by_image_slices(block, patches, positions)


# Images per slice of the per-position passes. The maps of 64 images (float64, 432 patches x 12
# channels: 2.6 MB) stay in cache. Float64 gradient of 6400 MNIST images on one CPU device:
# 0.55-0.60 s in one pass, 0.14-0.16 s in slices of 64 (with glibc huge pages 0.23 -> 0.175 s);
# slices of 32 or 128 were no faster.
IMAGE_SLICE = 64


def by_image_slices(fn: Any, *arrays: jax.Array, size: int = IMAGE_SLICE) -> Any:
    """``fn(*arrays)`` for arrays whose leading axis is the image, in slices of ``size``
    images (:func:`sgdjax.slices.join_slices`); batches up to twice ``size`` (a minibatch) are
    one call."""
    if arrays[0].shape[0] <= 2 * size:
        return fn(*arrays)
    return join_slices(fn, *arrays, size=size)


def _conv(patches: jax.Array, weight: jax.Array, bias: jax.Array) -> jax.Array:
    # Position-major patches: the 12-channel map is one [N·M, K] x [K, O] product
    # (1.15x faster than channel-major with its gradient).
    return jnp.einsum("npk,ok->npo", patches, weight) + bias


def _counts(patches: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions ``[N, 1]`` and dropped zero patches ``[N, 1]`` per image."""
    p = positions.astype(patches.dtype)[:, None]
    return p, p - patches.shape[1]


def _conv_silu_pool_jvp(rows: int | None, primals: tuple[jax.Array, ...],
                        tangents: tuple[Any, ...]) -> tuple[jax.Array, jax.Array]:
    patches, weight, bias, positions = primals
    dpatches, dweight, dbias, _ = tangents
    # zero patches do not see the weight; the patches' tangent is normally a symbolic zero
    with_w = not isinstance(dweight, SymbolicZero)
    with_b = not isinstance(dbias, SymbolicZero)
    with_x = not isinstance(dpatches, SymbolicZero)
    s0 = fastmath.sigmoid(bias)

    def block(pt: jax.Array, pos: jax.Array, *dpt: jax.Array) -> dict[str, jax.Array]:
        pt = pt[:, :rows]
        p, zeros = _counts(pt, pos)
        h = _conv(pt, weight, bias)
        s = fastmath.sigmoid(h)
        res = {"out": (jnp.sum(h * s, axis=1) + zeros * (bias * s0)) / p}
        d = s * (1 + h * (1 - s))  # silu'(h)
        if with_w:
            res["a"] = jnp.einsum("npo,npk->nok", d, pt) / p[:, :, None]
        if with_b:
            d0 = s0 * (1 + bias * (1 - s0))
            res["db"] = (jnp.sum(d, axis=1) + zeros * d0) / p
        if with_x:
            res["dx"] = jnp.einsum("npk,ok,npo->no", dpt[0][:, :rows], weight, d) / p
        return res

    res = by_image_slices(block, patches, positions, *((dpatches,) if with_x else ()))
    out = res["out"]
    tangent = jnp.zeros_like(out)
    if with_w:
        tangent = tangent + jnp.einsum("nok,ok->no", res["a"], dweight)
    if with_b:
        tangent = tangent + res["db"] * dbias
    if with_x:
        tangent = tangent + res["dx"]
    return out, tangent


conv_silu_pool.defjvp(_conv_silu_pool_jvp, symbolic_zeros=True)


def conv2d(x: jax.Array, weight: jax.Array, padding: int, impl: str) -> jax.Array:
    """Stride-1 bias-free cross-correlation (PyTorch ``conv2d``), ``[N,C,H,W] → [N,O,H',W']``."""
    out_ch, in_ch, k, _ = weight.shape
    n, _, h, w = x.shape
    ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    if impl == "lax":
        return lax.conv_general_dilated(
            x,
            weight,
            window_strides=(1, 1),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
    if impl == "im2col":
        patches = im2col(x, k, padding)
        out = jnp.einsum("ok,nkp->nop", weight.reshape(out_ch, in_ch * k * k), patches)
        return out.reshape(n, out_ch, ho, wo)
    if impl == "shift":
        xp = jnp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        out = jnp.zeros((n, out_ch, ho, wo), dtype=jnp.result_type(x, weight))
        for c in range(in_ch):
            for dy in range(k):
                for dx in range(k):
                    window = xp[:, c, dy : dy + ho, dx : dx + wo]
                    out = out + weight[None, :, c, dy, dx, None, None] * window[:, None]
        return out
    raise ConfigError(f"unknown conv_impl '{impl}'.{did_you_mean(impl, CONV_IMPLS)}")


class TorchConv2d(nn.Module):
    """Bias-free conv weight in PyTorch layout ``[out, in, k, k]``."""

    in_channels: int
    out_channels: int
    kernel: int
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        shape = (self.out_channels, self.in_channels, self.kernel, self.kernel)
        self.weight = self.param("weight", declared, shape, self.param_dtype)

    def __call__(self, x: jax.Array, padding: int, impl: str) -> jax.Array:
        return conv2d(x, self.weight, padding, impl)


class BatchNorm2d(nn.Module):
    """PyTorch BatchNorm2d with explicit running statistics in the ``batch_stats`` collection."""

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        c, dt = self.num_features, self.param_dtype
        self.weight = self.param("weight", declared, (c,), dt)
        self.bias = self.param("bias", declared, (c,), dt)
        self.running_mean = self.variable("batch_stats", "running_mean", jnp.zeros, (c,), dt)
        self.running_var = self.variable("batch_stats", "running_var", jnp.ones, (c,), dt)
        self.num_batches_tracked = self.variable(
            "batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32
        )

    def affine(
        self, mean: jax.Array | None, var: jax.Array | None, count: int | jax.Array,
        train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """``(scale, shift)`` with ``bn(x) = x·scale + shift`` per channel.

        In training ``mean``/``var`` are the batch mean and biased variance over ``count``
        values per channel; they also update the running statistics. In evaluation the running
        statistics are used and the arguments are ignored.
        """
        if train:
            assert mean is not None and var is not None
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (count / jnp.maximum(count - 1, 1))
                rm, rv = self.running_mean.value, self.running_var.value
                # stop_gradient: the running statistics are buffers, not part of the loss graph.
                batch_mean = lax.stop_gradient(mean).astype(rm.dtype)
                batch_var = lax.stop_gradient(unbiased).astype(rv.dtype)
                self.running_mean.value = (1 - m) * rm + m * batch_mean
                self.running_var.value = (1 - m) * rv + m * batch_var
                self.num_batches_tracked.value = self.num_batches_tracked.value + 1
        else:
            mean, var = self.running_mean.value, self.running_var.value
        scale = self.weight * lax.rsqrt(var + self.eps)
        return scale, self.bias - mean * scale

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``x``: ``[N, C, H, W]``."""
        mean = var = None
        if train:
            mean = jnp.mean(x, axis=(0, 2, 3))
            var = jnp.mean(jnp.square(x - mean[None, :, None, None]), axis=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        scale, shift = self.affine(mean, var, count, train)
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class CNNModule(nn.Module):
    in_channels: int
    channels: int
    hidden: int
    n_classes: int
    kernel: int
    padding: int
    conv_impl: str = "folded"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.param_dtype
        conv = TorchConv2d(self.in_channels, self.channels, self.kernel, dt, name="conv")
        bn = BatchNorm2d(self.channels, param_dtype=dt, name="bn")
        if self.conv_impl == "folded":
            feats = self._folded_conv_bn_silu_gap(conv, bn, x, train)
        else:
            h = bn(conv(x, self.padding, self.conv_impl), train)
            feats = jnp.mean(nn.silu(h), axis=(2, 3))
        h = nn.silu(TorchLinear(self.channels, self.hidden, param_dtype=dt, name="fc1")(feats))
        return TorchLinear(self.hidden, self.n_classes, param_dtype=dt, name="fc2")(h)

    def _folded_conv_bn_silu_gap(
        self, conv: TorchConv2d, bn: BatchNorm2d, x: jax.Array, train: bool
    ) -> jax.Array:
        w = conv.weight.reshape(self.channels, -1)  # [O, K]
        if x.ndim == 4:  # images rather than the packed features of CNN.featurize
            x = patch_features(x, self.kernel, self.padding, compact=False)
        _, s1, s2, positions = unpack_patch_features(x)
        count = jnp.sum(positions)
        mean = var = None
        if train:
            # The conv output's batch mean/variance per channel are w·m and wᵀSw (S the biased
            # patch covariance, from the summed moments), without materialising the
            # un-normalised map.
            m = jnp.sum(s1, axis=0) / count  # [K]
            cov = jnp.sum(s2, axis=0) / count - jnp.outer(m, m)
            mean = w @ m
            var = jnp.einsum("ok,kl,ol->o", w, cov, w)
        scale, shift = bn.affine(mean, var, count, train)
        return conv_silu_pool(x, w * scale[:, None], shift, positions, patch_rows(x))


@dataclass(frozen=True)
class CNN(TorchLayoutModel):
    """FlexibleCNN; defaults give the exp1 model with 395 trainable parameters."""

    channels: int = 12
    hidden: int = 11
    n_classes: int = 10
    in_channels: int = 1
    kernel: int = 3
    padding: int = 1
    image_size: int = 28
    conv_impl: str = "folded"
    name: str = "cnn"

    def __post_init__(self) -> None:
        if self.conv_impl not in CONV_IMPLS:
            raise ConfigError(
                f"cnn: unknown conv_impl '{self.conv_impl}'."
                f"{did_you_mean(self.conv_impl, CONV_IMPLS)} Allowed: {', '.join(CONV_IMPLS)}."
            )

    @property
    def layout(self) -> tuple[ParamSpec, ...]:
        o, i, k, h, c = self.channels, self.in_channels, self.kernel, self.hidden, self.n_classes
        # PyTorch defaults: conv/Linear U(±1/√fan_in) (biases too), BatchNorm γ=1, β=0
        u_conv = ("uniform", 1 / math.sqrt(i * k * k))
        u1, u2 = ("uniform", 1 / math.sqrt(o)), ("uniform", 1 / math.sqrt(h))
        return (
            ParamSpec("conv.weight", ("conv", "weight"), (o, i, k, k), u_conv),
            ParamSpec("bn.weight", ("bn", "weight"), (o,), ("ones", 0.0)),
            ParamSpec("bn.bias", ("bn", "bias"), (o,), ("zeros", 0.0)),
            ParamSpec("fc1.weight", ("fc1", "weight"), (h, o), u1),
            ParamSpec("fc1.bias", ("fc1", "bias"), (h,), u1),
            ParamSpec("fc2.weight", ("fc2", "weight"), (c, h), u2),
            ParamSpec("fc2.bias", ("fc2", "bias"), (c,), u2),
        )

    @property
    def buffers(self) -> tuple[ParamSpec, ...]:
        o = self.channels
        return (
            ParamSpec("bn.running_mean", ("bn", "running_mean"), (o,), ("zeros", 0.0)),
            ParamSpec("bn.running_var", ("bn", "running_var"), (o,), ("ones", 0.0)),
            ParamSpec("bn.num_batches_tracked", ("bn", "num_batches_tracked"), (), ("count", 0.0)),
        )

    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return CNNModule(
            self.in_channels,
            self.channels,
            self.hidden,
            self.n_classes,
            self.kernel,
            self.padding,
            conv_impl=self.conv_impl,
            param_dtype=param_dtype,
        )

    def featurize(self, x: jax.Array) -> jax.Array:
        """Images ``[N, C, H, W]`` → packed patch features ``[N, M + 2 + K, K]``
        (:func:`patch_features`: the non-zero patches, padded to ``M``, their moments and the
        position count) for the folded convolution; the other ``conv_impl`` use the images as
        they are. :meth:`apply` accepts images too."""
        x = jnp.asarray(x)
        x = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)
        if self.conv_impl != "folded" or x.ndim != 4:
            return x
        return patch_features(x, self.kernel, self.padding)

    def loss_hessian(self, w: jax.Array, state: Any, feats: jax.Array,
                     labels: jax.Array) -> jax.Array:
        """Exact ``[P, P]`` Hessian of the mean cross-entropy with BatchNorm in training mode
        (batch statistics, as the training loss) at the flat parameters ``w``, from the
        per-channel structure (:mod:`sgdjax.models.cnn_hessian`; ~200x faster than batched
        Hessian-vector products)."""
        from sgdjax.models.cnn_hessian import cnn_ce_hessian  # imports this module

        del state  # batch statistics: the running ones do not enter the training loss
        return cnn_ce_hessian(w, feats, labels, in_channels=self.in_channels,
                              channels=self.channels, hidden=self.hidden,
                              n_classes=self.n_classes, kernel=self.kernel, padding=self.padding)

    @property
    def eval_batch(self) -> int:
        # 64 images' 12-channel maps stay in cache: a float64 validation of 3600 images took
        # 146 ms in slices of 64 and 271 ms in slices of 1024 on one core.
        return 64

    def example_features(self, batch: int, dtype: Any = jnp.float32) -> jax.Array:
        s = self.image_size
        if self.conv_impl != "folded":
            return jnp.zeros((batch, self.in_channels, s, s), dtype=dtype)
        side = s + 2 * self.padding - self.kernel + 1
        k = self.in_channels * self.kernel * self.kernel
        # uncompacted (every patch kept), the largest shape featurize gives
        feats = jnp.zeros((batch, side * side + 2 + k, k), dtype=dtype)
        return feats.at[:, -1, 0].set(side * side)
