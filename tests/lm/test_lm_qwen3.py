"""The Qwen3-style decoder: parameter counts, names, and the forward pass against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError
from sgdjax.models.qwen3 import PRESETS, Qwen3, count_params


def test_paper_preset_has_the_logged_parameter_count() -> None:
    # The seed's run logged 960,881,664 parameters with GPT-2's vocabulary of 50,257.
    assert count_params("paper", 50_257) == 960_881_664


def test_small_preset_count_in_closed_form() -> None:
    h, n_l, nh, nkv, hd, inter = (PRESETS["small"][k] for k in (
        "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
        "intermediate_size"))
    v = 2048
    per_layer = h * nh * hd * 2 + h * nkv * hd * 2 + 3 * h * inter + 2 * hd + 2 * h
    assert count_params("small", v) == 2 * v * h + n_l * per_layer + h
    assert 30e6 < count_params("small", v) < 50e6


def test_layout_matches_the_flax_module_and_hf_names() -> None:
    m = Qwen3.preset("tiny", 259)
    declared = jax.eval_shape(
        lambda: m.module().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    sizes = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(declared))
    assert sizes == m.num_params == 156_416
    names = [s.torch_name for s in m.layout]
    assert names[:8] == [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight", "model.layers.0.mlp.gate_proj.weight"]
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]
    shapes = {s.torch_name: s.shape for s in m.layout}
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (2 * 16, 64)  # 2 KV heads
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (64, 256)


def test_bad_head_grouping_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="multiple of num_kv_heads"):
        Qwen3.preset("tiny", 10, num_heads=3, num_kv_heads=2)


def _reference_logits(m: Qwen3, sd: dict[str, np.ndarray], ids: np.ndarray,
                      key_mask: np.ndarray) -> np.ndarray:
    """Qwen3ForCausalLM written out in float64 numpy, one head at a time."""

    def rms(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + m.norm_eps) * w

    def rope(x: np.ndarray) -> np.ndarray:  # x [T, hd]
        t, hd = x.shape
        inv = m.rope_theta ** (-np.arange(0, hd, 2) / hd)
        ang = np.arange(t)[:, None] * inv[None]
        cos, sin = np.cos(np.r_["-1", ang, ang]), np.sin(np.r_["-1", ang, ang])
        rot = np.concatenate([-x[:, hd // 2:], x[:, : hd // 2]], axis=-1)
        return x * cos + rot * sin

    hd, nh, nkv = m.head_dim, m.num_heads, m.num_kv_heads
    out = []
    for b in range(ids.shape[0]):
        x = sd["model.embed_tokens.weight"][ids[b]]
        t = x.shape[0]
        for i in range(m.num_layers):
            p = f"model.layers.{i}."
            h = rms(x, sd[p + "input_layernorm.weight"])
            q = (h @ sd[p + "self_attn.q_proj.weight"].T).reshape(t, nh, hd)
            k = (h @ sd[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd)
            v = (h @ sd[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
            heads = []
            for j in range(nh):
                kv = j // (nh // nkv)
                qj = rope(rms(q[:, j], sd[p + "self_attn.q_norm.weight"]))
                kj = rope(rms(k[:, kv], sd[p + "self_attn.k_norm.weight"]))
                s = qj @ kj.T / np.sqrt(hd)
                allowed = np.tril(np.ones((t, t), bool)) & key_mask[b][None, :]
                s = np.where(allowed, s, -np.inf)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                heads.append((s / s.sum(axis=1, keepdims=True)) @ v[:, kv])
            x = x + np.concatenate(heads, axis=1) @ sd[p + "self_attn.o_proj.weight"].T
            h = rms(x, sd[p + "post_attention_layernorm.weight"])
            g = h @ sd[p + "mlp.gate_proj.weight"].T
            u = h @ sd[p + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ sd[p + "mlp.down_proj.weight"].T
        out.append(rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T)
    return np.stack(out)


def test_forward_matches_a_numpy_reference_with_gqa_rope_and_padding() -> None:
    m = Qwen3(vocab_size=23, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8, intermediate_size=24)
    params, _ = m.init(jax.random.key(3))
    # Norm weights start at one; perturb them so a missing or misplaced norm shows.
    sd = {k: np.asarray(v, np.float64) for k, v in m.to_state_dict(params).items()}
    rng = np.random.default_rng(0)
    for k in sd:
        if sd[k].ndim == 1:
            sd[k] = sd[k] + 0.3 * rng.standard_normal(sd[k].shape)
    params, _ = m.from_state_dict({k: v.astype(np.float32) for k, v in sd.items()})
    ids = rng.integers(0, 23, size=(2, 9)).astype(np.int32)
    key_mask = np.ones((2, 9), bool)
    key_mask[1, 6:] = False  # the second sequence is padded after 6 tokens
    got = np.asarray(jax.jit(m.logits)(params, ids, key_mask))
    want = _reference_logits(m, sd, ids, key_mask)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(got[1, :6], want[1, :6], rtol=2e-4, atol=2e-4)
    # bf16 compute from the same float32 weights: float32 logits, close to the reference.
    bf16 = np.asarray(jax.jit(m.with_(compute_dtype="bfloat16").logits)(params, ids, key_mask))
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16[0], want[0], atol=0.05)
    assert np.abs(bf16[0] - got[0]).max() > 1e-6  # it did compute in lower precision
    # Causality: tokens after position 4 cannot change the logits up to it.
    ids2 = ids.copy()
    ids2[:, 5:] = (ids2[:, 5:] + 1) % 23
    got2 = np.asarray(jax.jit(m.logits)(params, ids2, key_mask))
    np.testing.assert_array_equal(got2[:, :5], got[:, :5])
    assert np.abs(got2[0, 5:] - got[0, 5:]).max() > 1e-3


def test_remat_and_a_params_hook_leave_loss_and_gradient_unchanged() -> None:
    from sgdjax.lm.loss import mean_loss

    m = Qwen3(vocab_size=23, hidden_size=16, num_layers=1, num_heads=4, num_kv_heads=2,
              head_dim=8, intermediate_size=24)
    params, _ = m.init(jax.random.key(3))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 23, size=(2, 9)).astype(np.int32)
    mask = np.ones((2, 9), bool)
    mask[1, 7:] = False
    seen: list[int] = []

    def hook(tree: dict) -> dict:  # stands in for ZeRO-3's gather; counts the modules it sees
        seen.append(1)
        return jax.tree.map(lambda a: a * 1.0, tree)

    variants = [(False, None), (True, None), (False, hook), (True, hook)]  # (remat, use_params)

    def loss_fn(remat: bool, use: object) -> object:
        model = m.with_(remat=remat)
        return jax.value_and_grad(lambda p: mean_loss(model, p, tokens, mask, use)[0])

    fns = [loss_fn(r, u) for r, u in variants]
    # One compilation for all four (compiling is most of this test's time).
    (ref_loss, ref_grad), *others = jax.jit(lambda p: [f(p) for f in fns])(params)
    # The hook saw the embedding, the layer's 4 children, the final norm and the head, once
    # in each of the two variants that use it.
    assert len(seen) == 2 * (1 + 4 + 2)
    for (loss, grad), variant in zip(others, variants[1:], strict=True):
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6), variant
        for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
