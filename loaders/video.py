"""VideoLoader and ImageLoader: manifest -> reader pool -> decode -> replicated, masked batches.

A batch of B samples reads and decodes B / t items (t = replication) and replicates them on the
device, each replica with its own crop and mask. All randomness of a batch (frame windows, crops,
flips, masks) comes from generators seeded by (seed, rank, batch number), and the read order from
an epoch-seeded sampler, so a loader restored from `state_dict()` yields the same next batches.

Items that cannot be read or decoded are replaced by the next items of the epoch, counted, and
logged with their uri and reason; nothing stalls and nothing crashes.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import torch
from torch.profiler import record_function

from loaders.augment import assemble_batch
from loaders.batch import IMAGE, VIDEO, Batch
from loaders.frames import sample_frame_indices
from loaders.manifest import Manifest
from loaders.redact import redact
from loaders.sampler import EpochSampler
from loaders.storage import AsyncReader

log = logging.getLogger(__name__)

# Give up on a batch when this many replacements in a row fail: the data set is broken, not a file.
MAX_CONSECUTIVE_FAILURES = 256


class _ItemLoader:
    """What both loaders share: the sampler, the read stream, replacements, state and stats."""

    modality = ""

    def __init__(self, manifest: Manifest, *, batch_size: int, replication: int = 1,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, seed: int = 0,
                 patch_size: tuple[int, int, int] = (2, 16, 16), crop_size: int = 224,
                 crop_scale: tuple[float, float] = (0.08, 1.0), flip_p: float = 0.0,
                 mask_ratio: float = 0.9, mask_type: str = "random", max_in_flight: int = 64,
                 storage_options: dict | None = None, decode_threads: int = 2, reader: AsyncReader | None = None):
        if batch_size % replication:
            raise ValueError(f"batch_size {batch_size} is not divisible by replication {replication}")
        if len(manifest) == 0:
            raise ValueError("the manifest lists no samples")
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
        self.mask_ratio = mask_ratio
        self.mask_type = mask_type
        self.decode_threads = decode_threads
        self.sampler = EpochSampler(len(manifest), seed=seed, rank=rank, world_size=world_size, shuffle=True,
                                    infinite=True)
        self._own_reader = reader is None
        self.reader = reader or AsyncReader(max_in_flight=max_in_flight, storage_options=storage_options)
        self._stream: Iterator | None = None
        self.batches = 0  # batches built so far: seeds the randomness of the next one
        self.failures = 0
        self.failure_log: list[tuple[str, str]] = []  # (uri, reason), the latest ones
        self.items = 0  # items read and handed to the decoder (B / t per batch when none fail)
        self.decoded = 0  # items that decoded into a clip
        self._consecutive_failures = 0  # read or decode failures since the last good item

    # ---- the read stream ---------------------------------------------------------------------

    def _keyed_indices(self):
        """Sampler indices keyed by the sampler state *after* taking them (the resume point)."""
        it = iter(self.sampler)
        while True:
            index = next(it)
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
            if result.ok and result.data:
                out.append((index, result.data))
                continue
            self._count_failure(result.uri, result.error or "empty file")
        return out, waited

    def _count_failure(self, uri: str, reason: str) -> None:
        """Count and log one skipped item; raise once MAX_CONSECUTIVE_FAILURES items in a row
        failed (reads and decodes alike: a data set of only corrupt files must not spin forever)."""
        self.failures += 1
        self._consecutive_failures += 1
        self.failure_log = (self.failure_log + [(redact(uri), reason)])[-100:]
        log.warning("skipped %s item %s: %s (%d skipped so far)", self.modality, redact(uri), reason, self.failures)
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{self._consecutive_failures} {self.modality} items in a row could not be read "
                               f"or decoded; last: {redact(uri)}: {reason}")

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

    def next_batch(self) -> Batch:
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
                self._count_failure(self.manifest[items[position][0]].uri, reason)
        t0 = time.perf_counter()
        with record_function("assembly"):
            batch = assemble_batch(clips, replication=self.replication, kind=self.modality, out_size=self.crop_size,
                                   scale=self.crop_scale, flip_p=self.flip_p, mask_ratio=self.mask_ratio,
                                   mask_type=self.mask_type, patch_size=self.patch_size, labels=labels,
                                   generator=gen, device=self.device)
        stats["assembly"] = time.perf_counter() - t0
        batch.stats.update(stats)
        self.batches += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    # ---- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position after the last batch handed out (reads in flight beyond it are not counted)."""
        sampler_state = getattr(self, "_resume_state", None) or self.sampler.state_dict()
        return {"sampler": sampler_state, "batches": self.batches, "failures": self.failures,
                "items": self.items, "decoded": self.decoded}

    def load_state_dict(self, state: dict) -> None:
        if self._stream is not None:
            raise RuntimeError("load_state_dict must be called before the loader starts reading")
        self.sampler.load_state_dict(state["sampler"])
        self._resume_state = state["sampler"]
        self.batches = int(state["batches"])
        self.failures = int(state["failures"])
        self.items = int(state.get("items", 0))
        self.decoded = int(state.get("decoded", 0))

    def stats(self) -> dict:
        return {"batches": self.batches, "items": self.items, "decoded": self.decoded, "failures": self.failures,
                "reader": self.reader.stats(), "recent_failures": self.failure_log[-5:]}

    def close(self) -> None:
        """Stop the reads in flight, the reader (if this loader made it) and the decoder's threads."""
        if self._stream is not None and hasattr(self._stream, "close"):
            self._stream.close()
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
        codec = codec or _guess_codec(manifest)
        self.decoder = make_video_decoder(backend=decode_backend, codec=codec, device=self.device,
                                          short_side=short_side, num_frames=num_frames,
                                          batch_size=self.items_per_batch, threads=self.decode_threads)

    def _decode(self, items, rng):
        indices = []
        for index, _ in items:
            entry = self.manifest[index]
            indices.append(sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                                window_s=self.window_s, rng=rng))
        return self.decoder.decode([data for _, data in items], indices)


class ImageLoader(_ItemLoader):
    """Images (JPEG and what PIL reads), decoded on the GPU where there is one."""

    modality = IMAGE

    def __init__(self, manifest: Manifest, **kwargs):
        super().__init__(manifest, **kwargs)
        from loaders.decode.image import ImageDecoder

        self.decoder = ImageDecoder(device=self.device, threads=self.decode_threads)

    def _decode(self, items, rng):
        return self.decoder.decode([data for _, data in items])


def _guess_codec(manifest: Manifest) -> str:
    """The container suggests the codec (SSv2's .webm is VP9; .mp4 is usually H.264)."""
    uri = manifest[0].uri.lower().split("?")[0]
    if uri.endswith(".webm") or uri.endswith(".mkv"):
        return "vp9"
    if uri.endswith((".mp4", ".m4v", ".mov")):
        return "h264"
    if uri.endswith(".avi"):
        return "mjpeg"
    return "unknown"
