"""Counters and a bounded latency sample for AsyncReader.stats().

Counters are written on the loop thread (requests) and the consumer thread (waits, deliveries);
each is written by one thread only, and `snapshot` copies the latency sample under a lock.
"""

from __future__ import annotations

import math
import random
import threading
import time


class ReaderStats:
    def __init__(self, reservoir_size: int = 4096, seed: int = 0):
        self.requests = 0        # requests issued (first tries, retries and hedges)
        self.request_errors = 0  # requests that ended in an error (timeouts included)
        self.cancelled = 0       # requests cancelled: hedge losers, shutdown
        self.bytes = 0
        self.retries = 0
        self.hedges = 0          # hedge requests issued
        self.hedge_wins = 0      # reads answered by the hedge rather than the first request
        self.reads = 0           # objects finished, ok or not
        self.failures = 0        # objects reported failed
        self.outages = 0         # storage outages ridden out or running (loaders.storage.outage)
        self.outage_s = 0.0      # seconds without a successful request, over the ended outages
        self.reads_held = 0      # reads out of retries held in an outage instead of failed
        self.in_flight = 0
        self.max_in_flight = 0
        self.consumer_wait_s = 0.0
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._lock = threading.Lock()
        self._reservoir: list[float] = []
        self._reservoir_size = reservoir_size
        self._seen = 0
        self._rng = random.Random(seed)

    # loop thread
    def request_started(self) -> float:
        now = time.perf_counter()
        if self._first_start is None:
            self._first_start = now
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return now

    def request_ended(self, started: float, nbytes: int | None, *, cancelled: bool = False) -> None:
        """nbytes None = the request failed or was cancelled."""
        now = time.perf_counter()
        self.in_flight -= 1
        if cancelled:
            self.cancelled += 1
            return
        self._last_end = now
        if nbytes is None:
            self.request_errors += 1
        else:
            self.bytes += nbytes
        self._sample(now - started)

    def _sample(self, latency_s: float) -> None:
        # Algorithm R: every latency seen has the same chance to be in the sample.
        with self._lock:
            self._seen += 1
            if len(self._reservoir) < self._reservoir_size:
                self._reservoir.append(latency_s)
            else:
                j = self._rng.randrange(self._seen)
                if j < self._reservoir_size:
                    self._reservoir[j] = latency_s

    def snapshot(self) -> dict:
        with self._lock:
            sample = sorted(self._reservoir)
        busy_s = 0.0
        if self._first_start is not None and self._last_end is not None:
            busy_s = max(self._last_end - self._first_start, 0.0)
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "retries": self.retries,
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "cancelled": self.cancelled,
            "request_errors": self.request_errors,
            "reads": self.reads,
            "failures": self.failures,
            "outages": self.outages,
            "outage_s": self.outage_s,
            "reads_held": self.reads_held,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "latency_p50_s": _percentile(sample, 0.50),
            "latency_p95_s": _percentile(sample, 0.95),
            "latency_p99_s": _percentile(sample, 0.99),
            "bytes_per_s": self.bytes / busy_s if busy_s > 0 else 0.0,
            "consumer_wait_s": self.consumer_wait_s,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for an empty sample."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]
