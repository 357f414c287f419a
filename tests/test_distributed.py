"""Host copies of sharded outputs (``gather_reusing``), on 4 simulated CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.distributed import gather_reusing

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sgdjax.distributed import gather_reusing
    assert jax.device_count() == 4
    mesh = Mesh(np.asarray(jax.devices()), ("runs",))
    by_run, rep = NamedSharding(mesh, P("runs")), NamedSharding(mesh, P())
    buffers = {}
    seen = []
    for step in range(3):
        a = jax.device_put(jnp.arange(8 * 5, dtype=jnp.float64).reshape(8, 5) + step, by_run)
        r = jax.device_put(jnp.full((3,), float(step)), rep)
        tree = {"a": a, "r": r, "n": 7}
        out = gather_reusing(tree, buffers)
        np.testing.assert_array_equal(out["a"], np.arange(40.0).reshape(8, 5) + step)
        np.testing.assert_array_equal(out["r"], np.full(3, float(step)))
        assert out["n"] == 7
        seen.append(id(out["a"]))
    assert len(set(seen)) == 1, "the host buffer of a sharded leaf is reused"
    assert len(buffers) == 2
    print("ok")
""")


def test_gather_reusing_on_four_devices() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_gather_reusing_single_device_is_a_view() -> None:
    a = jnp.arange(12.0).reshape(3, 4)
    buffers: dict = {}
    out = gather_reusing({"a": a, "b": [a[0]]}, buffers)
    np.testing.assert_array_equal(out["a"], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(out["b"][0], np.arange(4.0))
    assert isinstance(out["a"], np.ndarray) and not buffers
    if jax.default_backend() == "cpu":
        assert not out["a"].flags.owndata  # the device buffer itself, no host copy
