"""Sharding layouts, per-device memory, accumulation, and sharded training against the
unsharded engine (the 4-device runs come from four_devices.py, see conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sgdjax.lm.config import OptimConfig
from sgdjax.lm.optim import optimizer
from sgdjax.lm.sharding import leaf_spec, state_bytes_per_device
from sgdjax.lm.stages.scaling import worker_env
from sgdjax.models.qwen3 import Qwen3

ROOT = Path(__file__).resolve().parents[2]


def test_leaf_spec_shards_the_largest_divisible_axis() -> None:
    assert leaf_spec((257, 64), 4) == P(None, "data")  # 257 is not divisible by 4
    assert leaf_spec((256, 64), 4) == P("data", None)
    assert leaf_spec((6,), 4) == P()
    assert leaf_spec((), 4) == P()
    assert leaf_spec((8, 8), 1) == P()


def test_paper_model_memory_per_device_by_mode() -> None:
    model = Qwen3.preset("paper", 50_257)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0))[0])
    opt = optimizer(OptimConfig(), lambda s: 1e-4)
    opt_state = jax.eval_shape(opt.init, params)
    p_bytes = 960_881_664 * 4
    counters = 8  # Adam's and the schedule's int32 step counts stay replicated
    want = {
        "dp": (p_bytes, p_bytes, 2 * p_bytes + counters),
        "zero1": (p_bytes, p_bytes, 2 * p_bytes // 4 + counters),
        "zero2": (p_bytes, p_bytes // 4, 2 * p_bytes // 4 + counters),
        "zero3": (p_bytes // 4, p_bytes // 4, 2 * p_bytes // 4 + counters),
    }
    for mode, (p, g, o) in want.items():
        got = state_bytes_per_device(params, opt_state, mode, 4)
        assert (got["params"], got["grads"], got["opt_state"]) == (p, g, o), mode
    # ZeRO-3 on 4 devices: 16 bytes per parameter (fp32 weights, grads, Adam mu and nu) / 4,
    # plus the largest module gathered at a time: the 50,257 x 2048 embedding (or head), larger
    # than a decoder layer's 62.9M parameters.
    zero3 = state_bytes_per_device(params, opt_state, "zero3", 4)
    assert zero3["gathered"] == 4 * 50_257 * 2048
    assert zero3["total"] == 16 * 960_881_664 // 4 + counters + zero3["gathered"]
    assert state_bytes_per_device(params, opt_state, "zero2", 4)["gathered"] == 0


def test_worker_env_asks_for_host_devices() -> None:
    env = worker_env("cpu", 4)
    assert "--xla_force_host_platform_device_count=4" in env["XLA_FLAGS"].split()
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)


def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(
        four_device_results: dict[str, Any]) -> None:
    out = four_device_results
    assert out["acc"]["tokens"] == 4 * 8 * 8
    assert out["acc"]["max_abs_diff"] < 2e-5 * max(1.0, out["scale"]), out["acc"]
    # Per-step loss = mean of the micro-batch losses = the big batch's loss.
    np.testing.assert_allclose(out["acc"]["loss"], out["ref_loss"], rtol=1e-5)
    assert out["ref_loss"][-1] < out["ref_loss"][0]  # it trained


def test_dp_and_zero_1_2_3_on_four_devices_agree_with_unsharded_training(
        four_device_results: dict[str, Any]) -> None:
    out = four_device_results
    assert out["ref_val_steps"] == [2, 4]
    for mode in ("dp", "zero1", "zero2", "zero3"):
        assert out[mode]["max_abs_diff"] < 2e-5 * max(1.0, out["scale"]), (mode, out[mode])
        np.testing.assert_allclose(out[mode]["loss"], out["ref_loss"], rtol=1e-5)
        assert out[mode]["tokens"] == out["acc"]["tokens"]
        # In-loop validation on the same steps and blocks as the engine's.
        assert out[mode]["val_steps"] == out["ref_val_steps"], mode
        np.testing.assert_allclose(out[mode]["val_loss"], out["ref_val_loss"], rtol=1e-5)
    mem = {mode: out[mode]["memory"] for mode in ("zero1", "zero2", "zero3")}
    # Each stage shards one more kind of state (1-D norm weights of odd size stay replicated).
    assert mem["zero1"]["params"] == mem["zero2"]["params"] > 3.5 * mem["zero3"]["params"]
    assert mem["zero1"]["grads"] > 3.5 * mem["zero2"]["grads"]
    assert mem["zero2"]["grads"] == mem["zero3"]["grads"]
    assert mem["zero1"]["opt_state"] == mem["zero2"]["opt_state"] == mem["zero3"]["opt_state"]
    assert mem["zero1"]["opt_state"] < 0.6 * mem["zero1"]["params"]  # 2 moments / 4 devices


def test_final_parameters_are_laid_out_as_the_mode_says(
        four_device_results: dict[str, Any]) -> None:
    out = four_device_results
    for mode in ("dp", "zero1", "zero2"):
        assert out[mode]["replicated_leaves"] == out[mode]["leaves"], mode
    # Every tensor of this model has an axis that 4 divides, so ZeRO-3 shards them all.
    assert out["zero3"]["replicated_leaves"] == 0
    assert all(out[m]["leaf_devices"] == [4] for m in ("dp", "zero1", "zero2", "zero3"))


@pytest.mark.parametrize("variant", ["zero3", "zero3_remat"])
def test_zero3_gathers_each_layer_inside_it_and_again_for_the_backward_pass(
        four_device_results: dict[str, Any], variant: str) -> None:
    hlo = four_device_results["hlo"][variant]
    # A 2-layer model: each layer's all-gathers sit inside that layer, in the forward pass and
    # again in the rematerialised backward pass (not one gather of everything kept throughout).
    assert hlo["layers_gathered_forward"] == hlo["layers_gathered_backward"] == [0, 1]
    layer_tensors = 2 * 11
    assert hlo["counts"]["all-gather"] >= 2 * layer_tensors
    assert hlo["full_size_gradient_users"] == 0  # gradients reduce-scattered


def test_zero2_reduce_scatters_gradients_where_dp_all_reduces(
        four_device_results: dict[str, Any]) -> None:
    hlo = four_device_results["hlo"]
    zero2, dp = hlo["zero2"], hlo["dp"]
    # XLA's CPU pipeline has no reduce-scatter pass: a reduce-scatter stays an all-reduce whose
    # result is only read at this device's shard. dp's update reads the whole gradient.
    if not zero2["counts"].get("reduce-scatter"):
        assert zero2["all_reduced_arrays"] >= 25 and zero2["full_size_gradient_users"] == 0
    assert dp["all_reduced_arrays"] >= 25 and dp["full_size_gradient_users"] > 0
    assert "all-gather" not in dp["counts"]
    # ZeRO-2 keeps whole parameters: it gathers updated ones, never a layer's for its use.
    assert zero2["layers_gathered_forward"] == [] and zero2["counts"]["all-gather"] == 25


@pytest.mark.parametrize("mode", ["dp", "zero1", "zero2", "zero3"])
def test_state_bytes_shrink_with_devices(mode: str) -> None:
    model = Qwen3.preset("tiny", 256)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0))[0])
    opt_state = jax.eval_shape(optimizer(OptimConfig(), lambda s: 1e-3).init, params)
    one = state_bytes_per_device(params, opt_state, mode, 1)["total"]
    four = state_bytes_per_device(params, opt_state, mode, 4)["total"]
    assert one == 16 * model.num_params + 8
    assert (four == one) if mode == "dp" else (four < one)
    assert np.isfinite(four)
