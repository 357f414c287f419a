"""tensorflow-datasets-like split strings: ``train``, ``train[:6400]``, ``test[-10%:]``.

Parsing is separate from resolving because a percentage needs the split size, which is known
only once the data files are read.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sgdjax.errors import ConfigError


class Percent(NamedTuple):
    """A slice bound given as a percentage of the split size (may be negative)."""

    value: int


Bound = int | Percent | None


class SplitSpec(NamedTuple):
    """A parsed split string; unpacks as ``(name, start, stop)``."""

    name: str
    start: Bound
    stop: Bound


GRAMMAR = (
    "NAME or NAME[START:STOP], where NAME is a split name (e.g. 'train', 'test') and START and "
    "STOP are optional integers (negative counts from the end, as in Python) or integer "
    "percentages such as 10%; examples: 'train', 'train[:6400]', 'test[100:200]', "
    "'train[-1000:]', 'train[:10%]'"
)
_BOUND = r"\s*(-?\d+%?)?\s*"
_SPLIT_RE = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[{_BOUND}:{_BOUND}\])?\s*$")


def _parse_bound(text: str | None, split: str) -> Bound:
    if text is None:
        return None
    if text.endswith("%"):
        value = int(text[:-1])
        if abs(value) > 100:
            raise ConfigError(
                f"Invalid split '{split}': a percentage must lie between -100% and 100%, got "
                f"{text}. Accepted forms: {GRAMMAR}."
            )
        return Percent(value)
    return int(text)


def parse_split(split: str) -> SplitSpec:
    """Parse a split string into ``(name, start, stop)``; bounds are int, Percent or None."""
    match = _SPLIT_RE.match(split) if isinstance(split, str) else None
    if match is None:
        raise ConfigError(f"Invalid split {split!r}. Accepted forms: {GRAMMAR}.")
    name, start, stop = match.groups()
    return SplitSpec(name, _parse_bound(start, split), _parse_bound(stop, split))


def _resolve(bound: Bound, n_total: int, default: int, name: str) -> int:
    if bound is None:
        return default
    if isinstance(bound, Percent):
        # Round to the nearest example, halves away from zero, in exact integer arithmetic.
        magnitude = (abs(bound.value) * n_total * 2 + 100) // 200
        count = magnitude if bound.value >= 0 else -magnitude
    else:
        count = int(bound)
    if abs(count) > n_total:
        raise ConfigError(
            f"The split bound {count} is outside split '{name}', which has {n_total} examples; "
            f"use a bound between -{n_total} and {n_total}."
        )
    return count + n_total if count < 0 else count


def apply_split(n_total: int, start: Bound, stop: Bound, *, name: str = "split") -> slice:
    """Resolve bounds against a split of ``n_total`` examples into ``slice(a, b)``, 0 <= a < b.

    Unlike Python slicing, out-of-range or empty selections are errors: silently getting fewer
    examples than asked for would change an experiment without anyone noticing.
    """
    a = _resolve(start, n_total, 0, name)
    b = _resolve(stop, n_total, n_total, name)
    if a >= b:
        raise ConfigError(
            f"The selection [{a}:{b}] of split '{name}' ({n_total} examples) is empty; choose "
            f"START < STOP."
        )
    return slice(a, b)


def resolve_split(split: str, n_total: int) -> slice:
    """Parse ``split`` and resolve it against ``n_total`` examples."""
    name, start, stop = parse_split(split)
    return apply_split(n_total, start, stop, name=name)
