from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.models import NanoGPT


@pytest.fixture(scope="module")
def gpt() -> tuple:
    m = NanoGPT()
    p, s = m.init(jax.random.key(0))
    # larger weights than the 0.02 init so that attention is far from uniform
    rng = np.random.default_rng(0)
    p = m.unflatten(m.flatten(p) + jnp.asarray(0.5 * rng.normal(size=960), jnp.float32))
    return m, p, s


def test_param_count_and_layout() -> None:
    m = NanoGPT()
    assert m.num_params == 960
    assert m.offsets() == {
        "transformer.wte.weight": (0, 200),
        "transformer.wpe.weight": (200, 328),
        "transformer.h.0.ln_1.weight": (328, 336),
        "transformer.h.0.ln_1.bias": (336, 344),
        "transformer.h.0.attn.c_attn.weight": (344, 536),
        "transformer.h.0.attn.c_proj.weight": (536, 600),
        "transformer.h.0.ln_2.weight": (600, 608),
        "transformer.h.0.ln_2.bias": (608, 616),
        "transformer.h.0.mlp.c_fc.weight": (616, 680),
        "transformer.h.0.mlp.c_proj.weight": (680, 744),
        "transformer.ln_f.weight": (744, 752),
        "transformer.ln_f.bias": (752, 760),
        "lm_head.weight": (760, 960),
    }
    assert m.buffers == ()


def test_general_config_counts() -> None:
    m = NanoGPT(vocab_size=11, block_size=6, n_embd=12, n_head=3, n_layer=2, mlp_ratio=4)
    c, per_layer = 12, 4 * 12 + 3 * 144 + 144 + 2 * 4 * 144
    assert m.num_params == 11 * c + 6 * c + 2 * per_layer + 2 * c + 11 * c
    p, s = m.init(jax.random.key(1))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, size=(2, 5)), jnp.int32)
    logits, _ = m.apply(p, s, tokens, train=True)
    assert logits.shape == (2, 5, 11)
    with pytest.raises(ConfigError, match="divisible"):
        NanoGPT(n_embd=8, n_head=3)


def test_init_distribution(check_normal) -> None:
    m = NanoGPT()
    init = jax.jit(jax.vmap(m.init))
    params, _ = init(jax.random.split(jax.random.key(3), 100))
    flat = np.asarray(jax.vmap(m.flatten)(params))
    for spec, (a, b) in zip(m.layout, m.offsets().values(), strict=True):
        block = flat[:, a:b]
        kind, _ = spec.init
        if spec.torch_name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            np.testing.assert_array_equal(block, 1.0)
        elif spec.torch_name.endswith(".bias"):
            np.testing.assert_array_equal(block, 0.0)
        else:
            assert kind == "normal"
            check_normal(block, 0.02)


def test_causal_mask(gpt) -> None:
    m, p, s = gpt
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 25, size=(3, 16))
    changed = tokens.copy()
    changed[:, 9:] = (changed[:, 9:] + rng.integers(1, 25, size=(3, 7))) % 25
    fwd = jax.jit(lambda t: m.apply(p, s, t, train=False)[0])
    a = np.asarray(fwd(jnp.asarray(tokens, jnp.int32)))
    b = np.asarray(fwd(jnp.asarray(changed, jnp.int32)))
    np.testing.assert_array_equal(a[:, :9], b[:, :9])
    assert np.abs(a[:, 9:] - b[:, 9:]).max() > 1e-3
    # a prefix alone gives the same logits as inside the longer sequence
    c = np.asarray(m.apply(p, s, jnp.asarray(tokens[:, :9], jnp.int32), train=False)[0])
    np.testing.assert_allclose(c, a[:, :9], rtol=1e-5, atol=1e-6)


def test_too_long_sequence_is_an_error(gpt) -> None:
    m, p, s = gpt
    with pytest.raises(ConfigError, match="block_size"):
        m.apply(p, s, jnp.zeros((1, 17), jnp.int32), train=False)


def numpy_forward(sd: dict, tokens: np.ndarray) -> np.ndarray:
    """Independent float64 forward pass of the default NanoGPT, from a state dict."""
    from math import erf, sqrt

    g = {k: np.asarray(v, np.float64) for k, v in sd.items()}

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g[name + ".weight"] + g[name + ".bias"]

    t = tokens.shape[1]
    x = g["transformer.wte.weight"][tokens] + g["transformer.wpe.weight"][:t]
    h = ln(x, "transformer.h.0.ln_1")
    q, k, v = np.split(h @ g["transformer.h.0.attn.c_attn.weight"].T, 3, axis=-1)
    att = q @ k.transpose(0, 2, 1) / np.sqrt(8.0)
    att = np.where(np.tril(np.ones((t, t), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    x = x + (att @ v) @ g["transformer.h.0.attn.c_proj.weight"].T
    h = ln(x, "transformer.h.0.ln_2") @ g["transformer.h.0.mlp.c_fc.weight"].T
    h = 0.5 * h * (1 + np.vectorize(lambda z: erf(z / sqrt(2)))(h))
    x = x + h @ g["transformer.h.0.mlp.c_proj.weight"].T
    return ln(x, "transformer.ln_f") @ g["lm_head.weight"].T


def test_forward_matches_numpy(gpt) -> None:
    m, p, s = gpt
    tokens = np.random.default_rng(6).integers(0, 25, size=(3, 16))
    logits, _ = m.apply(p, s, jnp.asarray(tokens, jnp.int32), train=True)
    ref = numpy_forward(m.to_state_dict(p), tokens)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_generate_follows_the_model(gpt) -> None:
    m, p, s = gpt
    prompt = jnp.asarray(np.random.default_rng(3).integers(0, 25, size=(2, 3)), jnp.int32)
    new = 20  # crosses the 16-token window
    gen = jax.jit(m.generate, static_argnums=(3,))
    out = np.asarray(gen(p, prompt, jax.random.key(4), new, 1.0))
    assert out.shape == (2, 23)
    np.testing.assert_array_equal(out[:, :3], prompt)
    assert out.min() >= 0 and out.max() < 25
    # deterministic given the key
    np.testing.assert_array_equal(out, gen(p, prompt, jax.random.key(4), new, 1.0))
    # at a tiny temperature sampling is arg-max: compare with a plain greedy loop that crops the
    # context to the last block_size tokens, as the original does
    greedy = np.asarray(gen(p, prompt, jax.random.key(5), new, 1e-6))
    sd = m.to_state_dict(p)
    seq = np.asarray(prompt)
    for _ in range(new):
        logits = numpy_forward(sd, seq[:, -16:])
        seq = np.concatenate([seq, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, seq)


def plain_loss(sd: dict, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    """A one-block, one-head NanoGPT's mean cross-entropy written with plain ``jnp`` ops only:
    autodiff of this is the reference for the model's hand-written tangents and barriers."""
    from jax.scipy.special import erf

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    t, (vocab, c) = tokens.shape[1], sd["lm_head.weight"].shape
    x = jax.nn.one_hot(tokens, vocab, dtype=sd["lm_head.weight"].dtype)
    x = x @ sd["transformer.wte.weight"]
    x = x + sd["transformer.wpe.weight"][:t]
    q, k, v = jnp.split(ln(x, "transformer.h.0.ln_1") @ sd["transformer.h.0.attn.c_attn.weight"].T,
                        3, axis=-1)
    att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), q @ k.transpose(0, 2, 1) / jnp.sqrt(c),
                    -jnp.inf)
    x = x + (jax.nn.softmax(att, -1) @ v) @ sd["transformer.h.0.attn.c_proj.weight"].T
    h = ln(x, "transformer.h.0.ln_2") @ sd["transformer.h.0.mlp.c_fc.weight"].T
    h = 0.5 * h * (1 + erf(h / jnp.sqrt(2.0)))
    x = x + h @ sd["transformer.h.0.mlp.c_proj.weight"].T
    logits = ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))


def test_derivatives_match_plain_autodiff(x64) -> None:
    """Gradient, dense Hessian, a forward-mode derivative and a vmapped gradient of the model's
    loss equal autodiff of a plain-jnp implementation (float64): the derivative barriers and the
    custom attention tangents change how XLA schedules the work, not what is computed."""
    from sgdjax.models.objective import make_loss_fn

    m = NanoGPT(vocab_size=7, block_size=6, n_embd=4)  # 212 parameters: a quick dense Hessian
    p, s = m.init(jax.random.key(1), jnp.float64)
    rng = np.random.default_rng(7)
    w = m.flatten(p) + jnp.asarray(0.5 * rng.normal(size=m.num_params))
    tokens = jnp.asarray(rng.integers(0, 7, size=(3, 6)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, 7, size=(3, 6)), jnp.int32)
    f = lambda v: make_loss_fn(m, train=True)(v, s, tokens, targets)[0]  # noqa: E731
    sizes = [int(np.prod(spec.shape)) for spec in m.layout]
    starts = np.cumsum([0] + sizes)

    def g(v):  # the flat vector in the documented torch order, split by hand
        sd = {spec.torch_name: v[a:a + n].reshape(spec.shape)
              for spec, a, n in zip(m.layout, starts, sizes, strict=False)}
        return plain_loss(sd, tokens, targets)

    jit = jax.jit
    assert float(jit(f)(w)) == pytest.approx(float(jit(g)(w)), rel=1e-13)
    np.testing.assert_allclose(jit(jax.grad(f))(w), jit(jax.grad(g))(w), rtol=1e-11, atol=1e-13)
    hf, hg = jit(jax.hessian(f))(w), jit(jax.hessian(g))(w)
    assert float(jnp.abs(hg).max()) > 0.1  # far from zero: the comparison means something
    np.testing.assert_allclose(hf, hg, rtol=1e-10, atol=1e-12)
    d = jnp.asarray(rng.normal(size=w.shape))
    fwd = lambda h: jit(lambda v: jax.jvp(h, (v,), (d,))[1])(w)  # noqa: E731
    np.testing.assert_allclose(fwd(f), fwd(g), rtol=1e-11)
    ws = jnp.stack([w, w + 0.1 * d])
    np.testing.assert_allclose(jit(jax.vmap(jax.grad(f)))(ws), jit(jax.vmap(jax.grad(g)))(ws),
                               rtol=1e-11, atol=1e-13)


def test_objective_is_cross_entropy_of_the_logits(gpt, x64) -> None:
    """The token-minor ``objective`` (what ``make_loss_fn`` trains with) gives the loss and the
    correct count of the logits, ties counted as argmax counts them (the first maximum)."""
    from sgdjax.models.objective import cross_entropy, num_correct

    m, p, s = gpt
    p = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    rng = np.random.default_rng(8)
    tokens = jnp.asarray(rng.integers(0, 25, size=(5, 16)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 25, size=(5, 16)), jnp.int32)
    logits, _ = m.apply(p, s, tokens, train=True)
    loss, correct = m.objective(p, s, tokens, labels)
    assert float(loss) == pytest.approx(float(cross_entropy(logits, labels)), rel=1e-14)
    assert int(correct) == int(num_correct(logits, labels)) > 0
    labels = labels.at[0].set(jnp.argmax(logits[0], axis=-1).astype(jnp.int32))  # 16 hits
    assert int(m.objective(p, s, tokens, labels)[1]) == int(num_correct(logits, labels))
    # a zero head: all 25 logits tie, argmax says word 0 everywhere
    flat = m.flatten(p)
    tied = m.unflatten(flat.at[-25 * 8:].set(0.0))
    assert int(m.objective(tied, s, tokens, labels)[1]) == int(jnp.sum(labels == 0))
    with pytest.raises(ConfigError, match="block_size"):
        m.objective(p, s, jnp.zeros((1, 17), jnp.int32), jnp.zeros((1, 17), jnp.int32))


@pytest.mark.parametrize("name", ["_scores", "_mix"])
def test_attention_products_tangents(x64, name) -> None:
    """The hand-written tangents of attention's two products: values, gradients and
    Hessian-vector products equal those of the plain products, with extra batch axes."""
    import sgdjax.models.nanogpt as ng

    fn = getattr(ng, name)
    plain = {"_scores": lambda a, b: a @ jnp.swapaxes(b, -1, -2), "_mix": lambda a, b: a @ b}[name]
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.normal(size=(2, 3, 5, 4 if name == "_scores" else 6)))
    b = jnp.asarray(rng.normal(size=(2, 3, 6, 4)))
    r = jnp.asarray(rng.normal(size=plain(a, b).shape))
    loss = lambda op: lambda a, b: jnp.sum(jnp.sin(op(a, b)) * r)  # noqa: E731
    np.testing.assert_allclose(fn(a, b), plain(a, b), rtol=1e-14)
    ga, gb = jax.grad(loss(fn), (0, 1))(a, b)
    pa, pb = jax.grad(loss(plain), (0, 1))(a, b)
    np.testing.assert_allclose(ga, pa, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gb, pb, rtol=1e-12, atol=1e-14)
    ta, tb = jnp.asarray(rng.normal(size=a.shape)), jnp.asarray(rng.normal(size=b.shape))
    hvp = lambda op: jax.jvp(jax.grad(loss(op), (0, 1)), (a, b), (ta, tb))[1]  # noqa: E731
    for x, y in zip(hvp(fn), hvp(plain), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("kwargs", "seq", "budget"), [
    ({"n_layer": 2}, 6, None),  # one head per layer (factored attention), full-length sequences
    ({"n_layer": 2, "n_head": 2, "mlp_ratio": 2}, 4, None),  # shorter: wpe rows 4, 5 unused
    ({}, 6, 0),                                      # over the memory budget: all products
])
def test_structured_hessian_equals_autodiff(x64, kwargs, seq, budget, monkeypatch) -> None:
    """``loss_hessian`` (tables and lm_head from per-sequence structure and closed forms) equals
    the autodiff Hessian of the same loss, entry by entry, in float64; so does its fallback to
    plain products when the per-sequence intermediates exceed the memory budget."""
    import sgdjax.models.nanogpt_hessian as nh

    if budget is not None:
        monkeypatch.setattr(nh, "STRUCTURED_BYTES", budget)
    from sgdjax.models.objective import make_loss_fn

    m = NanoGPT(vocab_size=7, block_size=6, n_embd=4, **kwargs)
    p, s = m.init(jax.random.key(2), jnp.float64)
    rng = np.random.default_rng(11)
    w = m.flatten(p) + jnp.asarray(0.4 * rng.normal(size=m.num_params))
    tokens = jnp.asarray(rng.integers(0, 7, size=(5, seq)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 7, size=(5, seq)), jnp.int32)
    f = lambda v: make_loss_fn(m, train=True)(v, s, tokens, labels)[0]  # noqa: E731
    ref = jax.jit(jax.hessian(f))(w)  # plain autodiff (compiles twice as fast as HVP blocks)
    got = jax.jit(lambda v: m.loss_hessian(v, s, tokens, labels))(w)
    assert float(jnp.abs(ref).max()) > 0.5
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * float(jnp.abs(ref).max()))
    np.testing.assert_array_equal(got, got.T)
    if seq < 6:  # unused positions: exactly zero rows
        wpe = slice(7 * 4 + seq * 4, 7 * 4 + 6 * 4)
        assert float(jnp.abs(got[wpe]).max()) == 0.0
