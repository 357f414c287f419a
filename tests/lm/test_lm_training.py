"""Loss masking, optimizers and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdjax.lm.config import LMConfig, OptimConfig
from sgdjax.lm.generate import nucleus_logits, sample_token
from sgdjax.lm.loss import mean_loss
from sgdjax.lm.optim import on_pytree, optimizer
from sgdjax.lm.train import init_params
from sgdjax.nested_config import build


def test_padding_is_excluded_from_the_loss(small_model: dict[str, int]) -> None:
    cfg = build(LMConfig, [("test", small_model)])
    model = cfg.model.build(257)
    params = init_params(model, 0)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=(2, 9)).astype(np.int32)
    mask = np.ones((2, 9), bool)
    mask[1, 5:] = False  # the second document has 5 real tokens, then padding
    loss_fn = jax.jit(lambda t, m: mean_loss(model, params, t, m)[0])
    loss = float(loss_fn(tokens, mask))
    # Targets counted: 8 in the first row, 4 in the second (positions 1..4).
    logits = np.asarray(jax.jit(model.logits)(params, tokens[:, :-1], mask[:, :-1]),
                        np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    assert loss == pytest.approx((nll[0].sum() + nll[1, :4].sum()) / 12, rel=1e-5)
    # Whatever sits in the padding changes nothing.
    garbage = tokens.copy()
    garbage[1, 5:] = rng.integers(0, 256, size=4)
    assert float(loss_fn(garbage, mask)) == loss


def test_adafactor_factors_matrices_of_the_flat_vector(small_model: dict[str, int]) -> None:
    cfg = build(LMConfig, [("test", small_model)])
    model = cfg.model.build(257)
    w = jax.eval_shape(lambda: model.flatten(init_params(model, 0)))
    opt = on_pytree(optimizer(OptimConfig(name="adafactor"), lambda s: 1e-3),
                    model.unflatten, model.flatten)
    state = jax.eval_shape(opt.init, w)
    shapes = {tuple(a.shape) for a in jax.tree.leaves(state)}
    # The [257, 32] embedding has row and column statistics, not a full [257, 32] second moment.
    assert (257,) in shapes and (32,) in shapes and (257, 32) not in shapes
    assert (model.num_params,) not in shapes


def test_adamw_matches_torch_semantics_with_warmup() -> None:
    # Step 0 of a warm-up has lr 0 (HF LambdaLR); decay is decoupled: p -= lr * wd * p.
    opt = optimizer(OptimConfig(lr=0.1, weight_decay=0.5, max_grad_norm=0.0),
                    lambda s: jnp.where(s < 1, 0.0, 0.1))
    p = {"w": jnp.array([2.0])}
    state = opt.init(p)
    g = {"w": jnp.array([4.0])}
    u0, state = opt.update(g, state, p)
    assert float(u0["w"][0]) == 0.0
    u1, _ = opt.update(g, state, p)
    # Adam's bias-corrected step with a constant gradient is 1 (to eps); decay 0.5 * 2.0.
    assert float(u1["w"][0]) == pytest.approx(-0.1 * (1.0 + 1.0), rel=1e-5)


def test_clipping_bounds_the_update_before_the_optimizer() -> None:
    # With plain SGD semantics (Adam's normalisation would hide it), check the chain order:
    # the gradient is clipped to global norm 1 first.
    opt = optimizer(OptimConfig(name="adamw", b1=0.0, b2=0.0, eps=0.0, weight_decay=0.0,
                                max_grad_norm=1.0), lambda s: 1.0)
    p = {"a": jnp.zeros(2)}
    state = opt.init(p)
    clip_state, _ = state
    g = {"a": jnp.array([3.0, 4.0])}
    clipped, _ = optax.clip_by_global_norm(1.0).update(g, clip_state)
    np.testing.assert_allclose(np.asarray(clipped["a"]), [0.6, 0.8], rtol=1e-6)
    u, _ = opt.update(g, state, p)
    # b1 = b2 = 0: Adam's step is sign(g) = g / |g| elementwise.
    np.testing.assert_allclose(np.asarray(u["a"]), [-1.0, -1.0], rtol=1e-6)


def test_nucleus_keeps_the_smallest_top_set() -> None:
    logits = jnp.log(jnp.array([0.15, 0.5, 0.05, 0.3]))
    kept = lambda p: np.isfinite(np.asarray(nucleus_logits(logits, p)))  # noqa: E731
    assert kept(0.4).tolist() == [False, True, False, False]
    assert kept(0.7).tolist() == [False, True, False, True]
    assert kept(0.8).tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert kept(0.81).tolist() == [True, True, False, True]
    assert kept(1.0).all()


def test_sampling_frequencies_follow_temperature_and_top_p() -> None:
    logits = jnp.log(jnp.array([0.15, 0.5, 0.05, 0.3]))
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.jit(jax.vmap(lambda k: sample_token(logits, k, 1.0, 0.7)))
    counts = np.bincount(np.asarray(draw(keys)), minlength=4)
    assert counts[0] == counts[2] == 0
    assert counts[1] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    assert int(sample_token(logits, keys[0], 0.0, 0.9)) == 1  # temperature 0: greedy
    cold = jax.jit(jax.vmap(lambda k: sample_token(logits, k, 0.25, 1.0)))
    c = np.bincount(np.asarray(cold(keys[:1000])), minlength=4)
    # p^(1/T) renormalised: 0.5^4 / sum(p^4) ~ 0.86
    assert c[1] / 1000 == pytest.approx(0.5**4 / float(np.sum(np.array(
        [0.15, 0.5, 0.05, 0.3]) ** 4)), abs=0.04)
