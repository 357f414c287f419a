"""A faithful PyTorch reference of the original study's per-step work (spec §1, §3, §4).

Written from the spec, not from the original's code: the three models with the same state-dict
names as sgdjax's ``model.to_state_dict`` (so one state dict initialises both sides), and the
sequential loops of stage 1 (SGD training), stage 3 (SGD with a dense minibatch Hessian per step,
row by row with double backprop) and stage 4 (one run of the many-runs ensemble).

Like the original, each loop runs one step at a time in Python: fetch the batch (through a
``DataLoader`` by default, as the original does), forward, cross-entropy, ``backward``, record the
pre-update parameters and ``loss.item()``, ``torch.optim.SGD`` step, and every ``val_every``
steps a validation pass in eval mode. The batch indices are given (drawn by sgdjax's sampler), so
the reference and sgdjax follow the same trajectory and can be compared number by number.

Deliberate differences from the original (each one makes the reference match sgdjax, and none
changes the cost of a step):

* after validation the model goes back to train mode (the original's stage 4 never did, so its
  CNN trained with frozen BatchNorm statistics after the first validation; spec §10 #4);
* the Hessian pass of stage 3 does not update the BatchNorm running statistics a second time
  (they are saved and restored around it; spec §10 #4);
* the validation loss is the example-weighted mean over the validation set (the original averages
  per-batch means, which differs when the last batch is smaller; spec §10 #13).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def set_threads(n: int) -> None:
    """Intra-op threads of PyTorch. The reference uses 1 by default: with these tiny kernels the
    2-thread default is several times slower on the 2-vCPU machine (PERF_NOTES)."""
    torch.set_num_threads(int(n))


# -- models (spec §3) -------------------------------------------------------------------------


class FlexibleMLP(nn.Module):
    """Adaptive average pool 28→6 → flatten → Linear(36, 8) → SiLU → Linear(8, 10) (386 params).

    The pooling runs inside ``forward`` on every step, as in the original (sgdjax pools the
    dataset once, since the pool has no parameters)."""

    def __init__(self, hidden: int = 8, downsample: int = 6, n_classes: int = 10) -> None:
        super().__init__()
        self.downsample = downsample
        self.fc1 = nn.Linear(downsample * downsample, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, self.downsample).flatten(1)
        return self.fc2(F.silu(self.fc1(x)))


class FlexibleCNN(nn.Module):
    """Conv(1→12, 3×3, pad 1, no bias) → BatchNorm2d → SiLU → global average pool →
    Linear(12, 11) → SiLU → Linear(11, 10) (395 params)."""

    def __init__(self, channels: int = 12, hidden: int = 11, n_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(F.silu(self.fc1(h)))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        # Not persistent: the mask is no parameter, and sgdjax's state dict has no entry for it.
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hs = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)  # q, k, v in that order (spec §3.3)
        q, k, v = (a.view(b, t, self.n_head, hs).transpose(1, 2) for a in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~self.mask[:t, :t], float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLPBlock(nn.Module):
    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class Block(nn.Module):
    # Registration order = the flat-vector order of spec §3.3: ln_1, attn, ln_2, mlp.
    def __init__(self, n_embd: int, n_head: int, block_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
        self.mlp = MLPBlock(n_embd, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """vocab 25, n_embd 8, 1 head, 1 layer, block 16, mlp_ratio 1, untied lm_head (960 params)."""

    def __init__(self, vocab_size: int = 25, block_size: int = 16, n_embd: int = 8,
                 n_head: int = 1, n_layer: int = 1, mlp_ratio: int = 1) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(Block(n_embd, n_head, block_size, n_embd * mlp_ratio)
                            for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd, eps=1e-5),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        tr = self.transformer
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = tr["wte"](idx) + tr["wpe"](pos)
        for block in tr["h"]:
            x = block(x)
        return self.lm_head(tr["ln_f"](x))


MODELS = {"mlp": FlexibleMLP, "cnn": FlexibleCNN, "nanogpt": NanoGPT}


def build(name: str, state_dict: dict[str, np.ndarray], dtype: str) -> nn.Module:
    """The reference model ``name`` in ``dtype`` with its parameters (and BatchNorm buffers) taken
    from ``state_dict`` (sgdjax's ``to_state_dict``); ``strict`` loading proves the names agree."""
    model = MODELS[name]().to(TORCH_DTYPES[dtype])
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    sd = {k: v.to(TORCH_DTYPES[dtype]) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    model.train()
    return model


def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (MNIST) or over all B·T tokens (Shakespeare)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def flat_params(model: nn.Module) -> torch.Tensor:
    """The original's recording: ``parameters_to_vector(...).detach().clone()``."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


# -- data --------------------------------------------------------------------------------------


@dataclass
class TorchData:
    """Train and validation tensors in the reference's dtype (images float, tokens int64)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    @classmethod
    def from_numpy(cls, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                   val_y: np.ndarray, dtype: str) -> TorchData:
        def conv(a: np.ndarray) -> torch.Tensor:
            if np.issubdtype(a.dtype, np.integer):
                return torch.from_numpy(np.asarray(a, np.int64))
            return torch.from_numpy(np.asarray(a)).to(TORCH_DTYPES[dtype])

        return cls(conv(train_x), conv(train_y), conv(val_x), conv(val_y))


class _Batches:
    """Yields the given rows of indices as lists: a ``batch_sampler`` for ``DataLoader``."""

    def __init__(self, batches: np.ndarray) -> None:
        self.batches = np.asarray(batches)

    def __iter__(self) -> Any:
        for row in self.batches:
            yield row.tolist()

    def __len__(self) -> int:
        return len(self.batches)


def train_batches(data: TorchData, batches: np.ndarray, loader: str) -> Any:
    """The step batches in order. ``loader="dataloader"`` goes through ``DataLoader`` (per-example
    fetch + collate, the original's cost); ``"index"`` indexes the tensors directly (a lower
    bound for a hand-optimised PyTorch loop)."""
    if loader == "dataloader":
        ds = TensorDataset(data.train_x, data.train_y)
        return iter(DataLoader(ds, batch_sampler=_Batches(batches), num_workers=0))
    if loader == "index":
        idx = torch.from_numpy(np.asarray(batches, np.int64))
        return ((data.train_x[i], data.train_y[i]) for i in idx)
    raise ValueError(f"unknown loader {loader!r}; use 'dataloader' or 'index'")


@torch.no_grad()
def validate(model: nn.Module, data: TorchData, batch: int, loader: str) -> tuple[float, float]:
    """Example-weighted mean loss and accuracy over the validation set, in eval mode, in batches
    of ``batch`` (the original's validation loader); the caller restores train mode."""
    model.eval()
    if loader == "dataloader":
        it: Any = DataLoader(TensorDataset(data.val_x, data.val_y), batch_size=batch,
                             shuffle=False)
    else:
        it = zip(data.val_x.split(batch), data.val_y.split(batch), strict=True)
    total, correct, count, targets = 0.0, 0, 0, 0
    for xb, yb in it:
        logits = model(xb)
        total += criterion(logits, yb).item() * xb.shape[0]
        correct += int((logits.argmax(-1) == yb).sum().item())
        count += xb.shape[0]
        targets += yb.numel()
    return total / count, correct / targets


# -- loops -------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """What a reference run recorded (numpy, in the run's dtype)."""

    loss: np.ndarray  # [T] pre-update minibatch losses
    final: np.ndarray  # [P] parameters after the last step
    params: np.ndarray | None = None  # [T, P] pre-update parameters
    hessian: np.ndarray | None = None  # [T, P, P]
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_acc: np.ndarray = field(default_factory=lambda: np.zeros(0))


def sgd_run(model: nn.Module, data: TorchData, batches: np.ndarray, lr: float, *,
            val_every: int, val_batch: int, record_params: bool, loader: str = "dataloader",
            ) -> LoopResult:
    """One SGD run over ``batches`` ([T, B] indices): the loop of stage 4 (``record_params``) or
    stage 1 (losses and validation only)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # no momentum / weight decay
    params: list[torch.Tensor] = []
    losses: list[float] = []
    vals: list[tuple[float, float]] = []
    model.train()
    for t, (xb, yb) in enumerate(train_batches(data, batches, loader)):
        loss = criterion(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        if record_params:
            params.append(flat_params(model))  # pre-update
        losses.append(loss.item())
        opt.step()
        if val_every and (t + 1) % val_every == 0:
            vals.append(validate(model, data, val_batch, loader))
            model.train()  # the original forgot this (spec §10 #4)
    return LoopResult(
        loss=np.asarray(losses),
        final=flat_params(model).numpy(),
        params=torch.stack(params).numpy() if record_params else None,
        val_loss=np.asarray([v[0] for v in vals]),
        val_acc=np.asarray([v[1] for v in vals]),
    )


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()]


def hessian_rowwise(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the minibatch loss, as the original computes it: one forward, the
    gradient with ``create_graph=True``, then one backward of every gradient entry (P rows)."""
    params: Sequence[torch.Tensor] = list(model.parameters())
    loss = criterion(model(xb), yb)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([gi.reshape(-1) for gi in grads])
    n = g.numel()
    h = torch.empty(n, n, dtype=g.dtype)
    for i in range(n):
        row = torch.autograd.grad(g[i], params, retain_graph=True, allow_unused=True,
                                  materialize_grads=True)
        h[i] = torch.cat([r.reshape(-1) for r in row])
    return h


def hessian_run(model: nn.Module, data: TorchData, batches: np.ndarray, lr: float, *,
                loader: str = "dataloader") -> LoopResult:
    """Stage 3: per step record w[t], the dense minibatch Hessian H[t] at w[t] (an extra forward
    pass), then the ordinary SGD step on the same batch and its pre-update loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    params: list[torch.Tensor] = []
    hessians: list[torch.Tensor] = []
    losses: list[float] = []
    model.train()
    for xb, yb in train_batches(data, batches, loader):
        params.append(flat_params(model))
        saved = [b.clone() for b in _bn_buffers(model)]
        hessians.append(hessian_rowwise(model, xb, yb).detach())
        for b, s in zip(_bn_buffers(model), saved, strict=True):
            b.copy_(s)  # the Hessian pass must not update BatchNorm statistics twice
        loss = criterion(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    return LoopResult(
        loss=np.asarray(losses),
        final=flat_params(model).numpy(),
        params=torch.stack(params).numpy(),
        hessian=torch.stack(hessians).numpy(),
    )
