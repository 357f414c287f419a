"""Run on 4 simulated host devices (see conftest.py): the reference and its variants.

Every run trains the same model from the same initial point on the same random blocks for 4
optimizer steps of a global batch of 8 sequences, drawn by the reshuffle sampler with the same
key, so the 8 sequences of a step are the same whichever way they are split; each validates
after steps 2 and 4:

* ``ref``: the engine, 8 sequences per step, no accumulation;
* ``acc``: the engine, 2 micro-batches of 4 accumulated (optax.MultiSteps);
* ``dp`` / ``zero1`` / ``zero3``: sharded over 4 devices, 2 sequences per device;
* ``zero2``: sharded over 4 devices, 1 sequence per device, 2 micro-batches accumulated in the
  sharded gradient buffer.

Then the compiled steps of a 2-layer model are read for their collectives (``hlo``).

Prints JSON: each variant's largest absolute parameter difference from ``ref``, its per-step
and validation losses, its analytic per-device memory and how its final parameters are laid
out; and the collectives of each compiled step.
"""

import json
import re
import sys
from collections import Counter
from typing import Any

import jax
import numpy as np

from sgdjax.lm.config import LMConfig
from sgdjax.lm.data import Blocks, Corpus
from sgdjax.lm.sharding import make_mesh
from sgdjax.lm.tokenizer import byte_tokenizer
from sgdjax.lm.train import lower_sharded_segment, train_flat, train_sharded, tree_to_flat
from sgdjax.nested_config import build

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")
# "%name = shape opcode(operands), attributes"; a tuple shape is parenthesised.
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>\S+) = (?P<shape>\([^=]*?\)|\S+) "
                         r"(?P<op>[a-z][\w-]*)\((?P<args>[^)]*)\)(?P<rest>.*)$")


def parse_hlo(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        m = INSTRUCTION.match(re.sub(r"/\*.*?\*/", "", line))  # drop /*index=5*/ comments
        if m:
            op_name = re.search(r'op_name="([^"]*)"', m["rest"])
            out.append({"name": m["name"], "shape": m["shape"], "op": m["op"],
                        "args": re.findall(r"%([\w.-]+)", m["args"]),
                        "op_name": op_name[1] if op_name else ""})
    return out


def collective_stats(text: str) -> dict[str, Any]:
    """Counts of the collectives; the decoder layers whose weights are all-gathered inside the
    layer in the forward pass and again in the backward pass; and how many consumers of an
    all-reduced gradient use it at full size (a reduce-scatter reads only its own shard)."""
    instrs = parse_hlo(text)
    by_name = {i["name"]: i for i in instrs}
    counts = Counter(i["op"].removesuffix("-start") for i in instrs
                     if i["op"].removesuffix("-start") in COLLECTIVES)
    forward: set[int] = set()
    backward: set[int] = set()
    for i in instrs:
        layer = re.search(r"layers_(\d+)/sharding_constraint", i["op_name"])
        if i["op"].startswith("all-gather") and layer:
            in_backward = "transpose(" in i["op_name"]
            (backward if in_backward else forward).add(int(layer[1]))
    # Arrays an all-reduce returns (directly, or as elements of a tuple).
    reduced = {i["name"]: i["shape"] for i in instrs if i["op"] == "all-reduce"
               and not i["shape"].startswith("(") and re.search(r"\[\d", i["shape"])}
    for i in instrs:
        if i["op"] == "get-tuple-element" and i["args"][0] in by_name and \
                by_name[i["args"][0]]["op"] == "all-reduce" and re.search(r"\[\d", i["shape"]):
            reduced[i["name"]] = i["shape"]
    full_users = sum(1 for i in instrs for a in i["args"] if a in reduced
                     and i["op"] != "get-tuple-element"
                     and i["shape"].split("{")[0] == reduced[a].split("{")[0])
    return {"counts": dict(counts), "layers_gathered_forward": sorted(forward),
            "layers_gathered_backward": sorted(backward), "all_reduced_arrays": len(reduced),
            "full_size_gradient_users": full_users}


def hlo_checks(model_overrides: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    mesh = make_mesh(4)
    out = {}
    two_layers = {**model_overrides, "model.num_layers": 2, "data.seq_len": 8}
    for name, mode, accum, remat in (("dp", "dp", 2, False), ("zero2", "zero2", 2, False),
                                     ("zero3", "zero3", 1, False),
                                     ("zero3_remat", "zero3", 1, True)):
        cfg = build(LMConfig, [("hlo", {**two_layers, "model.remat": remat,
                                        "train.batch_size": 1, "train.grad_accum": accum,
                                        "parallel.mode": mode, "parallel.devices": 4})])
        model = cfg.model.build(257)
        text = lower_sharded_segment(cfg, model, mesh, mode, n_blocks).compile().as_text()
        out[name] = collective_stats(text)
    return out


def main() -> None:
    model_overrides = json.loads(sys.argv[1])
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 256, size=(64, 9)).astype(np.int32)
    blocks = Blocks(tok, np.ones(tok.shape, bool))
    corpus = Corpus(blocks, blocks, byte_tokenizer(), 64, 64)
    base = {**model_overrides, "data.seq_len": 8, "train.max_steps": 4, "train.eval_every": 2,
            "train.segment_steps": 4, "optim.lr": 1e-2, "schedule.kind": "cosine",
            "schedule.warmup_ratio": 0.25}

    def cfg(**values: object) -> LMConfig:
        return build(LMConfig, [("four_devices", {**base, **values})])

    ref_cfg = cfg(**{"train.batch_size": 8})
    model = ref_cfg.model.build(257)
    ref = train_flat(ref_cfg, model, corpus, seeds=[7], lrs=[1e-2])
    out: dict[str, object] = {"ref_loss": ref.loss[0].tolist(),
                              "ref_val_steps": ref.val_steps.tolist(),
                              "ref_val_loss": ref.val_loss[0].tolist(),
                              "scale": float(np.abs(ref.w[0]).max())}
    acc = train_flat(cfg(**{"train.batch_size": 4, "train.grad_accum": 2}), model, corpus,
                     seeds=[7], lrs=[1e-2])
    out["acc"] = {"max_abs_diff": float(np.abs(acc.w[0] - ref.w[0]).max()),
                  "loss": acc.loss[0].tolist(), "tokens": acc.tokens}
    for mode, per_device, accum in (("dp", 2, 1), ("zero1", 2, 1), ("zero2", 1, 2),
                                    ("zero3", 2, 1)):
        c = cfg(**{"train.batch_size": per_device, "train.grad_accum": accum,
                   "parallel.mode": mode, "parallel.devices": 4})
        res = train_sharded(c, model, corpus, make_mesh(4), mode, seed=7)
        leaves = jax.tree.leaves(res.params)
        out[mode] = {"max_abs_diff": float(np.abs(tree_to_flat(model, res.params)
                                                  - ref.w[0]).max()),
                     "loss": res.loss.tolist(), "memory": res.memory, "tokens": res.tokens,
                     "val_steps": res.val_steps.tolist(), "val_loss": res.val_loss.tolist(),
                     "leaves": len(leaves),
                     "replicated_leaves": sum(a.sharding.is_fully_replicated for a in leaves),
                     "leaf_devices": sorted({len(a.sharding.device_set) for a in leaves})}
    out["hlo"] = hlo_checks(model_overrides, tok.shape[0])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
