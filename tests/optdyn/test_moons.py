"""make_moons, the stratified split and train-only standardisation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sgdjax.data.moons import load_moons, make_moons, stratified_counts, stratified_split
from sgdjax.errors import ConfigError
from sgdjax.optdyn.runs import data_key


@pytest.fixture(scope="module")
def moons():
    return load_moons(data_key(42), 4000, 0.25, 0.2)


def test_shapes_dtypes_and_class_balance(moons):
    assert moons.train.x.shape == (3200, 2) and moons.val.x.shape == (800, 2)
    assert moons.train.x.dtype == np.float32 and moons.train.y.dtype == np.int32
    assert np.bincount(moons.train.y).tolist() == [1600, 1600]
    assert np.bincount(moons.val.y).tolist() == [400, 400]


def test_standardised_on_train_only(moons):
    np.testing.assert_allclose(moons.train.x.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(moons.train.x.std(0), 1.0, atol=1e-5)
    # validation uses the training statistics, so it is only approximately standardised
    assert np.all(np.abs(moons.val.x.mean(0)) < 0.15)
    assert not np.allclose(moons.val.x.mean(0), 0.0, atol=1e-6)
    # undoing the scaling gives the raw moons: x in about [-1, 2], y in about [-0.5, 1]
    raw = np.concatenate([moons.train.x, moons.val.x]) * moons.std + moons.mean
    np.testing.assert_allclose(raw.mean(0), [0.5, 0.25], atol=0.03)


def test_noise_free_points_lie_on_the_two_moons():
    raw = make_moons(jax.random.key(0), 4000, 0.0)
    outer, inner = raw.x[raw.y == 0].astype(np.float64), raw.x[raw.y == 1].astype(np.float64)
    assert len(outer) == 2000 and len(inner) == 2000
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1.0, inner[:, 1] - 0.5), 1.0, atol=1e-6)
    assert outer[:, 1].min() >= -1e-7 and inner[:, 1].max() <= 0.5 + 1e-7


def test_noise_has_the_requested_spread():
    key = jax.random.key(3)
    clean, noisy = make_moons(key, 4000, 0.0), make_moons(key, 4000, 0.25)
    np.testing.assert_array_equal(clean.y, noisy.y)  # same shuffle, noise added afterwards
    eps = (noisy.x - clean.x).astype(np.float64)
    np.testing.assert_allclose(eps.std(0), 0.25, rtol=0.05)
    np.testing.assert_allclose(eps.mean(0), 0.0, atol=0.02)


def test_reproducible_from_the_key():
    a, b = load_moons(data_key(1)), load_moons(data_key(1))
    c = load_moons(data_key(2))
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.train.x, c.train.x)


def test_stratified_counts_closed_form():
    # 25 % of 10 -> ceil(2.5) = 3 points; exact shares 2.1 and 0.9 -> 2 + 1
    assert stratified_counts(np.array([7, 3]), 0.25).tolist() == [2, 1]
    assert stratified_counts(np.array([2000, 2000]), 0.2).tolist() == [400, 400]
    assert stratified_counts(np.array([5, 5]), 0.15).tolist() == [1, 1]  # ceil(1.5) = 2
    assert stratified_counts(np.array([30, 20, 10]), 0.3).tolist() == [9, 6, 3]
    # ceil(4.5) = 5 points, three equal remainders of 2/3: the lower classes first
    assert stratified_counts(np.array([3, 3, 3]), 0.5).tolist() == [2, 2, 1]


def test_split_is_a_stratified_partition():
    y = make_moons(data_key(42), 4000, 0.25).y
    tr, va = stratified_split(data_key(42), y, 0.2)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(4000))
    assert np.bincount(y[va]).tolist() == [400, 400]
    assert abs(np.mean(y[va[:100]]) - 0.5) < 0.2  # the classes are mixed, not in blocks


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1])
def test_bad_fraction_is_a_config_error(frac):
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split(jax.random.key(0), np.array([0, 1] * 5), frac)
