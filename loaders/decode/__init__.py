"""Video and image decoding: DALI (NVDEC or CPU), PyAV, torchvision (nvJPEG or CPU).

Every video decoder has the same interface:

    decoder.decode(datas: list[bytes], indices: list[array of int], codecs=None) -> DecodeOutput
        clips: per item a uint8 tensor [T, H, W, 3] (channels last, short side resized) on the
        decoder's device, or None where the item failed; failures: [(position, reason)].
        codecs: per item FFmpeg's codec name (the manifest's) or None; DALI routes by it.

and all of them return the same frames for the same indices (see pyav.py and dali.py for how).
`make_video_decoder` picks the backend (auto: PyAV, measured fastest; see AUTO_REASON). DALI is
wrapped in a RoutedDecoder (routed.py): items of a codec DALI cannot decode here (H.264 without
NVDEC) go to PyAV, one log line says so, none is dropped.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from loaders.errors import LoaderError
from loaders.decode.common import DecodeOutput
from loaders.decode.dali import DALI_CPU_CODECS, DALI_MIXED_CODECS

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")

__all__ = ["BACKENDS", "DecodeOutput", "choose_backend", "dali_import_error", "make_video_decoder",
           "pyav_import_error"]


@lru_cache(maxsize=1)
def dali_import_error() -> str | None:
    """Why DALI cannot be used here (None if it imports)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install is as good as none
        return f"{type(error).__name__}: {error}"
    return None


@lru_cache(maxsize=1)
def pyav_import_error() -> str | None:
    """Why PyAV cannot be used here (None if it imports)."""
    try:
        import av  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


# Why auto prefers PyAV, measured side by side on one H100 node (16 cores; 240p H.264 / VP9 clips,
# 16 of 48 frames, short side 256; benchmarks/results/NVIDIA_H100_80GB_HBM3_202611.md): PyAV on 8
# threads 248-257 clips/s, DALI cpu on 8 threads 96, DALI mixed (NVDEC) 20-54 with 1 or 4 pipelines.
# On 2 cores PyAV and DALI cpu tie. NVDEC may win on long high-resolution videos; ask for it there.
AUTO_REASON = ("PyAV on CPU threads measured 5-10x DALI mixed (NVDEC) and 2.6x DALI cpu on 240p clips "
               "(benchmarks/results/); data.decode_backend=dali asks for DALI")


def choose_backend(backend: str, codec: str | None, device: torch.device) -> tuple[str, str | None, str]:
    """(backend, DALI device or None, why) for `codec` on `device`.

    auto: PyAV (see AUTO_REASON); DALI only where PyAV does not import (mixed on a GPU, cpu for
    VP8/VP9/MJPEG). dali: mixed (NVDEC) on a GPU, DALI's CPU decoder otherwise, with PyAV for the
    items of other codecs (make_video_decoder's RoutedDecoder). codec: the manifest's first (the
    choice is per item in any case); None / "unknown" counts as one DALI mixed takes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"decode backend must be one of {BACKENDS}, got {backend!r}")
    known = codec not in (None, "", "unknown")
    on_gpu = device.type == "cuda"
    if backend == "pyav" or (backend == "auto" and pyav_import_error() is None):
        return "pyav", None, "asked for" if backend == "pyav" else AUTO_REASON
    dali_error = dali_import_error()
    if dali_error:
        if backend == "auto":
            raise LoaderError(f"no video decoder: PyAV ({pyav_import_error()}) and DALI ({dali_error}) "
                              "do not import: pip install av")
        raise LoaderError(f"data.decode_backend=dali, but DALI does not import ({dali_error}): "
                          f"pip install 'omnimae[gpu]'")
    why = "asked for" if backend == "dali" else f"PyAV does not import ({pyav_import_error()})"
    if on_gpu and (not known or codec in DALI_MIXED_CODECS):
        return "dali", "mixed", f"{why}; NVDEC on the GPU"
    if known and codec not in DALI_CPU_CODECS:
        if pyav_import_error() is not None:  # no PyAV to decode those items
            raise ValueError(f"DALI's CPU decoder cannot decode {codec} (takes "
                             f"{', '.join(sorted(DALI_CPU_CODECS))}) and PyAV does not import; "
                             "install PyAV or use a GPU")
        return "dali", "cpu", f"{why}; DALI's CPU decoder, {codec} items with PyAV (no NVDEC here)"
    return "dali", "cpu", f"{why}; DALI's CPU decoder"


def make_video_decoder(backend: str = "auto", *, codec: str | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 32, threads: int = 2,
                       short_side: int | None = 256, num_frames: int = 16, pipelines: int = 1):
    """A video decoder for `codec` whose clips land on `device`; logs one line: which and why.

    threads: DALI CPU threads per pipeline, or PyAV videos decoded at once.
    pipelines: DALI pipelines run round robin (one per NVDEC engine you want busy).
    """
    device = torch.device(device)
    name, dali_device, why = choose_backend(backend, codec, device)

    def make_pyav():
        from loaders.decode.pyav import PyAVDecoder  # here: DALI alone works without PyAV

        return PyAVDecoder(threads, short_side=short_side, device=device)

    if name == "dali":
        from loaders.decode.dali import DALIVideoDecoder
        from loaders.decode.routed import RoutedDecoder

        device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
            if dali_device == "mixed" else None
        dali = DALIVideoDecoder(batch_size, device=dali_device, device_id=device_id,
                                num_threads=threads, short_side=short_side, num_frames=num_frames,
                                pipelines=pipelines)
        what = "DALI's CPU decoder (no NVDEC without a GPU)" if dali_device == "cpu" else "DALI (NVDEC)"
        decoder = RoutedDecoder(dali, dali.codecs, make_pyav, what)
        label = f"dali-{dali_device}"
    else:
        decoder = make_pyav()
        label = "pyav"
    log.info("video decoder: %s (codec %s, device %s): %s", label, codec or "unknown", device, why)
    return decoder
