"""The climbmix downloader against a real HTTP server on 127.0.0.1: retries, resume, shard count."""

from __future__ import annotations

import http.server
import importlib
import os
import sys
import threading

import pytest

from conftest import ROOT


class FlakyShards(http.server.BaseHTTPRequestHandler):
    """Serves shard files; the first request for each fails in a scripted way."""

    files: dict[str, bytes] = {}
    failures: dict[str, str] = {}      # name -> "503" | "truncate"
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):
        folder, _, name = self.path.rpartition("/")
        self.seen.append((name, self.headers.get("Range")))
        if folder != "/resolve/main" or name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        failure = self.failures.pop(name, None)
        if failure == "503":
            self.send_error(503, "busy")
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if failure == "truncate":  # promise everything, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server():
    FlakyShards.files = {"shard_00000.parquet": os.urandom(300_000), "shard_00001.parquet": os.urandom(1000),
                         "shard_06542.parquet": os.urandom(200_000)}
    FlakyShards.failures = {"shard_00000.parquet": "503", "shard_06542.parquet": "truncate"}
    FlakyShards.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyShards)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/resolve/main"
    server.shutdown()


@pytest.fixture
def prepare():
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("prepare")
    finally:
        sys.path.remove(str(ROOT))


def test_download_retries_resumes_and_fetches_the_requested_shards(shard_server, prepare, tmp_path):
    prepare.download_climbmix(tmp_path, num_shards=1, backoff=0.01, base_url=shard_server)
    assert sorted(os.listdir(tmp_path)) == ["shard_00000.parquet", "shard_06542.parquet"]   # 1 training + the pinned val shard
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).read_bytes() == FlakyShards.files[name]
    val_requests = [r for n, r in FlakyShards.seen if n == "shard_06542.parquet"]
    assert val_requests[0] is None and val_requests[1] == "bytes=100000-"   # resumed after the broken transfer
    assert [n for n, _ in FlakyShards.seen].count("shard_00000.parquet") == 2  # retried after the 503
    before = len(FlakyShards.seen)
    prepare.download_climbmix(tmp_path, num_shards=1, backoff=0.01, base_url=shard_server)
    assert len(FlakyShards.seen) == before  # complete shards are not fetched again


def test_download_gives_up_with_a_clear_error(shard_server, prepare, tmp_path):
    with pytest.raises(SystemExit, match="could not download shard_00000.parquet after 2 attempts"):
        prepare.download_climbmix(tmp_path, num_shards=1, attempts=2, backoff=0.01, base_url=shard_server + "/missing")
