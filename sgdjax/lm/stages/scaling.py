"""Stage 3: the distributed-training table (see ``sgdjax.lm.scaling``).

Runs the rows in a fresh Python process whose environment provides the devices: on CPU,
``max(scaling.devices)`` simulated host devices (the flag must be set before JAX starts, which
this process has already done). Writes ``scaling.json``, ``scaling.csv``, ``scaling.md`` and
``scaling.png``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sgdjax
from sgdjax.errors import SgdjaxError
from sgdjax.lm import plots
from sgdjax.lm.scaling import table_markdown

WORK = "scaling_work"


def outputs(ctx: Any) -> list[str]:
    return ["scaling.json", "scaling.csv", "scaling.md", "scaling.png"]


def worker_env(device: str, n_devices: int) -> dict[str, str]:
    """The environment of the worker: the package importable, and on CPU enough host devices."""
    env = dict(os.environ)
    root = str(Path(sgdjax.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    if device == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags,
                                     f"--xla_force_host_platform_device_count={n_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def run(ctx: Any) -> dict[str, Any]:
    cfg, store = ctx.cfg, ctx.store
    corpus = ctx.corpus  # trains and saves the tokenizer if this is the first stage run
    store.save_json(f"{WORK}/config.json", cfg.to_dict())
    store.save_text(f"{WORK}/tokenizer.json", corpus.tokenizer.to_json())
    out = store.path(f"{WORK}/rows.json")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "sgdjax.lm.scaling", str(store.path(f"{WORK}/config.json")),
           str(store.path(f"{WORK}/tokenizer.json")), str(out)]
    try:
        proc = subprocess.run(cmd, env=worker_env(cfg.device, max(cfg.scaling.devices)),
                              timeout=cfg.scaling.timeout_s, text=True,
                              capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        raise SgdjaxError(
            f"the scaling worker did not finish within scaling.timeout_s={cfg.scaling.timeout_s} "
            "s; lower scaling.max_seconds or the number of rows (scaling.devices, "
            "scaling.modes), or raise scaling.timeout_s.") from None
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SgdjaxError(f"the scaling worker failed (exit status {proc.returncode}):\n{tail}")
    rows = store.load_json(f"{WORK}/rows.json")
    store.save_json("scaling.json", rows, indent=2)
    store.save_text("scaling.csv", _csv(rows))
    store.save_text("scaling.md", table_markdown(rows))
    done = [r for r in rows if "mode" in r]
    if done:
        store.save_figure("scaling.png", plots.scaling(done))
    store.remove(f"{WORK}/config.json", f"{WORK}/tokenizer.json", f"{WORK}/rows.json")
    with contextlib.suppress(OSError):
        store.path(WORK).rmdir()
    return {f"{r['mode']}_x{r['devices']}": {"steps": r["steps"],
                                             "tokens_per_s": r["tokens_per_s"],
                                             "state_mb": r["memory_mb"]["total"],
                                             "eval_loss": r["eval_loss"]} for r in done}


def _csv(rows: list[dict[str, Any]]) -> str:
    cols = ["devices", "mode", "simulated", "global_batch", "steps", "samples", "tokens",
            "wall_s", "compile_s", "tokens_per_s", "r", "params_mb", "grads_mb", "opt_state_mb",
            "state_mb", "activations_mb_estimate", "xla_temp_mb", "measured_peak_mb",
            "eval_loss", "skipped"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        flat = dict(r)
        for k, v in (r.get("memory_mb") or {}).items():
            flat["state_mb" if k == "total" else f"{k}_mb"] = v
        writer.writerow(flat)
    return buf.getvalue()
