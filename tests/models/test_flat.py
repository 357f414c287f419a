from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.models import (
    CNN,
    MLP,
    NanoGPT,
    build_model,
    cross_entropy,
    make_loss_fn,
    num_correct,
)

NAMES = ["mlp", "cnn", "nanogpt"]
COUNTS = {"mlp": 386, "cnn": 395, "nanogpt": 960}


def batch(name: str, n: int = 4, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    if name == "nanogpt":
        tokens = rng.integers(0, 25, size=(n, 9))
        return jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)
    x = rng.uniform(size=(n, 1, 28, 28)).astype(np.float32)
    y = jnp.asarray(rng.integers(0, 10, size=n), jnp.int32)
    return build_model(name).featurize(x), y


def assert_trees_equal(a: object, b: object) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name", NAMES)
def test_flat_round_trip(name: str) -> None:
    m = build_model(name)
    p, s = m.init(jax.random.key(1))
    w = m.flatten(p)
    assert w.shape == (COUNTS[name],) and w.dtype == jnp.float32
    assert_trees_equal(m.unflatten(w), p)
    w = np.asarray(w)
    v = jnp.asarray(np.random.default_rng(0).normal(size=m.num_params), jnp.float32)
    np.testing.assert_array_equal(m.flatten(m.unflatten(v)), v)
    # the flat vector is the state-dict tensors, flattened row-major, in layout order
    sd = m.to_state_dict(p, s)
    expected = np.concatenate([sd[spec.torch_name].ravel() for spec in m.layout])
    np.testing.assert_array_equal(w, expected)
    for spec, (a, b) in zip(m.layout, m.offsets().values(), strict=True):
        np.testing.assert_array_equal(w[a:b].reshape(spec.shape), sd[spec.torch_name])
    # unflatten composes with vmap (a batch of vectors gives leaves with a leading axis)
    vs = jnp.stack([v, 2 * v, 3 * v])
    batched = jax.vmap(m.unflatten)(vs)
    np.testing.assert_array_equal(jax.vmap(m.flatten)(batched), vs)
    with pytest.raises(ConfigError, match="length"):
        m.unflatten(v[:-1])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    m = build_model(name)
    p, s = m.init(jax.random.key(2))
    x, _ = batch(name)
    _, s = m.apply(p, s, x, train=True)  # non-trivial BN statistics for the CNN
    sd = m.to_state_dict(p, s)
    assert list(sd) == [spec.torch_name for spec in (*m.layout, *m.buffers)]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    p2, s2 = m.from_state_dict(sd)
    assert_trees_equal(p2, p)
    assert_trees_equal(s2, s)
    if name == "cnn":
        assert sd["bn.num_batches_tracked"].dtype == np.int64
        assert int(sd["bn.num_batches_tracked"]) == 1
        assert s2["bn"]["num_batches_tracked"].dtype == jnp.int32
    else:
        assert s == {} and s2 == {}


def test_state_dict_errors_name_the_keys() -> None:
    m = CNN()
    p, s = m.init(jax.random.key(0))
    sd = m.to_state_dict(p, s)
    missing = {k: v for k, v in sd.items() if k != "bn.running_var"}
    with pytest.raises(ConfigError, match=r"missing keys: bn\.running_var"):
        m.from_state_dict(missing)
    extra = {**sd, "fc3.weight": np.zeros((2, 2))}
    with pytest.raises(ConfigError, match=r"unexpected keys: fc3\.weight"):
        m.from_state_dict(extra)
    wrong = {**sd, "fc1.weight": np.zeros((12, 11))}
    with pytest.raises(ConfigError, match=r"fc1\.weight has shape \[12, 11\], expected \[11, 12\]"):
        m.from_state_dict(wrong)


def test_state_dict_by_order_and_ignored_mask_buffer() -> None:
    m = MLP()
    p, _ = m.init(jax.random.key(3))
    sd = m.to_state_dict(p)
    new_names = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    renamed = dict(zip(new_names, sd.values(), strict=True))
    with pytest.raises(ConfigError, match="missing keys"):
        m.from_state_dict(renamed)
    p2, _ = m.from_state_dict(renamed, by_order=True)
    assert_trees_equal(p2, p)
    order = ["fc2.weight", "fc1.bias", "fc1.weight", "fc2.bias"]
    swapped = dict(zip(new_names, [sd[k] for k in order], strict=True))
    with pytest.raises(ConfigError, match="net.0.weight"):
        m.from_state_dict(swapped, by_order=True)

    g = NanoGPT()
    gp, _ = g.init(jax.random.key(4))
    gsd = g.to_state_dict(gp)
    gsd["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16)))  # nanoGPT's mask buffer
    gp2, _ = g.from_state_dict(gsd)
    assert_trees_equal(gp2, gp)


def test_cross_entropy_and_num_correct() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 5, 7)) * 3
    labels = rng.integers(0, 7, size=(2, 5))
    ref_logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -np.take_along_axis(ref_logp, labels[..., None], -1).mean()
    got = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got.shape == ()
    # numerically stable for huge logits
    big = jnp.asarray([[1e4, 0.0, -1e4]], jnp.float32)
    np.testing.assert_allclose(cross_entropy(big, jnp.asarray([1])), 1e4, rtol=1e-6)
    assert float(cross_entropy(big, jnp.asarray([0]))) == 0.0
    nc = num_correct(jnp.asarray(logits), jnp.asarray(labels))
    assert nc.dtype == jnp.int32 and int(nc) == int((logits.argmax(-1) == labels).sum())


def test_classes_on_another_axis() -> None:
    """``axis`` moves the classes: the same loss, and the same count as argmax, ties included
    (argmax takes the first maximum)."""
    rng = np.random.default_rng(6)
    logits = np.round(rng.normal(size=(4, 6, 7)), 0)  # rounded: many ties
    labels = rng.integers(0, 7, size=(4, 6))
    labels[0] = logits[0].argmax(-1)  # six sure hits
    moved = jnp.asarray(np.moveaxis(logits, -1, 0))  # [7, 4, 6]
    np.testing.assert_allclose(cross_entropy(moved, jnp.asarray(labels), axis=0),
                               cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                               rtol=1e-6)
    want = int((logits.argmax(-1) == labels).sum())
    assert want >= 6
    for axis in (0, 1, 2):
        m, y = jnp.asarray(np.moveaxis(logits, -1, axis)), jnp.asarray(labels)
        assert int(num_correct(m, y, axis=axis)) == want
    tied = jnp.zeros((7, 10))  # all classes tie: argmax says class 0
    y = jnp.asarray(np.arange(10) % 7)
    assert int(num_correct(tied, y, axis=0)) == int(jnp.sum(y == 0)) == 2


def test_hessian_of_flat_loss_mlp() -> None:
    m = MLP()
    p, s = m.init(jax.random.key(7))
    x, y = batch("mlp", n=8)
    loss_fn = make_loss_fn(m, train=False)
    h = jax.jit(jax.hessian(lambda w: loss_fn(w, s, x, y)[0]))(m.flatten(p))
    assert h.shape == (386, 386)
    np.testing.assert_allclose(h, h.T, atol=1e-6)
    # second-layer bias block of the CE Hessian is diag(p̄) - mean(p pᵀ), a known closed form
    probs = jax.nn.softmax(m.apply(p, s, x, train=False)[0])
    closed = jnp.diag(probs.mean(0)) - jnp.einsum("ni,nj->ij", probs, probs) / 8
    np.testing.assert_allclose(h[376:, 376:], closed, rtol=1e-4, atol=1e-6)


def test_build_model_errors() -> None:
    assert isinstance(build_model("cnn", conv_impl="lax"), CNN)
    with pytest.raises(ConfigError, match="Did you mean 'nanogpt'.*Allowed: mlp, cnn, nanogpt"):
        build_model("nanogtp")
    with pytest.raises(ConfigError, match="Did you mean 'hidden'"):
        build_model("mlp", hiden=4)


def test_models_are_hashable_values() -> None:
    assert MLP() == MLP() and hash(CNN()) == hash(CNN())
    assert MLP(hidden=4) != MLP()


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", NAMES)
def test_float64_loss_fn_on_flat_vector(name: str) -> None:
    m = build_model(name)
    p, s = m.init(jax.random.key(8), jnp.float64)
    assert {leaf.dtype for leaf in jax.tree.leaves(p)} == {jnp.dtype(jnp.float64)}
    x, y = batch(name, n=5)  # float32 features are cast to the parameters' dtype
    loss_fn = make_loss_fn(m, train=True)

    @jax.jit
    def run(w: jax.Array) -> tuple:
        out = jax.value_and_grad(loss_fn, has_aux=True)(w, s, x, y)
        logits, ref_s = m.apply(m.unflatten(w), s, x, train=True)
        return out, (logits, ref_s), m.flatten(m.unflatten(w + 1e-12)) - w

    w = m.flatten(p)
    ((loss, (new_s, nc)), g), (logits, ref_s), tiny = run(w)
    assert w.dtype == logits.dtype == loss.dtype == g.dtype == jnp.float64
    # float64 really is float64: a 1e-12 increment survives
    assert float(jnp.max(jnp.abs(tiny - 1e-12))) < 1e-13
    np.testing.assert_allclose(loss, cross_entropy(logits, y), rtol=1e-12)
    assert int(nc) == int(num_correct(logits, y))
    assert_trees_equal(new_s, ref_s)
    assert g.shape == (m.num_params,) and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.linalg.norm(g)) > 0
    if name == "cnn":
        assert new_s["bn"]["running_mean"].dtype == jnp.float64
        assert new_s["bn"]["running_var"].dtype == jnp.float64
        assert new_s["bn"]["num_batches_tracked"].dtype == jnp.int32
        assert int(new_s["bn"]["num_batches_tracked"]) == 1
    if name == "mlp":
        # float32 parameters with float64 data stay float32
        p32, s32 = m.init(jax.random.key(8), jnp.float32)
        assert m.apply(p32, s32, x.astype(jnp.float64), train=False)[0].dtype == jnp.float32
