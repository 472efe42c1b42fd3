"""One asyncio event loop per process, on a daemon thread, shared by every AsyncReader.

The loop (uvloop where importable) is started by the first reader that needs it and stopped,
with its thread joined, when the last one is closed. A forked child (DataLoader worker, DALI
process) inherits the parent's loop object but not its thread, so the registry is reset after
fork and the child starts its own loop on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional (not on Windows)
    uvloop = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loaders-aio-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self._drain()

    def _drain(self) -> None:
        """Cancel what is left, stop the default executor's threads, close the loop."""
        loop = self.loop
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Schedule `coro` on the loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result (from any thread but the loop's)."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("LoopThread.run called from the loop thread itself (would deadlock)")
        return self.submit(coro).result(timeout)

    def call_soon(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self.thread.join(timeout)


_lock = threading.Lock()
_current: LoopThread | None = None
_users = 0


def _reset_after_fork() -> None:
    # The parent's loop thread does not exist in the child; its loop must not be touched.
    global _lock, _current, _users
    _lock = threading.Lock()
    _current = None
    _users = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def acquire() -> LoopThread:
    """The process's loop thread, started if needed; pair every call with `release`."""
    global _current, _users
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current, _users = LoopThread(), 0
        _users += 1
        return _current


def release(loop_thread: LoopThread) -> None:
    """Drop one user; the last one stops the loop and joins its thread."""
    global _current, _users
    with _lock:
        if loop_thread is not _current:
            return  # from before a fork, or already stopped
        _users -= 1
        if _users > 0:
            return
        _current = None
    loop_thread.stop()
