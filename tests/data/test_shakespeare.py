from __future__ import annotations

import string

import numpy as np
import pytest

from sgdjax.data.shakespeare import load_shakespeare, make_windows, preprocess_text
from sgdjax.errors import ConfigError


def test_preprocess_example_from_spec():
    text = "First Citizen:\nBefore we proceed"
    assert preprocess_text(text, 6000, 25) == "first citi en  before we proceed"


def test_preprocess_keeps_first_chars_and_maps_outside_symbols():
    assert preprocess_text("ABC xyz 123!", 8, 25) == "abc xy  "
    assert preprocess_text("Été\tnaïve", None, 25) == " t  na ve"
    # one output character per input character even where lower() expands (İ -> i + dot)
    assert len(preprocess_text("İi", None, 25)) == 2


def test_preprocess_drops_least_frequent_with_documented_ties():
    # counts: a 4, b 3, c 2, d 2, e 1, space 3 -> 6 symbols
    text = "aaaa bbb cc dd e"
    assert preprocess_text(text, None, 6) == text
    # keep space + the 3 most frequent letters; c and d tie at 2: c (earlier) is kept
    assert preprocess_text(text, None, 4) == "aaaa bbb cc     "
    assert set(preprocess_text(text, None, 4)) == {" ", "a", "b", "c"}
    with pytest.raises(ConfigError):
        preprocess_text(text, None, 1)


def test_windows_are_shifted_by_one():
    ids = np.arange(10, dtype=np.int32)
    x, y = make_windows(ids, 4)
    assert x.shape == (6, 4) and y.shape == (6, 4) and x.dtype == np.int32
    np.testing.assert_array_equal(x[2], [2, 3, 4, 5])
    np.testing.assert_array_equal(y[2], [3, 4, 5, 6])
    np.testing.assert_array_equal(y[-1], [6, 7, 8, 9])
    with pytest.raises(ConfigError):
        make_windows(ids, 10)


def test_real_dataset(shakespeare_root):
    data = load_shakespeare(root=shakespeare_root)
    letters = tuple(c for c in string.ascii_lowercase if c not in "xz")
    assert data.chars == (" ",) + letters and len(data.chars) == 25 == data.vocab_size
    assert data.stoi[" "] == 0 and data.stoi["a"] == 1 and data.stoi["w"] == 23
    assert data.stoi["y"] == 24
    assert len(data.text) == 6000 and "x" not in data.text and "z" not in data.text
    assert data.train.x.shape == (4736, 16) and data.val.x.shape == (1248, 16)
    for split in (data.train, data.val):
        assert split.x.dtype == np.int32 and split.y.dtype == np.int32
        np.testing.assert_array_equal(split.x[1:, :], split.y[:-1, :])  # stride-1 windows
        np.testing.assert_array_equal(split.x[:, 1:], split.y[:, :-1])  # y = x shifted by one
    assert data.decode(data.train.x[0]) == "first citi en  b"
    assert data.decode(data.train.y[0]) == "irst citi en  be"
    x_all = np.concatenate([data.train.x, data.val.x])
    assert x_all.shape == (5984, 16)
    np.testing.assert_array_equal(data.val.x[0], x_all[4736])
    assert data.decode(data.val.y[-1]) == data.text[-16:]
    assert x_all.max() == 24 and x_all.min() == 0


def test_real_dataset_head_split_and_options(shakespeare_root):
    head = load_shakespeare(root=shakespeare_root, n_train=None)
    assert head.train.x.shape == (4787, 16) and head.val.x.shape == (1197, 16)
    small = load_shakespeare(root=shakespeare_root, max_chars=100, block_size=8, n_train=50)
    assert small.train.x.shape == (50, 8) and small.val.x.shape == (42, 8)
    with pytest.raises(ConfigError, match="1 <= n_train < 5984"):
        load_shakespeare(root=shakespeare_root, n_train=5984)
