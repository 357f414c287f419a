from __future__ import annotations

import pytest

from sgdjax.data.splits import Percent, apply_split, parse_split, resolve_split
from sgdjax.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train", ("train", None, None)),
        ("train[:6400]", ("train", None, 6400)),
        ("test[100:200]", ("test", 100, 200)),
        ("train[5000:]", ("train", 5000, None)),
        ("train[-1000:]", ("train", -1000, None)),
        ("train[:-10]", ("train", None, -10)),
        ("train[:10%]", ("train", None, Percent(10))),
        ("train[-25%:]", ("train", Percent(-25), None)),
        (" test [ 1 : 3 ] ", ("test", 1, 3)),
        ("train[:]", ("train", None, None)),
    ],
)
def test_parse(text, expected):
    assert tuple(parse_split(text)) == expected
    name, start, stop = parse_split(text)  # unpacks as a plain triple
    assert name == expected[0]


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("train", 60000, slice(0, 60000)),
        ("train[:6400]", 60000, slice(0, 6400)),
        ("test[100:200]", 10000, slice(100, 200)),
        ("train[-1000:]", 60000, slice(59000, 60000)),
        ("train[:-10]", 100, slice(0, 90)),
        ("train[:10%]", 60000, slice(0, 6000)),
        ("train[-25%:]", 10000, slice(7500, 10000)),
        ("train[:50%]", 5, slice(0, 3)),  # 2.5 rounds half away from zero
        ("train[:33%]", 10, slice(0, 3)),
        ("train[10%:20%]", 1000, slice(100, 200)),
        ("train[:100%]", 7, slice(0, 7)),
    ],
)
def test_resolve(text, n, expected):
    assert resolve_split(text, n) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "train[",
        "train[1:2",
        "train[a:b]",
        "train[1]",
        "train[1:2:3]",
        "1train",
        "train[:1.5%]",
        "train[::]",
        "tr ain",
    ],
)
def test_bad_strings_name_the_grammar(bad):
    with pytest.raises(ConfigError) as info:
        parse_split(bad)
    message = str(info.value)
    assert repr(bad) in message and "NAME[START:STOP]" in message and "train[:6400]" in message


def test_percent_out_of_range():
    with pytest.raises(ConfigError, match="between -100% and 100%"):
        parse_split("train[:150%]")


def test_out_of_bounds_names_the_split_size():
    with pytest.raises(ConfigError, match="split 'test', which has 10000 examples"):
        resolve_split("test[:10001]", 10000)
    with pytest.raises(ConfigError, match="which has 100 examples"):
        apply_split(100, -101, None)


@pytest.mark.parametrize("start, stop", [(5, 5), (7, 3), (-1, -2), (None, 0), (100, None)])
def test_empty_selection_is_an_error(start, stop):
    with pytest.raises(ConfigError, match=r"\(100 examples\) is empty"):
        apply_split(100, start, stop, name="train")
