"""FlexibleMLP of exp1 (spec §3.1): adaptive average pooling 28→6, Linear(36→8), SiLU, Linear(8→10).

The pooling has no parameters, so it is done once per dataset by :meth:`MLP.featurize`
(``[N, C, 28, 28] -> [N, C·36]``); :meth:`MLP.apply` takes those features.

PyTorch state-dict names (the spec does not record the original's attribute names, so these are
ours; :meth:`~sgdjax.models.base.TorchLayoutModel.from_state_dict` with ``by_order=True``, which
``load_torch_checkpoint`` falls back to automatically, loads checkpoints that name them otherwise):

=============  =========  ================
name           shape      flat indices
=============  =========  ================
fc1.weight     [8, 36]    [0..287]
fc1.bias       [8]        [288..295]
fc2.weight     [10, 8]    [296..375]
fc2.bias       [10]       [376..385]
=============  =========  ================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgdjax.models.base import ParamSpec, TorchLayoutModel, TorchLinear
from sgdjax.models.mlp_hessian import mlp_ce_hessian


def adaptive_avg_pool_matrix(n_in: int, n_out: int, dtype: Any = np.float64) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of PyTorch's 1-D adaptive average pooling.

    Output cell ``i`` averages inputs ``[floor(n_in·i/n_out), ceil(n_in·(i+1)/n_out))``; the
    windows overlap when ``n_out`` does not divide ``n_in`` (28→6: sizes 5,6,5,5,6,5).
    """
    p = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (n_in * i) // n_out
        stop = -((-n_in * (i + 1)) // n_out)  # exact integer ceil
        p[i, start:stop] = 1.0 / (stop - start)
    return p.astype(dtype)


def adaptive_avg_pool2d(x: jax.Array, out_size: int) -> jax.Array:
    """PyTorch-style adaptive average pooling of ``[..., H, W]`` to ``[..., out, out]``."""
    x = jnp.asarray(x)
    ph = jnp.asarray(adaptive_avg_pool_matrix(x.shape[-2], out_size), dtype=x.dtype)
    pw = jnp.asarray(adaptive_avg_pool_matrix(x.shape[-1], out_size), dtype=x.dtype)
    return jnp.einsum("ih,...hw,jw->...ij", ph, x, pw)


class MLPModule(nn.Module):
    """Linear → SiLU → Linear on already pooled and flattened features."""

    in_features: int
    hidden: int
    n_classes: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout, no BatchNorm
        h = TorchLinear(self.in_features, self.hidden, param_dtype=self.param_dtype, name="fc1")(
            feats
        )
        h = nn.silu(h)
        return TorchLinear(self.hidden, self.n_classes, param_dtype=self.param_dtype, name="fc2")(h)


@dataclass(frozen=True)
class MLP(TorchLayoutModel):
    """FlexibleMLP; defaults give the exp1 model with 386 parameters."""

    hidden: int = 8
    downsample: int = 6
    n_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    name: str = "mlp"

    @property
    def in_features(self) -> int:
        return self.in_channels * self.downsample**2

    @property
    def layout(self) -> tuple[ParamSpec, ...]:
        d, h, c = self.in_features, self.hidden, self.n_classes
        # PyTorch's Linear default: weight and bias U(±1/√fan_in)
        b1, b2 = ("uniform", 1 / math.sqrt(d)), ("uniform", 1 / math.sqrt(h))
        return (
            ParamSpec("fc1.weight", ("fc1", "weight"), (h, d), b1),
            ParamSpec("fc1.bias", ("fc1", "bias"), (h,), b1),
            ParamSpec("fc2.weight", ("fc2", "weight"), (c, h), b2),
            ParamSpec("fc2.bias", ("fc2", "bias"), (c,), b2),
        )

    def module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return MLPModule(self.in_features, self.hidden, self.n_classes, param_dtype=param_dtype)

    def featurize(self, x: jax.Array) -> jax.Array:
        """``[N, C, H, W]`` images → ``[N, C·d·d]`` pooled features, flattened row-major
        (index ``c·d² + d·row + col``, as PyTorch's ``flatten(1)`` after pooling)."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        pooled = adaptive_avg_pool2d(x, self.downsample)
        return pooled.reshape(pooled.shape[:-3] + (math.prod(pooled.shape[-3:]),))

    def example_features(self, batch: int, dtype: Any = jnp.float32) -> jax.Array:
        return jnp.zeros((batch, self.in_features), dtype=dtype)

    def loss_hessian(self, w: jax.Array, state: Any, feats: jax.Array,
                     labels: jax.Array) -> jax.Array:
        """Exact ``[P, P]`` Hessian of the mean cross-entropy at the flat parameters ``w``, in
        closed form (:mod:`sgdjax.models.mlp_hessian`; ~5x faster than ``jax.hessian``)."""
        del state  # no BatchNorm
        return mlp_ce_hessian(w, feats, labels, in_features=self.in_features,
                              hidden=self.hidden, n_classes=self.n_classes)

    def apply(
        self, params: Any, state: Any, feats: jax.Array, *, train: bool
    ) -> tuple[jax.Array, Any]:
        """Logits ``[N, n_classes]`` from pooled features ``[N, C·d·d]``; raw images
        ``[N, C, H, W]`` are pooled first for convenience (slower inside a training loop)."""
        if jnp.ndim(feats) == 4:
            feats = self.featurize(feats)
        return super().apply(params, state, feats, train=train)
