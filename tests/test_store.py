"""The store: atomic writes, streamed arrays that resume, manifest, helpers."""

from __future__ import annotations

import gc
import json
import math
import os

import numpy as np
import pytest

from sgdjax import store as store_mod
from sgdjax.store import (
    Store,
    StreamedArray,
    git_commit,
    lr_tag,
    now_iso,
    package_versions,
    pending_chunks,
)


def _names(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _expected(shape, dtype=np.float32) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.float64).reshape(shape).astype(dtype) * 0.5 - 3


# --------------------------------------------------------------------------------------------
# atomic writes


def test_every_writer_leaves_only_final_names(tmp_path):
    from matplotlib.figure import Figure

    s = Store(tmp_path / "res" / "exp1" / "setup1")
    assert s.root.is_dir()
    s.save_json("a.json", {"x": np.float32(1.5), "v": np.arange(3), "n": np.int64(7)})
    s.save_npy("b.npy", np.ones((2, 3), np.float32))
    s.save_npz("c.npz", {"fc.weight": np.zeros((2, 2))})
    s.save_text("d.csv", "a,b\n1,2\n")
    fig = Figure()
    fig.subplots().plot([1, 2, 3])
    s.save_figure("sub/e.png", fig)
    s.update_manifest(config={"lr": 0.1})
    assert _names(s.root) == ["a.json", "b.npy", "c.npz", "d.csv", "manifest.json", "sub"]
    assert _names(s.root / "sub") == ["e.png"]
    assert (s.root / "sub" / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s.load_json("a.json") == {"x": 1.5, "v": [0, 1, 2], "n": 7}
    assert s.exists("a.json", "b.npy", "sub/e.png")
    assert not s.exists("a.json", "missing.npy")
    assert s.path("b.npy") == s.root / "b.npy"


def test_json_keeps_nan_and_inf(tmp_path):
    s = Store(tmp_path)
    s.save_json("l.json", {"loss": [1.0, float("nan"), float("inf"), np.float32("-inf")]})
    text = (tmp_path / "l.json").read_text()
    assert "NaN" in text and "Infinity" in text and "-Infinity" in text
    loss = s.load_json("l.json")["loss"]
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf and loss[3] == -math.inf


def test_crash_in_np_save_keeps_previous_content(tmp_path, monkeypatch):
    s = Store(tmp_path)
    s.save_npy("w.npy", np.arange(4))

    def boom(f, *a, **k):
        f.write(b"\x93NUMPY partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        s.save_npy("w.npy", np.arange(100))
    with pytest.raises(OSError):
        s.save_npy("new.npy", np.arange(100))
    monkeypatch.undo()
    assert _names(tmp_path) == ["w.npy"]  # no temp file, no new.npy
    np.testing.assert_array_equal(s.load_npy("w.npy"), np.arange(4))


def test_crash_in_replace_keeps_previous_content(tmp_path, monkeypatch):
    s = Store(tmp_path)
    s.save_json("logs.json", {"v": 1})
    s.save_npz("ck.npz", {"a": np.ones(2)})

    def fail(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="power cut"):
        s.save_json("logs.json", {"v": 2})
    with pytest.raises(OSError):
        s.save_npz("ck.npz", {"a": np.zeros(5)})
    with pytest.raises(OSError):
        s.save_text("fresh.csv", "x")
    monkeypatch.undo()
    assert _names(tmp_path) == ["ck.npz", "logs.json"]
    assert s.load_json("logs.json") == {"v": 1}
    np.testing.assert_array_equal(s.load_npz("ck.npz")["a"], np.ones(2))


def test_npz_round_trip_with_dotted_names(tmp_path):
    s = Store(tmp_path)
    arrays = {
        "fc1.weight": np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32),
        "fc1.bias": np.arange(8, dtype=np.float32),
        "bn1.running_mean": np.zeros(4),
        "bn1.num_batches_tracked": np.array(1234, dtype=np.int64),
        "file": np.array([1, 2]),  # would clash with np.savez's own parameter name
    }
    s.save_npz("initial_after_sgd.npz", arrays)
    back = s.load_npz("initial_after_sgd.npz")
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_load_npy_mmap(tmp_path):
    s = Store(tmp_path)
    s.save_npy("x.npy", np.arange(12.0).reshape(3, 4))
    m = s.load_npy("x.npy", mmap=True)
    assert isinstance(m, np.memmap) and m[2, 3] == 11.0


# --------------------------------------------------------------------------------------------
# streamed arrays


def _fill(stream: StreamedArray, full: np.ndarray, chunks) -> None:
    for c in chunks:
        stream.write(c, full[stream.rows(c)])


def test_streamed_array_resumes_after_interruption(tmp_path):
    s = Store(tmp_path)
    shape = (10, 3, 4)
    full = _expected(shape)
    a = s.stream("sgd_weights_lr0.01.npy", shape, np.float32, chunk_rows=3)
    assert a.n_chunks == 4 and a.pending() == [0, 1, 2, 3] and not a.complete
    assert a.rows(3) == slice(9, 10)
    _fill(a, full, [0, 1])
    assert a.done() == {0, 1}
    assert not s.exists("sgd_weights_lr0.01.npy")
    del a
    gc.collect()

    b = s.stream("sgd_weights_lr0.01.npy", shape, np.float32, chunk_rows=3)
    assert b.pending() == [2, 3] and b.done() == {0, 1}
    _fill(b, full, b.pending())
    assert b.pending() == [] and not b.complete
    final = b.finalize()
    assert b.complete and final == tmp_path / "sgd_weights_lr0.01.npy"
    out = s.load_npy("sgd_weights_lr0.01.npy")
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, full)
    assert _names(tmp_path) == ["sgd_weights_lr0.01.npy"]  # no .partial, no progress file

    again = s.stream("sgd_weights_lr0.01.npy", shape, np.float32, chunk_rows=3)
    assert again.complete and again.pending() == [] and again.finalize() == final


def test_progress_is_written_only_after_data(tmp_path, monkeypatch):
    """A crash while the chunk's data are being flushed leaves that chunk pending."""
    s = Store(tmp_path)
    full = _expected((4, 2))
    a = s.stream("x.npy", (4, 2), np.float32, chunk_rows=2)
    a.write(0, full[:2])

    def fail_flush(self):
        raise OSError("crash during flush")

    monkeypatch.setattr(np.memmap, "flush", fail_flush)
    with pytest.raises(OSError):
        a.write(1, full[2:])
    monkeypatch.undo()
    progress = json.loads((tmp_path / "x.npy.progress.json").read_text())
    assert progress["done"] == [0]
    del a
    gc.collect()
    b = s.stream("x.npy", (4, 2), np.float32, chunk_rows=2)
    assert b.pending() == [1]
    b.write(1, full[2:])
    b.finalize()
    np.testing.assert_array_equal(s.load_npy("x.npy"), full)


@pytest.mark.parametrize("change", ["shape", "dtype", "chunk_rows"])
def test_streamed_array_mismatch_starts_over(tmp_path, change):
    s = Store(tmp_path)
    a = s.stream("w.npy", (6, 2), np.float32, chunk_rows=2)
    _fill(a, _expected((6, 2)), [0, 1])
    del a
    gc.collect()
    shape, dtype, rows = (6, 2), np.float32, 2
    if change == "shape":
        shape = (8, 2)
    elif change == "dtype":
        dtype = np.float64
    else:
        rows = 3
    with pytest.warns(UserWarning, match="starting over"):
        b = s.stream("w.npy", shape, dtype, chunk_rows=rows)
    assert b.done() == set() and b.pending() == list(range(b.n_chunks))
    full = _expected(shape, dtype)
    _fill(b, full, b.pending())
    b.finalize()
    out = s.load_npy("w.npy")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, full)


def test_final_file_with_wrong_shape_is_not_complete(tmp_path):
    s = Store(tmp_path)
    s.save_npy("w.npy", np.zeros((3, 2), np.float32))
    with pytest.warns(UserWarning, match="replaced"):
        a = s.stream("w.npy", (4, 2), np.float32, chunk_rows=4)
    assert not a.complete and a.pending() == [0]
    a.write(0, np.ones((4, 2)))
    a.finalize()
    np.testing.assert_array_equal(s.load_npy("w.npy"), np.ones((4, 2), np.float32))


def test_write_validates_and_finalize_requires_all_chunks(tmp_path):
    s = Store(tmp_path)
    a = s.stream("w.npy", (5, 2), np.float32, chunk_rows=2)
    with pytest.raises(ValueError, match="shape"):
        a.write(2, np.zeros((2, 2)))  # the last chunk has one row
    with pytest.raises(IndexError):
        a.write(3, np.zeros((1, 2)))
    a.write(2, np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="2 of 3 chunks not written"):
        a.finalize()
    with pytest.raises(ValueError):
        s.stream("z.npy", (0, 2), np.float32, chunk_rows=2)


def test_pending_chunks_is_union_for_lockstep_streams(tmp_path):
    s = Store(tmp_path)
    w = s.stream("w.npy", (7, 3), np.float32, chunk_rows=2)
    loss = s.stream("l.npy", (7,), np.float32, chunk_rows=2)
    w.write(0, np.ones((2, 3)))
    w.write(2, np.ones((2, 3)))
    loss.write(0, np.ones(2))
    loss.write(1, np.ones(2))
    assert pending_chunks(w, loss) == [1, 2, 3]
    for c in pending_chunks(w, loss):
        n = w.rows(c).stop - w.rows(c).start
        w.write(c, np.full((n, 3), c))
        loss.write(c, np.full(n, c))
    assert pending_chunks(w, loss) == []
    w.finalize()
    loss.finalize()
    np.testing.assert_array_equal(s.load_npy("l.npy"), [1, 1, 1, 1, 2, 2, 3])
    # a finished stream ignores lockstep writes
    w2 = s.stream("w.npy", (7, 3), np.float32, chunk_rows=2)
    w2.write(0, np.zeros((2, 3)))
    np.testing.assert_array_equal(s.load_npy("w.npy")[0], np.ones(3))
    other = s.stream("o.npy", (7,), np.float32, chunk_rows=3)
    with pytest.raises(ValueError, match="lockstep"):
        pending_chunks(w, other)


# --------------------------------------------------------------------------------------------
# helpers and manifest


@pytest.mark.parametrize("lr, tag", [
    (0.1, "0.1"), (0.05, "0.05"), (0.01, "0.01"), (0.005, "0.005"), (0.003, "0.003"),
    (0.001, "0.001"), (0.0005, "0.0005"), (0.0001, "0.0001"), (5e-05, "5e-05"),
    (1e-05, "1e-05"), (1, "1.0"), (np.float64(0.01), "0.01"),
])
def test_lr_tag(lr, tag):
    assert lr_tag(lr) == tag


def test_manifest_merges(tmp_path):
    s = Store(tmp_path)
    assert s.manifest() == {}
    s.update_manifest(config={"lr": 0.1}, versions=package_versions())
    s.update_manifest(device="cpu", config={"lr": 0.05})
    s.record_stage("train_sgd", wall_s=1.5, steps=100)
    s.record_stage("train_gd", wall_s=np.float64(2.0))
    m = s.manifest()
    assert m["config"] == {"lr": 0.05} and m["device"] == "cpu"
    assert "numpy" in m["versions"] and "python" in m["versions"]
    assert m["stages"]["train_sgd"]["wall_s"] == 1.5 and m["stages"]["train_sgd"]["steps"] == 100
    assert m["stages"]["train_gd"]["wall_s"] == 2.0
    assert m["stages"]["train_sgd"]["finished"][:2] == "20"
    assert _names(tmp_path) == ["manifest.json"]


def test_helpers_never_raise(tmp_path):
    assert git_commit(tmp_path) is None  # not a checkout
    assert git_commit(tmp_path / "does" / "not" / "exist") is None
    commit = git_commit(os.path.dirname(store_mod.__file__))
    assert commit is None or len(commit.split("+")[0]) == 40
    v = package_versions()
    assert v["numpy"] == np.__version__
    assert "T" in now_iso()


def test_empty_trailing_axes_stream_and_resume(tmp_path):
    """[R, 0] arrays (no validation in a short run) go through the same chunks as any other."""
    s = Store(tmp_path)
    a = s.stream("v.npy", (5, 0), np.float32, chunk_rows=2)
    assert a.n_chunks == 3
    a.write(0, np.zeros((2, 0)))
    a.close()
    b = s.stream("v.npy", (5, 0), np.float32, chunk_rows=2)  # resumes after chunk 0
    assert b.pending() == [1, 2]
    for c in b.pending():
        b.write(c, np.zeros((b.rows(c).stop - b.rows(c).start, 0)))
    b.finalize()
    out = s.load_npy("v.npy")
    assert out.shape == (5, 0) and out.dtype == np.float32
    assert s.stream("v.npy", (5, 0), np.float32, chunk_rows=2).complete
