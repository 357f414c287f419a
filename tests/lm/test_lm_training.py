"""Loss masking, optimizers, budgets and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgdjax.lm.config import LMConfig, OptimConfig
from sgdjax.lm.data import Blocks, Corpus
from sgdjax.lm.generate import nucleus_logits, sample_token
from sgdjax.lm.loss import mean_loss
from sgdjax.lm.optim import on_pytree, optimizer
from sgdjax.lm.tokenizer import byte_tokenizer
from sgdjax.lm.train import Budget, init_params, train_flat
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


def _counting_corpus(n_blocks: int = 64, seq_len: int = 8) -> Corpus:
    """Blocks of consecutive token ids (mod 16) from random starts: the next token is
    predictable, so a few optimizer steps visibly lower the loss."""
    starts = np.random.default_rng(0).integers(0, 16, size=(n_blocks, 1))
    tok = ((starts + np.arange(seq_len + 1)) % 16).astype(np.int32)
    blocks = Blocks(tok, np.ones(tok.shape, bool))
    return Corpus(blocks, blocks, byte_tokenizer(), n_blocks, n_blocks)


def _tiny_config(small_model: dict[str, int], **values: object) -> LMConfig:
    return build(LMConfig, [("test", {**small_model, "data.seq_len": 8, "train.batch_size": 8,
                                      "train.eval_every": 0, **values})])


def test_budget_ends_a_run_at_the_first_segment_past_the_deadline() -> None:
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    budget = Budget(None, 10.0, clock=clock)
    assert budget.next_length(0, 5) == 5
    now[0] = 109.9
    assert budget.next_length(5, 5) == 5
    now[0] = 110.0
    assert budget.next_length(10, 5) == 0
    # Compilation excluded: 4 s of it leave 10 s of training.
    budget = Budget(None, 10.0, count_compile=False, clock=clock)  # starts at 110
    budget.compile_s = 4.0
    now[0] = 123.9
    assert budget.next_length(3, 5) == 5
    now[0] = 124.0
    assert budget.next_length(8, 5) == 0
    # The step budget trims the last segment; the first segment runs whatever the clock says.
    assert Budget(7, None, clock=clock).next_length(5, 5) == 2
    assert Budget(None, 0.0, clock=clock).next_length(0, 3) == 3


def test_wall_clock_budget_stops_a_training_run(small_model: dict[str, int]) -> None:
    # 1 ms, compilation included: the first 2-step segment always runs, and compiling it
    # alone takes longer than the budget, so the run stops right after it, however loaded the
    # machine is. Without the clock the run would go on to 1000 steps.
    cfg = _tiny_config(small_model, **{"train.max_steps": 1000, "train.max_seconds": 1e-3,
                                       "train.segment_steps": 2, "schedule.kind": "constant"})
    model = cfg.model.build(257)
    res = train_flat(cfg, model, _counting_corpus(), seeds=[0], lrs=[1e-3])
    assert res.steps == 2 and res.loss.shape == (1, 2)
    assert res.wall_s >= 1e-3 and res.compile_s > 0


def test_adafactor_trains_the_model(small_model: dict[str, int]) -> None:
    cfg = _tiny_config(small_model, **{"optim.name": "adafactor", "train.max_steps": 12,
                                       "train.segment_steps": 12, "schedule.kind": "constant"})
    model = cfg.model.build(257)
    res = train_flat(cfg, model, _counting_corpus(), seeds=[0], lrs=[1e-2])
    loss = res.loss[0]
    assert np.all(np.isfinite(loss)) and res.diverged_at[0] == -1
    assert loss[-3:].mean() < loss[:3].mean() - 0.5, loss
