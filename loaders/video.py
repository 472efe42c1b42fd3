"""VideoLoader and ImageLoader: manifest -> reader pool -> decode -> replicated, masked batches.

A batch of B samples reads and decodes B / t items (t = replication) and replicates them on the
device, each replica with its own crop and mask. All randomness of a batch (frame windows, crops,
flips, masks) comes from generators seeded by (seed, rank, batch number), and the read order from
an epoch-seeded sampler, so a loader restored from `state_dict()` yields the same next batches.

Items that cannot be read or decoded are replaced by the next items of the epoch, counted, and
logged with their uri and reason; nothing stalls and nothing crashes. A damaged item (a decode
failure, a permanent read failure) is remembered for the run in `bad`, which is part of the
state: later epochs skip it without fetching it, so it is counted and logged once. A transient
read failure (ReadResult.transient: a timeout, a 5xx) may clear and is not remembered. A run without
bad items gets the same batches as before; a data set with nothing readable raises DataError.

Two stages run at once (`decode_ahead=1`, the default): a thread of the loader reads and decodes
batch k+1 (stage 1) while the caller assembles batch k on the device (stage 2), so the decoder's
threads do not idle through assembly. Batch k+1's randomness is still drawn from its own number,
so the batches are the same as with `decode_ahead=0` (both stages in the caller's thread), and
`state_dict()` counts the batches handed out, not the one decoded ahead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.profiler import record_function

from loaders.augment import assemble_batch, check_interpolation
from loaders.batch import IMAGE, VIDEO, Batch
from loaders.errors import DataError
from loaders.frames import sample_frame_indices
from loaders.manifest import Manifest
from loaders.redact import redact
from loaders.sampler import EpochSampler
from loaders.storage import AsyncReader

log = logging.getLogger(__name__)

# Give up on a batch when this many replacements in a row fail: the data set is broken, not a file.
MAX_CONSECUTIVE_FAILURES = 256


@dataclass
class _Decoded:
    """Stage 1's output for one batch: what assembly needs, and the loader state after the batch."""

    clips: list  # per item a uint8 tensor, [T, H, W, 3] (videos) or [H, W, 3] (images)
    labels: list[int]
    generator: torch.Generator  # the batch's own, for crops, flips and masks
    stats: dict  # read_wait, decode, items, skipped
    state: dict  # what state_dict() returns once this batch is handed out


@dataclass
class _Failed:
    error: BaseException


def use_device(device: torch.device) -> None:
    """Make `device` current on this (new) thread: a thread starts on GPU 0 whatever the main
    thread chose, and pinned buffers or a CUDA context made there would land on every rank's GPU 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


class _DecodeStage:
    """Stage 1 on its own thread: reads and decodes the next batches, at most `depth` ahead of
    the caller (stage 2), which assembles one batch while the next one is being decoded."""

    def __init__(self, produce: Callable[[], _Decoded], *, depth: int, device: torch.device, name: str):
        self._produce = produce
        self._device = device
        self._free = threading.Semaphore(depth)  # batches that may be decoded before one is taken
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # _Decoded, or one _Failed at the end
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            use_device(self._device)
            while True:
                while not self._free.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._ready.put(self._produce())
        except BaseException as error:  # noqa: BLE001 - handed to the caller, raised there
            self._ready.put(_Failed(error))

    def get(self) -> _Decoded:
        """The next decoded batch; an error of stage 1 is raised here (and again on every call)."""
        while True:
            try:
                item = self._ready.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise RuntimeError("the loader is closed") from None
        if isinstance(item, _Failed):
            self._ready.put(item)
            raise item.error
        self._free.release()
        return item

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop after the batch it is decoding; True once it has ended."""
        self._stop.set()
        self.thread.join(timeout=timeout_s)
        return not self.thread.is_alive()


class _ItemLoader:
    """What both loaders share: the sampler, the read stream, replacements, state and stats.

    decode_ahead: batches read and decoded ahead on the loader's own thread while the caller
    assembles (0: read, decode and assemble in the caller's thread, one after the other).
    interpolation: of the random resized crop, "bilinear" or "bicubic"; None = the paper's
    pretraining choice for the modality (videos bilinear, images bicubic; it fine-tunes both bicubic).
    """

    modality = ""

    def __init__(self, manifest: Manifest, *, batch_size: int, replication: int = 1,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, seed: int = 0,
                 patch_size: tuple[int, int, int] = (2, 16, 16), crop_size: int = 224,
                 crop_scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.0,
                 interpolation: str | None = None, mask_ratio: float = 0.9, mask_type: str = "random",
                 max_in_flight: int = 64,
                 storage_options: dict | None = None, decode_threads: int = 2, reader: AsyncReader | None = None,
                 decode_ahead: int = 1):
        if batch_size % replication:
            raise ValueError(f"batch_size {batch_size} is not divisible by replication {replication}")
        if len(manifest) == 0:
            raise ValueError("the manifest lists no samples")
        if interpolation is not None:
            check_interpolation(interpolation)  # now, not at the first batch
        self.manifest = manifest
        self.batch_size = batch_size
        self.replication = replication
        self.items_per_batch = batch_size // replication
        self.device = torch.device(device)
        self.rank = rank
        self.seed = seed
        self.patch_size = tuple(patch_size)
        self.crop_size = crop_size
        self.crop_scale = tuple(crop_scale)
        self.flip_p = flip_p
        self.interpolation = interpolation
        self.mask_ratio = mask_ratio
        self.mask_type = mask_type
        self.decode_threads = decode_threads
        self.sampler = EpochSampler(len(manifest), seed=seed, rank=rank, world_size=world_size, shuffle=True,
                                    infinite=True)
        self._own_reader = reader is None
        self.reader = reader or AsyncReader(max_in_flight=max_in_flight, storage_options=storage_options)
        self._stream: Iterator | None = None
        self.batches = 0  # batches built so far: seeds the randomness of the next one
        self.failures = 0  # distinct damaged items, plus each transient read failure
        self.failure_log: list[tuple[str, str]] = []  # (uri, reason), the latest ones
        self.bad: set[int] = set()  # manifest indices of damaged items: skipped from now on
        self.items = 0  # items read and handed to the decoder (B / t per batch when none fail)
        self.decoded = 0  # items that decoded into a clip
        self._consecutive_failures = 0  # read or decode failures since the last good item
        # Counters above include the batch decoded ahead; state_dict() does not (it is _consumed).
        self.decode_ahead = max(0, decode_ahead)
        self._stage: _DecodeStage | None = None
        self._consumed: dict | None = None  # the state after the last batch handed out

    # ---- the read stream ---------------------------------------------------------------------

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

    def _next_reads(self, n: int) -> tuple[list, float]:
        """The next n readable items as (index, bytes); seconds the consumer waited on storage."""
        if self._stream is None:
            self._stream = self.reader.read_many(self._keyed_indices(), ordered=True)
        out, waited = [], 0.0
        while len(out) < n:
            t0 = time.perf_counter()
            result = next(self._stream)
            waited += time.perf_counter() - t0
            state, index = result.key
            self._resume_state = state
            if index in self.bad:  # found bad after this read was sent (an epoch shorter than the read-ahead)
                continue
            if result.ok and result.data:
                out.append((index, result.data))
                continue
            self._item_failed(index, result.error or "empty file", may_clear=result.transient)
        return out, waited

    def _item_failed(self, index: int, reason: str, may_clear: bool = False) -> None:
        """Count and log one failed item, remember it unless the failure may clear (a transient
        read failure); raise once MAX_CONSECUTIVE_FAILURES items in a row failed (reads and
        decodes alike: a data set of only corrupt files must not spin forever)."""
        uri = redact(self.manifest[index].uri)
        if not may_clear:
            self.bad.add(index)
        self.failures += 1
        self._consecutive_failures += 1
        self.failure_log = (self.failure_log + [(uri, reason)])[-100:]
        log.warning("skipped %s item %s: %s (%d skipped so far)", self.modality, uri, reason, self.failures)
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise DataError(f"{self._consecutive_failures} {self.modality} items in a row could not be read "
                            f"or decoded; last: {uri}: {reason}")

    # ---- a batch -----------------------------------------------------------------------------

    def _generators(self) -> tuple[np.random.Generator, torch.Generator]:
        """Per-batch generators: the batch's randomness depends only on (seed, rank, batch number)."""
        key = [self.seed, self.rank, self.batches, 0 if self.modality == IMAGE else 1]
        rng = np.random.default_rng(key)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(0, 2**62)))
        return rng, gen

    def _decode(self, items: list, rng: np.random.Generator):
        raise NotImplementedError

    def _read_and_decode(self) -> _Decoded:
        """Stage 1: the next batch's items, read and decoded (failed ones replaced)."""
        rng, gen = self._generators()
        stats = {"read_wait": 0.0, "decode": 0.0, "items": 0, "skipped": 0}
        clips, labels = [], []
        while len(clips) < self.items_per_batch:
            with record_function("read_wait"):
                items, waited = self._next_reads(self.items_per_batch - len(clips))
            stats["read_wait"] += waited
            t0 = time.perf_counter()
            with record_function("decode"):
                output = self._decode(items, rng)
            stats["decode"] += time.perf_counter() - t0
            stats["items"] += len(items)
            self.items += len(items)
            for (index, _), clip in zip(items, output.clips):
                if clip is not None:
                    clips.append(clip)
                    labels.append(self.manifest[index].label)
                    self.decoded += 1
                    self._consecutive_failures = 0
            for position, reason in output.failures:
                stats["skipped"] += 1
                self._item_failed(items[position][0], reason)
        self.batches += 1
        return _Decoded(clips, labels, gen, stats, self._live_state())

    def _assemble(self, decoded: _Decoded) -> Batch:
        """Stage 2: replicas, crops, flips and masks on the device."""
        t0 = time.perf_counter()
        with record_function("assembly"):
            batch = assemble_batch(decoded.clips, replication=self.replication, kind=self.modality,
                                   out_size=self.crop_size, scale=self.crop_scale, flip_p=self.flip_p,
                                   interpolation=self.interpolation,
                                   mask_ratio=self.mask_ratio, mask_type=self.mask_type,
                                   patch_size=self.patch_size, labels=decoded.labels,
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
            self._stage = _DecodeStage(self._read_and_decode, depth=self.decode_ahead, device=self.device,
                                       name=f"omnimae-{self.modality}-decode")
        return self._assemble(self._stage.get())

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    # ---- state -------------------------------------------------------------------------------

    def _live_state(self) -> dict:
        """The position after the last batch read (reads in flight beyond it are not counted)."""
        sampler_state = getattr(self, "_resume_state", None) or self.sampler.state_dict()
        return {"sampler": sampler_state, "batches": self.batches, "failures": self.failures,
                "items": self.items, "decoded": self.decoded, "bad": sorted(self.bad)}

    def state_dict(self) -> dict:
        """The position after the last batch handed out (not counting the one decoded ahead)."""
        return dict(self._consumed) if self._consumed is not None else self._live_state()

    def load_state_dict(self, state: dict) -> None:
        if self._stream is not None or self._stage is not None:
            raise RuntimeError("load_state_dict must be called before the loader starts reading")
        self._consumed = None
        self.sampler.load_state_dict(state["sampler"])
        self._resume_state = state["sampler"]
        self.batches = int(state["batches"])
        self.failures = int(state["failures"])
        self.items = int(state.get("items", 0))
        self.decoded = int(state.get("decoded", 0))
        self.bad = {int(i) for i in state.get("bad", ())}  # absent in states saved before it existed

    def stats(self) -> dict:
        """Work done so far, the batch being decoded ahead included."""
        return {"batches": self.batches, "items": self.items, "decoded": self.decoded, "failures": self.failures,
                "reader": self.reader.stats(), "recent_failures": self.failure_log[-5:]}

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
        if stage_done and self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()  # the stage-1 thread is gone: nobody else iterates the stream
        if self._own_reader:
            self.reader.close()
        decoder = getattr(self, "decoder", None)
        if decoder is not None and hasattr(decoder, "close"):
            decoder.close()


class VideoLoader(_ItemLoader):
    """Videos: `num_frames` frames over a random `window_s` window, short side `short_side`."""

    modality = VIDEO

    def __init__(self, manifest: Manifest, *, num_frames: int = 16, window_s: float = 2.7, short_side: int = 256,
                 decode_backend: str = "auto", codec: str | None = None, **kwargs):
        super().__init__(manifest, **kwargs)
        from loaders.decode import make_video_decoder

        self.num_frames = num_frames
        self.window_s = window_s
        codec = codec or guess_codec(manifest)
        self.decoder = make_video_decoder(backend=decode_backend, codec=codec, device=self.device,
                                          short_side=short_side, num_frames=num_frames,
                                          batch_size=self.items_per_batch, threads=self.decode_threads)

    def _decode(self, items, rng):
        indices = []
        for index, _ in items:
            entry = self.manifest[index]
            indices.append(sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                                window_s=self.window_s, rng=rng))
        codecs = [self.manifest[index].codec for index, _ in items]  # None: the decoder reads it
        return self.decoder.decode([data for _, data in items], indices, codecs=codecs)


class ImageLoader(_ItemLoader):
    """Images (JPEG and what PIL reads), decoded on the GPU where there is one."""

    modality = IMAGE

    def __init__(self, manifest: Manifest, **kwargs):
        super().__init__(manifest, **kwargs)
        from loaders.decode.image import ImageDecoder

        self.decoder = ImageDecoder(device=self.device, threads=self.decode_threads)

    def _decode(self, items, rng):
        return self.decoder.decode([data for _, data in items])


def guess_codec(manifest: Manifest) -> str:
    """The first entry's codec: the manifest's, else what the container suggests (SSv2's .webm is
    VP9; .mp4 is usually H.264). Only the backend choice starts from it: decoding is per item."""
    if manifest[0].codec:
        return manifest[0].codec
    uri = manifest[0].uri.lower().split("?")[0]
    if uri.endswith(".webm") or uri.endswith(".mkv"):
        return "vp9"
    if uri.endswith((".mp4", ".m4v", ".mov")):
        return "h264"
    if uri.endswith(".avi"):
        return "mjpeg"
    return "unknown"
