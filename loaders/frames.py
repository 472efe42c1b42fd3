"""Which frames of a video a clip is made of.

OmniMAE (appendix B) trains on 16 frames spread evenly over a 2.7 s window, about 6 frames per
second whatever the video's own rate. The window starts at a random point for training and in the
middle for evaluation. A video shorter than the window is padded by repeating its last frame, so
every clip has exactly `num_frames` indices and every decoder returns the same number of frames.

Indices are exact and computed here, on the host, before anything is read: the decoders (DALI and
PyAV) take them as given, so both backends decode the same frames.
"""

from __future__ import annotations

import numpy as np

NUM_FRAMES = 16
WINDOW_S = 2.7


def window_length(fps: float, window_s: float = WINDOW_S) -> int:
    """Frames in a window of `window_s` seconds at `fps` (at least 1)."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return max(1, int(round(window_s * fps)))


def sample_frame_indices(num_frames_in_video: int, fps: float, *, num_frames: int = NUM_FRAMES,
                         window_s: float = WINDOW_S, rng: np.random.Generator | None = None,
                         mode: str = "random", start: int | None = None) -> np.ndarray:
    """Indices of the `num_frames` frames of one clip: int64 [num_frames], non-decreasing.

    The window covers `window_length(fps, window_s)` frames starting at `start`; the indices are
    `start + floor(linspace(0, window - 1, num_frames))` (evenly spaced, first and last frame of
    the window included; at 12 fps: a 32-frame window, a stride of ~2.07 frames, ~5.8 FPS).
    Indices past the last frame of a short video are clamped to it (edge padding).

    mode: "random" draws `start` uniformly from the starts that keep the window inside the video
        (needs `rng`); "center" centres the window (evaluation). An explicit `start` overrides
        `mode` (multi-clip evaluation); it is clamped into the video.
    """
    if num_frames_in_video < 1:
        raise ValueError(f"num_frames_in_video must be >= 1, got {num_frames_in_video}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    window = window_length(fps, window_s)
    last_start = max(0, num_frames_in_video - window)
    if start is not None:
        first = min(max(0, int(start)), last_start)
    elif mode == "random":
        if rng is None:
            raise ValueError("mode='random' needs an rng (numpy.random.Generator)")
        first = int(rng.integers(0, last_start + 1))
    elif mode == "center":
        first = last_start // 2
    else:
        raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
    offsets = np.floor(np.linspace(0.0, window - 1, num_frames)).astype(np.int64)  # [num_frames]
    return np.minimum(first + offsets, num_frames_in_video - 1)


def clip_starts(num_frames_in_video: int, fps: float, num_clips: int, *,
                window_s: float = WINDOW_S) -> list[int]:
    """`num_clips` window starts spread evenly over the video (multi-clip evaluation, e.g. 5)."""
    last_start = max(0, num_frames_in_video - window_length(fps, window_s))
    if num_clips == 1:
        return [last_start // 2]
    return [int(round(s)) for s in np.linspace(0, last_start, num_clips)]
