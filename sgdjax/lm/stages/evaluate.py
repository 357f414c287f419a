"""Stage 2: final evaluation and one sampled generation (the seed's report per run).

``eval.json``: token-weighted loss, perplexity and accuracy on every held-out block, the unigram
baseline, the last logged training loss and learning rate; ``generation.txt``: the prompt, the
sampled continuation and those metrics in the seed's format.
"""

from __future__ import annotations

from typing import Any

from sgdjax.lm.data import unigram_loss
from sgdjax.lm.generate import generate
from sgdjax.lm.loss import evaluate
from sgdjax.lm.train import GENERATE_STREAM, stream_key


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def outputs(ctx: Any) -> list[str]:
    return ["eval.json", "generation.txt"]


def run(ctx: Any) -> dict[str, Any]:
    cfg, store, corpus, model = ctx.cfg, ctx.store, ctx.corpus, ctx.model
    if not store.exists("checkpoint.npz"):
        from sgdjax.errors import ConfigError

        raise ConfigError(f"{store.root} has no checkpoint.npz yet; run stage 1 (train) first, "
                          "e.g. --stages train,evaluate.")
    params, _ = model.from_state_dict(store.load_npz("checkpoint.npz"))
    metrics = evaluate(model, params, corpus.val.tokens, corpus.val.mask)
    unigram = unigram_loss(corpus.train, corpus.val, corpus.tokenizer.vocab_size)
    logs = store.load_json("logs_train.json") if store.exists("logs_train.json") else {}
    train_loss = logs.get("loss", [])[-cfg.logging.log_every:]
    lrs = logs.get("lr", [])
    g = cfg.generate
    tok = corpus.tokenizer
    new = generate(model, params, tok.encode(g.prompt), stream_key(cfg.seed, GENERATE_STREAM),
                   max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                   eos=tok.eos)
    text = tok.decode(new)
    result = {
        "eval/loss": metrics["loss"], "perplexity": metrics["perplexity"],
        "accuracy": metrics["accuracy"], "eval_tokens": metrics["tokens"],
        "unigram_loss": unigram,
        "train/loss": float(sum(train_loss) / len(train_loss)) if train_loss else None,
        "lr": float(lrs[-1]) if lrs else None,
        "prompt": g.prompt, "generation": text, "new_tokens": int(new.size),
    }
    store.save_json("eval.json", result, indent=2)
    metrics_line = (f"*Metrics: eval/loss={metrics['loss']:.2f}, "
                    f"train/loss={_fmt(result['train/loss'], '.2f')}, "
                    f"lr={_fmt(result['lr'], '.2g')}*")
    store.save_text("generation.txt",
                    f"Prompt: {g.prompt!r}\nLimit: {g.max_new_tokens} tokens, temperature "
                    f"{g.temperature}, top-p {g.top_p}\n\n{g.prompt}{text}\n\n{metrics_line}\n")
    return {"eval_loss": metrics["loss"], "perplexity": metrics["perplexity"],
            "unigram_loss": unigram, "below_unigram": metrics["loss"] < unigram,
            "new_tokens": int(new.size)}
