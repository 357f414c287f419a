"""Text corpora as fixed-shape token blocks, with held-out validation (spec §1.2, §3).

A corpus is any local text file (default: tiny-Shakespeare through the data cache, so
``$SGDJAX_DATA_DIR`` applies and a missing file says where it looked). It is cut into documents
(paragraphs separated by blank lines, single lines, or the whole text), the documents are split
into training and validation -- the last ``val_fraction`` of the text, or the first
``val_documents`` documents as in the seed -- and each split becomes ``[N, seq_len + 1]`` token
blocks with a mask of real tokens:

* ``packed`` (default): every document followed by end-of-text, all concatenated and cut into
  blocks of ``seq_len + 1`` tokens with stride ``seq_len`` (consecutive blocks share one token,
  so every token of the stream is a target exactly once). The mask is all ones.
* ``padded`` (the seed's HW): each document truncated to ``seq_len + 1`` tokens and right-padded
  with the pad id; the mask marks real tokens, and only targets whose position is real count in
  the loss (the seed's labels = ids with padding set to -100). Documents with fewer than two
  tokens give no target and are dropped.

The model reads ``block[:-1]`` and predicts ``block[1:]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sgdjax.data import shakespeare
from sgdjax.data.cache import fetch
from sgdjax.errors import ConfigError, DataMissingError
from sgdjax.lm.config import DataConfig
from sgdjax.lm.tokenizer import Tokenizer, byte_tokenizer, train_bpe

BUILTIN = "tinyshakespeare"


class Blocks(NamedTuple):
    """Token blocks ``[N, seq_len + 1]`` (int32) and their real-token mask (bool)."""

    tokens: np.ndarray
    mask: np.ndarray

    @property
    def n_targets(self) -> int:
        """Positions that count in the loss."""
        return int((self.mask[:, 1:] & self.mask[:, :-1]).sum())


class Corpus(NamedTuple):
    train: Blocks
    val: Blocks
    tokenizer: Tokenizer
    train_docs: int
    val_docs: int


def read_text(source: str, max_chars: int | None = None) -> str:
    """The text of ``source``: the built-in tiny-Shakespeare (data cache) or a local file."""
    if source == BUILTIN:
        path = fetch(shakespeare.RELPATH, shakespeare.URLS, shakespeare.SHA256)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataMissingError(
                f"data.source={source!r} is neither {BUILTIN!r} nor an existing text file "
                f"(looked for {path.resolve()}). Point data.source at a UTF-8 text file, or use "
                f"{BUILTIN!r} (read from $SGDJAX_DATA_DIR/{shakespeare.RELPATH})."
            )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataMissingError(f"{path} is not UTF-8 text ({exc}); convert it to UTF-8.") from None
    if max_chars is not None:
        text = text[:max_chars]
    if not text.strip():
        raise DataMissingError(f"{path} holds no text.")
    return text


def split_documents(text: str, how: str) -> list[str]:
    """Non-empty documents: paragraphs (``blank_lines``), ``lines`` or the ``whole`` text."""
    if how == "whole":
        parts = [text]
    elif how == "lines":
        parts = text.split("\n")
    else:
        parts = [p for p in text.replace("\r\n", "\n").split("\n\n")]
    return [p.strip("\n") for p in parts if p.strip()]


def split_train_val(docs: Sequence[str], cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train, validation) documents; validation is held out, never trained on."""
    if len(docs) < 2:
        raise ConfigError(
            f"the corpus has {len(docs)} document(s) under data.documents={cfg.documents!r}; "
            "a train/validation split needs at least two. Use data.documents='lines', or a "
            "longer text."
        )
    if cfg.val_split == "first_documents":
        n_val = min(cfg.val_documents, len(docs) - 1)
        return list(docs[n_val:]), list(docs[:n_val])
    # Cut at the document boundary closest to (1 - val_fraction) of the characters.
    ends = np.cumsum([len(d) for d in docs])
    target = (1 - cfg.val_fraction) * ends[-1]
    cut = int(np.argmin(np.abs(ends[:-1] - target))) + 1
    return list(docs[:cut]), list(docs[cut:])


def pack(ids: Sequence[np.ndarray], eos: int, seq_len: int) -> Blocks:
    """Documents joined (each followed by end-of-text) and cut into overlapping blocks."""
    stream = np.concatenate([np.append(d, eos) for d in ids]).astype(np.int32)
    n = (stream.size - 1) // seq_len
    if n < 1:
        raise ConfigError(
            f"the text gives {stream.size} tokens, too few for one block of data.seq_len="
            f"{seq_len} + 1; lower data.seq_len or use a longer text."
        )
    starts = np.arange(n) * seq_len
    tokens = stream[starts[:, None] + np.arange(seq_len + 1)[None, :]]
    return Blocks(tokens, np.ones(tokens.shape, bool))


def pad_truncate(ids: Sequence[np.ndarray], pad: int, seq_len: int) -> Blocks:
    """One block per document: its first ``seq_len + 1`` tokens, right-padded."""
    kept = [d[: seq_len + 1] for d in ids if d.size >= 2]
    if not kept:
        raise ConfigError("no document has two tokens or more; the padded mode has nothing to "
                          "train on.")
    tokens = np.full((len(kept), seq_len + 1), pad, np.int32)
    mask = np.zeros(tokens.shape, bool)
    for i, d in enumerate(kept):
        tokens[i, : d.size] = d
        mask[i, : d.size] = True
    return Blocks(tokens, mask)


def make_tokenizer(cfg: DataConfig, train_text: str) -> Tokenizer:
    """The configured tokenizer, a BPE being trained on the training documents only."""
    if cfg.tokenizer == "byte":
        return byte_tokenizer()
    return train_bpe(train_text, cfg.vocab_size)


def build_corpus(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> Corpus:
    """Read, split, tokenize (training a BPE unless ``tokenizer`` is given) and block."""
    text = read_text(cfg.source, cfg.max_chars)
    train_docs, val_docs = split_train_val(split_documents(text, cfg.documents), cfg)
    if tokenizer is None:
        tokenizer = make_tokenizer(cfg, "\n\n".join(train_docs))
    ids = tokenizer.encode_many([*train_docs, *val_docs])
    tr, va = ids[: len(train_docs)], ids[len(train_docs):]
    if cfg.mode == "packed":
        train, val = pack(tr, tokenizer.eos, cfg.seq_len), pack(va, tokenizer.eos, cfg.seq_len)
    else:
        train = pad_truncate(tr, tokenizer.pad, cfg.seq_len)
        val = pad_truncate(va, tokenizer.pad, cfg.seq_len)
    return Corpus(train, val, tokenizer, len(train_docs), len(val_docs))


def unigram_loss(train: Blocks, val: Blocks, vocab_size: int) -> float:
    """Cross-entropy (nats per token) on the validation targets of the training split's token
    frequencies (add-one smoothed): what a model that ignores context can reach."""
    w_tr = train.mask[:, 1:] & train.mask[:, :-1]
    counts = np.bincount(train.tokens[:, 1:][w_tr], minlength=vocab_size).astype(np.float64)
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    w_va = val.mask[:, 1:] & val.mask[:, :-1]
    return float(-logp[val.tokens[:, 1:][w_va]].mean())


__all__ = ["BUILTIN", "Blocks", "Corpus", "build_corpus", "make_tokenizer", "pack",
           "pad_truncate", "read_text", "split_documents", "split_train_val", "unigram_loss"]
