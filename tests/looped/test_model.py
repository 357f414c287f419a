"""The models: parameter counts, init, equivalences, causality, and every loop variant against a
plain Python reference loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.models.looped import LoopedTransformer, interleave, loop_predictions

SMALL = dict(n_dims=3, n_positions=6, n_embd=16, n_head=2)
# Model code takes any key; an "rbg" key compiles the initialisation about twice as fast.
KEY = jax.random.key(4, impl="rbg")


def _tokens(n: int = 5, batch: int = 2, d: int = 3, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)  # NumPy inputs: nothing extra to compile
    tokens = np.zeros((batch, 2 * n, d), np.float32)
    tokens[:, ::2] = rng.normal(size=(batch, n, d))
    tokens[:, 1::2, 0] = rng.normal(size=(batch, n))
    return jnp.asarray(tokens)


def test_token_layout() -> None:
    xs = np.arange(12.0).reshape(1, 2, 6)
    tokens = np.asarray(interleave(jnp.asarray(xs), jnp.asarray([[7.0, 8.0]])))
    np.testing.assert_array_equal(tokens[0], [xs[0, 0], [7, 0, 0, 0, 0, 0], xs[0, 1],
                                              [8, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("n_layer,expected", [(1, 790_272), (12, 9_477_632)])
def test_backbone_parameter_counts_match_the_original(n_layer: int, expected: int) -> None:
    """0.79M (looped, 1 layer) and 9.48M (12-layer baseline): backbone without positions."""
    m = LoopedTransformer(family="gpt2" if n_layer > 1 else "gpt2_loop", n_layer=n_layer)
    shapes = jax.eval_shape(m.init, jax.random.key(0))
    assert m.num_params(shapes, backbone_only=True) == expected
    assert shapes["wpe"].shape == (203, 256)


def test_init_distributions() -> None:
    m = LoopedTransformer(family="gpt2", n_dims=20, n_positions=41, n_embd=128, n_layer=4,
                          n_head=8)
    p = jax.tree.map(np.asarray, m.init(KEY))
    attn = p["layers"]["attn"]
    assert attn["c_attn"]["kernel"].shape == (4, 128, 384)
    assert abs(attn["c_attn"]["kernel"].std() - 0.02) < 0.0005
    resid = 0.02 / math.sqrt(2 * 4)
    assert abs(attn["c_proj"]["kernel"].std() - resid) < 0.0003
    assert abs(p["layers"]["mlp"]["c_proj"]["kernel"].std() - resid) < 0.0003
    assert np.all(attn["c_attn"]["bias"] == 0) and np.all(p["layers"]["ln_1"]["scale"] == 1)
    assert abs(p["wpe"].std() - 0.02) < 0.001
    # read_in keeps PyTorch's default: U(-1/sqrt(20), 1/sqrt(20)) for weight and bias
    for leaf in p["read_in"]["Dense_0"].values():
        assert np.abs(leaf).max() <= 1 / math.sqrt(20)
    assert abs(p["read_in"]["Dense_0"]["kernel"].std() - 1 / math.sqrt(60)) < 0.005


def test_one_iteration_equals_a_one_layer_transformer() -> None:
    """Z_1 = M(0 + P) is the 1-layer transformer; weight tying (no injection) with one
    application is too."""
    loop = LoopedTransformer(family="gpt2_loop", n_layer=1, **SMALL)
    plain = LoopedTransformer(family="gpt2", n_layer=1, **SMALL)
    tied = LoopedTransformer(family="gpt2_tying", n_layer=1, **SMALL)
    params = loop.init(KEY)
    tokens = _tokens()
    looped = loop_predictions(loop, params, tokens, 1)
    assert looped.shape == (1, 2, 5)
    one_layer, once_tied = jax.jit(lambda p, t: (plain.forward(p, t), tied.forward(p, t)))(
        params, tokens)
    np.testing.assert_allclose(looped[0], one_layer, atol=1e-6)
    np.testing.assert_allclose(once_tied, one_layer, atol=1e-6)


def _reference_loop(m: LoopedTransformer, params, tokens, n_iter: int, keep) -> np.ndarray:
    """Z_{t+1} = M(mask(Z_t) (+|*) P (+ Z_{t-1})), written out step by step in NumPy around
    the model's compiled pieces (read-in, one layer, ln_f, read-out)."""
    embed, layer = jax.jit(m.embed), jax.jit(m.layer)
    ln_f, readout = jax.jit(m._ln_f), jax.jit(m.readout)
    p = np.asarray(embed(params, tokens))
    keep = np.asarray(keep)[:, None]
    fill = 1.0 if m.loop_func == "mul" else 0.0
    pos = np.asarray(params["wpe"][: p.shape[-2]])
    z, z_prev, out = np.full_like(p, fill), np.zeros_like(p), []
    for t in range(n_iter * m.units_per_loop):
        zm = np.where(keep, z, fill)
        h = zm * p if m.loop_func == "mul" else zm + p
        if m.skip_connection:
            h = h + z_prev
        h = h + pos
        for j in ([t % m.n_layer] if m.units_per_loop > 1 else range(m.n_layer)):
            if j and m.mask_per_layer and m.units_per_loop == 1:
                h = np.where(keep, h, fill)
            h = np.asarray(layer(params, j, h))
        z_prev, z = z, np.asarray(ln_f(params, h))
        out.append(np.asarray(readout(params, z)))
    return np.stack(out)


@pytest.mark.parametrize("variant", [
    # an A B block of LSTM layers, seed-002 truncation (also inside the block), product loop
    dict(n_layer=2, n_last_tokens=4, mask_per_layer=True, loop_func="mul", block_type="lstm"),
    # seed 003: every layer its own step, skip connection, keep half the state, SSM blocks
    dict(n_layer=2, feed_block=True, skip_connection=True, save_n_tokens=0.5,
         block_type="ssm", ssm_state=4),
])
def test_loop_variants_match_the_reference_and_stay_causal(variant: dict) -> None:
    """Every variant against a plain Python loop. A prediction never depends on later tokens
    and the keep mask counts from the live prompt, so a prompt padded to the curriculum's
    largest size predicts its live points exactly as the short prompt would (what lets the
    points curriculum run without recompiling)."""
    m = LoopedTransformer(**{**SMALL, **variant})
    params = m.init(KEY)
    tokens = _tokens()
    got = loop_predictions(m, params, tokens, 2, 5)  # n traced: one program for every n
    np.testing.assert_allclose(got, _reference_loop(m, params, tokens, 2, m.keep_mask(5, 10)),
                               atol=2e-5)
    # 3 live points: whatever follows them (here garbage) changes none of their predictions
    garbage = np.array(tokens)
    garbage[:, 6:] = 9.0
    live3 = loop_predictions(m, params, tokens, 2, 3)
    np.testing.assert_allclose(
        live3[..., :3], loop_predictions(m, params, jnp.asarray(garbage), 2, 3)[..., :3],
        atol=1e-5)
    assert not np.allclose(live3[..., :3], got[..., :3])  # the kept positions moved with n


def test_keep_masks() -> None:
    """Which of the 82 positions of a 41-point prompt are carried over."""
    def kept(**kw) -> np.ndarray:
        mask = LoopedTransformer(**kw).keep_mask(41, 82)
        return np.ones(82, bool) if mask is None else np.asarray(mask)

    assert kept().sum() == 82 and kept(n_last_tokens=-1).sum() == 82
    assert kept(n_last_tokens=0).sum() == 0
    for n in (20, 55, 75):
        assert kept(n_last_tokens=n).sum() == n and kept(n_last_tokens=n)[-1]
    assert kept(save_n_tokens=11).sum() == 11
    assert kept(save_n_tokens=-7).sum() == 75 and not kept(save_n_tokens=-7)[:7].any()
    assert kept(save_n_tokens=0.5).sum() == 41
    assert kept(save_n_tokens=0.7).sum() == round(0.7 * 82)
    # positions count from the live prompt, padding after it stays (causally invisible)
    short = np.asarray(LoopedTransformer(n_last_tokens=4).keep_mask(3, 10))
    assert short.tolist() == [False, False, True, True, True, True, True, True, True, True]
    # n_last_tokens = 0 carries nothing: every iteration sees only the prompt
    assert LoopedTransformer(n_last_tokens=0).keep_mask(3, 10).tolist() == [False] * 6 + [True] * 4


def test_lstm_layer_follows_pytorch_equations() -> None:
    """PyTorch's nn.LSTM: gates i, f, g, o stacked in that order in weight_ih/weight_hh,
    c' = f c + i g, h' = o tanh(c'), two bias vectors."""
    from sgdjax.models.looped import LSTMLayer

    rng = np.random.default_rng(6)
    lp = {"weight_ih": rng.normal(size=(64, 16)), "weight_hh": rng.normal(size=(64, 16)),
          "bias_ih": rng.normal(size=64), "bias_hh": rng.normal(size=64)}
    lp = {k: (0.3 * v).astype(np.float32) for k, v in lp.items()}
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    ours = np.asarray(jax.jit(LSTMLayer(16).apply)({"params": lp}, x))
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    h, c = np.zeros((2, 16)), np.zeros((2, 16))
    for t in range(5):
        gates = x[:, t] @ lp["weight_ih"].T + lp["bias_ih"] + h @ lp["weight_hh"].T + lp["bias_hh"]
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        np.testing.assert_allclose(ours[:, t], h, atol=1e-5)


def test_ssm_parallel_scan_matches_a_sequential_recurrence() -> None:
    from sgdjax.models.looped import SelectiveSSM

    layer = SelectiveSSM(n_embd=6, d_state=3, dt_rank=2)
    rng = np.random.default_rng(8)
    pr = {"A_log": np.log(np.tile([1.0, 2.0, 3.0], (6, 1))), "D": rng.normal(size=6),
          "x_proj": {"kernel": 0.5 * rng.normal(size=(6, 8))},
          "dt_proj": {"kernel": 0.5 * rng.normal(size=(2, 6)), "bias": rng.normal(size=6)}}
    pr = jax.tree.map(lambda a: np.asarray(a, np.float32), pr)
    u = rng.normal(size=(2, 7, 6)).astype(np.float32)
    got = np.asarray(jax.jit(layer.apply)({"params": pr}, u))
    u = np.asarray(u, np.float64)
    dbc = u @ pr["x_proj"]["kernel"]
    dt_in, b, c = dbc[..., :2], dbc[..., 2:5], dbc[..., 5:]
    dt = np.logaddexp(0, dt_in @ pr["dt_proj"]["kernel"] + pr["dt_proj"]["bias"])
    a = -np.exp(pr["A_log"])
    h = np.zeros((2, 6, 3))
    for t in range(7):
        h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * u[:, t])[..., None] * b[:, t, None]
        y = np.einsum("ben,bn->be", h, c[:, t]) + pr["D"] * u[:, t]
        np.testing.assert_allclose(got[:, t], y, atol=1e-4)


@pytest.mark.parametrize("kw,match", [
    (dict(n_embd=10, n_head=3), "multiple of model.n_head"),
    (dict(save_n_tokens=2.5), "save_n_tokens=2.5"),
    (dict(save_n_tokens=-0.5), "save_n_tokens"),
    (dict(save_n_tokens=3.0, n_last_tokens=5), "only one"),
])
def test_bad_model_configs(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LoopedTransformer(**kw)


def test_prompt_longer_than_positions_is_a_config_error() -> None:
    m = LoopedTransformer(**SMALL)
    with pytest.raises(ConfigError, match="n_positions"):
        m.embed({}, jnp.zeros((1, 14, 3)))  # checked before any parameter is read
