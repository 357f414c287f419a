"""Run on 4 simulated host devices (see conftest.py): the reference and its variants.

Every run trains the same model from the same initial point on the same random blocks for 4
optimizer steps of a global batch of 8 sequences, drawn by the reshuffle sampler with the same
key, so the 8 sequences of a step are the same whichever way they are split:

* ``ref``: the engine, 8 sequences per step, no accumulation;
* ``acc``: the engine, 2 micro-batches of 4 accumulated (optax.MultiSteps);
* ``zero1`` / ``zero3``: sharded over 4 devices, 2 sequences per device;
* ``zero2``: sharded over 4 devices, 1 sequence per device, 2 micro-batches accumulated in the
  sharded gradient buffer.

Prints JSON: each variant's largest absolute parameter difference from ``ref``, its per-step
losses, and its analytic per-device memory.
"""

import json
import sys

import jax
import numpy as np

from sgdjax.lm.config import LMConfig
from sgdjax.lm.data import Blocks, Corpus
from sgdjax.lm.sharding import make_mesh
from sgdjax.lm.tokenizer import byte_tokenizer
from sgdjax.lm.train import train_flat, train_sharded, tree_to_flat
from sgdjax.nested_config import build


def main() -> None:
    model_overrides = json.loads(sys.argv[1])
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 256, size=(64, 9)).astype(np.int32)
    blocks = Blocks(tok, np.ones(tok.shape, bool))
    corpus = Corpus(blocks, blocks, byte_tokenizer(), 64, 64)
    base = {**model_overrides, "data.seq_len": 8, "train.max_steps": 4, "train.eval_every": 0,
            "train.segment_steps": 4, "optim.lr": 1e-2, "schedule.kind": "cosine",
            "schedule.warmup_ratio": 0.25}

    def cfg(**values: object) -> LMConfig:
        return build(LMConfig, [("four_devices", {**base, **values})])

    ref_cfg = cfg(**{"train.batch_size": 8})
    model = ref_cfg.model.build(257)
    ref = train_flat(ref_cfg, model, corpus, seeds=[7], lrs=[1e-2])
    out: dict[str, object] = {"ref_loss": ref.loss[0].tolist(),
                              "scale": float(np.abs(ref.w[0]).max())}
    acc = train_flat(cfg(**{"train.batch_size": 4, "train.grad_accum": 2}), model, corpus,
                     seeds=[7], lrs=[1e-2])
    out["acc"] = {"max_abs_diff": float(np.abs(acc.w[0] - ref.w[0]).max()),
                  "loss": acc.loss[0].tolist(), "tokens": acc.tokens}
    for mode, per_device, accum in (("zero1", 2, 1), ("zero2", 1, 2), ("zero3", 2, 1)):
        c = cfg(**{"train.batch_size": per_device, "train.grad_accum": accum,
                   "parallel.mode": mode, "parallel.devices": 4})
        res = train_sharded(c, model, corpus, make_mesh(4), mode, seed=7)
        out[mode] = {"max_abs_diff": float(np.abs(tree_to_flat(model, res.params)
                                                  - ref.w[0]).max()),
                     "loss": res.loss.tolist(), "memory": res.memory, "tokens": res.tokens}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
