"""``mnist_similar``: user-supplied MNIST-like digits (spec §2.2, exp1 setup 4).

These arrays are not public and no code that generates them exists, so they cannot be
downloaded; the user puts them in ``DATA_DIR/mnist_similar/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgdjax.data.cache import data_dir
from sgdjax.data.types import ArraySplit
from sgdjax.errors import ConfigError, DataMissingError

SUBDIR = "mnist_similar"
STEMS = ("mnist_similar_x", "mnist_similar_y")
N_CLASSES = 10


def _where(root: Path) -> Path:
    return root / SUBDIR


def _missing_error(root: Path, missing: list[str]) -> DataMissingError:
    folder = _where(root)
    return DataMissingError(
        f"The mnist_similar dataset is missing ({', '.join(missing)} not found in {folder}). "
        f"This dataset is not public and cannot be downloaded: supply it yourself as "
        f"{folder / 'mnist_similar_x.npy'} (float images [N, 1, 28, 28] or [N, 28, 28] on the "
        f"[0, 1] scale) and {folder / 'mnist_similar_y.npy'} (integer labels [N] in 0..9); "
        f"PyTorch tensors saved as .pt with the same stems are also accepted when torch is "
        f"installed. Set $SGDJAX_DATA_DIR to use another data directory."
    )


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    try:
        import torch
    except ImportError as exc:
        raise DataMissingError(
            f"{path} is a PyTorch file but torch is not installed; install torch, or convert "
            f"it once to .npy (np.save(..., tensor.numpy())) next to it."
        ) from exc
    value = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(value, torch.Tensor):
        raise DataMissingError(f"{path} holds a {type(value).__name__}, expected one tensor.")
    return value.detach().cpu().numpy()


def _find(root: Path) -> tuple[list[Path], list[str]]:
    found, missing = [], []
    for stem in STEMS:
        for suffix in (".npy", ".pt"):
            candidate = _where(root) / f"{stem}{suffix}"
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(f"{stem}.npy")
    return found, missing


def select_balanced(y: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each class, in increasing index order."""
    chosen = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(y == c)
        if idx.size < per_class:
            raise DataMissingError(
                f"mnist_similar has only {idx.size} examples of class {c}, fewer than the "
                f"{per_class} per class needed; lower sample_size to at most "
                f"{N_CLASSES * idx.size}."
            )
        chosen.append(idx[:per_class])
    return np.sort(np.concatenate(chosen))


def load_mnist_similar(sample_size: int = 6400, *, root: Path | None = None) -> ArraySplit:
    """Class-balanced training set: the **first** ``sample_size // 10`` examples of each class
    in file order (the original's HEAD rule), returned in increasing index order, so classes
    are interleaved as in the file rather than grouped.

    x is float32 ``[N, 1, 28, 28]`` on the [0, 1] scale (not renormalised), y int32 ``[N]``.
    """
    per_class = sample_size // N_CLASSES
    if per_class < 1:
        raise ConfigError(
            f"sample_size={sample_size} is too small for mnist_similar: it selects "
            f"sample_size // 10 examples per class, so use at least 10."
        )
    root = data_dir() if root is None else Path(root)
    (found, missing) = _find(root)
    if missing:
        raise _missing_error(root, missing)
    x_path, y_path = found
    x = _load_array(x_path)
    y = _load_array(y_path)

    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(-1, 1, 28, 28)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise DataMissingError(
            f"{x_path} has shape {list(x.shape)}; expected [N, 1, 28, 28] or [N, 28, 28]."
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise DataMissingError(
            f"{x_path} holds {x.dtype} values; expected floats on the [0, 1] scale (for "
            f"uint8 pixels, save x.astype('float32') / 255)."
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataMissingError(
            f"{y_path} holds {y.dtype} of shape {list(y.shape)}; expected integer labels [N]."
        )
    if y.shape[0] != x.shape[0]:
        raise DataMissingError(
            f"{x_path} has {x.shape[0]} images but {y_path} has {y.shape[0]} labels; they must "
            f"match."
        )
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise DataMissingError(
            f"{y_path} has labels in {int(y.min())}..{int(y.max())}; expected 0..9."
        )

    if not np.all(np.isfinite(x)):
        raise DataMissingError(f"{x_path} contains NaN or infinite values.")
    if x.size and float(x.max()) > 1.5:
        raise DataMissingError(
            f"{x_path} has values up to {float(x.max()):g}, but images must be on the [0, 1] "
            f"scale like MNIST here (pixel/255); divide the array by 255 and save it again."
        )
    idx = select_balanced(y, per_class)
    return ArraySplit(x[idx].astype(np.float32), y[idx].astype(np.int32))
