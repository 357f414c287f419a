"""Stage 1: train the decoder for the configured budget.

Writes ``checkpoint.npz`` (float32 arrays under Hugging Face ``Qwen3ForCausalLM`` names),
``logs_train.json`` (loss per optimizer step, learning rate, validation losses, throughput),
``train_log.jsonl`` (HF-style records every ``logging.log_every`` steps; TensorBoard / wandb as
well when installed) and ``loss_curve.png``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sgdjax.lm import plots
from sgdjax.lm.data import unigram_loss
from sgdjax.lm.logging import RunLog
from sgdjax.lm.train import horizon, lr_values, train_flat, train_sharded, tree_to_flat
from sgdjax.progress import Progress

LOG = "train_log.jsonl"


def outputs(ctx: Any) -> list[str]:
    return ["checkpoint.npz", "logs_train.json", LOG, "loss_curve.png"]


class _Logger:
    """Turns segment records into HF-like log lines: the mean training loss of the last
    ``every`` steps with the learning rate of the last one, and every validation loss."""

    def __init__(self, log: RunLog, every: int, lr_at: Any, eval_every: int) -> None:
        self.log, self.every, self.lr_at, self.eval_every = log, every, lr_at, eval_every
        self.losses: list[float] = []

    def __call__(self, done: int, records: dict[str, np.ndarray]) -> None:
        seg = records["loss"][0]
        first = done - seg.size
        for i, value in enumerate(seg):
            self.losses.append(float(value))
            step = first + i + 1
            if step % self.every == 0:
                window = self.losses[-self.every:]
                self.log.log(step, {"train/loss": float(np.mean(window)),
                                    "lr": float(self.lr_at(step - 1))})
        if "val_loss" in records:
            for k, value in enumerate(records["val_loss"][0]):
                self.log.log(first + self.eval_every * (k + 1), {"eval/loss": float(value)})


def run(ctx: Any) -> dict[str, Any]:
    cfg, store, corpus, model = ctx.cfg, ctx.store, ctx.corpus, ctx.model
    n_blocks = corpus.train.tokens.shape[0]
    steps_h = horizon(cfg, n_blocks)
    # Learning rates of every step the budget may reach (a wall-clock budget: up to the horizon).
    lr_table = lr_values(cfg, cfg.optim.lr, steps_h, max(steps_h, cfg.train.max_steps or 0) + 1)

    def lr_at(step: int) -> float:
        return float(lr_table[min(step, lr_table.size - 1)])

    store.remove(LOG)  # a recomputed stage starts a fresh log
    run_log = RunLog(store.root, name=LOG, run_name=f"{cfg.experiment}/{cfg.setup}",
                     config=cfg.to_dict(), tensorboard=cfg.logging.tensorboard,
                     wandb=cfg.logging.wandb, project=cfg.logging.project)
    hook = _Logger(run_log, cfg.logging.log_every, lr_at, cfg.train.eval_every)
    with run_log, Progress("train", cfg.train.max_steps, unit="steps",
                           enabled=ctx.show_progress) as bar:
        if cfg.parallel.mode == "none":
            res = train_flat(cfg, model, corpus, seeds=[cfg.seed], lrs=[cfg.optim.lr],
                             on_segment=hook, progress=bar)
            w = res.w[0]
            loss, val_steps, val_loss = res.loss[0], res.val_steps, res.val_loss[0]
            diverged = int(res.diverged_at[0])
            extra: dict[str, Any] = {}
        else:
            from sgdjax.lm.sharding import make_mesh

            mesh = make_mesh(cfg.parallel.devices)
            res = train_sharded(cfg, model, corpus, mesh, cfg.parallel.mode, on_segment=hook,
                                progress=bar)
            w = tree_to_flat(model, res.params)
            loss, val_steps, val_loss = res.loss, res.val_steps, res.val_loss
            diverged = res.diverged_at
            extra = {"memory_per_device": res.memory, "xla_memory": res.xla_memory}
        backends = run_log.backends

    params = model.unflatten(np.asarray(w, np.float32))
    store.save_npz("checkpoint.npz", model.to_state_dict(params))
    lrs = np.array([lr_at(s) for s in range(res.steps)])
    unigram = unigram_loss(corpus.train, corpus.val, corpus.tokenizer.vocab_size)
    logs = {
        "loss": loss, "lr": lrs, "val_steps": val_steps, "val_loss": val_loss,
        "steps": res.steps, "diverged_at": diverged, "wall_s": res.wall_s,
        "compile_s": res.compile_s, "tokens": res.tokens, "tokens_per_s": res.tokens_per_s,
        "global_batch": cfg.global_batch, "seq_len": cfg.data.seq_len,
        "schedule_horizon": steps_h, "num_params": model.num_params,
        "vocab_size": model.vocab_size, "train_blocks": n_blocks,
        "unigram_loss": unigram, "log_backends": backends, **extra,
    }
    store.save_json("logs_train.json", logs)
    store.save_figure("loss_curve.png", plots.loss_curve(
        loss, lrs, val_steps, val_loss, unigram=unigram,
        title=f"{cfg.experiment}/{cfg.setup}: {model.num_params:,} parameters"))
    tail = loss[-max(1, cfg.logging.log_every):]
    return {
        "steps": res.steps, "final_train_loss": float(np.nanmean(tail)) if tail.size else None,
        "final_val_loss": float(val_loss[-1]) if len(val_loss) else None,
        "unigram_loss": unigram, "tokens_per_s": res.tokens_per_s, "compile_s": res.compile_s,
        "num_params": model.num_params, "diverged_at": diverged,
    }
