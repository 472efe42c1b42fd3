"""The video loader a user would write without ours: a PyTorch DataLoader, PyAV, torchvision.

Each DataLoader worker process, for one item at a time:
  1. reads the whole object synchronously (HTTP GET on one keep-alive connection per worker for
     http(s):// URIs, fsspec's blocking `open().read()` for anything else: local, s3://, gs://);
  2. decodes it with PyAV on one thread (FFmpeg's own threads off, so `num_workers` is the CPU
     budget), converts the sampled frames to RGB with `to_ndarray("rgb24")` and resizes the short
     side with torchvision (bilinear, antialiased);
and the collate function, in the same worker, replicates every clip `replication` times, gives each
replica its own torchvision RandomResizedCrop (one box for all frames), normalizes and draws the
masks with omnimae.masking. The frames of a clip are chosen by `loaders.frames.sample_frame_indices`,
the rule our loader uses, so both loaders decode the same amount of video.

Batches are dicts:
  pixels [B, 3, T, S, S] float32 (ImageNet-normalized), mask [B, N] bool (True = hidden),
  num_visible int, labels [B] int64, source [B] int64 (the clip each sample was replicated from),
  read_s [B / t] and decode_s [B / t] float64 per-clip seconds, assembly_s float64 [1], and
  cpu_s float64 [1]: the CPU seconds the worker spent on the batch (reads, decodes, collate).
"""

from __future__ import annotations

import http.client
import io
import time
from urllib.parse import urlsplit

import av
import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

from loaders.frames import sample_frame_indices
from omnimae.masking import make_mask, num_visible

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _KeepAliveHTTP:
    """One persistent HTTP(S) connection per (scheme, host, port), reopened once after an error."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._connections: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}

    def get(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        key = (parts.scheme, parts.hostname, parts.port)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            conn = self._connections.get(key)
            if conn is None:
                cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
                conn = self._connections[key] = cls(parts.hostname, parts.port, timeout=self.timeout_s)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                del self._connections[key]
                if attempt:
                    raise
                continue  # the server closed the idle connection: reconnect once
            if response.status != 200:
                raise OSError(f"GET {uri}: HTTP {response.status}")
            return body
        raise AssertionError("unreachable")


class VideoClipDataset(Dataset):
    """Item i: (frames uint8 [T, 3, H', W'] with short side `short_side`, label, read_s, decode_s,
    cpu_s), the seconds being wall time of the read and the decode, and the worker's CPU time.

    entries: objects with uri, label, num_frames, fps (ManifestEntry). The window start is drawn
    from a per-worker generator that DataLoader seeds differently in each worker.
    """

    def __init__(self, entries, *, num_frames: int = 16, window_s: float = 2.7, short_side: int = 256,
                 timeout_s: float = 30.0):
        self.entries = list(entries)
        self.num_frames = num_frames
        self.window_s = window_s
        self.short_side = short_side
        self.timeout_s = timeout_s
        self._http: _KeepAliveHTTP | None = None  # created in the worker, never pickled open
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_http": None, "_rng": None}

    def read(self, uri: str) -> bytes:
        if uri.startswith(("http://", "https://")):
            if self._http is None:
                self._http = _KeepAliveHTTP(self.timeout_s)
            return self._http.get(uri)
        with fsspec.open(uri, "rb") as f:
            return f.read()

    def decode(self, data: bytes, indices: np.ndarray) -> torch.Tensor:
        """The frames `indices` (sorted) as uint8 [T, 3, H', W']."""
        wanted = set(indices.tolist())
        last = int(indices[-1])
        rgb: dict[int, np.ndarray] = {}
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one core per worker: the CPU budget is num_workers
            for position, frame in enumerate(container.decode(stream)):
                if position in wanted:
                    rgb[position] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
                if position >= last:
                    break
        if last not in rgb:
            raise RuntimeError(f"video has {len(rgb)} of the frames up to {last}")
        clip = torch.from_numpy(np.stack([rgb[int(i)] for i in indices]))  # [T, H, W, 3]
        clip = clip.permute(0, 3, 1, 2)  # [T, 3, H, W]
        return v2.functional.resize(clip, [self.short_side], antialias=True)  # short side -> 256

    def __getitem__(self, index: int):
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed() % 2**63)
        entry = self.entries[index]
        cpu0 = time.thread_time()  # the worker's one thread does it all (PyAV on one thread too)
        t0 = time.perf_counter()
        data = self.read(entry.uri)
        t1 = time.perf_counter()
        indices = sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                       window_s=self.window_s, rng=self._rng)
        frames = self.decode(data, indices)
        return frames, entry.label, t1 - t0, time.perf_counter() - t1, time.thread_time() - cpu0


class ReplicatingCollate:
    """Replicate each clip `replication` times with its own RandomResizedCrop, normalize, mask."""

    def __init__(self, *, replication: int, crop_size: int = 224, scale=(0.08, 1.0),
                 patch_size=(2, 16, 16), mask_ratio: float = 0.95):
        self.replication = replication
        self.crop = v2.RandomResizedCrop(crop_size, scale=tuple(scale), antialias=True)
        self.crop_size = crop_size
        self.patch_size = tuple(patch_size)
        self.mask_ratio = mask_ratio
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)  # [1, 3, 1, 1, 1]
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)

    def __call__(self, items: list) -> dict:
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        t = self.replication
        # One crop box per replica, shared by its T frames: v2 transforms treat [T, 3, H, W] as one image.
        crops = [self.crop(frames) for frames, *_ in items for _ in range(t)]  # B x [T, 3, S, S] uint8
        pixels = torch.stack(crops).permute(0, 2, 1, 3, 4)  # [B, 3, T, S, S]
        pixels = pixels.float().div_(255.0).sub_(self.mean).div_(self.std)
        pt, ph, pw = self.patch_size
        grid = (pixels.shape[2] // pt, self.crop_size // ph, self.crop_size // pw)
        mask = make_mask("random", pixels.shape[0], grid, self.mask_ratio)  # [B, N] bool
        source = torch.arange(len(items)).repeat_interleave(t)  # [B]
        labels = torch.tensor([label for _, label, *_ in items], dtype=torch.int64)[source]
        return {
            "pixels": pixels, "mask": mask,
            "num_visible": num_visible(grid[0] * grid[1] * grid[2], self.mask_ratio),
            "labels": labels, "source": source,
            "read_s": torch.tensor([item[2] for item in items], dtype=torch.float64),
            "decode_s": torch.tensor([item[3] for item in items], dtype=torch.float64),
            "assembly_s": torch.tensor([time.perf_counter() - t0], dtype=torch.float64),
            "cpu_s": torch.tensor([time.thread_time() - cpu0 + sum(item[4] for item in items)],
                                  dtype=torch.float64),
        }


def make_baseline_loader(entries, *, batch_size: int, replication: int = 1, num_workers: int = 2,
                         crop_size: int = 224, num_frames: int = 16, window_s: float = 2.7,
                         short_side: int = 256, patch_size=(2, 16, 16), mask_ratio: float = 0.95,
                         num_samples: int | None = None, seed: int = 0, pin_memory: bool = False,
                         prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader of `batch_size`-sample batches (batch_size / replication clips each).

    num_samples: clips drawn in all (shuffled, the data set repeated as often as needed); default
    one pass over `entries`.
    """
    if batch_size % replication:
        raise ValueError(f"batch_size {batch_size} is not divisible by replication {replication}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1 (the baseline decodes in workers), got {num_workers}")
    dataset = VideoClipDataset(entries, num_frames=num_frames, window_s=window_s, short_side=short_side)
    sampler = RandomSampler(dataset, num_samples=num_samples or len(dataset),
                            generator=torch.Generator().manual_seed(seed))
    collate = ReplicatingCollate(replication=replication, crop_size=crop_size, patch_size=patch_size,
                                 mask_ratio=mask_ratio)
    return DataLoader(dataset, batch_size=batch_size // replication, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate, drop_last=True,
                      pin_memory=pin_memory, prefetch_factor=prefetch_factor)
