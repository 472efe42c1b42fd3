"""One object, read to the end: request slots, per-request timeout, retries with backoff, hedging.

Runs on the reader's event loop. `Fetcher.fetch` never raises (except on cancellation): whatever
happens it returns the bytes or a redacted error, so that no sample is silently lost. A read whose
retries ran out during a storage outage is held and retried on instead (loaders.storage.outage).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import sys
import time
from dataclasses import dataclass

from loaders.storage.backends import Backends
from loaders.storage.reader_stats import ReaderStats
from loaders.storage.outage import OutageMonitor
from loaders.redact import redact
from loaders.storage.retry import backoff_delay, describe_error, is_transient

logger = logging.getLogger(__name__)


if sys.version_info >= (3, 11):
    async def _with_timeout(coro, timeout_s: float):
        # asyncio.timeout cancels in place; wait_for would wrap every request in another task.
        async with asyncio.timeout(timeout_s):
            return await coro
else:  # pragma: no cover - Python 3.10
    _with_timeout = asyncio.wait_for


class PrioritySlots:
    """A semaphore of `n` request slots granted lowest priority value first.

    Priority is the read's submission ticket, so the retry or hedge of an old read (the one an
    ordered consumer is waiting for) overtakes reads submitted after it.
    """

    def __init__(self, n: int):
        self._free = n
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._tiebreak = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._tiebreak), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it ran: pass the slot on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


@dataclass
class FetchOutcome:
    data: bytes | None
    error: str | None
    latency_s: float  # first request issued -> outcome
    attempts: int     # requests issued: first try, retries and hedges
    transient: bool = False  # the failure may clear on a later read (timeout, 5xx), unlike a 404


class _Attempts:
    def __init__(self) -> None:
        self.requests = 0
        self.first_start: float | None = None  # perf_counter, for latency
        self.last_start = 0.0  # the outage monitor's clock, when the latest request was sent


class Fetcher:
    def __init__(self, backends: Backends, stats: ReaderStats, *, max_in_flight: int,
                 timeout_s: float, retries: int, hedge_after_s: float | None,
                 backoff_base_s: float, backoff_max_s: float, outage_s: float, seed: int = 0):
        self.backends = backends
        self.stats = stats
        self.outage = OutageMonitor(stats, outage_s=outage_s, max_in_flight=max_in_flight)
        self.slots = PrioritySlots(max_in_flight)
        self.timeout_s = timeout_s
        self.retries = retries
        self.hedge_after_s = hedge_after_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = random.Random(seed)

    async def fetch(self, ticket: int, uri: str) -> FetchOutcome:
        tries = _Attempts()
        retry, held = 0, False
        while True:
            try:
                data = await self._attempt(ticket, uri, tries)
                return FetchOutcome(data, None, self._since(tries), tries.requests)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reported result
                error = exc
            if not is_transient(error):
                break
            delay = backoff_delay(retry, self.backoff_base_s, self.backoff_max_s, self._rng)
            if retry < self.retries:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("retrying %s after %s", redact(uri),
                                 describe_error(error, self.timeout_s))
                await asyncio.sleep(delay)
            elif self.outage.hold(tries.last_start, first=not held):
                held = True
                await self.outage.wait(delay)  # the backoff keeps growing to backoff_max_s
            else:
                break  # this object alone fails, or the outage lasted longer than outage_s
            retry += 1
            self.stats.retries += 1
        transient = is_transient(error)
        reason = (f"{describe_error(error, self.timeout_s)} ({'transient' if transient else 'permanent'}, "
                  f"{tries.requests} request{'s' * (tries.requests != 1)})")
        return FetchOutcome(None, reason, self._since(tries), tries.requests, transient)

    @staticmethod
    def _since(tries: _Attempts) -> float:
        return 0.0 if tries.first_start is None else time.perf_counter() - tries.first_start

    async def _attempt(self, ticket: int, uri: str, tries: _Attempts) -> bytes:
        """One try: a request, and a hedge if it is still out `hedge_after_s` after it was sent
        (time spent waiting for a slot does not count: that is not the storage being slow)."""
        if self.hedge_after_s is None:
            return await self._request(ticket, uri, tries, hedge=False)
        sent = asyncio.Event()
        primary = asyncio.ensure_future(self._request(ticket, uri, tries, hedge=False, sent=sent))
        hedge = None
        try:
            sent_wait = asyncio.ensure_future(sent.wait())
            try:
                await asyncio.wait({primary, sent_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sent_wait.cancel()
            if not primary.done():
                await asyncio.wait({primary}, timeout=self.hedge_after_s)
            if primary.done():
                return primary.result()
            hedge = asyncio.ensure_future(self._request(ticket, uri, tries, hedge=True))
            pending, first_error = {primary, hedge}, None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        if task is hedge:
                            self.stats.hedge_wins += 1
                        return task.result()  # the finally cancels the loser
                    first_error = first_error or task.exception()
            raise first_error
        finally:
            losers = [t for t in (primary, hedge) if t is not None and not t.done()]
            for task in losers:
                task.cancel()
            if losers:
                await asyncio.gather(*losers, return_exceptions=True)

    async def _request(self, ticket: int, uri: str, tries: _Attempts, hedge: bool,
                       sent: asyncio.Event | None = None) -> bytes:
        await self.slots.acquire(ticket)
        try:
            tries.requests += 1
            if hedge:
                self.stats.hedges += 1
            if sent is not None:
                sent.set()
            started = self.stats.request_started()
            tries.last_start = self.outage.clock()
            if tries.first_start is None:
                tries.first_start = started
            try:
                data = await _with_timeout(self.backends.read(uri), self.timeout_s)
            except asyncio.CancelledError:
                self.stats.request_ended(started, None, cancelled=True)
                raise
            except BaseException as exc:
                self.stats.request_ended(started, None)
                if is_transient(exc):
                    self.outage.transient_failure(uri, exc, self.timeout_s)
                raise
            self.stats.request_ended(started, len(data))
            self.outage.success()
            return data
        finally:
            self.slots.release()
