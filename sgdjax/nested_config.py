"""Nested frozen-dataclass configs loaded from TOML, with dotted ``--set`` overrides.

The study families after SGDiffusion have structured configs (``model.n_layer``,
``training.curriculum.loops.end``). A config is a frozen dataclass whose fields may themselves be
frozen dataclasses; TOML tables map onto them and ``--set a.b.c=value`` overrides one leaf. Field
types drive parsing and validation, so a typo or a wrong value is reported with the dotted key,
what was expected and the closest valid key -- before JAX is touched.

Supported leaf types: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``tuple[T, ...]`` and ``T | None`` of those.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from sgdjax.config import EXPERIMENTS_DIR, setup_path
from sgdjax.errors import ConfigError, did_you_mean
from sgdjax.values import coerce, expected

C = TypeVar("C")


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of ``cls`` in dotted form (``model.n_layer`` ...)."""
    out: list[str] = []
    for name, tp in _hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if _is_config(tp):
            out.extend(dotted_keys(tp, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def _set_leaf(tree: dict[str, Any], cls: type, dotted: str, value: Any, where: str,
              raw: bool) -> None:
    """Store ``value`` (coerced to the field's type) at ``dotted`` in the nested dict ``tree``."""
    parts = dotted.split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        hints = _hints(node_cls)
        names = [f.name for f in dataclasses.fields(node_cls)]
        if part not in names:
            here = ".".join(parts[:i])
            options = [f"{here}.{n}" if here else n for n in names]
            raise ConfigError(
                f"unknown key '{dotted}' in {where}."
                + did_you_mean(dotted, dotted_keys(cls) + options)
                + " Run 'python -m sgdjax.run EXP SETUP --dry-run' to see every key."
            )
        tp = hints[part]
        if i == len(parts) - 1:
            if _is_config(tp):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"'{dotted}' in {where} is a section; set one of its keys, "
                                      f"e.g. {dotted_keys(tp, dotted + '.')[0]}=...")
                for k, v in value.items():
                    _set_leaf(tree, cls, f"{dotted}.{k}", v, where, raw)
                return
            try:
                node[part] = coerce(tp, value.strip().strip("'\"") if raw else value)
            except ValueError:
                raise ConfigError(f"{dotted}={value!r} in {where} is not valid: expected "
                                  f"{expected(tp)}.") from None
            return
        if not _is_config(tp):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' in {where} is a value, not a "
                              f"section; did you mean {'.'.join(parts[: i + 1])}=...?")
        node = node.setdefault(part, {})
        node_cls = tp


def _build(cls: type[C], tree: Mapping[str, Any]) -> C:
    hints = _hints(cls)
    kwargs = {}
    for name, value in tree.items():
        tp = hints[name]
        kwargs[name] = _build(tp, value) if _is_config(tp) else value
    return cls(**kwargs)


def parse_overrides(cls: type, items: Sequence[str]) -> list[tuple[str, str]]:
    """``["a.b=1", ...]`` -> ``[("a.b", "1"), ...]`` with keys checked against ``cls``."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must have the form key=value, e.g. "
                              f"--set {dotted_keys(cls)[-1]}=...")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in ("experiment", "setup"):
            raise ConfigError(f"--set {key}=... is not allowed; name the setup on the command "
                              "line.")
        _set_leaf({}, cls, key, value, "--set", raw=True)  # validates key and value
        out.append((key, value))
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def build(cls: type[C], sources: Sequence[tuple[str, Mapping[str, Any]]],
          overrides: Sequence[str] | Mapping[str, Any] = (), **fixed: Any) -> C:
    """A ``cls`` from layered mappings (later wins), then overrides, then ``fixed`` values."""
    tree: dict[str, Any] = {}
    for where, mapping in sources:
        for key, value in mapping.items():
            _set_leaf(tree, cls, key, value, where, raw=False)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _set_leaf(tree, cls, key, value, "overrides", raw=False)
    else:
        for key, value in parse_overrides(cls, overrides):
            _set_leaf(tree, cls, key, value, "--set", raw=True)
    tree.update(fixed)
    return _build(cls, tree)


def load_nested(
    cls: type[C],
    experiment: str,
    setup: str,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    root: Path = EXPERIMENTS_DIR,
) -> C:
    """Load ``root/EXP/_defaults.toml`` then ``root/EXP/SETUP.toml`` into ``cls`` and apply
    dotted overrides (``key=value`` strings, or a mapping of dotted keys to values)."""
    path = setup_path(experiment, setup, root)
    defaults = path.parent / "_defaults.toml"
    sources = [(str(p), _read_toml(p)) for p in ([defaults] if defaults.exists() else [])]
    sources.append((str(path), _read_toml(path)))
    try:
        return build(cls, sources, overrides, experiment=experiment, setup=path.stem)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), JSON-ready."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Rebuild a config from :func:`to_dict` output (e.g. a results manifest)."""
    return build(cls, [("the config mapping", values)])


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dotted leaves of a :func:`to_dict` mapping."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


__all__ = ["build", "coerce", "dotted_keys", "flatten", "from_dict", "load_nested",
           "parse_overrides", "to_dict"]
