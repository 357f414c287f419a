"""Two interleaving half-moons (``make_moons``), a stratified split and train-only scaling.

Generated from a JAX key, so a setup's dataset depends only on its seed and needs no
scikit-learn. The construction follows the usual definition: ``n // 2`` points on the outer
moon ``(cos t, sin t)`` (label 0) and the rest on the inner moon ``(1 - cos t, 1 - sin t - 0.5)``
(label 1), ``t`` evenly spaced on ``[0, pi]``; the points are shuffled and i.i.d.
``N(0, noise²)`` is added to both coordinates. The numbers are not scikit-learn's (its RNG
differs); the distribution is the same.

The validation split is stratified: every class gives the same share of its points to
validation (``ceil(val_fraction·n)`` points in all, remainders going to the classes with the
largest fractional share). Features are standardised with the mean and (population) standard
deviation of the training split only, applied to both splits, as a StandardScaler fitted on
the training data would.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.data.types import ArraySplit
from sgdjax.errors import ConfigError

# fold_in streams of the data key: one per random choice.
_SHUFFLE, _NOISE, _SPLIT, _ORDER = 0, 1, 2, 3


@functools.partial(jax.jit, static_argnums=1)
def _sort_keys(key: jax.Array, n: int) -> jax.Array:
    """``n`` random 32-bit sort keys: ordering by them (stably) gives a uniform random
    permutation, up to ties (about n²/2³³, 0.2 % for n = 4000) that keep index order, as
    :func:`sgdjax.data.sampling.random_permutation`. One compiled draw instead of the several
    kernels of ``jax.random.permutation``."""
    return jax.random.bits(key, (n,), jnp.uint32)


@functools.partial(jax.jit, static_argnums=1)
def _noise(key: jax.Array, n: int) -> jax.Array:
    return jax.random.normal(key, (n, 2), jnp.float32)


def _permute(key: jax.Array, idx: np.ndarray) -> np.ndarray:
    """``idx`` in a random order drawn from ``key``."""
    return idx[np.argsort(np.asarray(_sort_keys(key, idx.size)), kind="stable")]


class MoonsData(NamedTuple):
    """Standardised splits (float32 features ``[N, 2]``, int32 labels ``[N]``) and the scaler."""

    train: ArraySplit
    val: ArraySplit
    mean: np.ndarray  # [2] float64, fitted on the raw training features
    std: np.ndarray  # [2] float64


def make_moons(key: jax.Array, n: int, noise: float) -> ArraySplit:
    """``n`` raw (unscaled) points: float32 ``[n, 2]`` and int32 labels ``[n]`` in random order."""
    if n < 2:
        raise ConfigError(f"data.n must be at least 2 (one point per moon), got {n}.")
    if not noise >= 0:
        raise ConfigError(f"data.noise must be a non-negative standard deviation, got {noise}.")
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    x = np.concatenate([
        np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
        np.stack([1.0 - np.cos(t_in), 1.0 - np.sin(t_in) - 0.5], axis=1),
    ])
    y = np.concatenate([np.zeros(n_out, np.int32), np.ones(n_in, np.int32)])
    order = _permute(jax.random.fold_in(key, _SHUFFLE), np.arange(n))
    eps = np.asarray(_noise(jax.random.fold_in(key, _NOISE), n), np.float64)
    x = x[order] + noise * eps
    return ArraySplit(x.astype(np.float32), y[order])


def stratified_counts(class_sizes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Validation points per class: ``ceil(val_fraction·n)`` in all, shared in proportion to the
    class sizes (largest remainders first, ties to the lower class)."""
    class_sizes = np.asarray(class_sizes, np.int64)
    n = int(class_sizes.sum())
    n_val = math.ceil(val_fraction * n)
    exact = class_sizes * n_val / n
    counts = np.floor(exact).astype(np.int64)
    short = n_val - int(counts.sum())
    # stable sort on the negated remainder: equal remainders keep class order
    for c in np.argsort(-(exact - counts), kind="stable")[:short]:
        counts[c] += 1
    return counts


def stratified_split(
    key: jax.Array, y: np.ndarray, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) with every class split in the same proportion;
    both index arrays come in random order."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction must lie strictly between 0 and 1, got {val_fraction}."
        )
    y = np.asarray(y)
    classes, sizes = np.unique(y, return_counts=True)
    counts = stratified_counts(sizes, val_fraction)
    if np.any(counts == 0) or np.any(counts == sizes):
        raise ConfigError(
            f"data.val_fraction={val_fraction} leaves a class with no training or no validation "
            f"points (class sizes {sizes.tolist()}, validation counts {counts.tolist()}); "
            "use more points (data.n) or a fraction nearer 0.5."
        )
    # One draw of sort keys for all points: each class is put in random order by its members'
    # keys, and its first n_val points go to validation.
    split_keys = np.asarray(_sort_keys(jax.random.fold_in(key, _SPLIT), y.size))
    train_parts, val_parts = [], []
    for c, n_val in zip(classes, counts, strict=True):
        members = np.flatnonzero(y == c)
        members = members[np.argsort(split_keys[members], kind="stable")]
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    # Mix the classes (otherwise each split would list all of class 0 first).
    order_keys = np.asarray(_sort_keys(jax.random.fold_in(key, _ORDER), y.size))
    out = []
    for parts in (train_parts, val_parts):
        idx = np.concatenate(parts)
        out.append(idx[np.argsort(order_keys[idx], kind="stable")])
    return out[0], out[1]


def standardise(
    train_x: np.ndarray, *others: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Scale every array with the per-feature mean and population std of ``train_x``.

    A feature with zero spread is left unscaled (divided by 1), as StandardScaler does."""
    x64 = np.asarray(train_x, np.float64)
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    scaled = [((np.asarray(a, np.float64) - mean) / std).astype(np.float32)
              for a in (train_x, *others)]
    return scaled, mean, std


def load_moons(
    key: jax.Array, n: int = 4000, noise: float = 0.25, val_fraction: float = 0.2
) -> MoonsData:
    """The moons dataset of a setup: generated, split (stratified) and standardised."""
    raw = make_moons(key, n, noise)
    train_idx, val_idx = stratified_split(key, raw.y, val_fraction)
    (train_x, val_x), mean, std = standardise(raw.x[train_idx], raw.x[val_idx])
    return MoonsData(
        ArraySplit(train_x, raw.y[train_idx]), ArraySplit(val_x, raw.y[val_idx]), mean, std
    )
