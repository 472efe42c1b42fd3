"""What every decoder returns, and the rules all backends share so they return the same pixels."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class DecodeOutput:
    """The result of decoding one batch of encoded items.

    clips: one entry per input item, in input order: a uint8 tensor, channels last, on the
        decoder's device; videos [T, H, W, 3], images [H, W, 3]; H and W may differ between
        items (different source sizes). None where the item failed.
    failures: (position in the input, reason) for every item that failed; the loader replaces
        those items and counts them. A failure never raises and never spoils the other items.
    """

    clips: list[torch.Tensor | None]
    failures: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def ok(self) -> list[int]:
        """Positions of the items that decoded."""
        return [i for i, c in enumerate(self.clips) if c is not None]


class DecodeError(RuntimeError):
    """A video that cannot give the requested frames; the message is the per-item reason."""


@dataclass(frozen=True)
class FramePlan:
    """Which frames one clip needs, and how the decoded ones map back to the requested order.

    wanted: int64 [U], the sorted unique frame indices to decode (each decoded once, in order);
    inverse: int64 [T], position in `wanted` of each requested index (repeats from edge padding
    and any reordering are undone with one gather: `decoded[inverse]`, [U, ...] -> [T, ...]).
    """

    wanted: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, indices) -> "FramePlan":
        """The plan for `indices` (a non-empty list of non-negative ints); DecodeError otherwise."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1 or index.size == 0 or index.min() < 0:
            raise DecodeError(f"frame indices must be a non-empty list of non-negative ints, got {indices!r}")
        wanted, inverse = np.unique(index, return_inverse=True)  # [U], [T]
        return cls(wanted, inverse.reshape(-1))

    @property
    def last(self) -> int:
        """The largest index: decoding can stop once this frame is out."""
        return int(self.wanted[-1])

    @property
    def identity(self) -> bool:
        """True when the requested indices are already sorted and unique (no gather needed)."""
        return len(self.wanted) == len(self.inverse) and bool(np.all(self.inverse == np.arange(len(self.inverse))))


def counts_as_frame(pts: int | None) -> bool:
    """Whether a decoded frame (or demuxed packet) with timestamp `pts` gets a frame index.

    Frames are counted in presentation order, skipping those with a negative timestamp (an edit
    list's pre-roll, never shown), as DALI's frame index does; every backend counts this way.
    """
    return pts is None or pts >= 0


def too_few_frames(count: int, needed: int) -> str:
    """The per-item reason for a video that ended before the frame a clip needs."""
    return f"has {count} frames, needs {needed} (manifest frame count wrong or file truncated)"


def resized_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) after scaling the short side to `short_side`, keeping the aspect ratio.

    The long side is rounded half up, as DALI's `fn.resize(resize_shorter=...)` does
    (64x97 -> 32x49), so PyAV and DALI give clips of the same shape. None keeps the size.
    """
    if short_side is None:
        return height, width
    if height <= width:
        return short_side, int(width * short_side / height + 0.5)
    return int(height * short_side / width + 0.5), short_side


def resize_short_side(clip: torch.Tensor, short_side: int | None) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, H', W', 3] with the short side at `short_side`.

    Bilinear with antialiasing (pixel centres aligned), like DALI's `fn.resize` with
    interp_type=INTERP_LINEAR, antialias=True. On the CPU this is torch's uint8 channels-last
    kernel: ~5 ms for 16 frames 240x426 -> 256x454 on one core, ten times faster than DALI's CPU
    resize, so DALI's CPU path resizes here; images capped in size too.
    """
    height, width = clip.shape[1:3]
    size = resized_shape(height, width, short_side)
    if size == (height, width):
        return clip
    frames = clip.permute(0, 3, 1, 2)  # [T, 3, H, W] view, channels-last in memory
    if clip.device.type == "cpu":
        out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:  # the uint8 kernel is CPU-only
        out = F.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False,
                            antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous()  # [T, H', W', 3]


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move a host tensor to `device` without making the host wait for the GPU.

    A copy from pageable memory blocks until the stream has run everything queued before it (the
    training step, say); from pinned memory with non_blocking it is queued like a kernel. The
    caching host allocator keeps the pinned block alive until the copy has run.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def check_inputs(datas: list, indices: list) -> None:
    """One list of frame indices per encoded item."""
    if len(datas) != len(indices):
        raise ValueError(f"got {len(datas)} encoded items but {len(indices)} index lists")


def short_reason(error: BaseException, limit: int = 200) -> str:
    """A one-line reason from an exception (DALI's messages run over many lines)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("C++ context", "Current pipeline",
                                                       "Critical error", "File \"", "Error in"))]
    text = (useful or lines or [type(error).__name__])[-1]
    return f"{type(error).__name__}: {text}"[:limit]


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _madvise()


def empty_host(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.empty on the CPU, asking Linux for 2 MB pages (transparent huge pages) for it.

    A CPU batch is hundreds of MB (16 x 3 x 16 x 224 x 224 floats = 154 MB) that the allocator
    maps afresh for every batch; faulting it in 4 KB at a time costs as much as cropping into it
    (~4 of ~8 ms of CPU per video sample). With MADV_HUGEPAGE on the still untouched pages the
    kernel faults 2 MB at once: batch assembly on the CPU takes half the time. Where THP is off,
    or off Linux, this is a plain torch.empty.
    """
    out = torch.empty(*shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if _MADVISE is not None and nbytes >= 2 * _HUGE_PAGE:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # whole huge pages inside the buffer
        end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _MADVISE(start, end - start, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return out


def decode_or_reason(decode_clip, data, indices):
    """(clip, None), or (None, why) where the item fails: one bad item never breaks the batch."""
    try:
        return decode_clip(data, indices), None
    except DecodeError as error:
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - any failure of one item is that item's
        return None, short_reason(error)
