"""``python -m benchmarks.kernels``: per-kernel time tables from XLA's CPU trace events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kernels import format_report, is_kernel, kind_of

ROOT = Path(__file__).resolve().parents[1]


def test_kind_and_kernel_names() -> None:
    assert kind_of("add_bitcast_fusion.3") == "add_bitcast_fusion"
    assert kind_of("ynn_fusion") == "ynn_fusion"
    assert kind_of("wrapped_reduce-window.12") == "wrapped_reduce-window"
    assert not is_kernel("ThunkExecutor::Execute")
    assert not is_kernel("while.5")
    assert not is_kernel("SlinkyThreadPool::Await")
    assert is_kernel("dot.51")


def test_report_per_call_shares_and_kinds() -> None:
    totals = {"ThunkExecutor::Execute": 9e9, "while.2": 9e9,
              "dot.1": 6000.0, "ynn_fusion.1": 3000.0, "ynn_fusion.2": 1000.0}
    text = format_report(totals, calls=2, top=5).splitlines()
    assert text[0] == "5.0 us of kernels per call"  # (6000 + 3000 + 1000) ns / 2 calls
    assert text[3].split() == ["3.0", "60.0%", "dot.1"]
    assert text[4].split() == ["1.5", "30.0%", "ynn_fusion.1"]
    kinds = text[text.index("   us/call  share  kind (summed)") + 1:]
    assert kinds[0].split() == ["3.0", "60.0%", "dot"]
    assert kinds[1].split() == ["2.0", "40.0%", "ynn_fusion"]
    with pytest.raises(RuntimeError, match="xprof_traceme"):
        format_report({"ThunkExecutor::Execute": 1.0}, calls=1, top=3)


def test_cli_profiles_a_tiny_step(tmp_path) -> None:
    # the data directory (or random data of the same shapes) comes with the environment
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    hlo = tmp_path / "step.txt"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernels", "mlp", "step", "--runs", "2", "--steps",
         "3", "--top", "4", "--hlo", str(hlo)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mlp step (float32): ") and "per step of 2 runs" in lines[0]
    assert lines[1].endswith("us of kernels per call") and float(lines[1].split()[0]) > 0
    shares = [float(line.split()[1].rstrip("%")) for line in lines[4:8]]
    assert len(shares) == 4 and all(0 < s <= 100 for s in shares)
    assert "HloModule" in hlo.read_text()
