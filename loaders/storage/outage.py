"""Telling a storage outage from a bad object, and riding the outage out.

A read whose retries ran out on a transient error (timeout, refused or reset connection, 5xx) is
normally reported failed: the object is skipped and counted against the failure budget. That is
right for one flaky object, and wrong when the store itself is down: every read would be skipped,
the budget would trip within a second, and a restart of the store would end the run. So when the
retries of a read run out, the monitor asks whether the store answers anyone:

    outage = nothing succeeded since this read's last request was sent
             and transient failures hit >= min(3, max_in_flight) distinct objects since the last success

In an outage the read is held instead of reported: it waits (capped exponential backoff, woken early
by the first success of any read), tries again, and so on until the store answers or no read has
succeeded for `outage_s`; then the run stops with one StorageError line. One WARNING line is logged
when an outage starts and one when it ends. A permanent error (missing object, refused permission)
never starts nor extends an outage: it is the object, not the store.

Runs on the reader's event loop thread; every method is called there.
"""

from __future__ import annotations

import asyncio
import logging
import time

from loaders.storage.reader_stats import ReaderStats
from loaders.errors import StorageError
from loaders.redact import redact
from loaders.storage.retry import describe_error

logger = logging.getLogger(__name__)

# Distinct objects that must have failed since the last success: one object failing alone is that
# object; several failing with nothing answering in between is the store.
MIN_DISTINCT_FAILING = 3


class OutageMonitor:
    """Success and transient-failure history of one reader's requests; decides which reads to hold.

    outage_s: longest time without any successful request before the run stops (StorageError).
    max_in_flight: with fewer requests in flight than MIN_DISTINCT_FAILING, fewer distinct objects
        can be seen failing at once, so fewer are asked for.
    clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, stats: ReaderStats, *, outage_s: float, max_in_flight: int, clock=time.monotonic):
        self.stats = stats
        self.outage_s = outage_s
        self.min_distinct = min(MIN_DISTINCT_FAILING, max_in_flight)
        self.clock = clock
        self.last_success = clock()  # the reader's start counts: an outage from the first read is one
        self._failing: set[str] = set()  # objects failed transiently since the last success
        self._failed_requests = 0
        self._example = ""  # the latest transient error, redacted
        self.started: float | None = None  # the current outage, None = none
        self._held = 0  # reads held (not failed) during the current outage
        self._reachable = asyncio.Event()  # set when a request succeeds (or the run stops)
        self.fatal: StorageError | None = None

    # -- every request ---------------------------------------------------------------------------

    def success(self) -> None:
        self.last_success = self.clock()
        self._failing.clear()
        self._failed_requests = 0
        self._reachable.set()
        if self.started is not None:
            lasted = self.last_success - self.started
            self.stats.outage_s += lasted
            logger.warning("storage reachable again after %.1f s without a successful read; "
                           "%d reads held, none skipped", lasted, self._held)
            self.started, self._held = None, 0

    def transient_failure(self, uri: str, error: BaseException, timeout_s: float | None = None) -> None:
        self._failing.add(uri)
        self._failed_requests += 1
        self._example = f"{redact(uri)}: {describe_error(error, timeout_s)}"

    # -- a read whose retries ran out ------------------------------------------------------------

    def hold(self, last_request_start: float, first: bool = True) -> bool:
        """Whether a read whose retries ran out on a transient error is held (retried on) rather
        than reported failed. Starts an outage when the history says the store is down; sets
        `fatal` (and answers False) once nothing has succeeded for `outage_s`.

        last_request_start: `clock()` when the read's last request was sent.
        first: False when the read was held before (it is counted once)."""
        if self.fatal is not None:
            return False
        now = self.clock()
        if self.started is None:
            if self.last_success > last_request_start or len(self._failing) < self.min_distinct:
                return False  # the store answers others: this object alone is failing
            self._start(now)
        silent = now - self.last_success
        if silent >= self.outage_s:
            self.fatal = StorageError(
                f"storage: no read has succeeded for {silent:.0f} s (outage_s={self.outage_s:g}): "
                f"{self._example}")
            self._reachable.set()  # wake every held read: they end now
            return False
        if first:
            self._held += 1
            self.stats.reads_held += 1
        return True

    def _start(self, now: float) -> None:
        self.started = self.last_success
        self.stats.outages += 1
        self._reachable.clear()
        since = time.strftime("%H:%M:%S", time.localtime(time.time() - (now - self.last_success)))
        logger.warning("storage outage: no read has succeeded since %s (%.1f s; %d requests to %d "
                       "objects failed, e.g. %s); holding reads and retrying for up to outage_s=%g s",
                       since, now - self.last_success, self._failed_requests, len(self._failing),
                       self._example, self.outage_s)

    async def wait(self, delay_s: float) -> None:
        """Sleep `delay_s`, or less if a request succeeds (or the run stops) meanwhile."""
        if self._reachable.is_set():
            return
        try:
            await asyncio.wait_for(self._reachable.wait(), timeout=delay_s)
        except asyncio.TimeoutError:
            pass
