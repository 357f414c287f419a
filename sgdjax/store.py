"""The store owns the disk: results layout, atomic writes, streamed ``.npy`` arrays, manifest.

All results of one setup live in one directory (``results/EXP/SETUP/`` by default; the caller
passes the path). Every file is first written to a hidden temporary name in the *same* directory
and then ``os.replace``-d onto its final name, so a crash (or a full disk, or Ctrl-C) never leaves
a truncated file under a final name: a final name holds either the previous complete content or the
new complete content.

Ensembles larger than memory are written with :class:`StreamedArray`: a pre-allocated ``.npy``
(``numpy.lib.format.open_memmap``) filled chunk by chunk along axis 0, with a small progress file
that records the finished chunks, so an interrupted stage resumes at the first unfinished chunk.

Nothing in this module imports JAX; it works on NumPy arrays (anything ``np.asarray`` accepts).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import uuid
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "MANIFEST",
    "Store",
    "StreamedArray",
    "git_commit",
    "lr_tag",
    "now_iso",
    "package_versions",
    "pending_chunks",
]

MANIFEST = "manifest.json"
"""File name of the per-setup manifest (resolved config, versions, device, stage timings)."""


# --------------------------------------------------------------------------------------------
# small helpers


def lr_tag(lr: float) -> str:
    """The learning-rate string used in file names: Python's default float formatting.

    ``0.1 -> '0.1'``, ``0.0005 -> '0.0005'``, ``0.0001 -> '0.0001'``, but ``5e-05 -> '5e-05'`` and
    ``1e-05 -> '1e-05'`` -- exactly the original's ``f"lr{lr}"`` names (``sgd_weights_lr0.01``).
    """
    return str(float(lr))


def now_iso() -> str:
    """The current local time as an ISO-8601 string with UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit(path: str | os.PathLike[str] = ".") -> str | None:
    """The commit hash of the git checkout containing ``path`` (``+dirty`` appended when tracked
    files are modified), or None when it cannot be found. Best effort: never raises."""
    try:
        where = Path(path)
        if where.is_file():
            where = where.parent
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except Exception:  # best effort by contract
        return None


_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "matplotlib", "torch")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages results depend on.

    Read from installed package metadata (``importlib.metadata``), so nothing is imported --
    in particular not torch. Packages that are not installed are left out.
    """
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _json_default(obj: Any) -> Any:
    """``json`` fallback: NumPy scalars/arrays (and anything with ``__array__``, e.g. JAX arrays)
    become Python numbers/lists; paths become strings; sets become sorted lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _tmp_name(final: Path) -> Path:
    """A hidden temporary name next to ``final`` (same directory, hence same file system)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _atomic_write(final: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``final`` atomically: ``write(fileobj)`` fills a temporary file in the same
    directory, which is flushed, fsync-ed and renamed onto ``final``. On any error the temporary
    file is removed and ``final`` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype recorded in a ``.npy`` header, or None if it is not a readable ``.npy``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:  # pragma: no cover - future format versions
                return None
        return tuple(int(s) for s in shape), np.dtype(dtype)
    except Exception:  # unreadable means "not there"
        return None


# --------------------------------------------------------------------------------------------
# the store


class Store:
    """Reads and writes the results of one setup under ``root``.

    Names are paths relative to ``root`` (``"logs_gd.json"``,
    ``"val_analysis_lr0.01/sgd_weights_lr0.01__summary.json"``); missing sub-directories are
    created on write. Every ``save_*`` method is atomic (see the module docstring) and returns
    the final path.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: Path = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- names ---------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """``root / name``."""
        return self.root / name

    def exists(self, *names: str) -> bool:
        """True when every named file exists under its final name (in-progress streams do not
        count: their data live under ``<name>.partial`` until finalized)."""
        return all(self.path(n).is_file() for n in names)

    def remove(self, *names: str) -> None:
        """Delete files if present (scratch files such as resume checkpoints)."""
        for n in names:
            self.path(n).unlink(missing_ok=True)

    # -- JSON ----------------------------------------------------------------------------

    def save_json(self, name: str, obj: Any, *, indent: int | None = None) -> Path:
        """Write ``obj`` as JSON, atomically.

        NumPy scalars and arrays (and JAX arrays) are converted to Python numbers and lists.
        Non-finite floats are written the way Python's ``json`` writes them (``NaN``,
        ``Infinity``, ``-Infinity``; ``allow_nan=True``): a diverged run's loss stays NaN instead
        of silently becoming null. ``json.load`` (and :meth:`load_json`) read them back; strict
        JSON parsers in other languages may not. ``indent`` defaults to None (compact), which
        matters for the multi-megabyte flat logs of the ensembles.
        """
        text = json.dumps(obj, default=_json_default, allow_nan=True, indent=indent)
        return self.save_text(name, text)

    def load_json(self, name: str) -> Any:
        """Read a JSON file written by :meth:`save_json` (NaN/Infinity accepted)."""
        with open(self.path(name), encoding="utf-8") as f:
            return json.load(f)

    # -- arrays --------------------------------------------------------------------------

    def save_npy(self, name: str, array: Any) -> Path:
        """Write one array as ``.npy``, atomically (no pickles)."""
        arr = np.asarray(array)
        return _atomic_write(self.path(name), lambda f: np.save(f, arr, allow_pickle=False))

    def load_npy(self, name: str, mmap: bool = False) -> np.ndarray:
        """Read a ``.npy`` file; with ``mmap=True`` it is memory-mapped read-only (for the
        [R, T, P] ensembles that do not fit in memory)."""
        return np.load(self.path(name), mmap_mode="r" if mmap else None, allow_pickle=False)

    def save_npz(self, name: str, arrays: Mapping[str, Any]) -> Path:
        """Write named arrays as an uncompressed ``.npz``, atomically.

        Used for checkpoints, whose arrays are named like the original's PyTorch state dict
        (``"fc1.weight"``, ``"bn1.running_mean"``, ...). Any string is a valid name (dots
        included); the archive holds one ``<name>.npy`` member per array.
        """
        items = [(str(k), np.asarray(v)) for k, v in arrays.items()]

        def write(f: IO[bytes]) -> None:
            with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED,
                                 allowZip64=True) as zf:
                for key, arr in items:
                    with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)

        return _atomic_write(self.path(name), write)

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        """Read a ``.npz`` into a dict ``{name: array}`` (arrays fully loaded, file closed)."""
        with np.load(self.path(name), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    # -- figures and text ----------------------------------------------------------------

    def save_figure(self, name: str, fig: Any) -> Path:
        """Write a Matplotlib figure as PNG (at the figure's dpi), atomically, then close it."""
        try:
            return _atomic_write(self.path(name), lambda f: fig.savefig(f, format="png"))
        finally:
            if "matplotlib.pyplot" in sys.modules:  # only pyplot-managed figures need closing
                import matplotlib.pyplot as plt

                plt.close(fig)

    def save_text(self, name: str, text: str) -> Path:
        """Write a text file (UTF-8; CSV, JSON, ...), atomically."""
        data = text.encode("utf-8")
        return _atomic_write(self.path(name), lambda f: f.write(data))

    # -- streamed arrays -----------------------------------------------------------------

    def stream(self, name: str, shape: tuple[int, ...], dtype: Any,
               chunk_rows: int) -> StreamedArray:
        """A :class:`StreamedArray` for ``root / name`` (resuming any unfinished one)."""
        return StreamedArray(self.path(name), shape, dtype, chunk_rows)

    # -- manifest ------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """The contents of ``manifest.json`` (an empty dict when it does not exist yet)."""
        if not self.path(MANIFEST).is_file():
            return {}
        return dict(self.load_json(MANIFEST))

    def update_manifest(self, **fields: Any) -> None:
        """Merge ``fields`` into the manifest at top level (a field given replaces the stored
        one) and write it back atomically. Not safe against concurrent writers: on several
        hosts only process 0 should call it."""
        data = self.manifest()
        data.update(fields)
        self.save_json(MANIFEST, data, indent=2)

    def record_stage(self, stage: str, *, wall_s: float, **info: Any) -> None:
        """Record a finished stage: ``manifest["stages"][stage] = {"wall_s": ..., "finished":
        <ISO time>, **info}`` (other stages' entries are kept)."""
        data = self.manifest()
        stages = dict(data.get("stages") or {})
        stages[stage] = {"wall_s": float(wall_s), "finished": now_iso(), **info}
        data["stages"] = stages
        self.save_json(MANIFEST, data, indent=2)


# --------------------------------------------------------------------------------------------
# streamed arrays


class StreamedArray:
    """A [rows, ...] ``.npy`` array filled chunk by chunk (``chunk_rows`` rows along axis 0).

    Data go to ``<name>.partial``, an ``open_memmap`` allocated once and written in place.
    Which chunks are done is kept in ``<name>.progress.json`` (written atomically), and a chunk
    is marked done only *after* its data have been flushed to the file, so a crash can lose at
    most the chunk being written, never mark garbage as done. When every chunk is done,
    :meth:`finalize` flushes, closes and renames ``.partial`` to the final name and removes the
    progress file.

    Re-opening an existing ``.partial`` with the same shape, dtype and chunk_rows resumes (done
    chunks are kept); any mismatch starts over with a warning. If the final file already exists
    with the right shape and dtype, :attr:`complete` is True at once and nothing is written.

    Typical use, several arrays written in lockstep by one stage::

        w = store.stream("sgd_weights_lr0.01.npy", (R, T, P), np.float32, chunk_rows=64)
        l = store.stream("sgd_losses_lr0.01.npy", (R, T), np.float32, chunk_rows=64)
        for c in pending_chunks(w, l):
            weights, losses = run(rows=w.rows(c))
            w.write(c, weights)
            l.write(c, losses)
        w.finalize(); l.finalize()
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any,
                 chunk_rows: int) -> None:
        self.path: Path = Path(path)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype: np.dtype = np.dtype(dtype)
        self.chunk_rows: int = int(chunk_rows)
        # Trailing axes may be empty (e.g. the validations of a run shorter than the cadence):
        # the rows and their chunks still exist, each writing no data.
        if not self.shape or self.shape[0] <= 0 or any(s < 0 for s in self.shape):
            raise ValueError(f"StreamedArray {self.path.name}: shape must have at least one "
                             f"row, got {self.shape}")
        if self.chunk_rows <= 0:
            raise ValueError(f"StreamedArray {self.path.name}: chunk_rows must be positive, "
                             f"got {chunk_rows}")
        if self.dtype.hasobject:
            raise ValueError(f"StreamedArray {self.path.name}: object dtypes cannot be streamed")
        self.partial_path: Path = self.path.with_name(self.path.name + ".partial")
        self.progress_path: Path = self.path.with_name(self.path.name + ".progress.json")
        self._mm: np.memmap | None = None
        self._done: set[int] = set()
        self._complete = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def __repr__(self) -> str:
        state = "complete" if self._complete else f"{len(self._done)}/{self.n_chunks} chunks"
        return (f"StreamedArray({str(self.path)!r}, shape={self.shape}, "
                f"dtype={self.dtype.name}, chunk_rows={self.chunk_rows}, {state})")

    # -- opening / resuming --------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype.str, "chunk_rows": self.chunk_rows}

    def _open(self) -> None:
        if self.path.is_file():
            header = _npy_header(self.path)
            if header == (self.shape, self.dtype):
                self._complete = True
                self._done = set(range(self.n_chunks))
                for stale in (self.partial_path, self.progress_path):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                return
            warnings.warn(
                f"{self.path} exists with shape/dtype {header} instead of "
                f"{(self.shape, self.dtype)}; it will be replaced when the new array is "
                "finalized", stacklevel=3)
        if self._try_resume():
            return
        if self.partial_path.exists() or self.progress_path.exists():
            warnings.warn(
                f"{self.partial_path.name}: unfinished data from an earlier run with a different "
                f"shape, dtype or chunk_rows (or without a readable progress file); starting "
                f"over with shape={self.shape}, dtype={self.dtype.name}, "
                f"chunk_rows={self.chunk_rows}", stacklevel=3)
        self._start_over()

    def _try_resume(self) -> bool:
        if not (self.partial_path.is_file() and self.progress_path.is_file()):
            return False
        try:
            with open(self.progress_path, encoding="utf-8") as f:
                progress = json.load(f)
            meta_ok = all(progress.get(k) == v for k, v in self._meta().items())
            done = {int(c) for c in progress.get("done", [])}
        except (OSError, ValueError, TypeError):
            return False
        if not meta_ok or _npy_header(self.partial_path) != (self.shape, self.dtype):
            return False
        if not done <= set(range(self.n_chunks)):
            return False
        self._mm = np.lib.format.open_memmap(self.partial_path, mode="r+")
        self._done = done
        return True

    def _start_over(self) -> None:
        with contextlib.suppress(OSError):
            self.progress_path.unlink()
        with contextlib.suppress(OSError):
            self.partial_path.unlink()
        self._mm = np.lib.format.open_memmap(
            self.partial_path, mode="w+", dtype=self.dtype, shape=self.shape)
        self._done = set()
        self._save_progress()

    def _save_progress(self) -> None:
        progress = {**self._meta(), "done": sorted(self._done)}
        text = json.dumps(progress).encode("utf-8")
        _atomic_write(self.progress_path, lambda f: f.write(text))

    def _memmap(self) -> np.memmap:
        if self._mm is None:  # closed by close(): reopen in place
            self._mm = np.lib.format.open_memmap(self.partial_path, mode="r+")
        return self._mm

    # -- chunks --------------------------------------------------------------------------

    @property
    def n_chunks(self) -> int:
        """Number of chunks: ``ceil(shape[0] / chunk_rows)``."""
        return -(-self.shape[0] // self.chunk_rows)

    def done(self) -> set[int]:
        """Indices of the chunks already written (all of them once complete)."""
        return set(self._done)

    def pending(self) -> list[int]:
        """Indices of the chunks not yet written, ascending."""
        return [c for c in range(self.n_chunks) if c not in self._done]

    @property
    def complete(self) -> bool:
        """True when the final file is in place (found on opening, or after :meth:`finalize`)."""
        return self._complete

    def rows(self, chunk: int) -> slice:
        """The rows (along axis 0) of ``chunk``; the last chunk may be shorter."""
        if not 0 <= chunk < self.n_chunks:
            raise IndexError(f"{self.path.name}: chunk {chunk} out of range "
                             f"(0..{self.n_chunks - 1})")
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, self.shape[0]))

    def write(self, chunk: int, data: Any) -> None:
        """Write the rows of ``chunk`` (``data`` must have exactly that many rows and the
        array's trailing shape; values are cast with same-kind casting), flush them to disk,
        then mark the chunk done. Rewriting a done chunk is allowed (it overwrites it).

        On a complete array (final file already in place) the call is ignored, so that streams
        written in lockstep can all be written for every chunk :func:`pending_chunks` returns,
        even when one of them was finished by an earlier run.
        """
        if self._complete:
            return
        sl = self.rows(chunk)
        data = np.asarray(data)
        want = (sl.stop - sl.start, *self.shape[1:])
        if data.shape != want:
            raise ValueError(f"{self.path.name}: chunk {chunk} needs data of shape {want}, "
                             f"got {data.shape}")
        mm = self._memmap()
        np.copyto(mm[sl], data, casting="same_kind")
        mm.flush()
        self._done.add(chunk)
        self._save_progress()

    def close(self) -> None:
        """Flush and release the memory map (a later :meth:`write` re-opens it)."""
        if self._mm is not None:
            self._mm.flush()
            mmap_obj = getattr(self._mm, "_mmap", None)
            self._mm = None
            if mmap_obj is not None:
                with contextlib.suppress(BufferError, ValueError):
                    mmap_obj.close()

    def finalize(self) -> Path:
        """Move the finished array to its final name and remove the progress file.

        Raises RuntimeError if chunks are still pending. A no-op when already complete.
        """
        if self._complete:
            return self.path
        missing = self.pending()
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise RuntimeError(f"{self.path.name}: cannot finalize, {len(missing)} of "
                               f"{self.n_chunks} chunks not written ({shown})")
        if self._mm is not None:
            self._mm.flush()
        self.close()
        with open(self.partial_path, "rb+") as f:  # make the data durable before the rename
            os.fsync(f.fileno())
        os.replace(self.partial_path, self.path)
        with contextlib.suppress(OSError):
            self.progress_path.unlink()
        self._complete = True
        return self.path


def pending_chunks(*streams: StreamedArray) -> list[int]:
    """Chunks that some of ``streams`` (written in lockstep) still lack, ascending.

    A chunk counts as done only when every stream has it, so the caller recomputes and rewrites
    a chunk for all streams if any of them misses it. The streams must agree on the number of
    rows and on ``chunk_rows``.
    """
    if not streams:
        return []
    layouts = {(s.shape[0], s.chunk_rows) for s in streams}
    if len(layouts) != 1:
        names = ", ".join(f"{s.path.name} (rows={s.shape[0]}, chunk_rows={s.chunk_rows})"
                          for s in streams)
        raise ValueError(f"streams written in lockstep must have the same rows and chunk_rows: "
                         f"{names}")
    return sorted(set().union(*(s.pending() for s in streams)))

