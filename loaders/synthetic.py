"""Deterministic synthetic datasets people can train on: SSv2-like videos and ImageNet-like images.

Videos follow Something-Something v2's layout and JSON files, and their classes need time to tell
apart: each class comes in a pair that differs only in the direction of a change (left to right
vs right to left, growing vs shrinking, fading in vs out, clockwise vs counter-clockwise), so any
single frame of one class could belong to its partner. Images are shapes on textured backgrounds, one shape
per class, in ImageNet's `<split>/<class>/<file>.JPEG` folders.

Everything is drawn with numpy (vectorized over pixels; a Python loop only over frames) from a seed:
the same seed gives the same files byte for byte (the encoders run single-threaded and bitexact).
"""

from __future__ import annotations

import json
import math
import os
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

# ---------------------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoClass:
    """One SSv2-style action class; `motion` names how the object changes over the clip."""

    template: str  # SSv2 template, placeholders in brackets: "Moving [something] up"
    motion: str

    @property
    def name(self) -> str:
        """The class name as SSv2's labels.json spells it: the template without brackets."""
        return self.template.replace("[", "").replace("]", "")


# Pairs: each class's partner differs only in the direction of time.
VIDEO_CLASSES: tuple[VideoClass, ...] = (
    VideoClass("Moving [something] from left to right", "left_to_right"),
    VideoClass("Moving [something] from right to left", "right_to_left"),
    VideoClass("Moving [something] up", "up"),
    VideoClass("Moving [something] down", "down"),
    VideoClass("Moving [something] towards the camera", "towards"),
    VideoClass("Moving [something] away from the camera", "away"),
    VideoClass("Making [something] appear", "appear"),
    VideoClass("Making [something] disappear", "disappear"),
    VideoClass("Turning [something] clockwise", "clockwise"),
    VideoClass("Turning [something] counterclockwise", "counterclockwise"),
)

IMAGE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring",
                                  "diamond", "hexagon")

# Objects in videos may be any of these; the shape is not the class there.
VIDEO_SHAPES: tuple[str, ...] = IMAGE_CLASSES + ("ellipse",)

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (240, 140, 30), "yellow": (240, 220, 40),
    "green": (40, 170, 60), "cyan": (40, 200, 210), "blue": (40, 70, 220),
    "purple": (140, 50, 190), "pink": (240, 120, 180), "white": (245, 245, 245),
    "black": (15, 15, 15),
}

CODECS = {
    # codec name -> (PyAV encoder, container format, file suffix)
    "vp9": ("libvpx-vp9", "webm", ".webm"),
    "h264": ("libx264", "mp4", ".mp4"),
}

# ---------------------------------------------------------------------------------------------
# Drawing: shapes as approximate signed distances in object coordinates (radius 1, y down)
# ---------------------------------------------------------------------------------------------


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, inradius: float,
                     first_normal_deg: float) -> np.ndarray:
    """Signed distance of a convex regular polygon: the largest distance past any edge."""
    angles = np.deg2rad(first_normal_deg + 360.0 / sides * np.arange(sides))
    d = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)  # [h, w, sides]
    return d.max(axis=-1) - inradius


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) of `shape` at object coordinates (u, v).

    The shape fits in the unit disc and points up (v < 0 is up), so an unrotated triangle or
    star has a vertex at (0, -1).
    """
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "ellipse":
        return (np.hypot(u, v / 0.6) - 1.0) * 0.6
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.72
    if shape == "diamond":
        # A playing-card rhombus, twice as tall as wide, so no turn makes it a square.
        return (np.abs(u) / 0.55 + np.abs(v) - 1.0) * 0.48
    if shape == "triangle":
        # Outward normals point away from the vertices at 270 (up), 30 and 150 degrees.
        return _regular_polygon(u, v, 3, 0.5, 90.0)
    if shape == "hexagon":
        return _regular_polygon(u, v, 6, 0.87, 30.0)
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72) - 0.28
    if shape == "cross":
        arm_v = np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0)
        arm_h = np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3)
        return np.minimum(arm_v, arm_h)
    if shape == "star":
        # Polar zigzag between radius 1 (5 points, one up) and 0.45.
        sector = 2 * math.pi / 5
        theta = np.arctan2(u, -v)  # 0 = up, clockwise positive
        t = np.mod(theta, sector) / sector
        edge = 0.45 + 0.55 * np.abs(1.0 - 2.0 * t)
        return (np.hypot(u, v) - edge) * 0.6
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(VIDEO_SHAPES)}")


def _coverage(distance: np.ndarray, pixels_per_unit: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance: a one-pixel soft edge."""
    return np.clip(0.5 - distance * pixels_per_unit, 0.0, 1.0)


def draw_object(frame: np.ndarray, shape: str, color: Sequence[float], cx: float, cy: float,
                radius: float, angle: float = 0.0, opacity: float = 1.0,
                marker_color: Sequence[float] | None = None,
                wipe: tuple[float, float] | None = None) -> None:
    """Blend one shape into `frame` ([H, W, 3] uint8) in place.

    Only the object's bounding box is touched. `angle` (radians) turns the shape clockwise on
    screen. `marker_color` adds a dot near the shape's top so that rotation shows even on a circle.
    `wipe` = (direction radians, position in [-1.2, 1.2]) keeps only the part of the object on
    the near side of a line sweeping across it (a reveal).
    """
    if opacity <= 0.0 or radius <= 0.5:
        return
    h, w = frame.shape[:2]
    reach = radius * 1.1 + 2.0  # every shape fits in the unit disc (square corners at 1.02)
    y0, y1 = max(0, int(cy - reach)), min(h, int(math.ceil(cy + reach)))
    x0, x1 = max(0, int(cx - reach)), min(w, int(math.ceil(cx + reach)))
    if y0 >= y1 or x0 >= x1:
        return
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]  # [h, 1]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]  # [1, w]
    cos, sin = math.cos(angle), math.sin(angle)
    # Image -> object coordinates: undo the clockwise turn, then the scale.
    u = (cos * dx + sin * dy) / radius  # [h, w]
    v = (-sin * dx + cos * dy) / radius
    alpha = _coverage(shape_distance(shape, u, v), radius)
    if wipe is not None:
        direction, position = wipe
        along = u * math.cos(direction) + v * math.sin(direction)
        alpha = alpha * _coverage(along - position, radius)
    alpha *= opacity
    region = frame[y0:y1, x0:x1].astype(np.float32)  # [h, w, 3]
    region += alpha[..., None] * (np.asarray(color, np.float32) - region)
    if marker_color is not None:
        dot = _coverage(np.hypot(u, v + 0.55) - 0.2, radius) * opacity
        if wipe is not None:
            dot = dot * _coverage(along - position, radius)
        region += dot[..., None] * (np.asarray(marker_color, np.float32) - region)
    frame[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(40, 215)
    tint = rng.uniform(-45, 45, size=3)
    return np.clip(grey + tint, 0, 255)


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background [H, W, 3] uint8: smooth noise, a gradient, stripes or a checkerboard,
    in muted colours with fine static grain."""
    kind = rng.choice(["noise", "gradient", "stripes", "checker"])
    c0, c1 = _muted_color(rng), _muted_color(rng)
    y = np.arange(height, dtype=np.float32)[:, None]  # [H, 1]
    x = np.arange(width, dtype=np.float32)[None, :]  # [1, W]
    if kind == "noise":
        cells = rng.uniform(0, 255, size=(int(rng.integers(3, 9)), int(rng.integers(3, 12)), 3))
        small = Image.fromarray(cells.astype(np.uint8))
        image = np.asarray(small.resize((width, height), Image.BICUBIC), np.float32)
        mix = (image - image.min()) / max(1.0, float(np.ptp(image)))  # [H, W, 3] in [0, 1]
        base = c0 + mix * (c1 - c0)
    else:
        theta = rng.uniform(0, math.pi)
        along = x * math.cos(theta) + y * math.sin(theta)  # [H, W]
        if kind == "gradient":
            t = (along - along.min()) / max(1.0, float(np.ptp(along)))
        elif kind == "stripes":
            period = rng.uniform(0.05, 0.3) * height
            t = 0.5 + 0.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi))
        else:
            cell = int(rng.integers(max(4, height // 16), max(5, height // 4)))
            t = ((x.astype(np.int64) // cell + y.astype(np.int64) // cell) % 2).astype(np.float32)
            t = np.broadcast_to(t, (height, width))
        base = c0 + t[..., None] * (c1 - c0)
    grain = rng.normal(0.0, rng.uniform(0.0, 6.0), size=(height, width, 1))
    return np.clip(base + grain + 0.5, 0, 255).astype(np.uint8)


def _object_color(rng: np.random.Generator, background: np.ndarray) -> tuple[str, np.ndarray]:
    """A named palette colour that stands out against the background's mean brightness."""
    names = list(PALETTE)
    bg_luma = float((background.reshape(-1, 3).mean(0) * (0.299, 0.587, 0.114)).sum())
    for _ in range(20):
        name = names[int(rng.integers(len(names)))]
        color = np.asarray(PALETTE[name], np.float32)
        if abs(float((color * (0.299, 0.587, 0.114)).sum()) - bg_luma) > 45:
            break
    jitter = rng.uniform(-15, 15, size=3)
    return name, np.clip(color + jitter, 0, 255)


# ---------------------------------------------------------------------------------------------
# Frame-index stamp: a binary code of big black/white blocks, readable after lossy compression
# ---------------------------------------------------------------------------------------------

STAMP_BITS = 10  # frame indices 0..1023
STAMP_ROWS = 2


def stamp_block_size(height: int) -> int:
    """Side of one stamp block in pixels for frames `height` high (20 px at 240p)."""
    return max(4, height // 12)


def stamp_frame_index(frame: np.ndarray, index: int) -> None:
    """Write `index` into the top-left corner of `frame` ([H, W, 3] uint8) in place.

    Bit k (least significant first) is block (k // 5, k % 5) of a 2 x 5 grid: white = 1.
    """
    if not 0 <= index < 2 ** STAMP_BITS:
        raise ValueError(f"frame index {index} does not fit the {STAMP_BITS}-bit stamp")
    block = stamp_block_size(frame.shape[0])
    per_row = STAMP_BITS // STAMP_ROWS
    for bit in range(STAMP_BITS):
        r, c = divmod(bit, per_row)
        value = 255 if (index >> bit) & 1 else 0
        frame[r * block:(r + 1) * block, c * block:(c + 1) * block] = value


def read_frame_index(frame: np.ndarray, block: float | None = None) -> int:
    """Read back the stamp of `stamp_frame_index` from a decoded frame.

    frame: [H, W, 3] (or [3, H, W]) uint8 RGB at the size it was stamped, or resized by a factor
    given through `block` (the block side in this frame's pixels). Each bit is the mean brightness
    of the central half of its block, so compression noise at the block edges does not matter.
    """
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    if block is None:
        block = stamp_block_size(frame.shape[0])
    per_row = STAMP_BITS // STAMP_ROWS
    index = 0
    for bit in range(STAMP_BITS):
        r, c = divmod(bit, per_row)
        y0, y1 = int((r + 0.25) * block), max(int((r + 0.75) * block), int((r + 0.25) * block) + 1)
        x0, x1 = int((c + 0.25) * block), max(int((c + 0.75) * block), int((c + 0.25) * block) + 1)
        if float(frame[y0:y1, x0:x1].mean()) > 127.5:
            index |= 1 << bit
    return index


# ---------------------------------------------------------------------------------------------
# Video clips
# ---------------------------------------------------------------------------------------------


@dataclass
class ClipSpec:
    """Everything needed to draw one clip; per-frame tracks are arrays of length num_frames."""

    class_index: int
    height: int
    width: int
    fps: float
    num_frames: int
    background_seed: int
    shape: str
    color_name: str
    color: np.ndarray  # [3] float RGB
    marker_color: np.ndarray | None  # [3] or None
    cx: np.ndarray  # [T] object centre x, pixels
    cy: np.ndarray  # [T] object centre y, pixels
    radius: np.ndarray  # [T] pixels
    angle: np.ndarray  # [T] radians, clockwise on screen
    opacity: np.ndarray  # [T] in [0, 1]
    wipe_direction: float | None = None  # set: appear/disappear by a sweeping reveal, not a fade
    wipe_position: np.ndarray | None = None  # [T]
    stamp: bool = False

    @property
    def placeholder(self) -> str:
        return f"{self.color_name} {self.shape}"


def _ramp(rng: np.random.Generator, num_frames: int, start: tuple[float, float],
          length: tuple[float, float]) -> np.ndarray:
    """A 0 -> 1 progress track [T]: still, then a change over a random part of the clip, then still.

    Where the change starts and how long it lasts vary, so speed differs between clips; the
    easing is linear or smooth at random.
    """
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float64)  # [T]
    t0 = rng.uniform(*start)
    t1 = min(1.0, t0 + rng.uniform(*length))
    p = np.clip((t - t0) / max(t1 - t0, 1e-6), 0.0, 1.0)
    if rng.random() < 0.5:
        p = p * p * (3 - 2 * p)  # smoothstep
    return p


def sample_clip_spec(rng: np.random.Generator, class_index: int, *, height: int = 240,
                     width: int | None = None, fps: float = 12, min_s: float = 2,
                     max_s: float = 6) -> ClipSpec:
    """Draw one clip of class `class_index` (into VIDEO_CLASSES) at random.

    width None picks a common aspect ratio per clip (4:3, 3:2 or 16:9), like SSv2's varied widths.
    Sizes and travel are fractions of the frame, so a low height gives the same motion, smaller.
    """
    motion = VIDEO_CLASSES[class_index].motion
    if width is None:
        width = int(round(height * float(rng.choice([4 / 3, 3 / 2, 16 / 9])) / 2)) * 2
    duration = rng.uniform(min_s, max_s)
    num_frames = max(2, int(round(duration * fps)))
    background_seed = int(rng.integers(2 ** 31))
    # The colour contrast check needs the background; drawing it twice is cheap next to encoding.
    background = make_background(np.random.default_rng(background_seed), height, width)
    shape = VIDEO_SHAPES[int(rng.integers(len(VIDEO_SHAPES)))]
    color_name, color = _object_color(rng, background)
    rotating = motion in ("clockwise", "counterclockwise")
    marker_color = None
    if rotating or rng.random() < 0.5:  # the dot must not give the class away
        luma = float((color * (0.299, 0.587, 0.114)).sum())
        marker_color = np.full(3, 245.0) if luma < 110 else np.full(3, 20.0)
    T = num_frames
    ones = np.ones(T)
    radius = rng.uniform(0.08, 0.16) * height * ones
    angle = rng.uniform(0, 2 * math.pi) * ones
    opacity = ones.copy()
    # A small random drift for classes whose change is not a translation, so that "not moving"
    # is no cue either; at most 6% of the width, well below the 40%+ of the moving classes.
    drift = rng.uniform(-0.06, 0.06, size=2) * width * _ramp(rng, T, (0, 0.3), (0.5, 1.0))[:, None]
    cx = rng.uniform(0.3, 0.7) * width + drift[:, 0]
    cy = rng.uniform(0.3, 0.7) * height + drift[:, 1]
    wipe_direction = wipe_position = None

    if motion in ("left_to_right", "right_to_left"):
        a, b = rng.uniform(0.08, 0.3) * width, rng.uniform(0.7, 0.92) * width
        if motion == "right_to_left":
            a, b = b, a
        cx = a + (b - a) * _ramp(rng, T, (0.0, 0.25), (0.5, 1.0))
        slope = rng.uniform(-0.05, 0.05) * height
        cy = rng.uniform(0.3, 0.7) * height + slope * np.linspace(0, 1, T)
    elif motion in ("up", "down"):
        radius = rng.uniform(0.07, 0.12) * height * ones
        a, b = rng.uniform(0.75, 0.88) * height, rng.uniform(0.12, 0.25) * height
        if motion == "down":
            a, b = b, a
        cy = a + (b - a) * _ramp(rng, T, (0.0, 0.25), (0.5, 1.0))
        slope = rng.uniform(-0.05, 0.05) * width
        cx = rng.uniform(0.25, 0.75) * width + slope * np.linspace(0, 1, T)
    elif motion in ("towards", "away"):
        small = rng.uniform(0.05, 0.08) * height
        large = min(0.4 * height, small * rng.uniform(2.5, 4.0))
        if motion == "away":
            small, large = large, small
        radius = small + (large - small) * _ramp(rng, T, (0.0, 0.25), (0.5, 1.0))
    elif motion in ("appear", "disappear"):
        p = _ramp(rng, T, (0.05, 0.35), (0.25, 0.55))
        if motion == "disappear":
            p = 1.0 - p
        if rng.random() < 0.5:
            opacity = p
        else:
            # Reveal by a line sweeping across the object: position -1.2 hides all, 1.2 shows all.
            wipe_direction = rng.uniform(0, 2 * math.pi)
            wipe_position = 1.2 - 2.4 * p
    elif rotating:
        turn = rng.uniform(0.75, 2.0) * math.pi  # under pi per frame for any clip of 2+ frames
        sign = 1.0 if motion == "clockwise" else -1.0
        angle = angle[0] + sign * turn * _ramp(rng, T, (0.0, 0.2), (0.6, 1.0))
    else:
        raise AssertionError(motion)

    return ClipSpec(class_index, height, width, float(fps), num_frames, background_seed, shape,
                    color_name, color, marker_color, np.asarray(cx, np.float64),
                    np.asarray(cy, np.float64), np.asarray(radius, np.float64),
                    np.asarray(angle, np.float64), np.asarray(opacity, np.float64),
                    wipe_direction, wipe_position)


def render_clip(spec: ClipSpec) -> Iterable[np.ndarray]:
    """Yield the clip's frames, each [H, W, 3] uint8 RGB (a fresh array per frame)."""
    background = make_background(np.random.default_rng(spec.background_seed), spec.height,
                                 spec.width)
    for t in range(spec.num_frames):
        frame = background.copy()
        wipe = None
        if spec.wipe_direction is not None:
            wipe = (spec.wipe_direction, float(spec.wipe_position[t]))
        draw_object(frame, spec.shape, spec.color, float(spec.cx[t]), float(spec.cy[t]),
                    float(spec.radius[t]), float(spec.angle[t]), float(spec.opacity[t]),
                    spec.marker_color, wipe)
        if spec.stamp:
            stamp_frame_index(frame, t)
        yield frame


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
                        stream.options = {"preset": "veryfast",
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
    bar = tqdm(total=len(jobs), desc=what, unit=what.split()[-1], disable=not progress,
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


def sample_image(rng: np.random.Generator, shape: str, size: tuple[int, int]) -> np.ndarray:
    """One image [H, W, 3] uint8 of `shape` on a textured background; size = (height, width)."""
    height, width = size
    image = make_background(rng, height, width)
    _, color = _object_color(rng, image)
    radius = rng.uniform(0.18, 0.4) * min(height, width)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    draw_object(image, shape, color, cx, cy, radius, rng.uniform(0, 2 * math.pi))
    return image


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
        result = index_folder(folder, split=split, workers=workers,
                              out=folder / f"manifest_{split}.jsonl")
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
        if folder is not None and "://" in os.fspath(folder):
            raise ValueError(f"{folder}: demo data is written to local folders only")
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
