"""One data set's items for one rank, read in the sampler's order, with the failed ones replaced.

    stream = ItemStream(manifest, reader, modality="video", rank=0, world_size=1, seed=0)
    items, waited = stream.next_reads(8)  # [(manifest index, bytes)], seconds blocked on storage
    stream.item_decoded()                 # per item that decoded
    stream.item_failed(index, reason)     # per item that did not
    state = stream.state_dict()           # resume point: sampler position, counters, bad items

The read order comes from an epoch-seeded sampler; reads run ahead through the AsyncReader (up to
its `max_in_flight`), and the resume point is the sampler state after the last item taken, not
after the reads in flight.

StreamCounters holds what it shares with loaders.shards.stream.ShardStream (the same items, read from
tar shards): the counters, the failure log and the bad items.

Items that cannot be read or decoded are replaced by the next items of the epoch, counted, and
logged with their uri and reason; nothing stalls and nothing crashes. A damaged item (a decode
failure, a permanent read failure) is remembered for the run in `bad`, which is part of the
state: later epochs skip it without fetching it, so it is counted and logged once. A transient
read failure (ReadResult.transient: a timeout, a 5xx) may clear and is not remembered. A run without
bad items reads the same items as before; a data set with nothing readable raises DataError.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from loaders.errors import DataError
from loaders.manifest import Manifest
from loaders.redact import redact
from loaders.sampler import EpochSampler
from loaders.storage import AsyncReader

log = logging.getLogger(__name__)

# Give up when this many items in a row fail: the data set is broken, not a file.
MAX_CONSECUTIVE_FAILURES = 256


class StreamCounters:
    """What every stream of one data set's items counts: items read and decoded, failures (logged with
    the item's uri and reason), the damaged items remembered in `bad`, and the failures in a row."""

    def __init__(self, manifest: Manifest, modality: str):
        if len(manifest) == 0:
            raise ValueError("the manifest lists no samples")
        self.manifest = manifest
        self.modality = modality  # in messages only
        self.failures = 0  # distinct damaged items, plus each transient read failure
        self.failure_log: list[tuple[str, str]] = []  # (uri, reason), the latest ones
        self.bad: set[int] = set()  # manifest indices of damaged items: skipped from now on
        self.items = 0  # items read and handed to the decoder
        self.decoded = 0  # items that decoded into a clip
        self._consecutive_failures = 0  # read or decode failures since the last good item

    def item_decoded(self) -> None:
        self.decoded += 1
        self._consecutive_failures = 0

    def item_failed(self, index: int, reason: str, may_clear: bool = False) -> None:
        """Count and log one failed item, remember it unless the failure may clear (a transient
        read failure); raise once MAX_CONSECUTIVE_FAILURES items in a row failed (reads and
        decodes alike: a data set of only corrupt files must not spin forever)."""
        if not may_clear:
            self.bad.add(index)
        self.count_failure(self.manifest[index].uri, reason)

    def count_failure(self, uri: str, reason: str) -> None:
        """Count and log one failure of `uri` (an item, or a whole shard); raise past
        MAX_CONSECUTIVE_FAILURES in a row."""
        uri = redact(uri)
        self.failures += 1
        self._consecutive_failures += 1
        self.failure_log = (self.failure_log + [(uri, reason)])[-100:]
        log.warning("skipped %s item %s: %s (%d skipped so far)", self.modality, uri, reason, self.failures)
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise DataError(f"{self._consecutive_failures} {self.modality} items in a row could not be read "
                            f"or decoded; last: {uri}: {reason}")

    def counters(self) -> dict:
        """The counters and the bad items, for a state_dict."""
        return {"failures": self.failures, "items": self.items, "decoded": self.decoded, "bad": sorted(self.bad)}

    def load_counters(self, state: dict) -> None:
        self.failures = int(state["failures"])
        self.items = int(state.get("items", 0))
        self.decoded = int(state.get("decoded", 0))
        self.bad = {int(i) for i in state.get("bad", ())}  # absent in states saved before it existed


class ItemStream(StreamCounters):
    """The sampler, the read stream, failure accounting and the resumable position of one data set."""

    def __init__(self, manifest: Manifest, reader: AsyncReader, *, modality: str, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        super().__init__(manifest, modality)
        self.reader = reader
        self.sampler = EpochSampler(len(manifest), seed=seed, rank=rank, world_size=world_size, shuffle=True,
                                    infinite=True)
        self._results: Iterator | None = None  # the reader's ReadResults, from the first read on
        self._position: dict | None = None  # the sampler state after the last item taken

    @property
    def started(self) -> bool:
        """True once reads were sent (the position can no longer be loaded)."""
        return self._results is not None

    def _keyed_indices(self):
        """Sampler indices keyed by the sampler state *after* taking them (the resume point),
        without the items known to be bad (the sampler still steps over them, so positions and
        the resume point are those of a run that reads them)."""
        it = iter(self.sampler)
        skipped = 0  # bad indices in a row; 2 epochs' worth hold one whole epoch
        while True:
            index = next(it)
            if index in self.bad:
                skipped += 1
                if skipped > 2 * len(self.sampler):
                    raise DataError(f"every {self.modality} item of this rank's epoch failed to read or decode "
                                    f"({len(self.bad)} of {len(self.manifest)} items; see the log for each)")
                continue
            skipped = 0
            yield (self.sampler.state_dict(), index), self.manifest[index].uri

    def next_reads(self, n: int) -> tuple[list, float]:
        """The next n readable items as (index, bytes); seconds the consumer waited on storage."""
        if self._results is None:
            self._results = self.reader.read_many(self._keyed_indices(), ordered=True)
        out, waited = [], 0.0
        while len(out) < n:
            t0 = time.perf_counter()
            result = next(self._results)
            waited += time.perf_counter() - t0
            self._position, index = result.key
            if index in self.bad:  # found bad after this read was sent (an epoch shorter than the read-ahead)
                continue
            if result.ok and result.data:
                out.append((index, result.data))
                continue
            self.item_failed(index, result.error or "empty file", may_clear=result.transient)
        self.items += len(out)
        return out, waited

    def state_dict(self) -> dict:
        """The position after the last item taken (reads in flight beyond it are not counted)."""
        return {"sampler": self._position or self.sampler.state_dict(), **self.counters()}

    def load_state_dict(self, state: dict) -> None:
        if self.started:
            raise RuntimeError("load_state_dict must be called before the loader starts reading")
        if "sampler" not in state:
            raise DataError(f"the {self.modality} loader state was saved reading shards; this data set is read "
                            "one object per item: its position cannot be carried over (start a new run)")
        self.sampler.load_state_dict(state["sampler"])
        self._position = state["sampler"]
        self.load_counters(state)

    def close(self) -> None:
        """Cancel the reads in flight (call it once no other thread takes items)."""
        if self._results is not None:
            self._results.close()
