"""MNIST from the official IDX files, first samples in file order (spec §2.1).

The original takes the first 6400 images of each official split, so any loader that reorders
examples (tensorflow-datasets shuffles at preparation time) cannot reproduce its subsets; the
raw IDX files can, and need nothing but numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgdjax.data.cache import RemoteFile, fetch_many
from sgdjax.data.idx import read_idx
from sgdjax.data.splits import apply_split, parse_split
from sgdjax.data.types import ArraySplit
from sgdjax.errors import ConfigError, DataMissingError, did_you_mean

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: SHA-256 of the official gzip archives.
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}

#: Split name -> (images file, labels file).
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Official split sizes (for documentation and checks of the real files).
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}


def remote_files(split_name: str) -> list[RemoteFile]:
    """The cache entries (``mnist/<official name>``) that ``split_name`` needs."""
    return [
        RemoteFile(f"mnist/{name}", tuple(m + name for m in MIRRORS), SHA256.get(name))
        for name in SPLIT_FILES[split_name]
    ]


def load_mnist(split: str = "train[:6400]", *, root: Path | None = None) -> ArraySplit:
    """Images as float32 ``[N, 1, 28, 28]`` = pixel/255 (no mean/std normalisation, as in the
    original) and labels as int32 ``[N]``, in file order.

    Only the two files of the requested split are read or fetched, so ``test[...]`` works with
    just the t10k archives present.
    """
    name, start, stop = parse_split(split)
    if name not in SPLIT_FILES:
        raise ConfigError(
            f"Unknown MNIST split '{name}' in {split!r}; MNIST has the splits "
            f"{', '.join(repr(s) for s in SPLIT_FILES)}.{did_you_mean(name, SPLIT_FILES)}"
        )
    images_path, labels_path = fetch_many(remote_files(name), root=root, what="MNIST")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataMissingError(
            f"{images_path} holds {images.dtype} images of shape {images.shape}, not uint8 "
            f"[N, 28, 28]; replace it with the official MNIST file."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataMissingError(
            f"{labels_path} holds labels of shape {labels.shape}, which does not match the "
            f"{images.shape[0]} images of {images_path}; replace both with the official files."
        )
    sl = apply_split(images.shape[0], start, stop, name=name)
    x = (images[sl].astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    y = labels[sl].astype(np.int32)
    return ArraySplit(x, y)
