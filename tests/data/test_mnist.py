from __future__ import annotations

import numpy as np
import pytest

from sgdjax.data import mnist
from sgdjax.data.mnist import load_mnist
from sgdjax.errors import ConfigError, DataMissingError

VAL_COUNTS = (606, 726, 669, 639, 638, 585, 602, 655, 626, 654)


@pytest.fixture
def fake_mnist(tmp_path, write_idx, monkeypatch):
    """A data dir with small generated MNIST files (checksums disabled: they are not official)."""
    monkeypatch.setattr(mnist, "SHA256", {})
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 50), ("test", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)  # makes file order visible
        images[0, 5, 5] = 255
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name, lab_name = mnist.SPLIT_FILES[split]
        write_idx(tmp_path / "mnist" / img_name, images, gz=True)
        write_idx(tmp_path / "mnist" / lab_name, labels, gz=True)
        arrays[split] = (images, labels)
    return tmp_path, arrays


def test_loads_first_samples_in_file_order(fake_mnist):
    root, arrays = fake_mnist
    images, labels = arrays["train"]
    data = load_mnist("train[:32]", root=root)
    assert data.x.dtype == np.float32 and data.x.shape == (32, 1, 28, 28)
    assert data.y.dtype == np.int32 and data.y.shape == (32,)
    np.testing.assert_array_equal(data.x[:, 0, 0, 0] * 255, np.arange(32))
    np.testing.assert_array_equal(data.y, labels[:32])
    np.testing.assert_allclose(data.x[:, 0], images[:32] / np.float32(255), rtol=0, atol=0)
    assert data.x[0, 0, 5, 5] == 1.0 and data.x.min() >= 0.0


def test_split_slices(fake_mnist):
    root, arrays = fake_mnist
    assert load_mnist("test", root=root).x.shape == (20, 1, 28, 28)
    tail = load_mnist("test[-5:]", root=root)
    np.testing.assert_array_equal(tail.y, arrays["test"][1][-5:])
    assert load_mnist("train[:10%]", root=root).y.shape == (5,)
    with pytest.raises(ConfigError, match="which has 20 examples"):
        load_mnist("test[:21]", root=root)


def test_reads_only_the_files_of_the_split(fake_mnist):
    root, _ = fake_mnist
    for name in mnist.SPLIT_FILES["train"]:
        (root / "mnist" / name).unlink()
    assert load_mnist("test[:4]", root=root).y.shape == (4,)
    with pytest.raises(DataMissingError) as info:
        load_mnist("train[:4]", root=root)
    message = str(info.value)
    # both missing files are named at once, with the directory searched
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert str(root / "mnist") in message and "SGDJAX_DATA_DIR" in message


def test_unknown_split_suggests(fake_mnist):
    root, _ = fake_mnist
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        load_mnist("trian[:10]", root=root)


def test_label_count_mismatch(fake_mnist, write_idx):
    root, _ = fake_mnist
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataMissingError, match="does not match the 20 images"):
        load_mnist("test", root=root)


def test_checksums_are_verified(tmp_path, write_idx):
    for name in mnist.SPLIT_FILES["test"]:
        write_idx(tmp_path / "mnist" / name, np.zeros(3, np.uint8))
    with pytest.raises(DataMissingError, match="corrupt"):
        load_mnist("test", root=tmp_path)


def test_real_test_split(mnist_test_root):
    data = load_mnist("test[:6400]", root=mnist_test_root)
    assert data.x.shape == (6400, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.shape == (6400,) and data.y.dtype == np.int32
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert tuple(np.bincount(data.y, minlength=10)) == VAL_COUNTS
    # pixel/255 exactly: every value is a multiple of 1/255
    np.testing.assert_array_equal(np.round(data.x[:50] * 255) / np.float32(255), data.x[:50])
    assert data.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official file's start


def test_real_test_split_via_env(mnist_test_root, monkeypatch):
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(mnist_test_root))
    assert load_mnist("test[-10:]").y.shape == (10,)


# --- mnist_similar --------------------------------------------------------------------------

from sgdjax.data.mnist_similar import load_mnist_similar  # noqa: E402


def _similar_arrays(n_per_class=(700, 650, 800, 640, 700, 660, 900, 641, 700, 700), seed=1):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(10), n_per_class)).astype(np.int64)
    x = rng.random((y.size, 28, 28), dtype=np.float32)
    x[:, 0, 0] = np.arange(y.size) / y.size  # identifies the source index
    return x, y


def _save_similar(root, x, y, suffix=".npy"):
    folder = root / "mnist_similar"
    folder.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(folder / "mnist_similar_x.npy", x)
        np.save(folder / "mnist_similar_y.npy", y)
    else:
        torch = pytest.importorskip("torch")
        torch.save(torch.from_numpy(x), folder / "mnist_similar_x.pt")
        torch.save(torch.from_numpy(y), folder / "mnist_similar_y.pt")


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_similar_selects_first_per_class_in_index_order(tmp_path, suffix):
    x, y = _similar_arrays()
    _save_similar(tmp_path, x, y, suffix)
    data = load_mnist_similar(6400, root=tmp_path)
    expected = np.sort(np.concatenate([np.flatnonzero(y == c)[:640] for c in range(10)]))
    assert data.x.shape == (6400, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.dtype == np.int32
    assert tuple(np.bincount(data.y, minlength=10)) == (640,) * 10
    np.testing.assert_array_equal(data.y, y[expected])
    np.testing.assert_array_equal(data.x[:, 0], x[expected])
    source = np.round(data.x[:, 0, 0, 0] * y.size).astype(int)
    assert np.all(np.diff(source) > 0)  # increasing index order
    # class 3 has exactly 640 examples: all of them are taken; class 6 only its first 640
    np.testing.assert_array_equal(source[data.y == 6], np.flatnonzero(y == 6)[:640])


def test_similar_accepts_nchw_and_small_sizes(tmp_path):
    x, y = _similar_arrays()
    _save_similar(tmp_path, x[:, None], y)
    data = load_mnist_similar(100, root=tmp_path)
    assert data.x.shape == (100, 1, 28, 28)
    assert tuple(np.bincount(data.y, minlength=10)) == (10,) * 10


def test_similar_rejects_0_255_scale(tmp_path):
    x, y = _similar_arrays()
    _save_similar(tmp_path, x * 255, y)
    with pytest.raises(DataMissingError, match="divide the array by 255"):
        load_mnist_similar(root=tmp_path)


def test_similar_too_few_of_a_class(tmp_path):
    x, y = _similar_arrays()
    _save_similar(tmp_path, x, y)
    with pytest.raises(DataMissingError, match="only 640 examples of class 3"):
        load_mnist_similar(6410, root=tmp_path)


def test_similar_bad_labels(tmp_path):
    x, y = _similar_arrays()
    y[5] = 10
    _save_similar(tmp_path, x, y)
    with pytest.raises(DataMissingError, match="expected 0..9"):
        load_mnist_similar(root=tmp_path)


def test_similar_missing_files_explain_how_to_supply(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(DataMissingError) as info:
        load_mnist_similar()
    message = str(info.value)
    assert "not public" in message and str(tmp_path / "mnist_similar") in message
    assert "mnist_similar_x.npy" in message and "mnist_similar_y.npy" in message
    assert "[N, 1, 28, 28]" in message and "0..9" in message
