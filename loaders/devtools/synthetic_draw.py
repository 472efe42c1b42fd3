"""Drawing the synthetic data: action classes, shapes, backgrounds, clips and frame stamps.

The classes and their pictures live here; synthetic.py encodes them into data sets. Shapes are
approximate signed distance fields in object coordinates, turned into anti-aliased coverage; all of
it is numpy, vectorized over pixels (a Python loop only over frames), and deterministic from a
generator, so the same seed draws the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

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
