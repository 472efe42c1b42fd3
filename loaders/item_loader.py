"""What VideoLoader and ImageLoader share: items -> decoded clips -> replicated, masked batches.

    stage 1 (DecodeStage thread)                         stage 2 (the caller's thread)
    ItemStream.next_reads -> decoder -> uint8 clips  ->  assemble_batch -> Batch on the device

A batch of B samples reads and decodes B / t items (t = settings.replication) and replicates them
on the device, each replica with its own crop, flip and mask. All randomness of a batch (frame
windows, crops, flips, masks) comes from generators seeded by (seed, rank, batch number), and the
read order from the epoch-seeded sampler, so a loader restored from `state_dict()` yields the same
next batches. Failed items are replaced by the next ones (loaders.item_stream).

A manifest of items in tar shards (loaders.shards.ShardedManifest, read from a shard index) is read
by a ShardStream instead: whole shards through a reader of the data set's own, members sliced from
memory; the batches are made the same way from there on.

Both stages run at once (`decode_ahead=1`, the default): stage 1 reads and decodes batch k+1 while
the caller assembles batch k, so the decoder's threads do not idle through assembly. Batch k+1's
randomness is still drawn from its own number, so the batches are the same as with
`decode_ahead=0` (both stages in the caller's thread), and `state_dict()` counts the batches
handed out, not the one decoded ahead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.profiler import record_function

from loaders.assembly import AssemblySettings, assemble_batch
from loaders.batch import IMAGE, Batch
from loaders.decode.common import DecodeOutput
from loaders.decode_ahead import DecodeStage
from loaders.item_stream import ItemStream
from loaders.manifest import Manifest
from loaders.shards.index import ShardedManifest
from loaders.shards.stream import ShardSettings, ShardStream
from loaders.storage import AsyncReader

log = logging.getLogger(__name__)


@dataclass
class _Decoded:
    """Stage 1's output for one batch: what assembly needs, and the loader state after the batch."""

    clips: list  # per item a uint8 tensor, [T, H, W, 3] (videos) or [H, W, 3] (images)
    labels: list[int]
    generator: torch.Generator  # the batch's own, for crops, flips and masks
    stats: dict  # read_wait, decode, items, skipped
    state: dict  # what state_dict() returns once this batch is handed out


class ItemLoader:
    """Batches of one modality from a manifest; a subclass sets `modality`, makes `decoder` in its
    `__init__` and says how a batch's items decode (`_decode`).

    settings: how decoded items become a batch (replication, crops, flips, masks).
    reader: an AsyncReader shared with other loaders (left open by `close`); None = one of this
        loader's own, with `max_in_flight` and `storage_options`, closed by `close`.
    decode_ahead: batches read and decoded ahead on the loader's own thread while the caller
        assembles (0: read, decode and assemble in the caller's thread, one after the other).
    shards: how a ShardedManifest is read (None: ShardSettings' defaults). Such a data set reads
        through a reader of its own, made from these settings and `storage_options` (whole shards:
        the shared reader's window of max_in_flight reads ahead would hold that many shards), so
        `reader` must be None for it.
    """

    modality = ""  # VIDEO or IMAGE
    decoder: Any  # made by the subclass's __init__, after this one's checks; loaders.decode's interface

    def __init__(self, manifest: Manifest, settings: AssemblySettings, *, batch_size: int,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, seed: int = 0,
                 reader: AsyncReader | None = None, max_in_flight: int = 64, storage_options: dict | None = None,
                 decode_threads: int = 2, decode_ahead: int = 1, shards: ShardSettings | None = None):
        if batch_size % settings.replication:
            raise ValueError(f"batch_size {batch_size} is not divisible by replication {settings.replication}")
        self.manifest = manifest
        self.settings = settings
        self.batch_size = batch_size
        self.items_per_batch = batch_size // settings.replication
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.decode_threads = decode_threads
        self._own_reader = reader is None
        if isinstance(manifest, ShardedManifest):
            if reader is not None:
                raise ValueError("a sharded data set reads through a reader of its own: pass reader=None "
                                 "(and storage_options, shards=ShardSettings(...))")
            shards = shards or ShardSettings()
            self.reader = shards.make_reader(storage_options)
            self.stream = ShardStream(manifest, self.reader, modality=self.modality, rank=rank,
                                      world_size=world_size, seed=seed, buffer=shards.buffer, shuffle=shards.shuffle)
        else:
            self.reader = reader or AsyncReader(max_in_flight=max_in_flight, storage_options=storage_options)
            self.stream = ItemStream(manifest, self.reader, modality=self.modality, rank=rank,
                                     world_size=world_size, seed=seed)
        self.batches = 0  # batches built so far: seeds the randomness of the next one
        # The counters (here and in the stream) include the batch decoded ahead; state_dict() does not.
        self.decode_ahead = max(0, decode_ahead)
        self._stage: DecodeStage[_Decoded] | None = None
        self._consumed: dict | None = None  # the state after the last batch handed out

    # ---- what a modality says ----------------------------------------------------------------

    def _decode(self, items: list, rng: np.random.Generator) -> DecodeOutput:
        """Decode one batch's items [(manifest index, bytes)]; `rng` is the batch's own."""
        raise NotImplementedError

    # ---- a batch -----------------------------------------------------------------------------

    def _generators(self) -> tuple[np.random.Generator, torch.Generator]:
        """Per-batch generators: the batch's randomness depends only on (seed, rank, batch number)."""
        key = [self.seed, self.rank, self.batches, 0 if self.modality == IMAGE else 1]
        rng = np.random.default_rng(key)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(0, 2**62)))
        return rng, gen

    def _read_and_decode(self) -> _Decoded:
        """Stage 1: the next batch's items, read and decoded (failed ones replaced)."""
        rng, gen = self._generators()
        stats = {"read_wait": 0.0, "decode": 0.0, "items": 0, "skipped": 0}
        clips, labels = [], []
        while len(clips) < self.items_per_batch:
            with record_function("read_wait"):
                items, waited = self.stream.next_reads(self.items_per_batch - len(clips))
            stats["read_wait"] += waited
            t0 = time.perf_counter()
            with record_function("decode"):
                output = self._decode(items, rng)
            stats["decode"] += time.perf_counter() - t0
            stats["items"] += len(items)
            for (index, _), clip in zip(items, output.clips):
                if clip is not None:
                    clips.append(clip)
                    labels.append(self.manifest[index].label)
                    self.stream.item_decoded()
            for position, reason in output.failures:
                stats["skipped"] += 1
                self.stream.item_failed(items[position][0], reason)
        self.batches += 1
        return _Decoded(clips, labels, gen, stats, self._live_state())

    def _assemble(self, decoded: _Decoded) -> Batch:
        """Stage 2: replicas, crops, flips and masks on the device."""
        t0 = time.perf_counter()
        with record_function("assembly"):
            batch = assemble_batch(decoded.clips, self.settings, kind=self.modality, labels=decoded.labels,
                                   generator=decoded.generator, device=self.device)
        batch.stats.update(decoded.stats)
        batch.stats["assembly"] = time.perf_counter() - t0
        self._consumed = decoded.state
        return batch

    def next_batch(self) -> Batch:
        if self.decode_ahead == 0:
            return self._assemble(self._read_and_decode())
        if self._stage is None:
            if self._consumed is None:  # state_dict() before the first batch: nothing consumed
                self._consumed = self._live_state()
            self._stage = DecodeStage(self._read_and_decode, depth=self.decode_ahead, device=self.device,
                                      name=f"omnimae-{self.modality}-decode")
        return self._assemble(self._stage.get())

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    # ---- state -------------------------------------------------------------------------------

    def _live_state(self) -> dict:
        """The position after the last batch read (reads in flight beyond it are not counted)."""
        return {"batches": self.batches, **self.stream.state_dict()}

    def state_dict(self) -> dict:
        """The position after the last batch handed out (not counting the one decoded ahead)."""
        return dict(self._consumed) if self._consumed is not None else self._live_state()

    def load_state_dict(self, state: dict) -> None:
        if self._stage is not None:
            raise RuntimeError("load_state_dict must be called before the loader starts reading")
        self.stream.load_state_dict(state)
        self._consumed = None
        self.batches = int(state["batches"])

    def stats(self) -> dict:
        """Work done so far, the batch being decoded ahead included."""
        s = self.stream
        stats = {"batches": self.batches, "items": s.items, "decoded": s.decoded, "failures": s.failures,
                 "reader": self.reader.stats(), "recent_failures": s.failure_log[-5:]}
        if isinstance(s, ShardStream):
            stats["shards"] = s.shard_stats()
        return stats

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop stage 1, the reads in flight, the reader (if this loader made it) and the decoder's
        threads. Stage 1 finishes the batch it is decoding; one stuck on storage for more than a
        second is unblocked by closing the reader under it (its read raises)."""
        stage_done = self._stage is None or self._stage.stop(timeout_s=1.0)
        if not stage_done:
            if self._own_reader:
                self.reader.close()
            stage_done = self._stage.stop(timeout_s=timeout_s)
            if not stage_done:
                log.warning("%s loader: the decode thread did not stop within %.0f s", self.modality, timeout_s)
        if stage_done:
            self.stream.close()  # the stage-1 thread is gone: nobody else takes items
        if self._own_reader:
            self.reader.close()
        self.decoder.close()
