"""One sharded data set's items for one rank: whole shards read ahead, members sliced from memory.

    stream = ShardStream(manifest, reader, modality="image", rank=0, world_size=1, seed=0, buffer=4)
    items, waited = stream.next_reads(8)  # [(item index, bytes)], seconds blocked on storage
    stream.item_decoded() / stream.item_failed(index, reason)   # as loaders.item_stream.ItemStream
    state = stream.state_dict()           # epoch, position in the order, open shards, bad items/shards

The order is loaders.shards.plan's: shards shuffled per epoch, cut between ranks, mixed through
`buffer` open shards. Each shard a rank needs is one read of the whole shard through `reader`, in
the order the shards open; with the reader's `reorder_window=0`, at most `reader.max_in_flight` such
reads are out or waiting, so the stream holds at most (buffer + max_in_flight) shards in memory
(`shard_stats()["bound_bytes"]`; the peak actually held is reported beside it). An item is its media
member's bytes, sliced out of the shard once its tar header is checked, then handed to the decoder
exactly as ItemStream hands a whole object.

What can go wrong with a shard is counted once, with the shard and the first member named:
- a shard that cannot be read (missing, refused) is logged, remembered in `bad_shards` and not read
  again; a transient failure (timeouts, 5xx after the reader's retries) skips its items this time only;
  a store that is down is an outage, which the reader rides out (its reads are held, not failed);
- a truncated shard (fewer bytes than the index says) or members whose tar header is not where the
  index says: the members that cannot be sliced out are remembered as bad, the rest are used;
- a member whose media does not decode is an item failure, as in ItemStream (`uri` = shard#member).
Items known to be bad are stepped over (their positions still count), so positions and the resume
point are those of a run without failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from loaders.errors import DataError
from loaders.item_stream import StreamCounters
from loaders.shards.index import ShardedManifest
from loaders.shards.plan import EpochPlan, epoch_plan
from loaders.shards.tar import header_matches
from loaders.storage import AsyncReader, ReadResult

_STATE_KEYS = ("seed", "world_size", "num_items", "num_shards", "buffer", "shuffle")


@dataclass(frozen=True)
class ShardSettings:
    """How a sharded data set is read (ItemLoader's `shards`).

    buffer: shards open at once, their items mixed (memory: see `reads`).
    reads: whole-shard reads in flight or waiting; the stream holds at most buffer + reads shards.
    shuffle: shuffle the shard order and the items in each shard per epoch (False: index order).
    reader_options: AsyncReader keywords for the data set's reader (timeout_s, retries, outage_s, ...).
    """

    buffer: int = 4
    reads: int = 4
    shuffle: bool = True
    reader_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.buffer < 1 or self.reads < 1:
            raise ValueError(f"shard buffer and reads must be >= 1, got {self.buffer} and {self.reads}")

    def make_reader(self, storage_options: dict | None = None) -> AsyncReader:
        """The data set's own reader: `reads` requests, delivered in order, none beyond them."""
        return AsyncReader(max_in_flight=self.reads, reorder_window=0, storage_options=storage_options,
                           **self.reader_options)


class ShardStream(StreamCounters):
    """Epoch plans, whole-shard reads, slicing, failure accounting and the resumable position."""

    def __init__(self, manifest: ShardedManifest, reader: AsyncReader, *, modality: str, rank: int = 0,
                 world_size: int = 1, seed: int = 0, buffer: int = 4, shuffle: bool = True):
        super().__init__(manifest, modality)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.reader = reader
        self.rank, self.world_size, self.seed, self.buffer, self.shuffle = rank, world_size, seed, buffer, shuffle
        self.epoch = 0
        self.position = 0  # items of this rank's epoch taken (stepped over or handed out)
        self.bad_shards: set[int] = set()  # shards that could not be read: never read again
        self.members_lost = 0  # members that could not be sliced out of a shard that was read
        self.shards_read = 0
        self.bytes_read = 0
        self.peak_held_bytes = 0
        self._plans: dict[int, EpochPlan] = {}
        self._held: dict[tuple[int, int], bytes | None] = {}  # (epoch, segment) -> shard bytes; None: failed
        self._order: Iterator | None = None  # (epoch, position, segment, item), from the resume point on
        self._results: Iterator[ReadResult] | None = None
        self._stepped = 0  # positions in a row stepped over (bad items, failed shards)

    @property
    def started(self) -> bool:
        return self._results is not None

    # ---- the order ---------------------------------------------------------------------------

    def _plan(self, epoch: int) -> EpochPlan:
        plan = self._plans.get(epoch)
        if plan is None:
            for old in [e for e in self._plans if e < min(epoch, self.epoch)]:
                del self._plans[old]  # keep the epoch being taken and those read ahead
            plan = self._plans[epoch] = epoch_plan(
                self.manifest.shard_counts, seed=self.seed, epoch=epoch, rank=self.rank,
                world_size=self.world_size, buffer=self.buffer, shuffle=self.shuffle)
        return plan

    def _positions(self, epoch: int, position: int) -> Iterator[tuple[int, int, int, int]]:
        while True:
            plan = self._plan(epoch)
            for p in range(position, len(plan)):
                yield epoch, p, int(plan.segment_of[p]), int(plan.items[p])
            epoch, position = epoch + 1, 0

    def _reads(self, epoch: int, position: int) -> Iterator[tuple[tuple[int, int], str]]:
        """The shard reads the order needs from (epoch, position) on: each segment's shard, in
        segment order (the order segments open), without those of bad shards or only bad items."""
        while True:
            plan = self._plan(epoch)
            idle = True
            for j, segment in enumerate(plan.segments):
                if plan.last[j] < position or segment.shard in self.bad_shards:
                    continue
                if self.bad and all(int(i) in self.bad for i in self._items_left(plan, j, position)):
                    continue
                idle = False
                yield (epoch, j), self.manifest.shards[segment.shard].url
            if idle and not self._readable():
                return  # nothing will ever be read again (bad only grows): the consumer raises
            epoch, position = epoch + 1, 0

    def _readable(self) -> bool:
        """Some shard is readable and holds an item not known to be bad (a later epoch gives it to this
        rank, whichever rank had it this epoch)."""
        starts = self.manifest.shard_start
        return any(s not in self.bad_shards and not all(i in self.bad for i in range(starts[s], starts[s + 1]))
                   for s in range(len(self.manifest.shards)))

    @staticmethod
    def _items_left(plan: EpochPlan, j: int, position: int):
        """Segment j's items at `position` or later."""
        if plan.first[j] >= position:
            return plan.segments[j].items
        return plan.items[position:][plan.segment_of[position:] == j]

    # ---- reading -----------------------------------------------------------------------------

    def next_reads(self, n: int) -> tuple[list, float]:
        """The next n readable items as (item index, bytes); seconds the consumer waited on storage."""
        if self._results is None:
            self._order = self._positions(self.epoch, self.position)
            self._results = self.reader.read_many(self._reads(self.epoch, self.position), ordered=True)
        out, waited = [], 0.0
        while len(out) < n:
            epoch, p, j, index = next(self._order)
            self.epoch, self.position = epoch, p + 1
            plan = self._plan(epoch)
            data = None
            if index not in self.bad and plan.segments[j].shard not in self.bad_shards:
                data, w = self._shard(epoch, j)
                waited += w
            if data is not None and index not in self.bad:  # the shard's arrival may have found it lost
                offset, size = int(self.manifest.item_offset[index]), int(self.manifest.item_size[index])
                out.append((index, data[offset:offset + size]))
                self._stepped = 0
            else:
                self._stepped += 1
                if self._stepped > 2 * len(plan):  # two epochs' worth, nothing readable: anywhere?
                    if not self._readable():
                        self._all_failed()
                    self._stepped = 0  # yes: a later epoch gives this rank some of it
            if plan.last[j] == p:
                self._let_go((epoch, j))
        self.items += len(out)
        return out, waited

    def _all_failed(self):
        raise DataError(f"every {self.modality} item of this rank's epoch failed to read or decode "
                        f"({len(self.bad)} bad items, {len(self.bad_shards)} of {len(self.manifest.shards)} "
                        "shards unreadable; see the log for each)")

    def _shard(self, epoch: int, j: int) -> tuple[bytes | None, float]:
        """Segment j's shard bytes (None: it failed), taking read results until they are here."""
        waited = 0.0
        while (epoch, j) not in self._held:
            t0 = time.perf_counter()
            result = next(self._results, None)
            waited += time.perf_counter() - t0
            if result is None:  # the reads ran out: every shard left is unreadable
                self._all_failed()
            if result.key > (epoch, j):
                raise RuntimeError(f"shard read {result.key} arrived before {(epoch, j)}, which was never asked for")
            self._arrived(result)
        return self._held[(epoch, j)], waited

    def _arrived(self, result: ReadResult) -> None:
        epoch, j = result.key
        plan = self._plan(epoch)
        if (epoch, plan.last[j]) < (self.epoch, self.position - 1):
            return  # every item it was read for turned out bad meanwhile
        shard = plan.segments[j].shard
        record = self.manifest.shards[shard]
        if not result.ok:
            if not result.transient:
                self.bad_shards.add(shard)
            self.count_failure(record.url, f"shard not read: {result.error}")
            self._held[result.key] = None
            return
        data = result.data
        self.shards_read += 1
        self.bytes_read += len(data)
        self._check_members(shard, data)
        self._held[result.key] = data
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def _check_members(self, shard: int, data: bytes) -> None:
        """Every member of the shard whose bytes are not where the index says is remembered as bad;
        one failure names the shard, the first such member and why."""
        start, stop = self.manifest.shard_start[shard], self.manifest.shard_start[shard + 1]
        lost, first = [], None
        for index in range(int(start), int(stop)):
            if index in self.bad:
                continue
            reason = header_matches(data, int(self.manifest.item_offset[index]), int(self.manifest.item_size[index]))
            if reason is not None:
                lost.append(index)
                first = first or (self.manifest.member_name(index), reason)
        if not lost:
            return
        self.bad.update(lost)
        self.members_lost += len(lost)
        size = self.manifest.shards[shard].size
        cut = f"truncated: {len(data)} of {size} bytes; " if len(data) < size else ""
        self.count_failure(f"{self.manifest.shards[shard].url}#{first[0]}",
                           f"{cut}{len(lost)} of {stop - start} members unreadable, the first: {first[1]}")

    def _let_go(self, key: tuple[int, int]) -> None:
        self._held.pop(key, None)

    @property
    def held_bytes(self) -> int:
        return sum(len(d) for d in self._held.values() if d is not None)

    # ---- state -------------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"seed": self.seed, "world_size": self.world_size, "num_items": len(self.manifest),
                "num_shards": len(self.manifest.shards), "buffer": self.buffer, "shuffle": self.shuffle}

    def state_dict(self) -> dict:
        """The position after the last item taken; `open` names the shards open there and the items
        taken from each ([shard, taken]): what a restored stream reads again and continues."""
        plan = self._plan(self.epoch)
        shards = {"epoch": self.epoch, "position": self.position, **self._identity(),
                  "open": [list(o) for o in plan.open_at(self.position)]}
        return {"shards": shards, **self.counters(), "bad_shards": sorted(self.bad_shards)}

    def load_state_dict(self, state: dict) -> None:
        if self.started:
            raise RuntimeError("load_state_dict must be called before the loader starts reading")
        if "shards" not in state:
            raise DataError(f"the {self.modality} loader state was saved reading one object per item; this data "
                            "set is sharded: its position cannot be carried over (start a new run)")
        saved = state["shards"]
        for key, value in self._identity().items():
            if saved[key] != value:
                raise DataError(f"the {self.modality} shard stream state has {key}={saved[key]!r} but this "
                                f"stream has {key}={value!r}: the order would differ")
        self.epoch, self.position = int(saved["epoch"]), int(saved["position"])
        open_now = [list(o) for o in self._plan(self.epoch).open_at(self.position)]
        if open_now != [list(o) for o in saved["open"]]:
            raise DataError(f"the {self.modality} shard stream state names open shards {saved['open']} but "
                            f"the index gives {open_now} at epoch {self.epoch}, position {self.position}: "
                            "the shards changed")
        self.load_counters(state)
        self.bad_shards = {int(s) for s in state.get("bad_shards", ())}

    def shard_stats(self) -> dict:
        """Shards read, bytes, memory held now / at most so far / at most by construction, failures."""
        largest = max((r.size for r in self.manifest.shards), default=0)
        return {"shards_read": self.shards_read, "bytes_read": self.bytes_read, "held_bytes": self.held_bytes,
                "peak_held_bytes": self.peak_held_bytes,
                "bound_bytes": (self.buffer + self.reader.max_in_flight) * largest,
                "buffer": self.buffer, "bad_shards": len(self.bad_shards), "members_lost": self.members_lost}

    def close(self) -> None:
        """Cancel the reads in flight and let the shards go (call it once no other thread takes items)."""
        if self._results is not None:
            self._results.close()
        self._held.clear()
