"""Tokenizers, documents, packing, padding and the held-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sgdjax.errors import ConfigError, DataMissingError
from sgdjax.lm.config import DataConfig
from sgdjax.lm.data import (
    Blocks,
    build_corpus,
    pack,
    pad_truncate,
    read_text,
    split_documents,
    split_train_val,
    unigram_loss,
)
from sgdjax.lm.tokenizer import Tokenizer, byte_tokenizer, pretokenize, train_bpe


def _reference_bpe_encode(word: bytes, merges: list[tuple[int, int]]) -> list[int]:
    """Textbook BPE encoding: repeatedly merge the lowest-ranked adjacent pair."""
    rank = {m: i for i, m in enumerate(merges)}
    ids = list(word)
    while len(ids) > 1:
        pairs = [(rank.get((a, b), 1 << 30), i)
                 for i, (a, b) in enumerate(zip(ids, ids[1:], strict=False))]
        r, i = min(pairs)
        if r == 1 << 30:
            break
        ids[i: i + 2] = [256 + r]
    return ids


def test_pretokenize_is_lossless() -> None:
    text = "  First Citizen:\nWe're 12.5% __done__ — ça va?\n\n\tEnd  "
    assert "".join(pretokenize(text)) == text
    assert pretokenize("Hello world") == ["Hello", " world"]


def test_byte_tokenizer_round_trip_and_ids() -> None:
    tok = byte_tokenizer()
    assert tok.vocab_size == 257 and tok.eos == tok.pad == 256
    ids = tok.encode("Aé")
    assert ids.tolist() == [65, 0xC3, 0xA9]
    assert tok.decode([*ids, 256, 66], stop_at_eos=True) == "Aé"


def test_bpe_first_merges_are_the_most_frequent_pairs() -> None:
    text = "aaab aaab aaab abab cd"
    tok = train_bpe(text, 256 + 3 + 1)
    a, b = ord("a"), ord("b")
    # ' a' (4 words) and 'ab' (3 + 2 x 1 + ...) compete; counts are taken inside words only.
    # Words: 'aaab' x1, ' aaab' x2, ' abab' x1, ' cd' x1. Pairs: (a,a) 6 (aaa: two per word,
    # the merge of 'aaa' takes the left pair first), (a,b) 5, (' ',a) 3.
    assert tok.merges[0] == (a, a)
    assert tok.merges[1] == (a, b)
    assert tok.vocab_size == 260 and tok.eos == 259


def test_bpe_encoding_equals_lowest_rank_first_and_round_trips() -> None:
    text = ("the theme of the thesis: there, then, the other thing. " * 20
            + "Ünïcödé strings, naïve café. 1234 12 1")
    tok = train_bpe(text, 300)
    assert len(tok.merges) > 10
    words = pretokenize(text)
    got = tok.encode_many(words)
    for w, ids in zip(words, got, strict=True):
        assert ids.tolist() == _reference_bpe_encode(w.encode(), list(tok.merges))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.size < len(text.encode()) / 2
    assert Tokenizer.from_json(tok.to_json()) == tok


def test_documents_and_held_out_split() -> None:
    text = "a b\n\nccc\n\n\n\nd\n\neeee\n"
    assert split_documents(text, "blank_lines") == ["a b", "ccc", "d", "eeee"]
    assert split_documents(text, "lines") == ["a b", "ccc", "d", "eeee"]
    docs = [f"doc{i}" * (i + 1) for i in range(10)]
    train, val = split_train_val(docs, DataConfig(val_fraction=0.2))
    assert train + val == docs and len(val) >= 1
    assert sum(map(len, val)) / sum(map(len, docs)) == pytest.approx(0.2, abs=0.1)
    train, val = split_train_val(docs, DataConfig(val_split="first_documents",
                                                  val_documents=3))
    assert val == docs[:3] and train == docs[3:]
    with pytest.raises(ConfigError, match="at least two"):
        split_train_val(["only one"], DataConfig())


def test_pack_blocks_overlap_by_one_token() -> None:
    docs = [np.arange(5, dtype=np.int32), np.arange(10, 13, dtype=np.int32)]
    b = pack(docs, eos=99, seq_len=3)
    stream = [0, 1, 2, 3, 4, 99, 10, 11, 12, 99]
    assert b.tokens.tolist() == [stream[0:4], stream[3:7], stream[6:10]]
    assert b.mask.all() and b.n_targets == 9  # every token after the first is a target once


def test_pad_truncate_masks_padding() -> None:
    docs = [np.arange(1, 8, dtype=np.int32), np.array([5, 6], np.int32), np.array([7], np.int32)]
    b = pad_truncate(docs, pad=0, seq_len=4)
    assert b.tokens.tolist() == [[1, 2, 3, 4, 5], [5, 6, 0, 0, 0]]  # 1-token doc dropped
    assert b.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert b.n_targets == 4 + 1


def test_unigram_loss_closed_form() -> None:
    train = Blocks(np.array([[0, 1, 1, 2]]), np.ones((1, 4), bool))
    val = Blocks(np.array([[0, 1, 2]]), np.ones((1, 3), bool))
    # train targets 1, 1, 2 with add-one smoothing over 3 ids: p = (1, 3, 2) / 6
    assert unigram_loss(train, val, 3) == pytest.approx(-(np.log(3 / 6) + np.log(2 / 6)) / 2)


def test_local_file_and_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "corpus.txt"
    f.write_text("Alpha.\n\nGamma delta epsilon.\n\nZeta eta theta iota.\n")
    corpus = build_corpus(DataConfig(source=str(f), seq_len=8, val_fraction=0.3))
    assert corpus.train.tokens.shape[1] == 9 and corpus.val.tokens.shape[0] >= 1
    assert corpus.train_docs == 2 and corpus.val_docs == 1
    padded = build_corpus(DataConfig(source=str(f), seq_len=8, mode="padded",
                                     val_fraction=0.3))
    assert padded.train.tokens.shape == (2, 9)
    assert padded.train.mask.sum(axis=1).tolist() == [6, 9]  # "Alpha." is 6 bytes, padded
    assert padded.train.tokens[0, 6:].tolist() == [padded.tokenizer.pad] * 3
    with pytest.raises(DataMissingError, match="neither 'tinyshakespeare' nor an existing"):
        read_text(str(tmp_path / "nope.txt"))
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SGDJAX_OFFLINE", "1")
    with pytest.raises(DataMissingError, match="tinyshakespeare/input.txt"):
        read_text("tinyshakespeare")


def test_tinyshakespeare_corpus(text_data: Path) -> None:
    corpus = build_corpus(DataConfig(seq_len=64))
    n_train, n_val = corpus.train.tokens.shape[0], corpus.val.tokens.shape[0]
    assert corpus.train.tokens.shape[1] == 65
    # ~10 % of the 1,115,394 bytes (+ one end-of-text per paragraph) are held out.
    assert 0.09 < n_val / (n_train + n_val) < 0.11
    assert corpus.tokenizer.decode(corpus.train.tokens[0]).startswith("First Citizen:")
    assert unigram_loss(corpus.train, corpus.val, 257) == pytest.approx(3.366, abs=0.01)
