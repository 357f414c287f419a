"""Typed config values: what every family's TOML values and ``--set`` strings become."""

from __future__ import annotations

from typing import Literal

import pytest

from sgdjax.values import coerce, describe, expected


@pytest.mark.parametrize("tp, value, expected", [
    (int, "3", 3), (int, 7, 7), (int, "1_000", 1000), (int, "1e3", 1000), (int, 2.0, 2),
    (int, " 12345678901234567890 ", 12345678901234567890),  # no detour through a float
    (float, "1e-3", 1e-3), (float, 2, 2.0), (float, "1_000.5", 1000.5),
    (bool, "yes", True), (bool, "OFF", False), (bool, 0, False), (bool, True, True),
    (str, "adam", "adam"), (str, 3, "3"),
    (tuple[float, ...], "[0.1, 0.01]", (0.1, 0.01)), (tuple[float, ...], [1, 2], (1.0, 2.0)),
    (tuple[int, ...], "4", (4,)), (tuple[int, ...], "", ()),
    (Literal["cpu", "gpu"], " gpu", "gpu"), (Literal[1, 2], "2", 2),
    (float | None, "none", None), (float | None, "NULL", None), (float | None, "0.5", 0.5),
    (int | None, None, None),
])
def test_values_become_the_field_type(tp, value, expected):
    out = coerce(tp, value)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("tp, value", [
    (int, "1.5"), (int, "1e400"), (int, float("inf")), (int, "nan"), (int, True), (int, "x"),
    (int, [1]), (float, True), (float, "fast"), (float, None), (bool, "maybe"), (bool, 2),
    (str, True), (str, {"a": 1}), (tuple[float, ...], "0.1,x"), (tuple[int, ...], [1, 2.5]),
    (Literal["cpu", "gpu"], "tpu"), (int | None, "1.5"),
])
def test_bad_values_are_value_errors(tp, value):
    with pytest.raises(ValueError):
        coerce(tp, value)


def test_descriptions_name_what_was_expected():
    assert describe(int) == "an integer"
    assert describe(tuple[float, ...]) == "a comma-separated list of numbers"
    assert describe(Literal["a", "b"]) == "one of 'a', 'b'"
    assert describe(float | None) == "a number (or none)"


def test_list_errors_show_an_example():
    assert expected(tuple[float, ...]) == "a comma-separated list of numbers (e.g. 0.05,0.01)"
    assert expected(tuple[int, ...]) == "a comma-separated list of integers (e.g. 1,2)"
    assert expected(int) == describe(int) == "an integer"
