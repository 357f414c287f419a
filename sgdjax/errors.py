"""User-facing errors.

Every error a user can cause (bad config, missing data, unknown setup, missing device) is a
``SgdjaxError``: the CLI prints its message alone, without a traceback, and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SgdjaxError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""


class ConfigError(SgdjaxError):
    """A setup file or a ``--set`` override is invalid."""


class DataMissingError(SgdjaxError):
    """Data files are absent and cannot be downloaded."""


class DeviceError(SgdjaxError):
    """The requested device is not available to JAX."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest match of ``name`` among ``choices`` (for 'did you mean' hints), or None."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean 'x'?' suffix, or an empty string when nothing is close."""
    match = closest(name, choices)
    return f" Did you mean '{match}'?" if match else ""
