"""Video and image decoding: NVDEC (PyNvVideoCodec), DALI (NVDEC or CPU), PyAV; images with
torchvision (nvJPEG or CPU) or DALI's mixed decoder (the hardware JPEG decoder).

Every video decoder has the same interface:

    decoder.decode(datas: list[bytes], indices: list[array of int], codecs=None) -> DecodeOutput
        clips: per item a uint8 tensor [T, H, W, 3] (channels last, short side resized) on the
        decoder's device, or None where the item failed; failures: [(position, reason)].
        codecs: per item FFmpeg's codec name (the manifest's) or None; DALI routes by it.

and all of them return the same frames for the same indices (see pyav.py and dali.py for how).
`make_video_decoder` picks the backend. auto: on a GPU, the fastest that a measured table for this
GPU model shows (measured.py, written by benchmarks/gpu_decode_check.py); without such a table,
and on the CPU, PyAV (see AUTO_REASON). DALI and NVDEC are wrapped in a RoutedDecoder (routed.py):
items of a codec they cannot decode here go to PyAV, one log line says so, none is dropped.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from typing import NamedTuple

import torch

from loaders.errors import LoaderError
from loaders.decode import measured
from loaders.decode.common import DecodeOutput
from loaders.decode.dali import DALI_CPU_CODECS, DALI_MIXED_CODECS
from loaders.decode.packets import NVDEC_CODECS

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav", "nvdec")

__all__ = ["BACKENDS", "DecodeOutput", "choose_backend", "dali_import_error", "decide", "decide_image",
           "make_video_decoder", "nvdec_import_error", "pyav_import_error"]


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


@lru_cache(maxsize=1)
def nvdec_import_error() -> str | None:
    """Why PyNvVideoCodec cannot be used here (None if it imports). Without an NVIDIA driver its
    import fails (it loads the driver's NVENC library to pick its build)."""
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        return "ModuleNotFoundError: No module named 'PyNvVideoCodec'"
    quiet = logging.getLogger("PyNvVideoCodec")  # it logs its own diagnostics before raising
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as error:  # noqa: BLE001
        first = (str(error).strip().splitlines() or [""])[0]
        return f"{type(error).__name__}: {first}"[:200]
    finally:
        quiet.disabled = was_disabled
    return None


# Why auto prefers PyAV, measured side by side on one H100 node (16 cores; 240p H.264 / VP9 clips,
# 16 of 48 frames, short side 256; benchmarks/results/NVIDIA_H100_80GB_HBM3_202611.md): PyAV on 8
# threads 248-257 clips/s, DALI cpu on 8 threads 96, DALI mixed (NVDEC) 20-54 with 1 or 4 pipelines.
# On 2 cores PyAV and DALI cpu tie. On a GPU with a measured table (measured.py) the table decides;
# this is the reason where there is none.
AUTO_REASON = ("PyAV on CPU threads measured 5-10x DALI mixed (NVDEC) and 2.6x DALI cpu on 240p clips "
               "(benchmarks/results/); data.decode_backend=dali asks for DALI")


class Decision(NamedTuple):
    """A backend choice: name, DALI device (or None), why, and the measured row behind it (or None)."""

    backend: str
    dali_device: str | None
    why: str
    row: measured.Row | None = None


def _device_name(device: torch.device) -> str | None:
    """The GPU model the tables are keyed by ("NVIDIA H200"), None where CUDA cannot say."""
    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001 - no CUDA here: no measured choice
        return None


def _runs_here(backend: str, codec: str) -> bool:
    """Whether a measured backend can decode `codec` items on this GPU machine."""
    if backend == "pyav":
        return pyav_import_error() is None
    if backend == "dali":
        return codec in DALI_MIXED_CODECS and dali_import_error() is None
    if backend == "nvdec":  # PyAV demuxes for it
        return codec in NVDEC_CODECS and nvdec_import_error() is None and pyav_import_error() is None
    return False


def _measured_choice(modality: str, codec: str | None, device: torch.device,
                     runs_here) -> measured.Choice | None:
    """The fastest backend for which runs_here(backend) holds, by the measured tables for this GPU
    model, or None (no GPU, no table row for this modality and codec, a broken table)."""
    if device.type != "cuda" or codec in (None, "", "unknown"):
        return None
    try:
        rows = [row for row in measured.load_rows() if row.modality == modality and row.codec == codec]
    except ValueError as error:
        log.warning("decode tables ignored: %s", error)
        return None
    name = _device_name(device) if rows else None  # no device query without a row to match
    if name is None:
        return None
    backends = sorted({row.backend for row in rows if row.device == name and runs_here(row.backend)})
    return measured.best(modality, codec, name, backends, rows=rows)


def measured_video_choice(codec: str | None, device: torch.device) -> Decision | None:
    """auto on a GPU: the backend the measured tables show fastest for `codec` here, or None
    (no table row for this GPU model and codec; see measured.py)."""
    choice = _measured_choice("video", codec, device, lambda backend: _runs_here(backend, codec))
    if choice is None:
        return None
    row = choice.best
    return Decision(row.backend, "mixed" if row.backend == "dali" else None, choice.reason(), row)


IMAGE_AUTO_REASON = "nvJPEG through torchvision (no measured table for this GPU)"


def decide_image(device: torch.device) -> tuple[str, str, measured.Row | None]:
    """(JPEG backend of image.JPEG_BACKENDS, why, the measured row or None) for images on `device`:
    on a GPU the fastest in a measured table for this GPU model (measured.py), else nvJPEG as
    before; on the CPU the CPU path."""
    if device.type != "cuda":
        return "cpu", "no GPU: libjpeg-turbo through torchvision on CPU threads", None
    runs = {"cpu": True, "nvjpeg": True, "dali": dali_import_error() is None}
    choice = _measured_choice("image", "jpeg", device, lambda backend: runs.get(backend, False))
    if choice is not None:
        return choice.best.backend, choice.reason(), choice.best
    return "nvjpeg", IMAGE_AUTO_REASON, None


def decide(backend: str, codec: str | None, device: torch.device) -> Decision:
    """choose_backend's answer with the measured row behind it (make_video_decoder uses its setting)."""
    if backend not in BACKENDS:
        raise ValueError(f"decode backend must be one of {BACKENDS}, got {backend!r}")
    known = codec not in (None, "", "unknown")
    on_gpu = device.type == "cuda"
    if backend == "nvdec":
        if not on_gpu:
            raise LoaderError(f"data.decode_backend=nvdec needs a CUDA device (the loader's device is {device})")
        error = nvdec_import_error()
        if error:
            raise LoaderError(f"data.decode_backend=nvdec, but PyNvVideoCodec does not import ({error}): "
                              "pip install 'omnimae[nvdec]' (see docs/gpu_decoding.md)")
        if pyav_import_error():
            raise LoaderError(f"data.decode_backend=nvdec demuxes with PyAV, which does not import "
                              f"({pyav_import_error()}): pip install av")
        return Decision("nvdec", None, "asked for")
    if backend == "auto":
        choice = measured_video_choice(codec, device)
        if choice is not None:
            return choice
    if backend == "pyav" or (backend == "auto" and pyav_import_error() is None):
        return Decision("pyav", None, "asked for" if backend == "pyav" else AUTO_REASON)
    dali_error = dali_import_error()
    if dali_error:
        if backend == "auto":
            raise LoaderError(f"no video decoder: PyAV ({pyav_import_error()}) and DALI ({dali_error}) "
                              "do not import: pip install av")
        raise LoaderError(f"data.decode_backend=dali, but DALI does not import ({dali_error}): "
                          f"pip install 'omnimae[gpu]'")
    why = "asked for" if backend == "dali" else f"PyAV does not import ({pyav_import_error()})"
    if on_gpu and (not known or codec in DALI_MIXED_CODECS):
        return Decision("dali", "mixed", f"{why}; NVDEC on the GPU")
    if known and codec not in DALI_CPU_CODECS:
        if pyav_import_error() is not None:  # no PyAV to decode those items
            raise ValueError(f"DALI's CPU decoder cannot decode {codec} (takes "
                             f"{', '.join(sorted(DALI_CPU_CODECS))}) and PyAV does not import; "
                             "install PyAV or use a GPU")
        return Decision("dali", "cpu", f"{why}; DALI's CPU decoder, {codec} items with PyAV (no NVDEC here)")
    return Decision("dali", "cpu", f"{why}; DALI's CPU decoder")


def choose_backend(backend: str, codec: str | None, device: torch.device) -> tuple[str, str | None, str]:
    """(backend, DALI device or None, why) for `codec` on `device`.

    auto: on a GPU, the fastest backend of a measured table for this GPU model and codec
    (measured_video_choice); otherwise PyAV (see AUTO_REASON); DALI only where PyAV does not
    import (mixed on a GPU, cpu for VP8/VP9/MJPEG). dali: mixed (NVDEC) on a GPU, DALI's CPU
    decoder otherwise, with PyAV for the items of other codecs (make_video_decoder's
    RoutedDecoder). nvdec: PyNvVideoCodec's decoders reused across clips (nvdec.py), GPU only.
    codec: the manifest's first (the choice is per item in any case); None / "unknown" counts as
    one DALI mixed takes.
    """
    return tuple(decide(backend, codec, device)[:3])


def make_video_decoder(backend: str = "auto", *, codec: str | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 32, threads: int = 2,
                       short_side: int | None = 256, num_frames: int = 16, pipelines: int = 1):
    """A video decoder for `codec` whose clips land on `device`; logs one line: which and why.

    threads: DALI CPU threads per pipeline, PyAV videos decoded at once, or NVDEC decoding threads
        (one NVDEC engine busy per thread at most).
    pipelines: DALI pipelines run round robin (one per NVDEC engine you want busy).
    A choice from a measured table (auto on a GPU) takes the measured setting's threads and
    pipelines for DALI and NVDEC; PyAV keeps `threads` (the CPU cores are the user's to give).
    """
    device = torch.device(device)
    name, dali_device, why, row = decide(backend, codec, device)
    cpu_threads = threads  # PyAV's, also for the items routed to it
    if row is not None and name in ("dali", "nvdec"):
        threads = row.threads or threads
        pipelines = row.pipelines or pipelines

    def make_pyav():
        from loaders.decode.pyav import PyAVDecoder  # here: DALI alone works without PyAV

        return PyAVDecoder(cpu_threads, short_side=short_side, device=device)

    if name == "nvdec":
        from loaders.decode.nvdec import NvdecDecoder
        from loaders.decode.routed import RoutedDecoder

        nvdec = NvdecDecoder(threads, device=device, short_side=short_side)
        decoder = RoutedDecoder(nvdec, nvdec.codecs, make_pyav, "NVDEC (PyNvVideoCodec)")
        label = f"nvdec, {threads} threads"
    elif name == "dali":
        from loaders.decode.dali import DALIVideoDecoder
        from loaders.decode.routed import RoutedDecoder

        device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
            if dali_device == "mixed" else None
        dali = DALIVideoDecoder(batch_size, device=dali_device, device_id=device_id,
                                num_threads=threads, short_side=short_side, num_frames=num_frames,
                                pipelines=pipelines)
        what = "DALI's CPU decoder (no NVDEC without a GPU)" if dali_device == "cpu" else "DALI (NVDEC)"
        decoder = RoutedDecoder(dali, dali.codecs, make_pyav, what)
        label = f"dali-{dali_device}" + (f", {pipelines} pipelines x {threads} threads" if row is not None else "")
    else:
        decoder = make_pyav()
        label = "pyav"
    log.info("video decoder: %s (codec %s, device %s): %s", label, codec or "unknown", device, why)
    return decoder
