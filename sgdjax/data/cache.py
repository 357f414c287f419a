"""The local data cache: where data files live, and fetching them once with checksums.

Data are read from ``DATA_DIR/<dataset>/<official file name>``. A missing file is downloaded
once from a list of mirrors (one short attempt each, no retry loop, so an offline machine fails
in seconds rather than minutes) into a temporary file that is renamed into place only after its
checksum matched, so an interrupted download never leaves a truncated file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sgdjax.errors import DataMissingError

ENV_DATA_DIR = "SGDJAX_DATA_DIR"
ENV_OFFLINE = "SGDJAX_OFFLINE"
#: Seconds a single socket operation of a download may block (connect, each read).
DOWNLOAD_TIMEOUT_S = 15.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file of the cache: its path under the data directory, mirrors and expected SHA-256."""

    relpath: str
    urls: tuple[str, ...]
    sha256: str | None = None


def data_dir() -> Path:
    """The data directory: ``$SGDJAX_DATA_DIR``, else ``$XDG_CACHE_HOME/sgdjax``, else
    ``~/.cache/sgdjax``."""
    explicit = os.environ.get(ENV_DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sgdjax"


def _data_dir_origin() -> str:
    if os.environ.get(ENV_DATA_DIR):
        return f"set by ${ENV_DATA_DIR}"
    if os.environ.get("XDG_CACHE_HOME"):
        return f"the default under $XDG_CACHE_HOME; set ${ENV_DATA_DIR} to use another"
    return f"the default; set ${ENV_DATA_DIR} to use another"


def offline() -> bool:
    """True when ``$SGDJAX_OFFLINE`` asks never to touch the network."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no", "off")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large archives do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_present(path: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise DataMissingError(
            f"The data file {path} is corrupt or not the expected version: its SHA-256 is "
            f"{actual}, expected {sha256}. Delete it so that it is downloaded again, or replace "
            f"it with a good copy of the official file."
        )


def _download(path: Path, url: str, sha256: str | None) -> None:
    """One attempt to download ``url`` to ``path``; raises OSError/ValueError on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ValueError(f"checksum mismatch (got SHA-256 {digest.hexdigest()})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc) or type(exc).__name__
    return text.replace("\n", " ")


def fetch_many(
    files: Sequence[RemoteFile], *, root: Path | None = None, what: str = "data"
) -> list[Path]:
    """Local paths of ``files`` under ``root`` (default :func:`data_dir`), downloading the absent
    ones.

    All files are checked before anything is raised, so the error names every missing file at
    once instead of making the user fix them one by one.
    """
    given_root = root
    root = data_dir() if root is None else Path(root)
    paths = [root / f.relpath for f in files]
    missing: list[tuple[RemoteFile, Path]] = []
    for f, path in zip(files, paths, strict=True):
        if path.is_file():
            _check_present(path, f.sha256)
        else:
            missing.append((f, path))
    if not missing:
        return paths

    is_offline = offline()
    failed: list[tuple[RemoteFile, Path, list[str]]] = []
    unreachable: set[str] = set()  # hosts that could not be reached: not tried again
    for f, path in missing:
        attempts: list[str] = []
        done = False
        for url in () if is_offline else f.urls:
            host = urllib.parse.urlsplit(url).netloc
            if host and host in unreachable:
                attempts.append(f"{url} (skipped, host unreachable)")
                continue
            try:
                _download(path, url, f.sha256)
                done = True
                break
            except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
                attempts.append(f"{url} ({_describe(exc)})")
                if isinstance(exc, OSError) and not isinstance(exc, urllib.error.HTTPError):
                    unreachable.add(host)
        if not done:
            failed.append((f, path, attempts))
    if not failed:
        return paths

    names = ", ".join(str(Path(f.relpath)) for f, _, _ in failed)
    if is_offline:
        tried = f"downloads are disabled because ${ENV_OFFLINE} is set"
    else:
        all_attempts = [a for _, _, attempts in failed for a in attempts]
        tried = (
            "downloading failed from " + "; ".join(all_attempts)
            if all_attempts
            else "no download address is known"
        )
    dirs = " and ".join(sorted({str(path.parent) for _, path, _ in failed}))
    origin = _data_dir_origin() if given_root is None else "passed by the caller"
    raise DataMissingError(
        f"Missing {what} file(s) {names} under the data directory {root} ({origin}): not found "
        f"in {dirs}, and {tried}. To fix this, copy the file(s) into {dirs} (keeping these "
        f"names), or set ${ENV_DATA_DIR} to a directory that holds them under the same relative "
        f"paths, or run once with network access."
    )


def fetch(
    relpath: str, urls: Sequence[str], sha256: str | None, *, root: Path | None = None
) -> Path:
    """Local path of ``root/relpath``, downloading it from ``urls`` if absent (see
    :func:`fetch_many`)."""
    return fetch_many([RemoteFile(relpath, tuple(urls), sha256)], root=root)[0]
