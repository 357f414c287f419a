"""Typed values from TOML files and ``--set key=value`` strings, for every config family.

``coerce(tp, value)`` converts a TOML value or a command-line string to the field type ``tp``
(``bool``, ``int``, ``float``, ``str``, ``tuple[T, ...]``, ``Literal[...]``, ``T | None``) and
raises ``ValueError`` for anything that is not one; ``expected(tp)`` says what was expected,
for the caller's one-line error. Both the flat sgdiffusion config and the nested configs of the
sibling studies parse through here, so ``--set`` means the same everywhere.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

#: Strings that mean "no value" for an optional field.
NONE_WORDS = ("none", "null")

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
_EXAMPLES = {int: "1,2", float: "0.05,0.01", str: "a,b"}


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for an error message."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(describe(a) for a in inner) + " (or none)"
    if origin is tuple:
        item = get_args(tp)[0]
        return "a comma-separated list of " + _PLURALS.get(item, f"values, each {describe(item)}")
    return _NAMES.get(tp, str(tp))


def expected(tp: Any) -> str:
    """``describe(tp)`` with an example for lists, the text of an "expected ..." error."""
    if get_origin(tp) is tuple and get_args(tp)[0] in _EXAMPLES:
        return f"{describe(tp)} (e.g. {_EXAMPLES[get_args(tp)[0]]})"
    return describe(tp)


def coerce(tp: Any, value: Any) -> Any:
    """Convert a TOML value or a ``--set`` string to type ``tp``; ``ValueError`` if it cannot."""
    origin = get_origin(tp)
    if origin is Literal:
        for a in get_args(tp):
            if value == a or (isinstance(value, str) and str(a) == value.strip()):
                return a
        raise ValueError(value)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.strip().lower() in NONE_WORDS)):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value)
            except ValueError:
                continue
        raise ValueError(value)
    if origin is tuple:
        item = get_args(tp)[0]
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").strip("[]()").split(",") if p]
        elif isinstance(value, Iterable) and not isinstance(value, Mapping):
            parts = list(value)
        else:
            parts = [value]
        return tuple(coerce(item, p) for p in parts)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if tp is int:
        return _integer(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(value)
        return float(value.strip().replace("_", "")) if isinstance(value, str) else float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    raise TypeError(f"unsupported config field type {tp!r}")


def _integer(value: Any) -> int:
    # "1_000" and "1e3" are integers too; 1.5, "inf" and "nan" are not.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    text = str(value).strip().replace("_", "")
    try:
        return int(text)
    except ValueError:
        number = float(text)
    if not number.is_integer():  # also false for inf and nan
        raise ValueError(value)
    return int(number)
