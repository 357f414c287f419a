"""Every setup file of the looped study loads and validates through the CLI's loader, and every
full-size experiment has a tiny counterpart that keeps its distinguishing switches."""

from __future__ import annotations

import pytest

from sgdjax.config import EXPERIMENTS_DIR
from sgdjax.families import family_for
from sgdjax.looped.config import LoopedConfig
from sgdjax.nested_config import from_dict

SETUPS = sorted(p.stem for p in (EXPERIMENTS_DIR / "looped").glob("*.toml")
                if not p.stem.startswith("_"))
FULL = [s for s in SETUPS if not s.startswith("tiny_")]

# Model switches that define a variant: a tiny counterpart must match them exactly. Widths,
# prompt length, heads and the SSM state are sizes and shrink; n_last_tokens shrinks with the
# prompt, so only whether it truncates at all is compared.
VARIANT_KEYS = ("family", "n_layer", "block_type", "loop_func", "save_n_tokens",
                "mask_per_layer", "feed_block", "skip_connection", "inject_scale")


def _load(setup: str) -> LoopedConfig:
    # family_for(...).load_config is what `python -m sgdjax.run looped SETUP` calls.
    cfg = family_for("looped").load_config("looped", setup, [])
    assert isinstance(cfg, LoopedConfig)
    return cfg


def test_setups_are_found() -> None:
    assert "tiny_loop" in SETUPS and "loop_L1" in SETUPS and len(FULL) >= 13


@pytest.mark.parametrize("setup", SETUPS)
def test_setup_validates(setup: str) -> None:
    cfg = _load(setup)
    assert cfg.setup == setup and cfg.description
    # results manifests store to_dict(); a resumed run rebuilds the config from it
    assert from_dict(LoopedConfig, cfg.to_dict()) == cfg


@pytest.mark.parametrize("setup", FULL)
def test_every_experiment_has_a_tiny_counterpart(setup: str) -> None:
    tiny_name = f"tiny_{setup}"
    assert tiny_name in SETUPS, f"experiments/looped/{tiny_name}.toml is missing"
    full, tiny = _load(setup), _load(tiny_name)
    for key in VARIANT_KEYS:
        if key == "n_layer" and full.model.family == "gpt2":
            continue  # the baseline's depth is its size, not a looped block's layer count
        assert getattr(tiny.model, key) == getattr(full.model, key), key
    assert (tiny.model.n_last_tokens >= 0) == (full.model.n_last_tokens >= 0)
    assert tiny.training.task == full.training.task
    assert tiny.training.fork_window == full.training.fork_window
    # tiny enough to train in about a minute on a 2-core CPU (measured in docs/benchmarks.md)
    assert tiny.model.n_embd <= 32 and tiny.model.n_positions <= 9
    assert tiny.training.train_steps <= 3000 and tiny.training.curriculum.loops.end <= 4
    assert tiny.eval.n_loops <= 200


def test_tiny_truncation_keeps_the_full_share() -> None:
    # lastN keeps N of the 2 * 41 = 82 positions; its tiny counterpart the same share of 18.
    for n in (20, 55, 75):
        full, tiny = _load(f"last{n}"), _load(f"tiny_last{n}")
        full_share = full.model.n_last_tokens / (2 * full.training.curriculum.points.end)
        tiny_share = tiny.model.n_last_tokens / (2 * tiny.training.curriculum.points.end)
        assert abs(full_share - tiny_share) < 1 / 18, n
