"""The distributed-training table: every sharding mode on 1, 2, 4, ... devices.

Each row trains the setup's model from the same initial point for the same budget (wall clock
after compilation, and/or steps) with ``train.batch_size`` sequences per device, so -- as in
the seed's HW2 -- the global batch grows with the device count, and the scaling ratio ``r`` is
samples seen with N devices over samples seen with one device (same mode). Reported per row:
optimizer steps done in the budget, samples, tokens/s (compilation excluded), analytic bytes of
parameters, gradient buffers and optimizer state per device, XLA's planned temporary bytes per
device, the measured peak on a GPU, and the final validation loss.

Device counts need devices that exist when JAX starts: on CPU they are *simulated* host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), which all share the same CPU cores, so
their throughput says nothing about real scaling -- they check correctness and memory layout.
The stage therefore runs this module in a fresh process (``python -m sgdjax.lm.scaling CONFIG
TOKENIZER OUT``) whose environment asks for enough devices.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def row_config(cfg: Any, devices: int, mode: str) -> Any:
    """The setup's config for one row: its sharding, the scaling budget, no validation."""
    s = cfg.scaling
    # Compilation is excluded from the budget here: rows compare steady-state throughput.
    train = dataclasses.replace(cfg.train, max_steps=s.max_steps, max_seconds=s.max_seconds,
                                eval_every=0, count_compile=False)
    schedule = cfg.schedule
    if s.max_steps is None:  # a wall-clock budget: decay over one epoch, as HF did
        schedule = dataclasses.replace(schedule, horizon="epoch")
    return dataclasses.replace(
        cfg, train=train, schedule=schedule,
        parallel=dataclasses.replace(cfg.parallel, mode=mode, devices=devices),
        model=dataclasses.replace(cfg.model, remat=s.remat))


def run_rows(cfg: Any, corpus: Any) -> list[dict[str, Any]]:
    """Train every (devices, mode) of ``cfg.scaling`` on this process's devices."""
    import jax

    from sgdjax.lm.loss import evaluate
    from sgdjax.lm.sharding import activation_bytes, make_mesh
    from sgdjax.lm.train import train_sharded

    available = jax.devices()
    platform = available[0].platform
    n_val = min(corpus.val.tokens.shape[0], cfg.train.eval_sequences or corpus.val.tokens.shape[0])
    rows: list[dict[str, Any]] = []
    for n in cfg.scaling.devices:
        if n > len(available):
            rows.append({"devices": n, "skipped": f"only {len(available)} {platform} device(s)"})
            continue
        mesh = make_mesh(n, available)
        for mode in cfg.scaling.modes:
            rc = row_config(cfg, n, mode)
            model = rc.model.build(corpus.tokenizer.vocab_size)
            res = train_sharded(rc, model, corpus, mesh, mode)
            params = jax.tree.map(jax.numpy.asarray, res.params)
            ev = evaluate(model, params, corpus.val.tokens[:n_val], corpus.val.mask[:n_val])
            peak = res.device_memory_peak
            rows.append({
                "devices": n, "mode": mode, "simulated": platform == "cpu",
                "platform": platform, "global_batch": rc.global_batch, "steps": res.steps,
                "samples": res.steps * rc.global_batch, "tokens": res.tokens,
                "wall_s": res.wall_s, "compile_s": res.compile_s,
                "tokens_per_s": res.tokens_per_s,
                "steps_per_s": res.steps / max(res.wall_s - res.compile_s, 1e-9),
                "memory_mb": {k: v / MB for k, v in res.memory.items()},
                "activations_mb_estimate": activation_bytes(
                    model, rc.train.batch_size, rc.data.seq_len, rc.model.remat) / MB,
                "xla_temp_mb": res.xla_memory.get("temporaries", 0) / MB,
                "measured_peak_mb": None if peak is None else peak / MB,
                "eval_loss": ev["loss"], "diverged_at": res.diverged_at,
            })
    base = {r["mode"]: r["samples"] for r in rows if r.get("devices") == 1 and "mode" in r}
    for r in rows:
        if "mode" in r and base.get(r["mode"]):
            r["r"] = r["samples"] / base[r["mode"]]
    return rows


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (skipped device counts noted below it)."""
    head = ("| devices | mode | global batch | steps in budget | samples | tokens/s | r "
            "| params / grads / opt MB per device | XLA temp MB | measured peak MB "
            "| eval loss |\n|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if "mode" not in r:
            continue
        m = r["memory_mb"]
        peak = "n/a" if r["measured_peak_mb"] is None else f"{r['measured_peak_mb']:.0f}"
        lines.append(
            f"| {r['devices']} | {r['mode']} | {r['global_batch']} | {r['steps']} | "
            f"{r['samples']} | {r['tokens_per_s']:.0f} | {r.get('r', float('nan')):.2f} | "
            f"{m['params']:.2f} / {m['grads']:.2f} / {m['opt_state']:.2f} | "
            f"{r['xla_temp_mb']:.1f} | {peak} | {r['eval_loss']:.3f} |")
    notes = [f"- {r['devices']} devices skipped: {r['skipped']}" for r in rows if "skipped" in r]
    if any(r.get("simulated") for r in rows):
        notes.append("- Simulated host devices share the same CPU cores: tokens/s and r do not "
                     "show real scaling; the rows check correctness and memory layout.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sgdjax.lm.scaling CONFIG.json TOKENIZER.json OUT.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m sgdjax.lm.scaling CONFIG.json TOKENIZER.json OUT.json",
              file=sys.stderr)
        return 2
    from sgdjax.lm.config import LMConfig
    from sgdjax.lm.data import build_corpus
    from sgdjax.lm.tokenizer import Tokenizer
    from sgdjax.nested_config import from_dict

    cfg = from_dict(LMConfig, json.loads(Path(args[0]).read_text()))
    tokenizer = Tokenizer.from_json(Path(args[1]).read_text())
    rows = run_rows(cfg, build_corpus(cfg.data, tokenizer))
    Path(args[2]).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
