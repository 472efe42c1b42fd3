"""Fine-tuning data: the production loaders for training, deterministic test views for evaluation.

Training reads through the same VideoLoader / ImageLoader / JointLoader as pretraining (async reads,
decode, replication, RandomResizedCrop and flip on the device, exact resume) with nothing masked.

Testing needs the same item to give the same pixels every time: `EvalViews` reads a manifest
shard in order and decodes, for each video, `num_clips` windows spread over it (5 in the paper;
1 = the centre window), resizes the short side to the crop size and takes `num_crops` crops along
the long side (3; official ShortSideScale + uniform crop). Images get MAE's single centre crop
after resizing the short side to crop / 0.875.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from loaders.manifest import Manifest
from loaders.redact import redact
from loaders.video_loader import guess_codec
from omnimae.finetune.evaluate import clip_start_times, spatial_crops
from omnimae.model import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def build_train_loader(cfg, manifest: Manifest, *, micro_batch: int, accumulation: int, dist_info,
                       patch_size: tuple[int, int, int]):
    """A JointLoader over one VideoLoader or ImageLoader with mask ratio 0 (every token kept).

    cfg: a FinetuneConfig; patch_size: the model's (t, h, w) patch. Yields loaders.batch.Batch:
    pixels normalized on the device, labels [B].
    """
    from loaders.assembly import AssemblySettings
    from loaders.image_loader import ImageLoader
    from loaders.joint_loader import JointLoader
    from loaders.video_loader import VideoLoader

    from omnimae.data import build_reader

    d = cfg.data
    reader = build_reader(d.storage, d.storage_options)  # one per process; the JointLoader closes it
    settings = AssemblySettings(replication=d.replication, crop_size=cfg.model.img_size, crop_scale=d.crop_scale,
                                flip_p=d.flip_p, interpolation=d.interpolation, mask_ratio=0.0, mask_type="random",
                                patch_size=patch_size)
    options = dict(batch_size=micro_batch, device=dist_info.device, rank=dist_info.rank,
                   world_size=dist_info.world_size, seed=cfg.train.seed, reader=reader, decode_threads=d.decode_threads)
    if d.modality == "video":
        loader = VideoLoader(manifest, settings, num_frames=cfg.model.num_frames, window_s=d.window_s,
                             short_side=d.short_side, decode_backend=d.decode_backend, **options)
    else:
        loader = ImageLoader(manifest, settings, **options)
    return JointLoader({d.modality: loader}, seed=cfg.train.seed, prefetch=d.prefetch,
                       world_size=dist_info.world_size, group=accumulation, reader=reader)


@dataclass
class EvalBatch:
    """views: [V, B, 3, (T,) S, S] float, ImageNet-normalized, on the device; labels: [B] int64 there."""

    views: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.views.shape[1]


class EvalViews:
    """Iterates EvalBatches over this rank's share of a test manifest, in manifest order.

    Items are split round robin over ranks (rank r takes items r, r + W, ...): summing correct
    counts over ranks gives the exact accuracy. Items that fail to read or decode are skipped and
    listed in `failures` (uri, reason); iterate again for another pass (the decoder is kept).

    reader: an AsyncReader to read through (the training loader's: one per process), left open;
    None = a reader of `storage` (an omnimae.config.StorageConfig, default settings if None) made
    for each pass and closed after it.
    """

    def __init__(self, manifest: Manifest, *, modality: str, crop_size: int, num_frames: int = 16,
                 window_s: float = 2.7, num_clips: int = 5, num_crops: int = 3, crop_ratio: float = 0.875,
                 batch_size: int = 8, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 decode_backend: str = "auto", decode_threads: int = 2, storage=None,
                 storage_options: dict | None = None, max_items: int = 0, reader=None):
        if modality not in ("image", "video"):
            raise ValueError(f"modality must be image or video, got {modality!r}")
        entries = list(manifest)[:max_items] if max_items else list(manifest)
        unlabelled = [e.uri for e in entries if e.label < 0]
        if unlabelled:
            raise ValueError(f"test manifest has {len(unlabelled)} items without a label, e.g. {redact(unlabelled[0])}")
        self.entries = entries[rank::world_size]
        self.modality = modality
        self.crop_size = crop_size
        self.num_frames = num_frames
        self.window_s = window_s
        self.num_clips = num_clips if modality == "video" else 1
        self.num_crops = num_crops if modality == "video" else 1
        self.crop_ratio = crop_ratio
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.decode_backend = decode_backend
        self.decode_threads = decode_threads
        self.storage = storage
        self.storage_options = storage_options
        self.reader = reader
        self.codec = guess_codec(manifest) if modality == "video" and len(manifest) else None
        self.failures: list[tuple[str, str]] = []
        self._decoder = None
        shape = (1, 3) + ((1,) if modality == "video" else ()) + (1, 1)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(shape) * 255.0

    @property
    def views_per_item(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        """Items in this rank's share."""
        return len(self.entries)

    def frame_indices(self, entry) -> list:
        """The frame indices of each test clip of one video: num_clips arrays [num_frames]."""
        from loaders.frames import sample_frame_indices, window_length

        if self.num_clips == 1:
            return [sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                         window_s=self.window_s, mode="center")]
        window = window_length(entry.fps, self.window_s)
        starts = clip_start_times(entry.num_frames / entry.fps, window / entry.fps, self.num_clips)
        return [sample_frame_indices(entry.num_frames, entry.fps, num_frames=self.num_frames,
                                     window_s=self.window_s, start=int(round(s * entry.fps)))
                for s in starts]

    def __iter__(self) -> Iterator[EvalBatch]:
        from omnimae.config import StorageConfig
        from omnimae.data import build_reader

        self.failures = []
        own = self.reader is None
        reader = build_reader(self.storage or StorageConfig(), self.storage_options or {}) if own else self.reader
        results = None
        try:
            results = reader.read_many(((i, e.uri) for i, e in enumerate(self.entries)), ordered=True)
            chunk = []
            for result in results:
                if result.ok and result.data:
                    chunk.append((self.entries[result.key], result.data))
                else:
                    self._fail(result.uri, result.error or "empty file")
                if len(chunk) == self.batch_size:
                    batch = self._assemble(chunk)
                    chunk = []
                    if batch is not None:
                        yield batch
            if chunk:
                batch = self._assemble(chunk)
                if batch is not None:
                    yield batch
        finally:
            if results is not None:
                results.close()  # a pass left early: cancel its reads (a shared reader stays open)
            if own:
                reader.close()

    def placeholder(self) -> EvalBatch:
        """One item of zeros labelled -1 (counted nowhere): keeps ranks in step when a share runs out."""
        frames = (self.num_frames,) if self.modality == "video" else ()
        views = torch.zeros((self.views_per_item, 1, 3) + frames + (self.crop_size, self.crop_size),
                            device=self.device)
        return EvalBatch(views, torch.full((1,), -1, dtype=torch.int64, device=self.device))

    def _fail(self, uri: str, reason: str) -> None:
        self.failures.append((redact(uri), reason))
        log.warning("test item skipped: %s: %s", redact(uri), reason)

    def _assemble(self, chunk: list) -> EvalBatch | None:
        clips = self._decode(chunk)  # per item: a list of num_clips uint8 [T, H, W, 3] / [H, W, 3], or None
        views, labels = [], []
        for (entry, _), item_clips in zip(chunk, clips):
            if item_clips is None:
                continue
            per_item = []
            for clip in item_clips:
                x = clip.to(self.device)
                x = (x.permute(3, 0, 1, 2) if x.ndim == 4 else x.permute(2, 0, 1))[None]  # [1, 3, (T,) H, W]
                short = self.crop_size if self.modality == "video" else round(self.crop_size / self.crop_ratio)
                per_item += spatial_crops(x, self.crop_size, self.num_crops, short_side=short)  # [1, 3, (T,) S, S]
            views.append(torch.cat(per_item))  # [V, 3, (T,) S, S]
            labels.append(entry.label)
        if not views:
            return None
        pixels = torch.stack(views, dim=1)  # [V, B, 3, (T,) S, S], 0..255
        pixels = (pixels - self._mean) / self._std
        return EvalBatch(pixels, torch.tensor(labels, dtype=torch.int64, device=self.device))

    def _decode(self, chunk: list) -> list:
        if self.modality == "image":
            if self._decoder is None:
                from loaders.decode.image import make_image_decoder

                self._decoder = make_image_decoder(self.device, threads=self.decode_threads)
            out = self._decoder.decode([data for _, data in chunk])
            for position, reason in out.failures:
                self._fail(chunk[position][0].uri, reason)
            return [None if c is None else [c] for c in out.clips]
        if self._decoder is None:
            from loaders.decode import make_video_decoder

            # Short side = crop size: the official test transform (ShortSideScale(224)), one resize.
            self._decoder = make_video_decoder(self.decode_backend, codec=self.codec, device=self.device,
                                               batch_size=self.batch_size * self.num_clips,
                                               threads=self.decode_threads, short_side=self.crop_size,
                                               num_frames=self.num_frames)
        datas, indices = [], []
        for entry, data in chunk:
            for frames in self.frame_indices(entry):  # the same bytes once per clip
                datas.append(data)
                indices.append(frames)
        out = self._decoder.decode(datas, indices)
        failed = {position // self.num_clips: reason for position, reason in out.failures}
        results = []
        for i, (entry, _) in enumerate(chunk):
            item = out.clips[i * self.num_clips:(i + 1) * self.num_clips]
            if i in failed or any(c is None for c in item):
                self._fail(entry.uri, failed.get(i, "a clip did not decode"))
                results.append(None)
            else:
                results.append(item)
        return results

    def close(self) -> None:
        if self._decoder is not None and hasattr(self._decoder, "close"):
            self._decoder.close()
        self._decoder = None

