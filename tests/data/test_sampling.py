"""Sampler tests. Compilation dominates their cost (about a second per shape on a small CPU),
so a few samplers and batch counts are shared between tests: ``Sampler.batch``/``batches`` cache
their compiled code per (sampler, shape)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sgdjax.data.sampling import Sampler, make_sampler, random_permutation
from sgdjax.errors import ConfigError

KEY = jax.random.key(0)
RESHUFFLE = make_sampler("default", 60, 6)  # 10 steps per epoch
REPLACEMENT = make_sampler("replacement", 100, 64)
FULL = make_sampler("gd", 50, 7)
SAMPLERS = {"reshuffle": RESHUFFLE, "replacement": REPLACEMENT, "full": FULL}


def stacked(sampler: Sampler, key, steps) -> np.ndarray:
    """The reference: ``batch`` called step by step."""
    return np.stack([np.asarray(sampler.batch(key, s)) for s in steps])


def test_random_permutation_is_a_permutation():
    for n in (17, 6400):
        perm = np.asarray(random_permutation(KEY, n))
        assert perm.dtype == np.int32
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    assert not np.array_equal(random_permutation(KEY, 17), np.arange(17))


def test_reshuffle_every_index_once_per_epoch():
    s = RESHUFFLE
    assert s.kind == "reshuffle" and s.steps_per_epoch == 10
    all_steps = np.asarray(s.batches(KEY, 0, 40))  # 4 epochs
    assert all_steps.shape == (40, 6) and all_steps.dtype == np.int32
    epochs = all_steps.reshape(4, 60)
    for e in range(4):
        np.testing.assert_array_equal(np.sort(epochs[e]), np.arange(60))
    assert len({tuple(ep) for ep in epochs}) == 4  # a fresh permutation every epoch
    np.testing.assert_array_equal(all_steps, stacked(s, KEY, range(40)))


@pytest.mark.parametrize("kind", ["reshuffle", "replacement"])
def test_batches_equal_stacked_batch(kind):
    s = SAMPLERS[kind]
    if kind == "reshuffle":
        # starting mid-epoch, crossing 0, 1 and several epoch boundaries, and at a boundary
        ranges = [(3, 7), (7, 7), (10, 7), (95, 7), (4, 40), (0, 40)]
    else:
        ranges = [(250, 2000)]  # the shape of test_replacement_is_uniform (compiled once)
    for start, num in ranges:
        got = np.asarray(s.batches(KEY, jnp.int32(start), num))
        assert got.shape == (num, s.batch_size) and got.dtype == np.int32
        head = min(num, 40)  # the whole range, or its first 40 and last 5 steps
        np.testing.assert_array_equal(got[:head], stacked(s, KEY, range(start, start + head)))
        np.testing.assert_array_equal(
            got[-5:], stacked(s, KEY, range(start + num - 5, start + num))
        )
        if kind == "reshuffle" and (start, num) in [(3, 7), (10, 7), (4, 40)]:
            # a Python-int start draws exactly the epochs it touches: the same batches
            np.testing.assert_array_equal(np.asarray(s.batches(KEY, start, num)), got)
    assert s.batches(KEY, 5, 0).shape == (0, s.batch_size)


def test_reshuffle_drop_last():
    s = Sampler("reshuffle", 23, 5)
    assert s.steps_per_epoch == 4
    epochs = np.asarray(s.batches(KEY, 0, 8)).reshape(2, 20)
    for epoch in epochs:
        assert len(set(epoch.tolist())) == 20  # 3 random indices are skipped per epoch
    assert set(epochs[0]) != set(epochs[1])
    np.testing.assert_array_equal(np.asarray(s.batches(KEY, 3, 8)), stacked(s, KEY, range(3, 11)))
    with pytest.raises(ConfigError, match="multiple of the batch size"):
        Sampler("reshuffle", 23, 5, drop_last=False)
    assert Sampler("reshuffle", 20, 5, drop_last=False).steps_per_epoch == 4


def test_replacement_is_uniform():
    s = REPLACEMENT
    assert s.steps_per_epoch == 1
    draws = np.asarray(s.batches(jax.random.key(3), 0, 2000))
    assert draws.shape == (2000, 64) and draws.dtype == np.int32
    assert draws.min() >= 0 and draws.max() < 100
    counts = np.bincount(draws.ravel(), minlength=100)
    assert counts.sum() == 128000
    assert stats.chisquare(counts).pvalue > 1e-3
    # i.i.d. draws: a batch of 64 out of 100 almost surely repeats an index
    assert np.mean([len(set(b)) < 64 for b in draws[:100]]) > 0.9


def test_full():
    s = FULL
    assert s.kind == "full" and s.batch_size == 50 and s.steps_per_epoch == 1
    np.testing.assert_array_equal(s.batch(KEY, 12), np.arange(50))
    b = np.asarray(s.batches(KEY, 3, 4))
    assert b.shape == (4, 50) and b.dtype == np.int32
    np.testing.assert_array_equal(b, np.tile(np.arange(50), (4, 1)))


@pytest.mark.parametrize("kind", ["reshuffle", "replacement"])
def test_deterministic_per_key_and_different_across_keys(kind):
    s = SAMPLERS[kind]
    num = 40 if kind == "reshuffle" else 2000  # shapes compiled by other tests too
    a = np.asarray(s.batches(jax.random.key(1), 0, num))
    b = np.asarray(s.batches(jax.random.key(1), 0, num))
    c = np.asarray(s.batches(jax.random.key(2), 0, num))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.9


def test_raw_uint32_keys_work():
    raw = np.asarray(RESHUFFLE.batches(jax.random.PRNGKey(1), 0, 40))
    np.testing.assert_array_equal(raw, np.asarray(RESHUFFLE.batches(jax.random.PRNGKey(1), 0, 40)))
    np.testing.assert_array_equal(np.sort(raw[:10].ravel()), np.arange(60))
    assert not np.array_equal(raw, np.asarray(RESHUFFLE.batches(jax.random.PRNGKey(2), 0, 40)))


@pytest.mark.parametrize("kind", ["reshuffle", "replacement", "full"])
def test_jit_and_scan_with_traced_step(kind):
    s = SAMPLERS[kind]
    expected = stacked(s, KEY, range(5, 30))

    def body(carry, step):
        idx = s.batch(KEY, step)
        return carry + idx.sum(dtype=jnp.int32), idx

    total, scanned = jax.jit(lambda: jax.lax.scan(body, jnp.int32(0), jnp.arange(5, 30)))()
    np.testing.assert_array_equal(scanned, expected)
    assert int(total) == int(expected.sum())
    np.testing.assert_array_equal(jax.jit(s.batch)(KEY, jnp.int32(17)), expected[12])


def test_vmap_over_keys_and_uniform_permutations():
    s = RESHUFFLE
    keys = jax.random.split(jax.random.key(7), 3000)
    out = np.asarray(jax.vmap(lambda k: s.batches(k, 0, 40))(keys))
    assert out.shape == (3000, 40, 6)
    for r in (0, 1, 2999):
        np.testing.assert_array_equal(out[r], np.asarray(s.batches(keys[r], 0, 40)))
    perms = out.reshape(3000 * 4, 60)  # 4 epochs per run
    np.testing.assert_array_equal(
        np.sort(perms, axis=1), np.broadcast_to(np.arange(60), perms.shape)
    )
    # where element 0 lands, over 12000 permutations, is uniform over the 60 positions
    counts = np.bincount(np.argmax(perms == 0, axis=1), minlength=60)
    assert stats.chisquare(counts).pvalue > 1e-3
    # and which element comes first is uniform too
    assert stats.chisquare(np.bincount(perms[:, 0], minlength=60)).pvalue > 1e-3


def test_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'replacement'"):
        make_sampler("replacment", 100, 10)
    with pytest.raises(ConfigError, match="between 1 and the dataset size 100"):
        make_sampler("reshuffle", 100, 101)
    with pytest.raises(ConfigError, match="non-empty"):
        make_sampler("full", 0, 1)
    with pytest.raises(ConfigError, match="Unknown sampler kind"):
        Sampler("shuffle", 10, 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be an integer, got 6400.0"):
        make_sampler("reshuffle", 6400.0, 64)  # type: ignore[arg-type]
    assert make_sampler("reshuffle", np.int64(100), 10).n == 100
    assert make_sampler(" Default ", 100, 10).kind == "reshuffle"
    assert make_sampler("full", 100, 10).batch_size == 100


def test_int32_indices_under_x64():
    expected = {k: np.asarray(SAMPLERS[k].batches(KEY, 3, 12)) for k in ("reshuffle", "full")}
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        for kind, want in expected.items():
            got = SAMPLERS[kind].batches(KEY, jnp.int64(3), 12)
            assert got.dtype == jnp.int32
            np.testing.assert_array_equal(got, want)
        assert REPLACEMENT.batch(KEY, jnp.int64(3)).dtype == jnp.int32
    finally:
        jax.config.update("jax_enable_x64", before)


def test_host_and_xla_permutations_agree():
    """The CPU path (numpy sort of packed keys) returns XLA's stable argsort exactly, including
    under vmap, and ties are broken by index."""
    import numpy as np

    from sgdjax.data import sampling

    keys = jax.random.split(jax.random.key(11), 6)
    host = jax.jit(jax.vmap(lambda k: sampling.random_permutation(k, 777)))(keys)
    xla = jax.vmap(lambda k: sampling._xla_stable_argsort(
        jax.random.bits(k, (777,), jnp.uint32)))(keys)
    np.testing.assert_array_equal(np.asarray(host), np.asarray(xla))
    ties = np.array([[5, 1, 5, 0, 1]], np.uint32)
    np.testing.assert_array_equal(sampling._numpy_stable_argsort(ties), [[3, 1, 4, 0, 2]])
    # large inputs are sorted in row blocks on several threads: still the stable argsort
    big = np.random.default_rng(1).integers(0, 2**12, (5, 3, 300_000), dtype=np.uint32)
    np.testing.assert_array_equal(sampling._numpy_stable_argsort(big),
                                  np.argsort(big, axis=-1, kind="stable"))
