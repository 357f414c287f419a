from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sgdjax.errors import ConfigError
from sgdjax.models import CNN
from sgdjax.models.cnn import (
    CONV_IMPLS,
    IMAGE_SLICE,
    by_image_slices,
    conv_silu_pool,
    patch_features,
    unpack_patch_features,
)


@pytest.fixture(scope="module")
def setup() -> tuple:
    m = CNN()
    p, s = m.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    # non-trivial BN affine parameters so the folded path is really tested
    p["bn"]["weight"] = jnp.asarray(1 + 0.3 * rng.normal(size=12), jnp.float32)
    p["bn"]["bias"] = jnp.asarray(0.2 * rng.normal(size=12), jnp.float32)
    x = jnp.asarray(0.5 + 0.3 * rng.normal(size=(6, 1, 28, 28)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=6), jnp.int32)
    return m, p, s, x, y


def test_param_count_and_layout() -> None:
    m = CNN()
    assert m.num_params == 395
    assert m.offsets() == {
        "conv.weight": (0, 108),
        "bn.weight": (108, 120),
        "bn.bias": (120, 132),
        "fc1.weight": (132, 264),
        "fc1.bias": (264, 275),
        "fc2.weight": (275, 385),
        "fc2.bias": (385, 395),
    }
    assert [b.torch_name for b in m.buffers] == [
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]


def test_init_state_and_distribution(check_uniform) -> None:
    m = CNN()
    init = jax.jit(m.init)
    samples = [init(k) for k in jax.random.split(jax.random.key(7), 60)]
    p, s = samples[0]
    np.testing.assert_array_equal(p["bn"]["weight"], np.ones(12))
    np.testing.assert_array_equal(p["bn"]["bias"], np.zeros(12))
    np.testing.assert_array_equal(s["bn"]["running_mean"], np.zeros(12))
    np.testing.assert_array_equal(s["bn"]["running_var"], np.ones(12))
    assert s["bn"]["num_batches_tracked"] == 0
    assert s["bn"]["num_batches_tracked"].dtype == jnp.int32

    def stack(*path: str) -> np.ndarray:
        return np.stack([np.asarray(q[path[0]][path[1]]) for q, _ in samples])

    check_uniform(stack("conv", "weight"), 1 / 3)
    check_uniform(stack("fc1", "weight"), 1 / math.sqrt(12))
    check_uniform(stack("fc1", "bias"), 1 / math.sqrt(12))
    check_uniform(stack("fc2", "weight"), 1 / math.sqrt(11))
    check_uniform(stack("fc2", "bias"), 1 / math.sqrt(11))


def reference_forward(p: dict, s: dict, x: np.ndarray, train: bool) -> tuple:
    """Straightforward float64 numpy forward pass with PyTorch BatchNorm semantics."""
    x = np.asarray(x, np.float64)
    w = np.asarray(p["conv"]["weight"], np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((x.shape[0], 12, 28, 28))
    for dy in range(3):
        for dx in range(3):
            conv += w[None, :, 0, dy, dx, None, None] * xp[:, :, dy : dy + 28, dx : dx + 28]
    rm = np.asarray(s["bn"]["running_mean"], np.float64)
    rv = np.asarray(s["bn"]["running_var"], np.float64)
    if train:
        mean = conv.mean(axis=(0, 2, 3))
        var = conv.var(axis=(0, 2, 3))
        n = conv.shape[0] * 28 * 28
        new_rm = 0.9 * rm + 0.1 * mean
        new_rv = 0.9 * rv + 0.1 * var * n / (n - 1)
    else:
        mean, var, new_rm, new_rv = rm, rv, rm, rv
    g = np.asarray(p["bn"]["weight"], np.float64)
    b = np.asarray(p["bn"]["bias"], np.float64)
    h = (conv - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    h = h * g[None, :, None, None] + b[None, :, None, None]
    h = (h / (1 + np.exp(-h))).mean(axis=(2, 3))
    h = h @ np.asarray(p["fc1"]["weight"]).T + np.asarray(p["fc1"]["bias"])
    h = h / (1 + np.exp(-h))
    logits = h @ np.asarray(p["fc2"]["weight"]).T + np.asarray(p["fc2"]["bias"])
    return logits, new_rm, new_rv


def test_bn_running_stats_match_hand_computation(setup) -> None:
    m, p, s, x, _ = setup
    logits, s1 = m.apply(p, s, x, train=True)
    ref_logits, rm, rv = reference_forward(p, s, x, train=True)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1["bn"]["running_mean"], rm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s1["bn"]["running_var"], rv, rtol=1e-4, atol=1e-6)
    assert int(s1["bn"]["num_batches_tracked"]) == 1
    # a second step moves from the updated statistics (momentum chain), counter 2
    x2 = x[::-1] * 1.5 - 0.2
    _, s2 = m.apply(p, s1, x2, train=True)
    _, rm2, rv2 = reference_forward(p, s1, x2, train=True)
    np.testing.assert_allclose(s2["bn"]["running_mean"], rm2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s2["bn"]["running_var"], rv2, rtol=1e-4, atol=1e-6)
    assert int(s2["bn"]["num_batches_tracked"]) == 2
    # eval uses the running statistics and leaves the state alone
    ev, s3 = m.apply(p, s2, x, train=False)
    ref_ev, _, _ = reference_forward(p, s2, x, train=False)
    np.testing.assert_allclose(ev, ref_ev, rtol=1e-4, atol=1e-5)
    assert s3 is s2


def test_train_mode_depends_on_batch_composition(setup) -> None:
    m, p, s, x, _ = setup
    full, _ = m.apply(p, s, x, train=True)
    half, _ = m.apply(p, s, x[:3], train=True)
    assert not np.allclose(full[:3], half, atol=1e-4)
    ev_full, _ = m.apply(p, s, x, train=False)
    ev_half, _ = m.apply(p, s, x[:3], train=False)
    np.testing.assert_allclose(ev_full[:3], ev_half, rtol=1e-5, atol=1e-6)


def test_conv_impls_agree(setup) -> None:
    # forward values only: the default ("folded") path's gradients are checked against PyTorch in
    # float64 in test_torch_parity; the other paths are plain compositions of primitives
    m, p, s, x, _ = setup

    @jax.jit
    def run_all(p: dict, s: dict, x: jax.Array) -> dict:
        out = {}
        for impl in CONV_IMPLS:
            mi = CNN(conv_impl=impl)
            logits, new_state = mi.apply(p, s, x, train=True)
            out[impl] = (logits, new_state, mi.apply(p, new_state, x, train=False)[0])
        return out

    results = run_all(p, s, x)
    for impl in CONV_IMPLS:
        for a, b in zip(
            jax.tree.leaves(results[impl]), jax.tree.leaves(results["lax"]), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=impl)


def test_packed_patch_features_match_images(setup) -> None:
    """featurize packs patches and their per-image moments; the model gives the same logits,
    running statistics and gradients from them as from the images."""
    from sgdjax.models.objective import make_loss_fn

    m, p, s, x, y = setup
    feats = m.featurize(x)
    # no patch of these images is zero: all 784 are kept
    assert feats.shape == (6, 28 * 28 + 2 + 9, 9) == m.example_features(6).shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    # the patch of image 1 at position (row 3, col 5): its 3x3 neighbourhood, row-major
    np.testing.assert_allclose(feats[1, 3 * 28 + 5], xp[1, 0, 3:6, 5:8].ravel(), rtol=1e-6)
    patches = np.asarray(feats[:, :784], np.float64)
    np.testing.assert_allclose(feats[:, 784], patches.sum(1), rtol=1e-5)
    np.testing.assert_allclose(feats[:, 785:794], np.einsum("npk,npl->nkl", patches, patches),
                               rtol=1e-5)
    meta = np.tile(np.eye(9)[0] * 784, (6, 1))  # the position count
    np.testing.assert_array_equal(feats[:, 794], meta)
    np.testing.assert_array_equal(m.example_features(6)[:, 794], meta)
    for train in (True, False):
        (a, sa), (b, sb) = m.apply(p, s, x, train=train), m.apply(p, s, feats, train=train)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    loss = make_loss_fn(m, train=True)
    grad = jax.jit(jax.grad(lambda w, x: loss(w, s, x, y)[0]))
    w = m.flatten(p)
    np.testing.assert_allclose(grad(w, feats), grad(w, x), rtol=1e-4, atol=1e-6)
    # the other convolutions take the images as they are
    assert CNN(conv_impl="lax").featurize(x).shape == x.shape == CNN(
        conv_impl="lax").example_features(6).shape


def sparse_images(n: int, side: int, seed: int, dtype=jnp.float64) -> jax.Array:
    """Digit-like images: black (exactly 0) but for a bright blob of varying size and place,
    so that every image has a different number of non-zero 3x3 patches."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, side, side))
    for i in range(n):
        h, w = rng.integers(2, side // 2, size=2)
        r, c = rng.integers(0, side - h), rng.integers(0, side - w)
        x[i, 0, r:r + h, c:c + w] = rng.uniform(0.1, 1.0, size=(h, w))
    return jnp.asarray(x, dtype)


def test_featurize_drops_zero_patches(x64) -> None:
    """Compacted features keep exactly the non-zero patches (padded with zero ones to a
    multiple of 8) and give the same logits, running statistics, gradient and Hessian as the
    images themselves, in training and evaluation mode."""
    from sgdjax.models.objective import make_loss_fn

    side = 12  # small images: the two dense Hessians below are the slow part
    m, npos = CNN(image_size=side), side * side
    params, state = m.init(jax.random.key(1), jnp.float64)
    w = m.flatten(params)
    w = w + 0.3 * jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
    params = m.unflatten(w)
    x = sparse_images(7, side, seed=3)
    y = jnp.asarray(np.random.default_rng(4).integers(0, 10, size=7))
    feats = m.featurize(x)
    full = patch_features(x, 3, 1, compact=False)
    nonzero = np.any(np.asarray(full[:, :npos]) != 0, axis=-1).sum(1)
    rows = feats.shape[1] - 2 - 9
    assert rows == -(-nonzero.max() // 8) * 8 < npos
    patches, s1, s2, positions = (np.asarray(a) for a in unpack_patch_features(feats))
    np.testing.assert_array_equal(positions, npos)
    for i in range(7):  # the same patches in the same order, then zero patches
        keep = np.asarray(full[i, :npos])[np.any(np.asarray(full[i, :npos]) != 0, axis=-1)]
        np.testing.assert_array_equal(patches[i, :nonzero[i]], keep)
        np.testing.assert_array_equal(patches[i, nonzero[i]:], 0.0)
    np.testing.assert_array_equal(s1, full[:, npos])
    np.testing.assert_array_equal(s2, full[:, npos + 1:npos + 10])
    for train in (True, False):
        (a, sa), (b, sb) = m.apply(params, state, x, train=train), m.apply(
            params, state, feats, train=train)
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-14)
        for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
            np.testing.assert_allclose(v, u, rtol=1e-13, atol=1e-15)
        loss = make_loss_fn(m, train=train)
        grad = jax.jit(jax.grad(lambda w, x, loss=loss: loss(w, state, x, y)[0]))
        np.testing.assert_allclose(grad(w, feats), grad(w, x), rtol=1e-11, atol=1e-14)
    loss = make_loss_fn(m, train=True)
    want = jax.jit(jax.hessian(lambda v: loss(v, state, x, y)[0]))(w)
    got = jax.jit(m.loss_hessian)(w, state, feats, y)
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-12 * scale)
    # autodiff through the compacted features too (forward over reverse through the custom
    # derivative of conv_silu_pool)
    packed = jax.jit(jax.hessian(lambda v: loss(v, state, feats, y)[0]))(w)
    np.testing.assert_allclose(np.asarray(packed), np.asarray(want), rtol=0,
                               atol=1e-12 * scale)


def test_full_batch_in_slices_equals_plain_convolution(x64) -> None:
    """A batch larger than two image slices (full-batch GD) gives the loss, gradient and
    running statistics of the plain im2col convolution, which sees the whole batch at once."""
    from sgdjax.models.objective import make_loss_fn

    n = 2 * IMAGE_SLICE + 21
    x = sparse_images(n, 12, seed=5)
    y = jnp.asarray(np.random.default_rng(6).integers(0, 10, size=n))
    folded, plain = CNN(image_size=12), CNN(image_size=12, conv_impl="im2col")
    params, state = folded.init(jax.random.key(3), jnp.float64)
    w = folded.flatten(params)
    w = w + 0.3 * jax.random.normal(jax.random.key(4), w.shape, jnp.float64)

    def value_grad(model, x):
        loss = make_loss_fn(model, train=True)
        return jax.jit(jax.value_and_grad(lambda w: loss(w, state, x, y), has_aux=True))(w)

    (l_got, (s_got, c_got)), g_got = value_grad(folded, folded.featurize(x))
    (l_want, (s_want, c_want)), g_want = value_grad(plain, x)
    np.testing.assert_allclose(l_got, l_want, rtol=1e-13)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-11, atol=1e-14)
    assert int(c_got) == int(c_want)
    for u, v in zip(jax.tree.leaves(s_got), jax.tree.leaves(s_want), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n,extra", [(3, 0), (2 * IMAGE_SLICE + 9, 3)])
def test_conv_silu_pool_derivatives(x64, n: int, extra: int) -> None:
    """The hand-written tangent of conv_silu_pool (weight, bias and patch directions, with
    dropped zero patches) equals autodiff of the plain formula over every position; also for
    a batch large enough to go through slices of images (with a remainder), given packed rows
    of which only the first ``m`` are patches (``rows``)."""
    m, k, o, p = 5, 4, 2, 9
    keys = jax.random.split(jax.random.key(0), 8)
    patches, dpatches = (jax.random.normal(kk, (n, m, k), jnp.float64) for kk in keys[:2])
    weight, dweight = (jax.random.normal(kk, (o, k), jnp.float64) for kk in keys[2:4])
    bias, dbias = (jax.random.normal(kk, (o,), jnp.float64) for kk in keys[4:6])
    positions = jnp.full((n,), p, jnp.float64)
    # rows after the patches (the moments of packed features) must not enter
    junk = 1e3 * jax.random.normal(keys[7], (n, extra, k), jnp.float64)
    rows = m if extra else None

    def pack(x):
        return jnp.concatenate([x, junk], axis=1)

    def plain(patches, weight, bias):
        full = jnp.concatenate([patches, jnp.zeros((n, p - m, k), patches.dtype)], axis=1)
        return jnp.mean(jax.nn.silu(full @ weight.T + bias), axis=1)

    def custom(patches, weight, bias):
        return conv_silu_pool(pack(patches), weight, bias, positions, rows)

    prim = (patches, weight, bias)
    # jitted: op-by-op dispatch compiles every small kernel on its own, which is slower
    want, want_t = jax.jit(lambda p, t: jax.jvp(plain, p, t))(prim, (dpatches, dweight, dbias))
    got, got_t = jax.jit(lambda p, t: jax.jvp(custom, p, t))(prim, (dpatches, dweight, dbias))
    np.testing.assert_allclose(got, want, rtol=1e-14)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-13, atol=1e-15)
    ct = jax.random.normal(keys[6], (n, o), jnp.float64)
    for arg in range(3):
        g_want = jax.jit(jax.grad(lambda *a: jnp.sum(plain(*a) * ct), argnums=arg))(*prim)
        g_got = jax.jit(jax.grad(lambda *a: jnp.sum(custom(*a) * ct), argnums=arg))(*prim)
        np.testing.assert_allclose(g_got, g_want, rtol=1e-13, atol=1e-15)
    # second order through the custom rule
    h_want = jax.jit(jax.hessian(lambda b: jnp.sum(plain(patches, weight, b) * ct)))(bias)
    h_got = jax.jit(jax.hessian(lambda b: jnp.sum(custom(patches, weight, b) * ct)))(bias)
    np.testing.assert_allclose(h_got, h_want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n", [7, 8, 12, 19])
def test_by_image_slices(n: int) -> None:
    """Slices of 4 (with and without a remainder; up to 8 in one call) join to the whole."""
    x = jnp.arange(n * 3.0).reshape(n, 3)
    y = jnp.arange(n * 2).reshape(n, 2)
    calls = []

    def fn(a, b):
        calls.append(a.shape[0])
        return {"s": a.sum(1) * b[:, 0], "t": (a[:, :2] + b, None)}

    got = by_image_slices(fn, x, y, size=4)
    want = fn(x, y)
    np.testing.assert_array_equal(got["s"], want["s"])
    np.testing.assert_array_equal(got["t"][0], want["t"][0])
    assert got["t"][1] is None
    assert calls[:-1] == ([n] if n <= 8 else [4] + ([n % 4] if n % 4 else []))


def test_unknown_conv_impl() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'shift'"):
        CNN(conv_impl="shfit")


def test_lax_conv_is_pytorch_cross_correlation() -> None:
    # guards the reference used above: an asymmetric kernel must not be flipped
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1.0
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    out = lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    # out[i, j] = sum w[dy, dx] x[i+dy-1, j+dx-1] -> at (1, 1) picks w[2, 2]
    assert float(out[0, 0, 1, 1]) == 8.0
    assert float(out[0, 0, 3, 3]) == 0.0


@pytest.mark.parametrize(
    "kwargs, batch, image",
    # the default 28x28 model is checked the same way in test_featurize_drops_zero_patches
    [({"channels": 3, "hidden": 4, "in_channels": 2, "padding": 0}, 5, 6),
     ({"channels": 2, "hidden": 3, "n_classes": 4, "kernel": 5, "padding": 2}, 3, 7)],
)
def test_structured_hessian_equals_autodiff(x64, kwargs, batch, image) -> None:
    """The per-channel Hessian of the training loss (BatchNorm on batch statistics) equals
    jax.hessian to rounding, in the flat PyTorch order, away from init."""
    from sgdjax.models.objective import make_loss_fn

    model = CNN(image_size=image, **kwargs)
    params, state = model.init(jax.random.key(1), jnp.float64)
    w = model.flatten(params)
    w = w + 0.5 * jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
    x = jax.random.uniform(jax.random.key(3), (batch, model.in_channels, image, image),
                           jnp.float64)
    y = jax.random.randint(jax.random.key(4), (batch,), 0, model.n_classes)
    loss = make_loss_fn(model, train=True)
    want = jax.jit(jax.hessian(lambda v: loss(v, state, x, y)[0]))(w)
    got = jax.jit(model.loss_hessian)(w, state, x, y)
    assert got.shape == (model.num_params, model.num_params)
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0.05
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-12 * scale)
    packed = jax.jit(model.loss_hessian)(w, state, model.featurize(x), y)
    np.testing.assert_allclose(np.asarray(packed), np.asarray(want), rtol=0, atol=1e-12 * scale)
    # every block is exercised: conv/BN x conv/BN, conv/BN x head, head x head
    n_cb = model.channels * model.in_channels * model.kernel ** 2 + 2 * model.channels
    for block in (want[:n_cb, :n_cb], want[:n_cb, n_cb:], want[n_cb:, n_cb:]):
        assert float(jnp.max(jnp.abs(block))) > 1e-4


def test_structured_hessian_float32_close_to_float64(x64) -> None:
    model = CNN()
    params, state = model.init(jax.random.key(5), jnp.float64)
    w = model.flatten(params)
    x = jax.random.uniform(jax.random.key(6), (16, 1, 28, 28), jnp.float64)
    y = jax.random.randint(jax.random.key(7), (16,), 0, 10)
    h64 = jax.jit(model.loss_hessian)(w, state, x, y)
    h32 = jax.jit(model.loss_hessian)(w.astype(jnp.float32), state, x.astype(jnp.float32), y)
    assert h32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(h32), np.asarray(h64), rtol=0,
                               atol=2e-5 * float(jnp.max(jnp.abs(h64))))
