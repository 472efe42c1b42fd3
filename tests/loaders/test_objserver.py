"""The local object server: HTTP semantics, keep-alive, latency, bandwidth, faults, CLI."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loaders.devtools.objserver import ObjectServer, _parse_range

REPO = Path(__file__).resolve().parents[2]
DATA = bytes(range(256)) * 40  # 10240 bytes


def get(server: ObjectServer, path: str, method: str = "GET", headers: dict | None = None,
        conn: http.client.HTTPConnection | None = None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, "/" + path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    if own:
        conn.close()
    return response, body


@pytest.fixture
def server():
    with ObjectServer({"a.bin": DATA, "dir/b.bin": b"hello"}) as srv:
        yield srv


def test_get_head_and_missing(server):
    response, body = get(server, "a.bin")
    assert response.status == 200 and body == DATA
    assert response.getheader("Content-Length") == str(len(DATA))
    assert response.getheader("Accept-Ranges") == "bytes"
    response, body = get(server, "a.bin", "HEAD")
    assert response.status == 200 and body == b""
    assert response.getheader("Content-Length") == str(len(DATA))
    assert get(server, "dir/b.bin")[1] == b"hello"
    assert get(server, "nope.bin")[0].status == 404
    assert server.request_count("a.bin", "GET") == 1
    assert server.request_count("a.bin", "HEAD") == 1


@pytest.mark.parametrize("header, start, end", [
    ("bytes=0-99", 0, 100), ("bytes=10-", 10, len(DATA)), ("bytes=-16", len(DATA) - 16, len(DATA)),
    ("bytes=10000-99999", 10000, len(DATA)), ("bytes=0-", 0, len(DATA)),
])
def test_range_requests(server, header, start, end):
    response, body = get(server, "a.bin", headers={"Range": header})
    assert response.status == 206
    assert body == DATA[start:end]
    assert response.getheader("Content-Range") == f"bytes {start}-{end - 1}/{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=20000-", "bytes=5-2", "items=0-1", "bytes=-"])
def test_unsatisfiable_range(server, header):
    response, _ = get(server, "a.bin", headers={"Range": header})
    assert response.status == 416
    assert response.getheader("Content-Range") == f"bytes */{len(DATA)}"


def test_parse_range_edges():
    assert _parse_range("bytes=-0", 10) is None
    assert _parse_range("bytes=-20", 10) == (0, 10)
    assert _parse_range("bytes=9-9", 10) == (9, 10)


def test_directory_root_blocks_traversal(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x.bin").write_bytes(b"x" * 5)
    (tmp_path / "secret.txt").write_bytes(b"no")
    with ObjectServer(tmp_path / "root") as srv:
        assert get(srv, "x.bin")[1] == b"x" * 5
        assert get(srv, "../secret.txt")[0].status == 404
        assert get(srv, "%2E%2E/secret.txt")[0].status == 404
        assert get(srv, "")[0].status == 404  # the folder itself


def test_keep_alive_reuses_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(5):
        response, body = get(server, "a.bin", conn=conn)
        assert response.status == 200 and body == DATA
    conn.close()
    assert len(server.peers) == 1


def test_latency_and_jitter():
    with ObjectServer({"a": b"1"}, latency_s=0.05, jitter_s=0.02) as srv:
        for _ in range(3):
            started = time.perf_counter()
            get(srv, "a")
            assert 0.03 <= time.perf_counter() - started < 0.5


def test_bandwidth_per_connection():
    with ObjectServer({"big": b"z" * 200_000}, bandwidth_bps=1_000_000) as srv:
        started = time.perf_counter()
        response, body = get(srv, "big")
        elapsed = time.perf_counter() - started
    assert len(body) == 200_000
    assert 0.15 <= elapsed < 2.0  # 200 KB at 1 MB/s = 0.2 s


def test_injected_errors_and_resets():
    with ObjectServer({"a": b"1"}, error_rate=1.0) as srv:
        assert get(srv, "a")[0].status == 503
        assert srv.faults_injected["503"] == 1
    with ObjectServer({"a": b"1"}, reset_rate=1.0) as srv:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            get(srv, "a")


def test_fail_next_and_delay_next_hooks(server):
    server.fail_next("a.bin", 2, "503")
    server.fail_next("dir/b.bin", 1, "404")
    assert [get(server, "a.bin")[0].status for _ in range(3)] == [503, 503, 200]
    assert get(server, "dir/b.bin")[0].status == 404
    assert get(server, "dir/b.bin")[0].status == 200
    server.delay_next("a.bin", 1, 0.2)
    started = time.perf_counter()
    get(server, "a.bin")
    assert time.perf_counter() - started >= 0.18
    with pytest.raises(ValueError, match="fault kind"):
        server.fail_next("a.bin", 1, "teapot")


def test_serves_96_concurrent_connections():
    with ObjectServer({"a": DATA}, latency_s=0.3) as srv:
        started = time.perf_counter()
        with ThreadPoolExecutor(96) as pool:
            results = list(pool.map(lambda _: get(srv, "a"), range(96)))
        elapsed = time.perf_counter() - started
        assert all(r.status == 200 and b == DATA for r, b in results)
        assert len(srv.peers) == 96
    assert elapsed < 2.5, f"96 requests at 0.3 s took {elapsed:.2f} s: not concurrent"


def test_stop_joins_its_thread():
    before = set(threading.enumerate())
    srv = ObjectServer({"a": b"1"}, latency_s=0.5).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/a")  # in flight when the server stops
    time.sleep(0.05)
    srv.stop()
    conn.close()
    assert set(threading.enumerate()) <= before


def test_command_line(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"video")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loaders.devtools.objserver", str(tmp_path), "--port", "0",
         "--latency-ms", "10", "--jitter-ms", "2", "--error-rate", "0"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].strip(" /\n"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/clip.mp4")
        assert conn.getresponse().read() == b"video"
        conn.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(NotADirectoryError):
        ObjectServer(tmp_path / "missing")
    with pytest.raises(ValueError, match="error_rate"):
        ObjectServer({}, error_rate=1.5)
    with pytest.raises(ValueError, match="latency_s"):
        ObjectServer({}, latency_s=-1)
