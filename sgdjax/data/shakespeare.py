"""Tiny-Shakespeare characters for exp2 (spec §2.4).

The text is reduced to at most 25 symbols and cut into stride-1 windows exactly as the original
did, and split at window 4736 (= 74 batches of 64), the split that produced the original's
stored results, rather than at the 80 % rule of its HEAD code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sgdjax.data.cache import fetch
from sgdjax.data.types import ArraySplit
from sgdjax.errors import ConfigError

RELPATH = "tinyshakespeare/input.txt"
URLS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
)
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: Symbols that survive step 2 of the preprocessing; note 'z' is not among them.
ALLOWED = frozenset(" abcdefghijklmnopqrstuvwxy")


class ShakespeareData(NamedTuple):
    """Windows of token ids (x, y int32 ``[n, block]``; y is x shifted by one character),
    the vocabulary (``chars[i]`` is the symbol of id i), and the preprocessed text."""

    train: ArraySplit
    val: ArraySplit
    chars: tuple[str, ...]
    stoi: dict[str, int]
    text: str

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def decode(self, ids: np.ndarray) -> str:
        """The text of a sequence of ids."""
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def preprocess_text(text: str, max_chars: int | None = 6000, vocab_size: int = 25) -> str:
    """Keep the first ``max_chars`` characters, lower-case them, and map every symbol outside
    {a..y, space} to a space; if more than ``vocab_size`` symbols then remain, map the least
    frequent to a space as well.

    Tie-break of that last rule (it never triggers for the first 6000 characters of
    tiny-Shakespeare, which hold 25 symbols): space is always kept, and the other symbols are
    ranked by count descending, then by character ascending, and the first ``vocab_size - 1``
    are kept, so among equally rare symbols the alphabetically later ones go first.
    """
    if vocab_size < 2:
        raise ConfigError(
            f"vocab_size must be at least 2 (space and one letter), got {vocab_size}."
        )
    if max_chars is not None:
        if max_chars < 1:
            raise ConfigError(f"max_chars must be positive (or None for all), got {max_chars}.")
        text = text[:max_chars]
    # Lower-case character by character: str.lower() on the whole string could change its
    # length for a few non-ASCII characters and shift every later position.
    reduced = "".join(c if c in ALLOWED else " " for c in (ch.lower() for ch in text))
    counts = Counter(reduced)
    if len(counts) > vocab_size:
        ranked = sorted((c for c in counts if c != " "), key=lambda c: (-counts[c], c))
        keep = set(ranked[: vocab_size - 1]) | {" "}
        reduced = "".join(c if c in keep else " " for c in reduced)
    return reduced


def make_windows(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All stride-1 windows: ``x[i] = ids[i:i+block]``, ``y[i] = ids[i+1:i+block+1]``, for
    ``i < len(ids) - block``."""
    n = ids.shape[0] - block_size
    if block_size < 1 or n < 1:
        raise ConfigError(
            f"block_size={block_size} leaves no window in a text of {ids.shape[0]} characters; "
            f"use 1 <= block_size < text length."
        )
    windows = np.lib.stride_tricks.sliding_window_view(ids, block_size + 1)
    windows = windows[:n]
    return (
        np.ascontiguousarray(windows[:, :-1], dtype=np.int32),
        np.ascontiguousarray(windows[:, 1:], dtype=np.int32),
    )


def load_shakespeare(
    *,
    max_chars: int | None = 6000,
    vocab_size: int = 25,
    block_size: int = 16,
    n_train: int | None = 4736,
    root: Path | None = None,
) -> ShakespeareData:
    """The exp2 dataset: with the defaults 5984 windows of 16 ids, 4736 for training and 1248
    for validation, in text order (no shuffling; neighbouring train/val windows overlap).

    ``n_train=None`` applies the original HEAD code's rule ``int(0.8 * n)`` (4787 / 1197).
    """
    path = fetch(RELPATH, URLS, SHA256, root=root)
    raw = path.read_text(encoding="utf-8")
    text = preprocess_text(raw, max_chars, vocab_size)
    chars = tuple(sorted(set(text)))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((stoi[c] for c in text), dtype=np.int32, count=len(text))
    x, y = make_windows(ids, block_size)
    n = x.shape[0]
    if n_train is None:
        n_train = int(0.8 * n)
    if not 1 <= n_train < n:
        raise ConfigError(
            f"n_train={n_train} must leave at least one window for each of train and "
            f"validation; the text gives {n} windows, so use 1 <= n_train < {n}."
        )
    return ShakespeareData(
        train=ArraySplit(x[:n_train], y[:n_train]),
        val=ArraySplit(x[n_train:], y[n_train:]),
        chars=chars,
        stoi=stoi,
        text=text,
    )
