"""fineweb10B shards: fetched over HTTP with resume, checked by header and size, refused when corrupt,
and a clear message offline. A real HTTP server on 127.0.0.1 serves shards the test writes."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from speedrunner.core.errors import UserError
from speedrunner.data import fineweb10B
from speedrunner.data.shards import ShardError, write_shard


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # a file server that honours "Range: bytes=N-"
        path = Path(self.directory) / self.path.split("/")[-1]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            _RangeHandler.ranges.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    write_shard(root / "fineweb_val_000000.bin", list(range(1000)))
    write_shard(root / "fineweb_train_000001.bin", [7] * 5000)
    write_shard(root / "fineweb_train_000002.bin", [3] * 4000)

    def handler(*a, **kw):
        return _RangeHandler(*a, directory=str(root), **kw)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_fetches_checks_and_caches(tmp_path, server):
    root, url = server
    out = fineweb10B.prepare(tmp_path / "data", shards=2, base_url=url)
    assert fineweb10B.check(out) == {"fineweb_train_000001.bin": 5000, "fineweb_train_000002.bin": 4000,
                                     "fineweb_val_000000.bin": 1000}
    (root / "fineweb_train_000001.bin").unlink()  # cached: no second download needed
    fineweb10B.prepare(tmp_path / "data", shards=2, base_url=url)


def test_a_partial_download_resumes(tmp_path, server):
    root, url = server
    out = tmp_path / "data"
    out.mkdir()
    full = (root / "fineweb_train_000001.bin").read_bytes()
    (out / "fineweb_train_000001.bin.part").write_bytes(full[:3000])
    fineweb10B.prepare(out, shards=1, base_url=url)
    assert "bytes=3000-" in _RangeHandler.ranges
    assert (out / "fineweb_train_000001.bin").read_bytes() == full


def test_a_corrupt_remote_shard_is_refused(tmp_path, server):
    root, url = server
    bad = root / "fineweb_train_000001.bin"
    bad.write_bytes(bad.read_bytes()[:-100])  # truncated on the server
    with pytest.raises(ShardError, match="truncated"):
        fineweb10B.prepare(tmp_path / "data", shards=1, base_url=url)
    assert not (tmp_path / "data" / "fineweb_train_000001.bin").exists()


def test_offline_says_how_to_place_the_files(tmp_path):
    with pytest.raises(UserError) as e:
        fineweb10B.prepare(tmp_path / "data", shards=1, base_url="http://127.0.0.1:9/", timeout=2)
    msg = str(e.value)
    assert "offline" in msg and "Place the files by hand" in msg and "speedrunner data check fineweb10B" in msg
