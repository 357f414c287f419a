from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.slices import join_slices, map_slices


@pytest.mark.parametrize("n", [3, 4, 8, 11])
def test_map_slices_whole_slices_and_remainder(n: int) -> None:
    x = jnp.arange(n * 2.0).reshape(n, 2)
    y = jnp.arange(n)
    full, tail = map_slices(lambda a, b: (a.sum(), b * 10), x, y, size=4)
    n_full, rest = divmod(n, 4)
    if n_full:
        np.testing.assert_array_equal(full[0], np.asarray(x[:n_full * 4]).reshape(n_full, 8)
                                      .sum(1))
        np.testing.assert_array_equal(full[1], np.asarray(y[:n_full * 4]).reshape(n_full, 4)
                                      * 10)
    else:
        assert full is None
    if rest:
        assert float(tail[0]) == float(x[n_full * 4:].sum())
        np.testing.assert_array_equal(tail[1], y[n_full * 4:] * 10)
    else:
        assert tail is None


@pytest.mark.parametrize("n", [3, 4, 9])
def test_join_slices_equals_the_whole(n: int) -> None:
    x = jax.random.normal(jax.random.key(0), (n, 3))

    def fn(a):
        return {"row": jnp.tanh(a) @ jnp.arange(3.0), "same": a * 2}

    got = jax.jit(lambda x: join_slices(fn, x, size=4))(x)
    want = fn(x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
        assert got[k].shape == want[k].shape
