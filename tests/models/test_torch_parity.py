"""Parity with reference PyTorch modules written from the spec (§3), in float64."""

from __future__ import annotations

import math
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgdjax.errors import ConfigError, SgdjaxError
from sgdjax.models import (
    CNN,
    MLP,
    NanoGPT,
    load_torch_checkpoint,
    make_loss_fn,
    save_torch_state_dict,
)

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.usefixtures("x64")


# -- reference modules (spec §3), with the state-dict names our layouts use ------------------------
class RefMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(36, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 6).flatten(1)
        return self.fc2(F.silu(self.fc1(x)))


class RefMLPSequential(nn.Module):
    """Same network, other attribute names: loads by position."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(36, 8), nn.SiLU(), nn.Linear(8, 10))


class RefCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 12, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12, eps=1e-5, momentum=0.1)
        self.fc1 = nn.Linear(12, 11)
        self.fc2 = nn.Linear(11, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(F.silu(self.fc1(h)))


class RefAttention(nn.Module):
    def __init__(self, c: int, block: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(c, 3 * c, bias=False)
        self.c_proj = nn.Linear(c, c, bias=False)
        # nanoGPT's causal-mask buffer: in the state dict, ignored when we load
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, c = x.shape[1], x.shape[2]
        q, k, v = self.c_attn(x).split(c, dim=2)
        att = q @ k.transpose(-2, -1) / math.sqrt(c)
        att = att.masked_fill(self.bias[0, 0, :t, :t] == 0, float("-inf"))
        return self.c_proj(F.softmax(att, dim=-1) @ v)


class RefBlock(nn.Module):
    def __init__(self, c: int, block: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c)
        self.attn = RefAttention(c, block)
        self.ln_2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential()
        self.mlp.c_fc = nn.Linear(c, c, bias=False)
        self.mlp.gelu = nn.GELU()
        self.mlp.c_proj = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab: int = 25, c: int = 8, block: int = 16) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, c),
                wpe=nn.Embedding(block, c),
                h=nn.ModuleList([RefBlock(c, block)]),
                ln_f=nn.LayerNorm(c),
            )
        )
        self.lm_head = nn.Linear(c, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# -- helpers -------------------------------------------------------------------------------------
def load_into(ref: nn.Module, sd: dict) -> nn.Module:
    ref = ref.double()  # first: load_state_dict casts into the existing dtype
    missing, unexpected = ref.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False
    )
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing)
    return ref


def torch_flat(ref: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in ref.parameters()]).numpy()


def torch_grad(ref: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple:
    ref.zero_grad()
    logits = ref(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in ref.parameters()]).numpy()
    return logits.detach().numpy(), float(loss.detach()), grad


def perturbed(model, seed: int, scale: float) -> dict:
    """Init plus noise, so BN γ/β and LayerNorms are not at their trivial init values."""
    p, _ = model.init(jax.random.key(seed), jnp.float64)
    noise = np.random.default_rng(seed).normal(size=model.num_params) * scale
    return model.unflatten(model.flatten(p) + jnp.asarray(noise, jnp.float64))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 1, 28, 28)) * 2 - 0.4


# -- tests ---------------------------------------------------------------------------------------
def test_reference_layouts_match() -> None:
    for model, ref in ((MLP(), RefMLP()), (CNN(), RefCNN()), (NanoGPT(), RefGPT())):
        names = [n for n, _ in ref.named_parameters()]
        assert names == [s.torch_name for s in model.layout]
        assert [tuple(p.shape) for p in ref.parameters()] == [s.shape for s in model.layout]
        assert sum(p.numel() for p in ref.parameters()) == model.num_params
    buffers = [n for n, _ in RefCNN().named_buffers()]
    assert buffers == [s.torch_name for s in CNN().buffers]


def test_mlp_forward_and_grad() -> None:
    m = MLP()
    p = perturbed(m, 0, 0.1)
    ref = load_into(RefMLP(), m.to_state_dict(p))
    np.testing.assert_array_equal(torch_flat(ref), m.flatten(p))
    x = images(16, 1)
    y = np.random.default_rng(2).integers(0, 10, size=16)
    t_logits, t_loss, t_grad = torch_grad(ref, torch.from_numpy(x), torch.from_numpy(y))
    f = jax.jit(jax.value_and_grad(make_loss_fn(m, train=True), has_aux=True))
    feats = m.featurize(jnp.asarray(x))
    (loss, _), grad = f(m.flatten(p), {}, feats, jnp.asarray(y))
    logits, _ = m.apply(p, {}, feats, train=False)
    np.testing.assert_allclose(logits, t_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, t_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-9, atol=1e-12)


def test_cnn_train_and_eval_parity() -> None:
    m = CNN()
    p = perturbed(m, 3, 0.2)
    _, s = m.init(jax.random.key(3), jnp.float64)
    ref = load_into(RefCNN(), m.to_state_dict(p, s))
    x = images(8, 4)
    y = np.random.default_rng(5).integers(0, 10, size=8)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    f = jax.jit(jax.value_and_grad(make_loss_fn(m, train=True), has_aux=True))
    fwd = jax.jit(lambda p, s, x: m.apply(p, s, x, train=True))
    w = m.flatten(p)

    # training mode: batch statistics, running statistics updated (twice: momentum chain)
    ref.train()
    for step in range(2):
        t_logits, t_loss, t_grad = torch_grad(ref, tx, ty)
        (loss, (new_s, _)), grad = f(w, s, jnp.asarray(x), jnp.asarray(y))
        logits, _ = fwd(p, s, jnp.asarray(x))
        np.testing.assert_allclose(logits, t_logits, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(loss, t_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, t_grad, rtol=1e-8, atol=1e-11)
        s = new_s
        sd = m.to_state_dict(p, s)
        for name, value in ref.state_dict().items():
            if "running" in name:
                np.testing.assert_allclose(sd[name], value.numpy(), rtol=1e-12, atol=1e-14)
        assert int(sd["bn.num_batches_tracked"]) == int(ref.bn.num_batches_tracked) == step + 1
        x = x[::-1].copy() * 1.3  # a different batch for the second step
        tx = torch.from_numpy(x)

    # evaluation mode: running statistics
    ref.eval()
    t_logits, _, t_grad = torch_grad(ref, tx, ty)
    f_eval = jax.jit(jax.value_and_grad(make_loss_fn(m, train=False), has_aux=True))
    (_, (same_s, _)), grad = f_eval(w, s, jnp.asarray(x), jnp.asarray(y))
    logits, _ = m.apply(p, s, jnp.asarray(x), train=False)
    np.testing.assert_allclose(logits, t_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-8, atol=1e-11)
    for a, b in zip(jax.tree.leaves(same_s), jax.tree.leaves(s), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nanogpt_forward_and_grad() -> None:
    m = NanoGPT()
    p = perturbed(m, 6, 0.3)
    ref = load_into(RefGPT(), m.to_state_dict(p))
    np.testing.assert_array_equal(torch_flat(ref), m.flatten(p))
    tokens = np.random.default_rng(7).integers(0, 25, size=(4, 17))
    x, y = tokens[:, :-1], tokens[:, 1:]
    t_logits, t_loss, t_grad = torch_grad(ref, torch.from_numpy(x), torch.from_numpy(y))
    f = jax.jit(jax.value_and_grad(make_loss_fn(m, train=True), has_aux=True))
    (loss, _), grad = f(m.flatten(p), {}, jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32))
    logits, _ = m.apply(p, {}, jnp.asarray(x, jnp.int32), train=False)
    np.testing.assert_allclose(logits, t_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, t_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-8, atol=1e-12)


def test_load_torch_checkpoints(tmp_path) -> None:
    torch.manual_seed(0)
    # plain state dict, with nanoGPT's mask buffer
    gpt = RefGPT().double()
    torch.save(gpt.state_dict(), tmp_path / "gpt.pt")
    p, s = load_torch_checkpoint(tmp_path / "gpt.pt", NanoGPT())
    np.testing.assert_array_equal(NanoGPT().flatten(p), torch_flat(gpt))
    assert s == {}
    # a training checkpoint dict, with BN buffers
    cnn = RefCNN()
    cnn.train()
    cnn(torch.randn(4, 1, 28, 28))  # move the running statistics
    torch.save({"model_state_dict": cnn.state_dict(), "epoch": 3}, tmp_path / "cnn.pt")
    p, s = load_torch_checkpoint(tmp_path / "cnn.pt", CNN())
    np.testing.assert_allclose(CNN().flatten(p), torch_flat(cnn))
    np.testing.assert_allclose(s["bn"]["running_var"], cnn.bn.running_var.numpy())
    assert int(s["bn"]["num_batches_tracked"]) == 1
    assert p["conv"]["weight"].dtype == jnp.float32
    p64, _ = load_torch_checkpoint(tmp_path / "cnn.pt", CNN(), dtype=jnp.float64)
    assert p64["conv"]["weight"].dtype == jnp.float64
    # other attribute names, same architecture: matched by position, with a warning
    seq = RefMLPSequential()
    torch.save({"state_dict": seq.state_dict()}, tmp_path / "mlp.pt")
    with pytest.warns(UserWarning, match="matched tensors by position"):
        p, _ = load_torch_checkpoint(tmp_path / "mlp.pt", MLP())
    np.testing.assert_array_equal(MLP().flatten(p), torch_flat(seq))
    # the wrong model: names and shapes both disagree
    with pytest.raises(ConfigError, match="missing keys"):
        load_torch_checkpoint(tmp_path / "mlp.pt", CNN())
    with pytest.raises(SgdjaxError, match="not found"):
        load_torch_checkpoint(tmp_path / "absent.pt", MLP())
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a PyTorch state dict"):
        load_torch_checkpoint(tmp_path / "list.pt", MLP())


def test_save_torch_state_dict(tmp_path) -> None:
    m = CNN()
    p = perturbed(m, 8, 0.1)
    _, s = m.init(jax.random.key(8), jnp.float64)
    save_torch_state_dict(tmp_path / "ours.pt", m, p, s)
    ref = RefCNN().double()
    ref.load_state_dict(torch.load(tmp_path / "ours.pt"), strict=True)
    np.testing.assert_array_equal(torch_flat(ref), m.flatten(p))
    assert ref.bn.num_batches_tracked.dtype == torch.int64


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with warnings.catch_warnings(), pytest.raises(SgdjaxError, match="pip install torch"):
        load_torch_checkpoint(tmp_path / "x.pt", MLP())
