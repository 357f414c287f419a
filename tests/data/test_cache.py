from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest

from sgdjax.data import cache
from sgdjax.data.cache import RemoteFile, data_dir, fetch, fetch_many
from sgdjax.errors import DataMissingError

PAYLOAD = b"hello sgdjax\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SGDJAX_DATA_DIR")
    assert data_dir() == tmp_path / "xdg" / "sgdjax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "sgdjax"


def test_present_file_is_returned_and_verified(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "f.bin").write_bytes(PAYLOAD)
    assert fetch("ds/f.bin", [], PAYLOAD_SHA, root=tmp_path) == tmp_path / "ds" / "f.bin"
    assert fetch("ds/f.bin", [], None, root=tmp_path) == tmp_path / "ds" / "f.bin"


def test_root_defaults_to_env(tmp_path, monkeypatch):
    (tmp_path / "f.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("SGDJAX_DATA_DIR", str(tmp_path))
    assert fetch("f.bin", [], PAYLOAD_SHA) == tmp_path / "f.bin"


def test_sha_mismatch_of_present_file(tmp_path):
    (tmp_path / "f.bin").write_bytes(PAYLOAD + b"x")
    with pytest.raises(DataMissingError) as info:
        fetch("f.bin", ["http://127.0.0.1:9/x"], PAYLOAD_SHA, root=tmp_path)
    message = str(info.value)
    assert "corrupt" in message and str(tmp_path / "f.bin") in message and "Delete it" in message
    assert PAYLOAD_SHA in message
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD + b"x"  # the user's file is not deleted


def test_offline_missing_lists_every_file_quickly(tmp_path):
    files = [
        RemoteFile("mnist/a.gz", ("https://example.invalid/a.gz",), None),
        RemoteFile("mnist/b.gz", ("https://example.invalid/b.gz",), None),
    ]
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "present.gz").write_bytes(b"")
    start = time.perf_counter()
    with pytest.raises(DataMissingError) as info:
        fetch_many(files + [RemoteFile("mnist/present.gz", (), None)], root=tmp_path, what="MNIST")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "mnist/a.gz" in message and "mnist/b.gz" in message and "present.gz" not in message
    assert str(tmp_path / "mnist") in message and "SGDJAX_OFFLINE" in message
    assert "SGDJAX_DATA_DIR" in message and "copy the file(s)" in message


def test_unreachable_url_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("SGDJAX_OFFLINE")
    urls = ["http://127.0.0.1:9/x", "http://127.0.0.1:9/y"]
    start = time.perf_counter()
    with pytest.raises(DataMissingError) as info:
        fetch_many(
            [
                RemoteFile("d/one.bin", tuple(urls), PAYLOAD_SHA),
                RemoteFile("d/two.bin", (urls[0],)),
            ],
            root=tmp_path,
        )
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "d/one.bin" in message and "d/two.bin" in message
    assert "http://127.0.0.1:9/x" in message and "http://127.0.0.1:9/y" in message
    assert "refused" in message.lower() or "errno" in message.lower()
    assert list((tmp_path / "d").iterdir()) == []  # nothing half-written


def test_download_from_file_url(tmp_path, monkeypatch):
    monkeypatch.delenv("SGDJAX_OFFLINE")
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    root = tmp_path / "cache"
    urls = ["http://127.0.0.1:9/x", source.as_uri()]  # the first mirror fails, the second works
    path = fetch("ds/f.bin", urls, PAYLOAD_SHA, root=root)
    assert path == root / "ds" / "f.bin" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in (root / "ds").iterdir()) == ["f.bin"]
    source.unlink()
    assert fetch("ds/f.bin", urls, PAYLOAD_SHA, root=root) == path  # served from the cache


def test_downloaded_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SGDJAX_OFFLINE")
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(DataMissingError, match="checksum mismatch"):
        fetch("ds/f.bin", [source.as_uri()], PAYLOAD_SHA, root=tmp_path / "cache")
    assert list((tmp_path / "cache" / "ds").iterdir()) == []


def test_download_over_http(tmp_path, monkeypatch):
    monkeypatch.delenv("SGDJAX_OFFLINE")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path != "/f.bin":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        path = fetch("f.bin", [f"{base}/missing", f"{base}/f.bin"], PAYLOAD_SHA, root=tmp_path)
        assert path.read_bytes() == PAYLOAD
        with pytest.raises(DataMissingError, match="404"):
            fetch("g.bin", [f"{base}/missing"], None, root=tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def test_offline_env_values(monkeypatch):
    for value, expected in [("1", True), ("true", True), ("0", False), ("", False), ("no", False)]:
        monkeypatch.setenv("SGDJAX_OFFLINE", value)
        assert cache.offline() is expected
    monkeypatch.delenv("SGDJAX_OFFLINE")
    assert cache.offline() is False


def test_paths_are_paths(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    assert isinstance(fetch("f", [], None, root=str(tmp_path)), Path)  # type: ignore[arg-type]
