"""What the stages of one LM setup share: config, store, and the corpus and model built once."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from sgdjax.lm.config import LMConfig
from sgdjax.lm.data import Corpus, build_corpus
from sgdjax.lm.tokenizer import Tokenizer
from sgdjax.models.qwen3 import Qwen3

TOKENIZER_FILE = "tokenizer.json"


class LMContext:
    def __init__(self, cfg: LMConfig, store: Any, *, force: bool = False,
                 show_progress: bool = True, device: Any = None) -> None:
        self.cfg, self.store, self.force = cfg, store, force
        self.show_progress, self.device = show_progress, device

    @cached_property
    def corpus(self) -> Corpus:
        """Blocks of the configured text. A trained BPE is kept in the results directory so a
        later stage (or a resumed run) tokenizes with exactly the same merges."""
        tokenizer = None
        if not self.force and self.store.exists(TOKENIZER_FILE):
            tokenizer = Tokenizer.from_json(self.store.path(TOKENIZER_FILE).read_text())
        corpus = build_corpus(self.cfg.data, tokenizer)
        if tokenizer is None:
            self.store.save_text(TOKENIZER_FILE, corpus.tokenizer.to_json())
        return corpus

    @cached_property
    def model(self) -> Qwen3:
        return self.cfg.model.build(self.corpus.tokenizer.vocab_size)
