"""Read encoded videos and images from high-latency storage with the latency hidden.

    with AsyncReader(max_in_flight=64, timeout_s=30, retries=3, hedge_after_s=0.5) as reader:
        for result in reader.read_many((i, uris[i]) for i in sampler):
            if result.ok: decode(result.data)
            else: log(result.uri_redacted, result.error)   # reported, counted, never dropped

The synchronous consumer submits (key, uri) pairs; an asyncio loop on one background thread per
process (event_loop.py) reads them, at most `max_in_flight` requests at a time, and hands back
ReadResults through a bounded queue, in submission order (`ordered=True`) or as they complete.
Submitted-but-undelivered reads are capped at `max_in_flight + reorder_window`: a straggler at the
head of the order stalls submission after that many reads instead of letting memory grow.

The rest of this package: backends.py (local, fsspec and HTTP reads); fetch.py (retries, hedging,
slots); outage.py (every request failing: reads held, not failed, for up to `outage_s`); retry.py
(error classes and the failure budget); reader_stats.py (the counters of `stats()`). Credentials
are scrubbed from every message by loaders.redact.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from loaders.storage import event_loop
from loaders.storage.backends import Backends
from loaders.storage.fetch import Fetcher, FetchOutcome
from loaders.storage.reader_stats import ReaderStats
from loaders.redact import redact
from loaders.storage.retry import FailureBudget, StorageError, describe_error

__all__ = ["AsyncReader", "ReadResult"]

_POLL_S = 0.5  # how often a blocked consumer checks that the reader is still alive

# After fork, a reader's parent-side objects (HTTP sessions, pool, loop) belong to the parent:
# closing or collecting them in the child could shut connections the parent still uses, so the
# child keeps them referenced, untouched, for its lifetime.
_FORK_ORPHANS: list = []
_READERS: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for reader in list(_READERS):
        reader._lock = threading.Lock()  # a copy may have been held by another thread at fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    # A run stopped by an exception may never reach its loader's close(): close the HTTP sessions
    # here, or aiohttp reports each one as "Unclosed client session" at interpreter exit.
    for reader in list(_READERS):
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - exiting anyway; never mask the run's own error
            pass


@dataclass(frozen=True, repr=False)
class ReadResult:
    """One object read, or the reason it could not be.

    latency_s: first request issued -> result (retries and backoff included).
    attempts: requests issued for this object (first try, retries and hedges).
    transient: the failure may clear on a later read (a timeout, a 5xx); False for a missing or
        refused object, which a loader may skip for the rest of the run.
    """

    key: Any
    uri: str
    data: bytes | None
    error: str | None
    latency_s: float
    attempts: int
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.data is not None

    @property
    def uri_redacted(self) -> str:
        return redact(self.uri)

    def __repr__(self) -> str:
        body = f"{len(self.data)} bytes" if self.data is not None else f"error={self.error!r}"
        return (f"ReadResult(key={self.key!r}, uri={self.uri_redacted!r}, {body}, "
                f"latency_s={self.latency_s:.4f}, attempts={self.attempts})")


class _Session:
    """The loop side of one read_many call: a task per submitted read."""

    def __init__(self, fetcher: Fetcher, stats: ReaderStats, out: queue.Queue):
        self.fetcher = fetcher
        self.stats = stats
        self.out = out
        self.tasks: set[asyncio.Task] = set()
        self.cancelled = False
        self._ready: list[tuple[int, ReadResult]] = []

    def submit(self, batch: list[tuple[int, int, Any, str]]) -> None:
        """Loop thread: start reading (ticket, seq, key, uri) for each entry."""
        if self.cancelled:
            return
        loop = asyncio.get_running_loop()
        for ticket, seq, key, uri in batch:
            task = loop.create_task(self._read(ticket, seq, key, uri))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _read(self, ticket: int, seq: int, key: Any, uri: str) -> None:
        try:
            outcome = await self.fetcher.fetch(ticket, uri)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must still yield a result
            outcome = FetchOutcome(None, f"internal error: {describe_error(exc)}", 0.0, 0)
        self.stats.reads += 1
        if outcome.error is not None:
            self.stats.failures += 1
        self._ready.append((seq, ReadResult(key, uri, outcome.data, outcome.error,
                                            outcome.latency_s, outcome.attempts, outcome.transient)))
        if len(self._ready) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Everything that completed in one loop iteration goes over as one list: one wake-up
        # of the consumer thread (and one GIL hand-over) per burst, not per read. Never
        # blocks: the consumer keeps at most maxsize reads undelivered.
        ready, self._ready = self._ready, []
        self.out.put_nowait(ready)

    async def cancel(self) -> None:
        self.cancelled = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class AsyncReader:
    """A pool of asynchronous object reads serving a synchronous consumer.

    max_in_flight: requests in flight at most (hedges included); also the size of the HTTP
        connection pool and of the thread pool for local files.
    timeout_s: limit on one request; a timeout is transient (retried).
    retries: further tries after a transient failure, with full-jitter exponential backoff
        (`backoff_base_s * 2**retry`, at most `backoff_max_s`). Permanent errors are not retried.
    outage_s: when the retries of a read run out while no request succeeds at all (loaders.storage.outage),
        the read is held and retried every <= `backoff_max_s` instead of failed, for up to this
        long without a successful request; then read_many raises StorageError.
    hedge_after_s: if a request is still out after this long, send a second one; the first
        answer wins and the other is cancelled. None = no hedging.
    storage_options: fsspec options, one dict for every protocol or {protocol: dict}; never
        logged.
    reorder_window: reads allowed past an undelivered one (default max_in_flight).
    max_failure_share, failure_window: raise StorageError from read_many when more than this
        share of the last `failure_window` results failed.
    """

    def __init__(self, max_in_flight: int = 64, timeout_s: float = 30.0, retries: int = 3,
                 hedge_after_s: float | None = None, storage_options: dict | None = None, *,
                 reorder_window: int | None = None, backoff_base_s: float = 0.05,
                 backoff_max_s: float = 5.0, max_failure_share: float = 0.1,
                 failure_window: int = 200, outage_s: float = 300.0, seed: int = 0):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if hedge_after_s is not None and hedge_after_s <= 0:
            raise ValueError(f"hedge_after_s must be > 0 or None, got {hedge_after_s}")
        if outage_s <= 0:
            raise ValueError(f"outage_s must be > 0, got {outage_s}")
        if reorder_window is not None and reorder_window < 0:
            raise ValueError(f"reorder_window must be >= 0, got {reorder_window}")
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(f"storage_options must be a dict, got {type(storage_options).__name__}")
        self._config = dict(max_in_flight=max_in_flight, timeout_s=timeout_s, retries=retries,
                            hedge_after_s=hedge_after_s, storage_options=storage_options,
                            reorder_window=reorder_window, backoff_base_s=backoff_base_s,
                            backoff_max_s=backoff_max_s, max_failure_share=max_failure_share,
                            failure_window=failure_window, outage_s=outage_s, seed=seed)
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retries = retries
        self.hedge_after_s = hedge_after_s
        self.reorder_window = max_in_flight if reorder_window is None else reorder_window
        self._storage_options = storage_options
        self._fetch_kwargs = dict(max_in_flight=max_in_flight, timeout_s=timeout_s,
                                  retries=retries, hedge_after_s=hedge_after_s,
                                  backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
                                  outage_s=outage_s, seed=seed)
        self._budget_kwargs = dict(max_share=max_failure_share, window=failure_window)
        self._lock = threading.Lock()
        self._closed = False
        self._pid: int | None = None
        self._loop_thread: event_loop.LoopThread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._backends: Backends | None = None
        self._fetcher: Fetcher | None = None
        self._sessions: set[_Session] = set()
        self._tickets = itertools.count()
        self._stats = ReaderStats()
        self._budget = FailureBudget(**self._budget_kwargs)
        _READERS.add(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def _runtime(self) -> event_loop.LoopThread:
        """Start (or, in a forked child, restart) the loop side on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("AsyncReader is closed")
            if self._pid != os.getpid():
                # First use, or first use in a forked child: the parent's loop thread, pool
                # threads and connections do not exist here; keep them without touching them.
                if self._pid is not None:
                    _FORK_ORPHANS.append((self._backends, self._executor, self._sessions))
                self._pid = os.getpid()
                self._sessions = set()
                self._stats = ReaderStats()
                self._budget = FailureBudget(**self._budget_kwargs)
                self._loop_thread = event_loop.acquire()
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_in_flight, thread_name_prefix="loaders-io")
                self._backends = Backends(self._loop_thread.loop, self._executor,
                                          self._storage_options, self.max_in_flight)
                self._fetcher = Fetcher(self._backends, self._stats, **self._fetch_kwargs)
            return self._loop_thread

    def close(self) -> None:
        """Cancel reads in flight, close HTTP sessions, stop the pool and (if last) the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop_thread, sessions = self._loop_thread, list(self._sessions)
            self._sessions = set()
            if loop_thread is None or self._pid != os.getpid():
                return
        if loop_thread.in_loop_thread():
            raise RuntimeError("AsyncReader.close() called from its own event loop thread")

        async def shutdown() -> None:
            await asyncio.gather(*(s.cancel() for s in sessions))
            await self._backends.close()

        try:
            loop_thread.run(shutdown(), timeout=30.0)
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
            event_loop.release(loop_thread)

    def __getstate__(self) -> dict:
        # Pickled into spawned workers (DataLoader, DALI): the settings travel, the loop,
        # pools and connections are per process and start afresh on first use.
        return {"config": self._config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["config"])

    def __enter__(self) -> AsyncReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def read_many(self, items: Iterable[tuple[Any, str]], ordered: bool = True
                  ) -> Iterator[ReadResult]:
        """Read every (key, uri) of `items`; yield one ReadResult per item, failed or not.

        ordered=True yields in the order of `items`; False yields as reads complete. Raises
        StorageError when the failure budget is exceeded or an outage outlasts `outage_s`. Breaking out of the loop (or closing
        the generator) cancels the reads still in flight.
        """
        if self._closed:
            raise RuntimeError("AsyncReader is closed")
        return self._deliver(iter(items), ordered)

    def read(self, uri: str) -> bytes:
        """One object, synchronously; raises OSError with the (redacted) reason on failure."""
        result = next(self.read_many([(None, uri)]))
        if not result.ok:
            raise OSError(f"{result.uri_redacted}: {result.error}")
        return result.data

    def _deliver(self, items: Iterator, ordered: bool) -> Iterator[ReadResult]:
        loop_thread = self._runtime()
        cap = self.max_in_flight + self.reorder_window  # submitted, not yet delivered
        # Top up in batches: one loop wake-up per batch, not per delivered result. The reads
        # still in flight stay at max_in_flight while fewer than this many are buffered.
        refill = max(1, min(self.reorder_window, self.max_in_flight) // 4)
        out: queue.Queue = queue.Queue(maxsize=cap)
        session = _Session(self._fetcher, self._stats, out)
        with self._lock:
            self._sessions.add(session)
        pending = 0          # submitted, not yet delivered
        next_seq = 0         # sequence number of the next item to submit
        next_deliver = 0     # ordered: sequence number the consumer waits for
        reorder: dict[int, ReadResult] = {}
        arrived: collections.deque[tuple[int, ReadResult]] = collections.deque()  # unordered
        exhausted = False
        try:
            while True:
                if not exhausted and (pending <= cap - refill or pending == 0):
                    batch = []
                    for item in itertools.islice(items, cap - pending):
                        key, uri = _as_pair(item)
                        batch.append((next(self._tickets), next_seq, key, uri))
                        next_seq += 1
                    exhausted = len(batch) < cap - pending
                    if batch:
                        loop_thread.call_soon(session.submit, batch)
                        pending += len(batch)
                if pending == 0:
                    return
                if ordered:
                    while next_deliver not in reorder:
                        reorder.update(self._take(out, loop_thread))
                    result = reorder.pop(next_deliver)
                    next_deliver += 1
                else:
                    if not arrived:
                        arrived.extend(self._take(out, loop_thread))
                    _, result = arrived.popleft()
                pending -= 1
                with self._lock:
                    self._budget.record(result.ok, result.uri, result.error)
                yield result
        finally:
            self._end_session(session, loop_thread, in_flight=pending > 0)

    def _take(self, out: queue.Queue, loop_thread: event_loop.LoopThread
              ) -> list[tuple[int, ReadResult]]:
        """The next burst of (sequence number, result) pairs; blocks until there is one."""
        started = time.perf_counter()
        try:
            while True:
                try:
                    burst = out.get(timeout=_POLL_S)
                except queue.Empty:
                    burst = None
                self._raise_if_fatal()  # before the reads an ended outage failed are counted
                if burst is not None:
                    return burst
                if self._closed:
                    raise RuntimeError("AsyncReader was closed while read_many was running")
                if not loop_thread.thread.is_alive():
                    raise RuntimeError("the AsyncReader event loop thread has stopped")
        finally:
            self._stats.consumer_wait_s += time.perf_counter() - started

    def _raise_if_fatal(self) -> None:
        """The outage monitor gave up (outage_s passed): stop the consumer with its one line."""
        fatal = self._fetcher.outage.fatal
        if fatal is not None:
            raise StorageError(str(fatal)) from None  # a fresh one per consumer, no chained noise

    def _end_session(self, session: _Session, loop_thread: event_loop.LoopThread,
                     in_flight: bool) -> None:
        """Cancel what the session still has in flight (the consumer stopped early or failed)."""
        with self._lock:
            self._sessions.discard(session)
            if self._closed or self._pid != os.getpid() or loop_thread.loop.is_closed():
                return
        if not in_flight:
            return
        if loop_thread.in_loop_thread():
            # A generator collected on the loop thread cannot wait for the loop: schedule only.
            loop_thread.loop.create_task(session.cancel())
            return
        try:
            loop_thread.run(session.cancel(), timeout=30.0)
        except (RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
            pass  # the loop stopped meanwhile (close() elsewhere, interpreter exit)

    def stats(self) -> dict:
        """Counters since this reader started in this process; see loaders.storage.reader_stats."""
        return self._stats.snapshot()


def _as_pair(item: Any) -> tuple[Any, str]:
    try:
        key, uri = item
    except (TypeError, ValueError):
        raise TypeError(f"read_many items must be (key, uri) pairs, got {type(item).__name__}"
                        ) from None
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"read_many items must be (key, uri) pairs with a str uri, got "
                        f"{type(uri).__name__} for key {key!r}")
    return key, uri
