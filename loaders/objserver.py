"""A local HTTP/1.1 object server that behaves like a slow, flaky object store.

For tests, benchmarks and rehearsing a loader against high-latency storage:

    with ObjectServer(tmp_dir, latency_s=0.05, jitter_s=0.01, error_rate=0.01) as server:
        AsyncReader().read(server.url + "clip.mp4")

    python -m loaders.objserver DIR --port 8000 --latency-ms 50 --jitter-ms 10 --error-rate 0.01

GET and HEAD with keep-alive and single byte ranges (206, 416). Every request waits
`latency_s` +- uniform `jitter_s` before its first byte, then streams at `bandwidth_bps` per
connection. Injected faults: a share `error_rate` of 503 answers and `reset_rate` of connection
resets (RST, no answer), plus deterministic hooks for tests: `fail_next(path, k, kind)` and
`delay_next(path, k, seconds)`. One thread per connection (ThreadingHTTPServer).
"""

from __future__ import annotations

import argparse
import collections
import mimetypes
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024
FAULT_KINDS = ("503", "reset", "404")


class _Server(ThreadingHTTPServer):
    daemon_threads = False       # joined by server_close (after their sockets are shut down)
    block_on_close = True
    request_queue_size = 1024    # 64+ clients connecting at once must not hit the backlog
    allow_reuse_address = True

    def __init__(self, address, owner: ObjectServer):
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they can be joined."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # A client that goes away mid-answer is normal here (hedge losers, resets, shutdown).
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    server_version = "objserver"
    timeout = 60                   # idle keep-alive connections end after a minute

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def log_message(self, format, *args):  # quiet: a benchmark makes thousands of requests
        pass

    def _answer(self, send_body: bool) -> None:
        owner: ObjectServer = self.server.owner
        path = unquote(urlsplit(self.path).path)
        fault, extra_delay = owner._on_request(self.command, path)
        time.sleep(owner._delay() + extra_delay)
        if fault == "reset":
            self._reset()
            return
        if fault == "503":
            self._status_only(HTTPStatus.SERVICE_UNAVAILABLE, {"Retry-After": "0"})
            return
        data = None if fault == "404" else owner._lookup(path)
        if data is None:
            self._status_only(HTTPStatus.NOT_FOUND)
            return
        status, start, end = HTTPStatus.OK, 0, len(data)
        header = self.headers.get("Range")
        if header is not None:
            parsed = _parse_range(header, len(data))
            if parsed is None:
                self._status_only(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                  {"Content-Range": f"bytes */{len(data)}"})
                return
            status, (start, end) = HTTPStatus.PARTIAL_CONTENT, parsed
        self.send_response(status)
        self.send_header("Content-Type", mimetypes.guess_type(path)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if send_body:
            self._send(memoryview(data)[start:end], owner.bandwidth_bps)

    def _send(self, body: memoryview, bandwidth_bps: float | None) -> None:
        if not bandwidth_bps:
            self.wfile.write(body)
            return
        started = time.perf_counter()
        for offset in range(0, len(body), _CHUNK):
            chunk = body[offset:offset + _CHUNK]
            self.wfile.write(chunk)
            ahead = (offset + len(chunk)) / bandwidth_bps - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _status_only(self, status: HTTPStatus, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST: the client sees ECONNRESET.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n` -> [start, end) within size; None if unsatisfiable."""
    match = _RANGE.match(header.strip())
    if not match or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        return None
    return start, end


class ObjectServer:
    """Serve a directory or a {name: bytes} dict on 127.0.0.1 from a background thread.

    latency_s, jitter_s: wait before each answer, latency_s + uniform(-jitter_s, jitter_s) >= 0.
    bandwidth_bps: bytes/s per connection (None = unlimited).
    error_rate, reset_rate: share of requests answered 503 / reset, drawn from `seed`.
    """

    def __init__(self, root_or_objects: str | Path | dict[str, bytes], latency_s: float = 0.0,
                 jitter_s: float = 0.0, bandwidth_bps: float | None = None,
                 error_rate: float = 0.0, reset_rate: float = 0.0, *, host: str = "127.0.0.1",
                 port: int = 0, seed: int = 0):
        if isinstance(root_or_objects, dict):
            self._objects = {name.lstrip("/"): bytes(data) for name, data in root_or_objects.items()}
            self._root = None
        else:
            self._root = Path(root_or_objects).resolve()
            if not self._root.is_dir():
                raise NotADirectoryError(f"ObjectServer root is not a directory: {self._root}")
            self._objects = None
        for name, value in (("latency_s", latency_s), ("jitter_s", jitter_s)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, value in (("error_rate", error_rate), ("reset_rate", reset_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.bandwidth_bps = bandwidth_bps
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self._address = (host, port)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._delays: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ObjectServer:
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="objserver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()  # joins the handler threads
        self._thread.join()
        self._server = None

    def __enter__(self) -> ObjectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ObjectServer is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL ending in '/': `server.url + name` addresses an object."""
        return f"http://{self._address[0]}:{self.port}/"

    # -- test hooks --------------------------------------------------------------------------

    def fail_next(self, path: str, count: int = 1, kind: str = "503") -> None:
        """Answer the next `count` requests for `path` with `kind` ("503", "reset" or "404")."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        with self._lock:
            self._faults["/" + path.lstrip("/")].extend([kind] * count)

    def delay_next(self, path: str, count: int = 1, seconds: float = 1.0) -> None:
        """Hold the next `count` requests for `path` an extra `seconds` (a straggler)."""
        with self._lock:
            self._delays["/" + path.lstrip("/")].extend([seconds] * count)

    def request_count(self, path: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(n for (m, p), n in self.requests.items()
                       if (path is None or p == "/" + path.lstrip("/"))
                       and (method is None or m == method))

    # -- called by handler threads -----------------------------------------------------------

    def _on_request(self, method: str, path: str) -> tuple[str | None, float]:
        with self._lock:
            self.requests[(method, path)] += 1
            fault = self._faults[path].popleft() if self._faults.get(path) else None
            delay = self._delays[path].popleft() if self._delays.get(path) else 0.0
            if fault is None:
                draw = self._rng.random()
                if draw < self.reset_rate:
                    fault = "reset"
                elif draw < self.reset_rate + self.error_rate:
                    fault = "503"
            if fault is not None:
                self.faults_injected[fault] += 1
        return fault, delay

    def _delay(self) -> float:
        if not self.jitter_s:
            return self.latency_s
        with self._lock:
            jitter = self._rng.uniform(-self.jitter_s, self.jitter_s)
        return max(0.0, self.latency_s + jitter)

    def _lookup(self, path: str) -> bytes | None:
        name = path.lstrip("/")
        if self._objects is not None:
            return self._objects.get(name)
        target = (self._root / name).resolve()
        if not target.is_relative_to(self._root) or not target.is_file():
            return None  # outside the root (../), a folder, or missing
        return target.read_bytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loaders.objserver",
        description="Serve a directory over HTTP/1.1 (GET, HEAD, Range) with injected latency, "
                    "bandwidth limits and errors, to rehearse a loader against slow storage.")
    parser.add_argument("root", help="directory to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before each answer")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="uniform +- jitter on the latency")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="bytes/s per connection (default unlimited)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 503 answers")
    parser.add_argument("--reset-rate", type=float, default=0.0,
                        help="share of connections reset instead of answered")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter and fault draws")
    args = parser.parse_args(argv)
    server = ObjectServer(args.root, latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000,
                          bandwidth_bps=args.bandwidth, error_rate=args.error_rate,
                          reset_rate=args.reset_rate, host=args.host, port=args.port,
                          seed=args.seed)
    server.start()
    # The first line is machine-readable: benchmarks start this with --port 0 and parse it.
    print(f"serving {server._root} at {server.url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
