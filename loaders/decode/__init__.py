"""Video and image decoding: DALI (NVDEC or CPU), PyAV, torchvision (nvJPEG or CPU).

Every video decoder has the same interface:

    decoder.decode(datas: list[bytes], indices: list[array of int]) -> DecodeOutput
        clips: per item a uint8 tensor [T, H, W, 3] (channels last, short side resized) on the
        decoder's device, or None where the item failed; failures: [(position, reason)].

and all of them return the same frames for the same indices (see pyav.py and dali.py for how).
`make_video_decoder` picks the fastest backend that can decode the codec here.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from loaders.decode.common import DecodeOutput
from loaders.decode.dali import DALI_CPU_CODECS, DALI_MIXED_CODECS

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")

__all__ = ["BACKENDS", "DecodeOutput", "choose_backend", "dali_import_error", "make_video_decoder"]


@lru_cache(maxsize=1)
def dali_import_error() -> str | None:
    """Why DALI cannot be used here (None if it imports)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install is as good as none
        return f"{type(error).__name__}: {error}"
    return None


def choose_backend(backend: str, codec: str | None, device: torch.device) -> tuple[str, str | None, str]:
    """(backend, DALI device or None, why) for `codec` on `device`.

    auto: DALI mixed (NVDEC) on a GPU for the codecs NVDEC takes; DALI cpu for VP8/VP9/MJPEG on a
    CPU; PyAV otherwise, or if DALI does not import. codec None / "unknown" counts as one DALI
    mixed takes on a GPU (the probe rejects others per item) and as one only PyAV takes on a CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"decode backend must be one of {BACKENDS}, got {backend!r}")
    known = codec not in (None, "", "unknown")
    on_gpu = device.type == "cuda"
    if backend == "pyav":
        return "pyav", None, "asked for"
    dali_error = dali_import_error()
    if backend == "dali":
        if dali_error:
            raise RuntimeError(f"decode backend 'dali' asked for, but DALI does not import: {dali_error}")
        if on_gpu:
            return "dali", "mixed", "asked for; NVDEC on the GPU"
        if known and codec not in DALI_CPU_CODECS:
            raise ValueError(f"DALI's CPU decoder cannot decode {codec} (takes "
                             f"{', '.join(sorted(DALI_CPU_CODECS))}); use backend 'pyav' or a GPU")
        return "dali", "cpu", "asked for; DALI's CPU decoder"
    if dali_error:
        return "pyav", None, f"DALI does not import ({dali_error})"
    if on_gpu and (not known or codec in DALI_MIXED_CODECS):
        return "dali", "mixed", f"NVDEC decodes {codec if known else 'the usual codecs'} on the GPU"
    if on_gpu:
        return "pyav", None, f"NVDEC does not take {codec}"
    if known and codec in DALI_CPU_CODECS:
        return "dali", "cpu", f"no GPU; DALI's CPU decoder takes {codec}"
    return "pyav", None, f"no GPU and DALI's CPU decoder does not take {codec if known else 'an unknown codec'}"


def make_video_decoder(backend: str = "auto", *, codec: str | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 32, threads: int = 2,
                       short_side: int | None = 256, num_frames: int = 16, pipelines: int = 1):
    """A video decoder for `codec` whose clips land on `device`; logs one line: which and why.

    threads: DALI CPU threads per pipeline, or PyAV videos decoded at once.
    pipelines: DALI pipelines run round robin (one per NVDEC engine you want busy).
    """
    device = torch.device(device)
    name, dali_device, why = choose_backend(backend, codec, device)
    if name == "dali":
        from loaders.decode.dali import DALIVideoDecoder

        device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
            if dali_device == "mixed" else None
        decoder = DALIVideoDecoder(batch_size, device=dali_device, device_id=device_id,
                                   num_threads=threads, short_side=short_side, num_frames=num_frames,
                                   pipelines=pipelines)
        label = f"dali-{dali_device}"
    else:
        from loaders.decode.pyav import PyAVDecoder

        decoder = PyAVDecoder(threads, short_side=short_side, device=device)
        label = "pyav"
    log.info("video decoder: %s (codec %s, device %s): %s", label, codec or "unknown", device, why)
    return decoder
