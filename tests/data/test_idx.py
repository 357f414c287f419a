from __future__ import annotations

import gzip

import numpy as np
import pytest

from sgdjax.data.idx import read_idx
from sgdjax.errors import DataMissingError


@pytest.mark.parametrize("gz", [True, False])
def test_reads_images_and_labels(tmp_path, write_idx, gz):
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28).astype(np.uint8)
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    img = read_idx(write_idx(tmp_path / f"img{suffix}", images, gz))
    lab = read_idx(write_idx(tmp_path / f"lab{suffix}", labels, gz))
    assert img.dtype == np.uint8 and img.shape == (5, 28, 28)
    np.testing.assert_array_equal(img, images)
    assert img[1, 0, 0] == (28 * 28) % 256  # row-major layout, second image starts at 784
    np.testing.assert_array_equal(lab, [7, 2, 1, 0, 4])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_big_endian_dtypes_come_back_native(tmp_path, write_idx, dtype):
    values = (
        np.array([[-3, 1000], [7, -120]], dtype=dtype)
        if dtype != np.int8
        else np.array([[-3, 100], [7, -120]], dtype=dtype)
    )
    out = read_idx(write_idx(tmp_path / "a.idx", values, gz=False))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_gzip_detected_from_content_not_name(tmp_path, write_idx):
    path = write_idx(tmp_path / "looks-raw.idx", np.array([1, 2, 3], np.uint8), gz=True)
    np.testing.assert_array_equal(read_idx(path), [1, 2, 3])


def _bad(tmp_path, data: bytes, name="bad"):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataMissingError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_malformed_truncated_data(tmp_path):
    good = bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4])
    assert "holds 3 data bytes" in _bad(tmp_path, good[:-1])
    assert "holds 5 data bytes" in _bad(tmp_path, good + b"\x00")


def test_malformed_header(tmp_path):
    assert "two zero bytes" in _bad(tmp_path, bytes([1, 0, 8, 1, 0, 0, 0, 0]))
    assert "unknown dtype code 0x07" in _bad(tmp_path, bytes([0, 0, 7, 1, 0, 0, 0, 0]))
    assert "ends early" in _bad(tmp_path, bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    assert "fewer than the 4-byte header" in _bad(tmp_path, b"\x00\x00")


def test_damaged_gzip(tmp_path):
    body = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    payload = gzip.compress(bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big") + body)
    assert len(payload) > 1000
    assert "gzip stream is damaged" in _bad(tmp_path, payload[:500], "bad.gz")
