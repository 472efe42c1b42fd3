"""Deterministic synthetic datasets people can train on: SSv2-like videos and ImageNet-like images.

Videos follow Something-Something v2's layout and JSON files, and their classes need time to tell
apart: each class comes in a pair that differs only in the direction of a change (left to right
vs right to left, growing vs shrinking, fading in vs out, clockwise vs counter-clockwise), so any
single frame of one class could belong to its partner. Images are shapes on textured backgrounds, one shape
per class, in ImageNet's `<split>/<class>/<file>.JPEG` folders.

Everything is drawn with numpy (vectorized over pixels; a Python loop only over frames) from a seed:
the same seed gives the same files byte for byte (the encoders run single-threaded and bitexact).
The classes and the drawing live in synthetic_draw.py (re-exported here); this module encodes and
lays out the data sets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from loaders.manifest import index_folder
from loaders.devtools.synthetic_draw import (IMAGE_CLASSES, PALETTE, STAMP_BITS,  # noqa: F401
                                             VIDEO_CLASSES, VIDEO_SHAPES, ClipSpec, VideoClass,
                                             draw_object, make_background, read_frame_index,
                                             render_clip, sample_clip_spec, sample_image,
                                             shape_distance, stamp_block_size, stamp_frame_index)

CODECS = {
    # codec name -> (PyAV encoder, container format, file suffix)
    "vp9": ("libvpx-vp9", "webm", ".webm"),
    "h264": ("libx264", "mp4", ".mp4"),
}


def encode_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float,
                 codec: str = "vp9", *, crf: int | None = None, bit_rate: int | None = None,
                 gop_s: float = 2.0) -> int:
    """Encode RGB frames ([H, W, 3] uint8, even H and W) to `path`; returns the frame count.

    vp9: VP9 in WebM, libvpx realtime at cpu-used 8 (fast; crf 32 under a bit-rate cap keeps
    240p clean). h264: libx264 veryfast, crf 23, yuv420p, MP4 with the index at the front
    (faststart) so a reader can start from the first bytes. Single-threaded and bitexact, so
    the same frames give the same bytes. Written to a temporary name and renamed: a crash never
    leaves a truncated video under the final name.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    encoder, fmt, _ = CODECS[codec]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    options = {"fflags": "+bitexact"}
    if codec == "h264":
        options["movflags"] = "+faststart"
    count = 0
    try:
        with av.open(str(tmp), "w", format=fmt, options=options) as container:
            stream = None
            for frame in frames:
                if stream is None:
                    h, w = frame.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"frame size {w}x{h} must be even for yuv420p")
                    stream = container.add_stream(encoder,
                                                  rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.thread_count = 1
                    stream.codec_context.gop_size = max(1, int(round(gop_s * fps)))
                    if codec == "vp9":
                        stream.bit_rate = bit_rate or 1_000_000
                        stream.options = {"deadline": "realtime", "cpu-used": "8",
                                          "crf": str(crf if crf is not None else 32),
                                          "row-mt": "0"}
                    else:
                        if bit_rate:
                            stream.bit_rate = bit_rate
                        # One encoder thread: x264's frame threads gave different bytes for the same
                        # seed once under load (a CI flake); these clips are tiny.
                        stream.options = {"preset": "veryfast", "threads": "1",
                                          "crf": str(crf if crf is not None else 23)}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"no frames to encode for {path}")
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class GeneratedDataset:
    """What a generator wrote: its root, items per split, class names and the time it took."""

    root: Path
    counts: dict[str, int]
    class_names: list[str]
    elapsed_s: float
    manifests: dict[str, Path] = field(default_factory=dict)
    reused: bool = False  # make_demo_data found it complete and wrote nothing

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _balanced_labels(rng: np.random.Generator, count: int, num_classes: int) -> np.ndarray:
    """`count` class indices, each class count // num_classes or one more times, shuffled."""
    return rng.permutation(np.arange(count) % num_classes)


def _run_jobs(function, jobs: list, workers: int, progress: bool, what: str) -> list:
    """Map `function` over `jobs` in order, in `workers` processes, with a progress bar."""
    # disable=None: no bar when stderr is not a terminal (a Slurm .out file would get only '\r' updates)
    bar = tqdm(total=len(jobs), desc=what, unit=what.split()[-1], disable=None if progress else True,
               dynamic_ncols=True)
    results = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(function(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, len(jobs) // (8 * workers))
                for result in pool.map(function, jobs, chunksize=chunk):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


@dataclass(frozen=True)
class _VideoJob:
    path: str
    class_index: int
    seed: int
    video_id: int
    codec: str
    height: int
    width: int | None
    fps: float
    min_s: float
    max_s: float
    stamp: bool


def _make_one_video(job: _VideoJob) -> dict:
    # Each video has its own generator keyed by (seed, id): results do not depend on the order
    # or the process in which videos are made.
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, job.video_id]))
    spec = sample_clip_spec(rng, job.class_index, height=job.height, width=job.width,
                            fps=job.fps, min_s=job.min_s, max_s=job.max_s)
    spec.stamp = job.stamp
    encode_video(render_clip(spec), job.path, job.fps, job.codec)
    template = VIDEO_CLASSES[job.class_index].template
    label = template.replace("[something]", spec.placeholder)
    return {"id": str(job.video_id), "label": label[0].lower() + label[1:], "template": template,
            "placeholders": [spec.placeholder]}


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def make_video_dataset(root: str | os.PathLike, num_train: int, num_val: int, *, seed: int = 0,
                       codec: str = "vp9", height: int = 240, fps: float = 12, min_s: float = 2,
                       max_s: float = 6, width: int | None = None, workers: int = 1,
                       progress: bool = True, stamp_frame_index: bool = False) -> GeneratedDataset:
    """Write an SSv2-like video dataset under `root`.

    Layout (as Something-Something v2):
      videos/<id>.webm (VP9; .mp4 H.264 with codec="h264"), ids 1..num_train are train,
          the next num_val are validation
      labels.json      {"Moving something up": "2", ...}  class name -> index as a string
      train.json       [{"id": "1", "label": "moving red circle up",
      validation.json    "template": "Moving [something] up", "placeholders": ["red circle"]}, ...]
    Classes are VIDEO_CLASSES, balanced within each split. height and width must be even
    (width None: a per-video 4:3, 3:2 or 16:9 width); each video lasts min_s..max_s seconds at
    `fps`. stamp_frame_index draws each frame's index as blocks in the top-left corner (see
    read_frame_index), for decoder tests. The JSON files are written after all videos.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    if height % 2 or (width is not None and width % 2):
        raise ValueError(f"height {height} and width {width} must be even (yuv420p)")
    if not 0 < min_s <= max_s:
        raise ValueError(f"need 0 < min_s <= max_s, got min_s={min_s}, max_s={max_s}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"video counts must be >= 0, got train={num_train}, val={num_val}")
    start = time.perf_counter()
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    suffix = CODECS[codec][2]
    num_classes = len(VIDEO_CLASSES)
    jobs, splits = [], []
    next_id = 1
    for split_code, (split, count) in enumerate((("train", num_train), ("validation", num_val))):
        labels = _balanced_labels(np.random.default_rng([seed, split_code]), count, num_classes)
        for class_index in labels:
            jobs.append(_VideoJob(str(root / "videos" / f"{next_id}{suffix}"), int(class_index),
                                  seed, next_id, codec, height, width, fps, min_s, max_s,
                                  stamp_frame_index))
            splits.append(split)
            next_id += 1
    records = _run_jobs(_make_one_video, jobs, workers, progress, f"{codec} videos")
    _write_json(root / "labels.json", {c.name: str(i) for i, c in enumerate(VIDEO_CLASSES)})
    for split in ("train", "validation"):
        _write_json(root / f"{split}.json", [r for r, s in zip(records, splits) if s == split])
    return GeneratedDataset(root, {"train": num_train, "validation": num_val},
                            [c.name for c in VIDEO_CLASSES], time.perf_counter() - start)


@dataclass(frozen=True)
class _ImageJob:
    path: str
    shape: str
    seed: int
    number: int
    min_size: int
    max_size: int
    quality: int


def _make_one_image(job: _ImageJob) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, job.number]))
    size = tuple(int(s) for s in rng.integers(job.min_size, job.max_size + 1, size=2))
    image = sample_image(rng, job.shape, size)
    tmp = job.path + ".tmp"
    Image.fromarray(image).save(tmp, format="JPEG", quality=job.quality)
    os.replace(tmp, job.path)


def make_image_dataset(root: str | os.PathLike, num_per_class_train: int,
                       num_per_class_val: int, *, seed: int = 0,
                       size: int | tuple[int, int] = (160, 256),
                       classes: Sequence[str] = IMAGE_CLASSES, quality: int = 90,
                       workers: int = 1, progress: bool = True) -> GeneratedDataset:
    """Write an ImageNet-style JPEG folder: <root>/{train,val}/<class>/<class>_<n>.JPEG.

    Each class is one shape (see shape_distance) in a random colour, position, size and angle on
    a textured background. size: an int for square images of that side, or (min, max) to draw
    each image's height and width independently in that range.
    """
    lo, hi = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not 8 <= lo <= hi:
        raise ValueError(f"image size range must satisfy 8 <= min <= max, got {size}")
    for name in classes:
        shape_distance(name, np.zeros(1), np.zeros(1))  # unknown shape -> ValueError naming it
    start = time.perf_counter()
    root = Path(root)
    jobs = []
    number = 0
    for split, per_class in (("train", num_per_class_train), ("val", num_per_class_val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                number += 1
                jobs.append(_ImageJob(str(folder / f"{name}_{number:06d}.JPEG"), name, seed,
                                      number, lo, hi, quality))
    _run_jobs(_make_one_image, jobs, workers, progress, "images")
    return GeneratedDataset(root, {"train": num_per_class_train * len(classes),
                                   "val": num_per_class_val * len(classes)},
                            list(classes), time.perf_counter() - start)


DEMO_MARKER = ".omnimae_demo.json"
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")


def _demo_part(folder: Path, settings: dict, build, workers: int) -> tuple[dict[str, int], bool]:
    """Make one demo data set in `folder` unless it is already complete with these settings.

    A marker {"settings", "counts", "complete"} is written before generating (complete: false)
    and again last (complete: true): a folder with an incomplete or differently made marker is
    ours to wipe and remake; a non-empty folder without one is someone's data and is left alone.
    Returns (counts, reused).
    """
    marker = folder / DEMO_MARKER
    if marker.exists():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("complete") and done.get("settings") == settings:
            return done["counts"], True
        shutil.rmtree(folder)
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: exists and holds no demo marker ({DEMO_MARKER}); refusing "
                         "to write demo data into it")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(marker, {"settings": settings, "complete": False})
    counts = build()
    for split in ("train", "val"):
        # Relative uris: the folder can move, or be served over HTTP / copied to a bucket as is.
        result = index_folder(folder, split=split, workers=workers, relative=True, allow_empty=True,
                              out=folder / f"manifest_{split}.jsonl")  # a split may be asked for 0 items
        if result.skipped:
            uri, reason = result.skipped[0]
            raise RuntimeError(f"demo data: {len(result.skipped)} generated files unreadable, "
                               f"first {uri}: {reason}")
    _write_json(marker, {"settings": settings, "counts": counts, "complete": True})
    return counts, False


def make_demo_data(root: str | os.PathLike | None = None, *,
                   video_root: str | os.PathLike | None = None,
                   image_root: str | os.PathLike | None = None, num_train_videos: int = 200,
                   num_val_videos: int = 40, images_per_class_train: int = 40,
                   images_per_class_val: int = 10, seed: int = 0, codec: str = "vp9",
                   height: int = 240, workers: int = 1, progress: bool = True) -> GeneratedDataset:
    """Small video and image data sets for the CPU demo, with manifests for every split.

    Videos (make_video_dataset) go to video_root, default <root>/ssv2; images
    (make_image_dataset) to image_root, default <root>/imagenet; pass only one of the two
    without root to make one kind. Each folder gets manifest_train.jsonl and manifest_val.jsonl
    (see loaders.manifest) and a marker file written last: a folder already complete with the
    same settings is left as it is (reused), one made with other settings is remade.
    """
    if root is not None:
        video_root = video_root if video_root is not None else Path(root) / "ssv2"
        image_root = image_root if image_root is not None else Path(root) / "imagenet"
    if video_root is None and image_root is None:
        raise ValueError("make_demo_data needs root, video_root or image_root")
    for folder in (video_root, image_root):
        # `scheme:/` also catches a URL that went through Path() (`http://h/x` -> `http:/h/x`);
        # a two-letter minimum leaves Windows drives (`C:/`) alone. The uri may hold a password: not echoed.
        scheme = _URL_SCHEME.match(os.fspath(folder)) if folder is not None else None
        if scheme:
            raise ValueError(f"demo data is written to local folders only, not to a {scheme[1]}:// root")
    start = time.perf_counter()
    counts, class_names, manifests, reused = {}, [], {}, True
    if video_root is not None:
        video_root = Path(video_root)
        settings = dict(kind="video", seed=seed, train=num_train_videos, val=num_val_videos,
                        codec=codec, height=height)
        part, reused_part = _demo_part(video_root, settings, lambda: make_video_dataset(
            video_root, num_train_videos, num_val_videos, seed=seed, codec=codec, height=height,
            workers=workers, progress=progress).counts, workers)
        counts.update(video_train=part["train"], video_val=part["validation"])
        class_names += [c.name for c in VIDEO_CLASSES]
        manifests.update(video_train=video_root / "manifest_train.jsonl",
                         video_val=video_root / "manifest_val.jsonl")
        reused &= reused_part
    if image_root is not None:
        image_root = Path(image_root)
        settings = dict(kind="image", seed=seed, train=images_per_class_train,
                        val=images_per_class_val)
        part, reused_part = _demo_part(image_root, settings, lambda: make_image_dataset(
            image_root, images_per_class_train, images_per_class_val, seed=seed,
            workers=workers, progress=progress).counts, workers)
        counts.update(image_train=part["train"], image_val=part["val"])
        class_names += list(IMAGE_CLASSES)
        manifests.update(image_train=image_root / "manifest_train.jsonl",
                         image_val=image_root / "manifest_val.jsonl")
        reused &= reused_part
    where = Path(root) if root is not None else (video_root or image_root)
    return GeneratedDataset(where, counts, class_names,
                            0.0 if reused else time.perf_counter() - start, manifests, reused)
