"""A local HTTP/1.1 object server that behaves like a slow, flaky object store.

For tests, benchmarks and rehearsing a loader against high-latency storage:

    with ObjectServer(tmp_dir, latency_s=0.05, jitter_s=0.01, error_rate=0.01) as server:
        AsyncReader().read(server.url + "clip.mp4")

    python -m loaders.devtools.objserver DIR --port 8000 --latency-ms 50 --jitter-ms 10 --error-rate 0.01

GET and HEAD with keep-alive and single byte ranges (206, 416). Every request waits
`latency_s` +- uniform `jitter_s` before its first byte, then streams at `bandwidth_bps` per
connection. Injected faults: a share `error_rate` of 503 answers and `reset_rate` of connection
resets (RST, no answer), plus deterministic hooks for tests: `fail_next(path, k, kind)` and
`delay_next(path, k, seconds)`.

aiohttp's server on its own event loop thread: a waiting request costs a timer, not a thread,
so hundreds of connections at 200 ms each are cheap, and the server's CPU per request (~0.15 ms)
stays well below the reader's, which is what a benchmark of the reader needs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import re
import signal
import socket
import struct
import threading
from pathlib import Path

from aiohttp import web

from loaders.storage.event_loop import new_event_loop

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024
FAULT_KINDS = ("503", "reset", "404")


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
    """Serve a directory or a {name: bytes} dict from a background thread.

    latency_s, jitter_s: wait before each answer, latency_s + uniform(-jitter_s, jitter_s) >= 0.
    bandwidth_bps: bytes/s per connection (None = unlimited).
    error_rate, reset_rate: share of requests answered 503 / reset, drawn from `seed`.
    Files are read on the server's loop: fine for fixtures and benchmark objects in the page
    cache, not meant to serve a cold multi-terabyte disk.
    """

    def __init__(self, root_or_objects: str | Path | dict[str, bytes], latency_s: float = 0.0,
                 jitter_s: float = 0.0, bandwidth_bps: float | None = None,
                 error_rate: float = 0.0, reset_rate: float = 0.0, *, host: str = "127.0.0.1",
                 port: int = 0, seed: int = 0):
        if isinstance(root_or_objects, dict):
            self.root = None
            self._objects = {name.lstrip("/"): bytes(data)
                             for name, data in root_or_objects.items()}
        else:
            self.root = Path(root_or_objects).resolve()
            if not self.root.is_dir():
                raise NotADirectoryError(f"ObjectServer root is not a directory: {self.root}")
            self._objects = None
        for name, value in (("latency_s", latency_s), ("jitter_s", jitter_s)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, value in (("error_rate", error_rate), ("reset_rate", reset_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if bandwidth_bps is not None and bandwidth_bps <= 0:
            raise ValueError(f"bandwidth_bps must be > 0 or None, got {bandwidth_bps}")
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.bandwidth_bps = bandwidth_bps
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.host = host
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # hooks are set from the test thread, read on the loop
        # path -> faults / extra delays still to inject, in order
        self._faults: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._delays: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self.peers: set[tuple] = set()  # client (host, port) seen: one per connection used
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ObjectServer:
        if self._thread is not None:
            raise RuntimeError("ObjectServer is already started")
        self._loop = new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to start() below
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="objserver", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/{name:.*}", self._handle)  # HEAD too (allow_head)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25,
                                     handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, backlog=1024)
        await site.start()
        self._port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Close every connection and join the server thread."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> ObjectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._thread is None:
            raise RuntimeError("ObjectServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL ending in '/': `server.url + name` addresses an object."""
        return f"http://{self.host}:{self.port}/"

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
        """Requests received, for one path and/or method (GET, HEAD) or all."""
        with self._lock:
            return sum(n for (m, p), n in self.requests.items()
                       if (path is None or p == "/" + path.lstrip("/"))
                       and (method is None or m == method))

    # -- serving -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault, delay = self._on_request(request.method, request.path,
                                        request.transport.get_extra_info("peername"))
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "reset":
            _reset(request)
            return web.Response(status=500)  # never sent: aiohttp sees the closed transport
        if fault == "503":
            return web.Response(status=503, headers={"Retry-After": "0"})
        data = None if fault == "404" else self._lookup(request.path)
        if data is None:
            return web.Response(status=404)
        status, start, end = 200, 0, len(data)
        header = request.headers.get("Range")
        if header is not None:
            parsed = _parse_range(header, len(data))
            if parsed is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status, (start, end) = 206, parsed
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = memoryview(data)[start:end]
        if not self.bandwidth_bps or request.method == "HEAD":
            return web.Response(status=status, body=body, headers=headers)
        return await self._stream(request, status, headers, body)

    async def _stream(self, request: web.Request, status: int, headers: dict,
                      body: memoryview) -> web.StreamResponse:
        """Send `body` at bandwidth_bps, paced per chunk."""
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for offset in range(0, len(body), _CHUNK):
            chunk = body[offset:offset + _CHUNK]
            await response.write(chunk)
            ahead = (offset + len(chunk)) / self.bandwidth_bps - (loop.time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await response.write_eof()
        return response

    def _on_request(self, method: str, path: str, peer) -> tuple[str | None, float]:
        with self._lock:
            self.requests[(method, path)] += 1
            self.peers.add(peer)
            fault = self._faults[path].popleft() if self._faults.get(path) else None
            delay = self._delays[path].popleft() if self._delays.get(path) else 0.0
            if fault is None and (self.reset_rate or self.error_rate):
                draw = self._rng.random()
                if draw < self.reset_rate:
                    fault = "reset"
                elif draw < self.reset_rate + self.error_rate:
                    fault = "503"
            if fault is not None:
                self.faults_injected[fault] += 1
            if self.jitter_s:
                delay += max(0.0, self.latency_s + self._rng.uniform(-self.jitter_s, self.jitter_s))
            else:
                delay += self.latency_s
        return fault, delay

    def _lookup(self, path: str) -> bytes | None:
        name = path.lstrip("/")
        if self._objects is not None:
            return self._objects.get(name)
        target = (self.root / name).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            return None  # outside the root (../), a folder, or missing
        return target.read_bytes()


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST: the client sees ECONNRESET, not an HTTP answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout makes the close send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loaders.devtools.objserver",
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
    server = ObjectServer(args.root, latency_s=args.latency_ms / 1000,
                          jitter_s=args.jitter_ms / 1000, bandwidth_bps=args.bandwidth, error_rate=args.error_rate,
                          reset_rate=args.reset_rate, host=args.host, port=args.port,
                          seed=args.seed)
    server.start()
    # The first line is machine-readable: benchmarks start this with --port 0 and parse it.
    print(f"serving {server.root} at {server.url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
