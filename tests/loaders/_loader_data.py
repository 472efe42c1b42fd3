"""Tiny generated data sets and helpers shared by test_video_loader.py and test_joint.py.

Videos: 64-pixel VP9 WebM, 2-3 s at 12 fps (24-36 frames); images: 48-80 pixel JPEGs. Loaders
built by `video_loader` / `image_loader` take 4 frames, 32-pixel crops and patch (2, 16, 16):
a video is 2 x 2 x 2 = 8 tokens, an image 4.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from loaders.assembly import AssemblySettings
from loaders.devtools.synthetic import make_image_dataset, make_video_dataset
from loaders.image_loader import ImageLoader
from loaders.manifest import Manifest, index_folder, read_manifest, write_manifest
from loaders.video_loader import VideoLoader

SMALL = dict(crop_size=32, patch_size=(2, 16, 16), mask_ratio=0.5, mask_type="random")
# The paper's crops per modality (appendix B): SSv2 scale [0.08, 1], bilinear, no flip; IN1K [0.2, 1], bicubic, flip.
VIDEO_SETTINGS = dict(SMALL, replication=2, crop_scale=(0.08, 1.0), flip_p=0.0, interpolation="bilinear")
IMAGE_SETTINGS = dict(SMALL, replication=1, crop_scale=(0.2, 1.0), flip_p=0.5, interpolation="bicubic")
OPTIONS = dict(max_in_flight=8, decode_threads=1, batch_size=4)
VIDEO = dict(OPTIONS, num_frames=4, short_side=64, decode_backend="pyav")
SETTINGS_FIELDS = {f.name for f in fields(AssemblySettings)}


def make_videos(root: Path, count: int = 12) -> Manifest:
    make_video_dataset(root, count, 0, height=64, min_s=2, max_s=3, progress=False)
    return index_folder(root, split="train", out=root / "manifest_train.jsonl", workers=1).manifest


def make_images(root: Path, per_class: int = 2) -> Manifest:
    make_image_dataset(root, per_class, 0, size=(48, 80), progress=False)
    return index_folder(root, split="train", out=root / "manifest_train.jsonl", workers=1).manifest


def add_bad_files(good: Manifest, folder: Path) -> tuple[Manifest, dict[str, str]]:
    """The good entries plus a corrupt, a truncated, an empty and a missing video, spread among
    them (a copied entry each, so the manifest promises the original's frames).
    Returns the manifest (written to folder/manifest_bad.jsonl) and {uri: kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(good[0].uri).read_bytes()
    files = {
        "corrupt": np.random.default_rng(0).integers(0, 256, len(source), dtype=np.uint8).tobytes(),
        "truncated": source[: len(source) // 4],
        "empty": b"",
    }
    bad: dict[str, str] = {}
    entries = list(good)
    for k, (kind, data) in enumerate(files.items()):
        path = folder / f"{kind}.webm"
        path.write_bytes(data)
        bad[str(path)] = kind
        entries.insert(2 + 3 * k, replace(good[0], uri=str(path)))
    missing = folder / "missing.webm"
    bad[str(missing)] = "missing"
    entries.insert(len(entries) - 1, replace(good[0], uri=str(missing)))
    manifest = Manifest(entries, good.class_names)
    write_manifest(manifest, folder / "manifest_bad.jsonl")
    return read_manifest(folder / "manifest_bad.jsonl"), bad


def _split(settings: dict, options: dict, overrides: dict) -> tuple[AssemblySettings, dict]:
    """The overrides of assembly settings (replication, crop_scale, ...) and of loader options."""
    settings = dict(settings, **{k: v for k, v in overrides.items() if k in SETTINGS_FIELDS})
    options = dict(options, **{k: v for k, v in overrides.items() if k not in SETTINGS_FIELDS})
    return AssemblySettings(**settings), options


def video_loader(manifest: Manifest, **overrides) -> VideoLoader:
    settings, options = _split(VIDEO_SETTINGS, VIDEO, overrides)
    return VideoLoader(manifest, settings, **options)


def image_loader(manifest: Manifest, **overrides) -> ImageLoader:
    settings, options = _split(IMAGE_SETTINGS, OPTIONS, overrides)
    return ImageLoader(manifest, settings, **options)


class DecodeSpy:
    """Wraps a loader's decoder: counts decode calls and the items each call decodes, and which
    files (by content hash) they were."""

    def __init__(self, loader, manifest: Manifest):
        self.calls: list[int] = []
        self.digests: list[str] = []
        self._by_digest = {}
        for entry in manifest:
            path = Path(entry.uri)
            if path.exists():
                self._by_digest.setdefault(hashlib.sha1(path.read_bytes()).hexdigest(), entry.uri)
        decode = loader.decoder.decode

        def spy(datas, *args, **kwargs):
            self.calls.append(len(datas))
            self.digests.extend(hashlib.sha1(bytes(d)).hexdigest() for d in datas)
            return decode(datas, *args, **kwargs)

        loader.decoder.decode = spy

    @property
    def uris(self) -> list[str]:
        return [self._by_digest.get(d, "?") for d in self.digests]


def same_batch(a, b) -> bool:
    return (a.modality == b.modality and a.num_visible == b.num_visible and torch.equal(a.pixels, b.pixels)
            and torch.equal(a.mask, b.mask) and torch.equal(a.labels, b.labels) and torch.equal(a.source, b.source))


def wait_for_threads(allowed: set[threading.Thread], timeout_s: float = 5.0) -> list[str]:
    """Names of threads alive beyond `allowed` after waiting up to timeout_s for them to end."""
    deadline = time.monotonic() + timeout_s
    while True:
        extra = [t.name for t in threading.enumerate() if t not in allowed and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)
