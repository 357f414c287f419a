"""Tokenizers trained and run locally: raw bytes, or a byte-level BPE.

Both map text to int32 ids whose first 256 values are the UTF-8 bytes, so any text (any language)
is encodable and decoding is exact. The last id is the end-of-text token, used between packed
documents and, as in the seed's setup (pad := eos), as the padding id.

The BPE is the GPT-2 construction on a small scale: text is pre-split into words (letters with
their leading space, digits, punctuation runs, whitespace), the most frequent adjacent pair of
ids inside words is merged into a new id, repeatedly. Ties go to the numerically smallest pair
(first byte, then second), so training is deterministic. Encoding applies the merges in training
order, which gives the same result as repeatedly merging the lowest-ranked pair present (a merge
can only create pairs that involve its new, higher-ranked id).

The work is done on the distinct words, each weighted by its count, laid end to end in one numpy
array with -1 separators: one vectorised pass per merge, no Python loop over text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sgdjax.errors import ConfigError

N_BYTES = 256
# Words: an optional space followed by letters, digits or punctuation; or whitespace (a run of
# whitespace before a word leaves its last space to the word, as GPT-2 does). Lossless:
# "".join(findall(text)) == text for every string.
_WORDS = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")


def pretokenize(text: str) -> list[str]:
    """The words BPE merges never cross."""
    return _WORDS.findall(text)


@dataclass(frozen=True)
class Tokenizer:
    """``merges[k] = (a, b)`` makes id ``256 + k``; ``eos`` is the last id."""

    kind: str
    merges: tuple[tuple[int, int], ...] = ()

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(self.merges) + 1

    @property
    def eos(self) -> int:
        return N_BYTES + len(self.merges)

    @property
    def pad(self) -> int:
        return self.eos

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """int32 ids of ``text`` (no special tokens added)."""
        return self.encode_many([text])[0]

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of several texts; words shared between texts are encoded once."""
        if self.kind == "byte" or not self.merges:
            return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) for t in texts]
        split = [pretokenize(t) for t in texts]
        vocab = sorted(set().union(*map(set, split)))
        flat, _ = _lay_out(vocab, None)
        for k, (a, b) in enumerate(self.merges):
            flat, _ = _merge(flat, None, a, b, N_BYTES + k)
        ids = np.split(flat, np.flatnonzero(flat < 0) + 1)[: len(vocab)]
        table = {w: seq[:-1] for w, seq in zip(vocab, ids, strict=True)}
        out = []
        for words in split:
            parts = [table[w] for w in words]
            out.append(np.concatenate(parts).astype(np.int32) if parts
                       else np.zeros(0, np.int32))
        return out

    # -- decoding -----------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes]:
        """The bytes of every id (empty for end-of-text)."""
        table = [bytes([i]) for i in range(N_BYTES)]
        for a, b in self.merges:
            table.append(table[a] + table[b])
        table.append(b"")
        return table

    def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD."""
        table = self.token_bytes()
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            if i == self.eos and stop_at_eos:
                break
            if not 0 <= i < len(table):
                raise ConfigError(f"token id {int(i)} is outside the vocabulary of "
                                  f"{self.vocab_size} ids.")
            out.append(table[i])
        return b"".join(out).decode("utf-8", errors="replace")

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "merges": [list(m) for m in self.merges]})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        data = json.loads(text)
        return cls(data["kind"], tuple((int(a), int(b)) for a, b in data["merges"]))


def byte_tokenizer() -> Tokenizer:
    return Tokenizer("byte")


def train_bpe(text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` ids in all (256 bytes, the merges, end-of-text).

    Stops early (with fewer merges) when no pair occurs twice any more."""
    n_merges = vocab_size - N_BYTES - 1
    if n_merges < 0:
        raise ConfigError(f"data.vocab_size={vocab_size} is too small for a byte-level BPE: it "
                          f"needs at least {N_BYTES + 1} ids (256 bytes and end-of-text).")
    counts = Counter(pretokenize(text))
    vocab = sorted(counts)
    flat, weight = _lay_out(vocab, np.array([counts[w] for w in vocab], np.int64))
    merges: list[tuple[int, int]] = []
    for k in range(n_merges):
        a, b = flat[:-1], flat[1:]
        valid = (a >= 0) & (b >= 0)
        codes = a[valid].astype(np.int64) * (N_BYTES + n_merges) + b[valid]
        if codes.size == 0:
            break
        # Weight of a pair = how often it occurs in the text (each word weighted by its count).
        uniq, inverse = np.unique(codes, return_inverse=True)
        totals = np.bincount(inverse, weights=weight[:-1][valid])
        best = int(np.argmax(totals))  # first maximum = smallest code: deterministic ties
        if totals[best] < 2:
            break
        pa, pb = divmod(int(uniq[best]), N_BYTES + n_merges)
        merges.append((pa, pb))
        flat, weight = _merge(flat, weight, pa, pb, N_BYTES + k)
    return Tokenizer("bpe", tuple(merges))


def _lay_out(words: Sequence[str], counts: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Words' bytes end to end, each followed by -1; per-position weights = the word's count."""
    raw = [np.frombuffer(w.encode("utf-8"), np.uint8).astype(np.int32) for w in words]
    flat = np.concatenate([np.append(r, -1) for r in raw]) if raw else np.zeros(0, np.int32)
    if counts is None:
        return flat.astype(np.int32), None
    weight = np.repeat(counts, [len(r) + 1 for r in raw])
    return flat.astype(np.int32), weight


def _merge(flat: np.ndarray, weight: np.ndarray | None, a: int, b: int, new: int
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Replace every non-overlapping occurrence of the pair (a, b), left to right, by ``new``."""
    pos = np.flatnonzero((flat[:-1] == a) & (flat[1:] == b))
    if pos.size == 0:
        return flat, weight
    if a == b and pos.size > 1:
        # "a a a" holds two overlapping matches; leftmost-first keeps every other one of a run.
        starts = np.r_[True, np.diff(pos) != 1]
        first = np.flatnonzero(starts)[np.cumsum(starts) - 1]
        pos = pos[(np.arange(pos.size) - first) % 2 == 0]
    flat = flat.copy()
    flat[pos] = new
    keep = np.ones(flat.size, bool)
    keep[pos + 1] = False
    return flat[keep], (weight[keep] if weight is not None else None)


__all__ = ["N_BYTES", "Tokenizer", "byte_tokenizer", "pretokenize", "train_bpe"]
