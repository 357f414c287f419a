"""Reader of IDX files, the format of the official MNIST archives.

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order, big-endian. Files may be gzip-compressed (detected from
the content, not the name, so a renamed or unpacked file still reads).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sgdjax.errors import DataMissingError

#: IDX dtype codes -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _malformed(path: Path, problem: str) -> DataMissingError:
    return DataMissingError(
        f"The file {path} is not a valid IDX file: {problem}. It is probably truncated or not "
        f"the official file; delete it so that it is downloaded again, or replace it with a "
        f"good copy."
    )


def read_bytes(path: str | Path) -> bytes:
    """The decompressed content of a (possibly gzip-compressed) file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _malformed(path, f"the gzip stream is damaged ({exc})") from exc


def parse_idx(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file into an array in native byte order."""
    path = Path(path)
    if len(data) < 4:
        raise _malformed(path, f"it has only {len(data)} bytes, fewer than the 4-byte header")
    if data[0] != 0 or data[1] != 0:
        raise _malformed(path, "the magic number does not start with two zero bytes")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _malformed(path, f"unknown dtype code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _malformed(path, f"the header declares {ndim} dimensions but the file ends early")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise _malformed(
            path,
            f"the header declares shape {shape} of {dtype.name} ({expected} data bytes) but "
            f"the file holds {len(data) - header} data bytes",
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-byte-order numpy array."""
    return parse_idx(read_bytes(path), path)
