"""Nested configs: TOML tables, dotted overrides, typed coercion and helpful errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from sgdjax.errors import ConfigError
from sgdjax.families import FAMILIES, family_for
from sgdjax.nested_config import build, dotted_keys, flatten, from_dict, load_nested, to_dict


@dataclass(frozen=True)
class Loops:
    start: int = 1
    end: int = 10


@dataclass(frozen=True)
class Curriculum:
    loops: Loops = field(default_factory=Loops)
    every: int = 100


@dataclass(frozen=True)
class Training:
    lr: float = 1e-3
    curriculum: Curriculum = field(default_factory=Curriculum)
    lrs: tuple[float, ...] = (0.1,)
    clip: float | None = None


@dataclass(frozen=True)
class Model:
    family: Literal["gpt2", "gpt2_loop"] = "gpt2"
    n_layer: int = 1
    bias: bool = True


@dataclass(frozen=True)
class Cfg:
    experiment: str = ""
    setup: str = ""
    description: str = ""
    device: Literal["cpu", "gpu"] = "cpu"
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)

    def __post_init__(self) -> None:
        if self.training.curriculum.loops.end < self.training.curriculum.loops.start:
            raise ConfigError("training.curriculum.loops.end must be >= start")

    def to_dict(self) -> dict:
        return to_dict(self)


def test_dotted_keys_lists_every_leaf():
    keys = dotted_keys(Cfg)
    assert "training.curriculum.loops.end" in keys and "model.n_layer" in keys
    assert "training" not in keys and len(keys) == len(set(keys)) == 13


def test_tables_then_dotted_overrides_with_types():
    toml = {"model": {"family": "gpt2_loop", "n_layer": 2},
            "training": {"curriculum": {"loops": {"end": 20}}}}
    cfg = build(Cfg, [("a.toml", toml)], ["model.n_layer=3", "training.curriculum.loops.end=30",
                                          "training.lrs=0.1,0.01", "training.clip=none",
                                          "model.bias=false", "training.lr=1e-2"])
    assert cfg.model == Model("gpt2_loop", 3, False)
    assert cfg.training.curriculum.loops == Loops(1, 30)
    assert cfg.training.lrs == (0.1, 0.01) and cfg.training.clip is None
    assert cfg.training.lr == 0.01 and isinstance(cfg.training.lr, float)
    assert build(Cfg, [], ["training.clip=0.5"]).training.clip == 0.5


def test_round_trip_through_dict():
    cfg = build(Cfg, [], ["training.lrs=0.2,0.3", "model.n_layer=4"])
    d = cfg.to_dict()
    assert d["training"]["lrs"] == [0.2, 0.3]
    assert flatten(d)["model.n_layer"] == 4
    assert from_dict(Cfg, d) == cfg


@pytest.mark.parametrize("item, words", [
    ("model.n_layr=2", ["unknown key 'model.n_layr'", "model.n_layer"]),
    ("training.curriculum.loop.end=3", ["unknown key", "training.curriculum.loops.end"]),
    ("model.family=gpt3", ["model.family", "'gpt2'", "'gpt2_loop'"]),
    ("model.n_layer=2.5", ["model.n_layer", "an integer"]),
    ("model.n_layer=1e400", ["model.n_layer", "an integer"]),
    ("training.lrs=0.1,x", ["training.lrs", "comma-separated list of numbers"]),
    ("model.n_layer", ["key=value"]),
    ("model=3", ["is a section"]),
    ("model.n_layer.x=3", ["is a value, not a section"]),
    ("training.curriculum.loops.end=0", ["loops.end must be >= start"]),
])
def test_errors_name_the_key_and_the_fix(item, words):
    with pytest.raises(ConfigError) as info:
        build(Cfg, [], [item])
    for w in words:
        assert w in str(info.value)


def test_load_nested_reads_defaults_then_setup(tmp_path):
    exp = tmp_path / "fam"
    exp.mkdir()
    (exp / "_defaults.toml").write_text('[model]\nn_layer = 2\nfamily = "gpt2_loop"\n')
    (exp / "big.toml").write_text('description = "bigger"\n[model]\nn_layer = 6\n')
    (exp / "bad.toml").write_text('[model]\nn_layers = 6\n')
    cfg = load_nested(Cfg, "fam", "big", ["training.lr=0.5"], root=tmp_path)
    assert (cfg.experiment, cfg.setup, cfg.description) == ("fam", "big", "bigger")
    assert cfg.model == Model("gpt2_loop", 6, True) and cfg.training.lr == 0.5
    with pytest.raises(ConfigError, match=r"model.n_layers.*bad.toml.*model.n_layer"):
        load_nested(Cfg, "fam", "bad", root=tmp_path)
    with pytest.raises(ConfigError, match="unknown setup 'bgi'.*big"):
        load_nested(Cfg, "fam", "bgi", root=tmp_path)


def test_sgdiffusion_family_exposes_the_contract():
    fam = family_for("exp1")
    cfg = fam.load_config("exp1", "setup1", ["many_runs_samples=3"])
    assert cfg.many_runs_samples == 3 and "device" in fam.EXECUTION_KEYS
    assert [s.number for s in fam.STAGES] == list(range(1, 8))
    assert set(FAMILIES) >= {"exp1", "exp2", "optdyn", "looped", "lm"}
    with pytest.raises(ConfigError, match="unknown experiment 'exp9'"):
        family_for("exp9")
