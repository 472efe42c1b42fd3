"""Video decoding with NVIDIA DALI: NVDEC on a GPU ("mixed"), libavcodec on the CPU ("cpu").

One pipeline per `pipelines`, each fed by `fn.external_source` and run on its own thread:

    encoded  external_source  uint8 [bytes]  the encoded file, a zero-copy view of the read bytes
    frames   external_source  int32 [T]      the frame indices of the clip (loaders.frames)
      -> fn.decoders.video(encoded, frames=frames, device="cpu" | "mixed")   uint8 [T', H, W, 3]
      -> fn.resize(resize_shorter=short_side, linear, antialias)              uint8 [T', H', W', 3]
         (mixed only: on the GPU DALI resizes the whole batch in one kernel. On the CPU, DALI's
         resize costs ~45 ms per 16-frame 240p clip on one core, about twice the decode, so the
         CPU path resizes with torch's uint8 kernel instead, ~5 ms: `common.resize_short_side`)

DALI 2.x's `fn.decoders.video` takes arbitrary per-sample frame indices (`frames`, a TensorList
argument); it sorts them, seeks to the nearest keyframe when a jump is over 10 frames and otherwise
decodes forward, so a 16-of-32-frame window costs one pass. We pass each clip's *unique* indices
(a repeated index, as in an edge-padded short clip, would make it seek back and decode again from
the keyframe) and expand repeats afterwards with an index gather. Verified with DALI 2.4.0.

Codecs (DALI 2.4.0): the CPU backend takes VP8, VP9 and MJPEG (its libavcodec has no H.264/HEVC
decoder, whatever newer docs say); the mixed backend also takes H.264, HEVC, AV1 and MPEG-4.

Bad input: DALI fails the whole batch on one bad file, and an index past the last frame does not
fail at all (it is padded), so every item is probed first (validate.probe_video: container, codec,
frame count) and only good ones are fed. If DALI still raises (a corrupt bitstream the probe cannot
see), the pipeline is rebuilt and the batch's items are decoded one at a time to isolate the bad
one. Failures come back as (position, reason); nothing raises out of `decode`.

FFmpeg's own log lines (`[matroska,webm @ 0x...] File ended prematurely`) name no file, and the
item's failure reason already says what went wrong, with its uri, in the loader's log: they are
silenced (`silence_ffmpeg_log`).

Outputs reach torch without a copy through DLPack (`torch.from_dlpack` on each sample): with
DALI's dynamic executor (the default) an output buffer lives as long as the tensor that views it.
The fed numpy buffers are views of the caller's bytes (`no_copy=True`); the slot keeps them
referenced until its next run, after the outputs are consumed.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from loaders.decode.common import (DecodeError, DecodeOutput, FramePlan, check_inputs, resize_short_side,
                                   short_reason, to_device)
from loaders.decode.validate import probe_video

DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_MIXED_CODECS = frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"})


@lru_cache(maxsize=1)
def silence_ffmpeg_log() -> bool:
    """Send the log lines of DALI's own FFmpeg (bundled in nvidia/dali/.libs) nowhere; True if done.

    DALI sets that libavutil's log level itself while it decodes, so the level cannot be lowered;
    the callback can. The callback installed is `av_log_get_level`: a C function that only reads
    an int, so calling it with av_log's four arguments does nothing (the C calling convention lets
    a callee ignore arguments) and no decode thread ever enters Python for a log line. PyAV's
    FFmpeg (a separate copy) logs nowhere by default since PyAV 13.
    """
    import nvidia.dali

    libs = glob.glob(os.path.join(os.path.dirname(nvidia.dali.__file__), ".libs", "libavutil*.so*"))
    if not libs:
        return False
    try:
        libavutil = ctypes.CDLL(libs[0])  # the copy DALI loaded: same soname, same handle
        libavutil.av_log_set_callback(ctypes.cast(libavutil.av_log_get_level, ctypes.c_void_p))
    except (OSError, AttributeError):
        return False
    return True


def build_pipeline(*, batch_size: int, device: str, device_id: int | None, num_threads: int,
                   short_side: int | None, bytes_per_sample_hint: int = 0):
    """A built DALI pipeline with inputs "encoded" and "frames" and one output (the clips)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    # prefetch_queue_depth=1: we feed one batch and run it at once (feed_input, then run), so
    # there is no queue to fill. set_affinity/affine=False: under torchrun several ranks share a
    # node, and pinned DALI threads of every rank would pile onto the same cores.
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads,
                    device_id=device_id if device == "mixed" else None,
                    prefetch_queue_depth=1, set_affinity=False)
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=True)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1, no_copy=True)
        # pad_mode="edge": an index past the end (which the probe rules out) repeats the last
        # frame rather than giving a black one.
        video = fn.decoders.video(encoded, device=device, frames=frames, pad_mode="edge",
                                  affine=False)  # uint8 [T, H, W, 3], layout FHWC
        if short_side is not None and device == "mixed":
            video = fn.resize(video, resize_shorter=short_side, interp_type=types.INTERP_LINEAR,
                              antialias=True, bytes_per_sample_hint=bytes_per_sample_hint)
        pipe.set_outputs(video)
    pipe.build()
    return pipe


class PipelineSlot:
    """One pipeline and the one thread that may touch it (DALI pipelines are not thread safe).
    Also used by image_dali.py."""

    def __init__(self, make_pipeline, name: str):
        self.make_pipeline = make_pipeline
        self.pipe = make_pipeline()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.fed: dict = {}  # the last fed buffers, kept alive until the next run

    def run(self, inputs: dict[str, list[np.ndarray]]) -> tuple:
        """Feed each external source its list (one array per sample) and run once: the outputs."""
        self.fed = inputs
        for name, arrays in inputs.items():
            self.pipe.feed_input(name, arrays)
        return self.pipe.run()

    def rebuild(self) -> None:
        """A fresh pipeline after an error (DALI marks a pipeline invalid when an op fails)."""
        old, self.pipe = self.pipe, None
        del old
        self.pipe = self.make_pipeline()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.pipe = None


class DALIVideoDecoder:
    """Decodes clips with DALI; see the module docstring.

    batch_size: most items one pipeline run takes; `decode` splits longer lists.
    device: "cpu" (VP8/VP9/MJPEG) or "mixed" (NVDEC; needs `device_id`).
    num_threads: DALI CPU threads per pipeline (it decodes the items of a batch in parallel).
    short_side: short side of the returned frames (None keeps the source size).
    num_frames: frames per clip, a size hint for DALI's output buffers.
    pipelines: pipelines run round robin, each on its own thread (more than one NVDEC engine).
    validate: probe every item before feeding it (see the module docstring); leave it on.
    probe_threads: threads for those probes, shared by the pipelines (default num_threads).
    """

    name = "dali"

    def __init__(self, batch_size: int, *, device: str = "cpu", device_id: int | None = None,
                 num_threads: int = 2, short_side: int | None = 256, num_frames: int = 16,
                 pipelines: int = 1, validate: bool = True, probe_threads: int | None = None):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"device must be 'cpu' or 'mixed', got {device!r}")
        if device == "mixed" and device_id is None:
            raise ValueError("device='mixed' needs a device_id (the CUDA device to decode on)")
        if batch_size < 1 or pipelines < 1 or num_threads < 1:
            raise ValueError("batch_size, pipelines and num_threads must be >= 1")
        self.batch_size = batch_size
        self.dali_device = device
        self.device = torch.device("cuda", device_id) if device == "mixed" else torch.device("cpu")
        self.short_side = short_side
        self.codecs = DALI_MIXED_CODECS if device == "mixed" else DALI_CPU_CODECS
        self.validate = validate
        long_side = 2 * short_side if short_side else 0  # hint only; DALI grows buffers as needed

        def make_pipeline():
            return build_pipeline(batch_size=batch_size, device=device, device_id=device_id,
                                  num_threads=num_threads, short_side=short_side,
                                  bytes_per_sample_hint=num_frames * (short_side or 0) * long_side * 3)

        self._slots = [PipelineSlot(make_pipeline, f"dali{k}") for k in range(pipelines)]
        silence_ffmpeg_log()
        self._probe_pool = ThreadPoolExecutor(probe_threads or num_threads, thread_name_prefix="probe")
        self._lock = threading.Lock()
        self._next = 0

    # -- one chunk, on its slot's thread ---------------------------------------------------------

    def _probe(self, data, indices) -> tuple[FramePlan | None, str | None]:
        """(the clip's frame plan, None) or (None, why it cannot be decoded)."""
        try:
            plan = FramePlan.of(indices)
        except DecodeError as error:
            return None, str(error)
        if not self.validate:
            return plan, None
        reason = probe_video(data, needed_frames=plan.last + 1, codecs=self.codecs)
        return (None, reason) if reason else (plan, None)

    def _decode_chunk(self, slot: PipelineSlot, datas: list, indices: list) -> DecodeOutput:
        out = DecodeOutput(clips=[None] * len(datas))
        # ~2-4 ms per item (av.open probes the stream): spread over the probe pool, which
        # FFmpeg's open/demux let run in parallel (they release the GIL).
        probes = list(self._probe_pool.map(self._probe, datas, indices))
        good, encoded, frames, expand = [], [], [], []
        for position, (data, (plan, reason)) in enumerate(zip(datas, probes)):
            if plan is None:
                out.failures.append((position, reason))
                continue
            good.append(position)
            encoded.append(np.frombuffer(data, dtype=np.uint8))  # zero-copy view, [num_bytes]
            frames.append(plan.wanted.astype(np.int32))  # sorted unique [U]
            expand.append(None if plan.identity else torch.from_numpy(plan.inverse))  # [T]
        if not good:
            return out
        try:
            (clips,) = slot.run({"encoded": encoded, "frames": frames})
            results = [(self._to_torch(clips[k], expand[k]), None) for k in range(len(good))]
            del clips
        except Exception:  # noqa: BLE001 - isolate the bad item, one run per item
            slot.rebuild()
            results = []
            for k in range(len(good)):
                try:
                    (clips,) = slot.run({"encoded": [encoded[k]], "frames": [frames[k]]})
                    results.append((self._to_torch(clips[0], expand[k]), None))
                except Exception as error:  # noqa: BLE001
                    results.append((None, short_reason(error)))
                    slot.rebuild()
        for position, (clip, reason) in zip(good, results):
            if clip is None:
                out.failures.append((position, reason))
            out.clips[position] = clip
        out.failures.sort()
        return out

    def _to_torch(self, sample, expand: torch.Tensor | None) -> torch.Tensor:
        clip = torch.from_dlpack(sample)  # uint8 [U, H, W, 3], shares DALI's buffer
        if self.dali_device == "cpu":
            clip = resize_short_side(clip, self.short_side)  # [U, H', W', 3], a new tensor
        if expand is not None:
            clip = clip[to_device(expand, clip.device)]  # [T, H, W, 3]: repeated / reordered indices
        return clip

    # -- the public interface ---------------------------------------------------------------------

    def decode(self, datas: list, indices: list, codecs: list | None = None) -> DecodeOutput:
        """Decode a batch: clips uint8 [T, H, W, 3] on `self.device`, per-item failures reported.
        codecs (per item) is not needed: the probe rejects a codec DALI does not take (routed.py
        sends those to PyAV)."""
        check_inputs(datas, indices)
        starts = list(range(0, len(datas), self.batch_size))
        with self._lock:  # round robin over the slots, continued across calls
            first, self._next = self._next, (self._next + len(starts)) % len(self._slots)
        futures = []
        for n, start in enumerate(starts):
            slot = self._slots[(first + n) % len(self._slots)]
            chunk = slice(start, start + self.batch_size)
            futures.append(slot.executor.submit(self._decode_chunk, slot, datas[chunk], indices[chunk]))
        out = DecodeOutput(clips=[])
        for start, future in zip(starts, futures):
            part = future.result()
            out.failures.extend((start + p, reason) for p, reason in part.failures)
            out.clips.extend(part.clips)
        return out

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []
        self._probe_pool.shutdown(wait=True)

    def __enter__(self) -> "DALIVideoDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
