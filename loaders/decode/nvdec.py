"""Video decoding on NVDEC with decoders reused across clips (PyNvVideoCodec), several at once.

DALI's NVDEC path rebuilds its per-sample state for every clip (container, frame index, parser)
and maps each frame on one stream: 20-54 short 240p clips/s on an H100 (benchmarks/results/).
Here each decoding thread keeps one NVDEC decoder per codec for its whole life and only feeds it
packets; the thread pool keeps several decoders, and so several of the GPU's NVDEC engines, busy.

Per clip, on one of `threads` threads (each with its own CUDA stream and decoders):

    bytes --packets.DemuxedVideo (PyAV's demuxer, Annex-B filter)--> packets in decode order
      --Engine.decode(packet) (NVDEC; the thread's decoder for this codec)--> NV12 frames in
        presentation order, each with its packet's pts
      --FrameCollector (common.counts_as_frame, the counting rule of every backend)--> the wanted
        frames, copied into uint8 [U, H*3/2, W] as they come out; packets stop once the last
        wanted frame is out, then an end-of-stream packet flushes the decoder for the next clip
      --nv12.nv12_to_rgb--> uint8 [U, H, W, 3] --common.resize_short_side--> [U, H', W', 3]
      --gather with the plan's inverse--> uint8 [T, H', W', 3] (repeats from edge padding)

The frames, their order and the short-side size are those of pyav.py and dali.py (shared code in
common.py). A damaged item fails alone with a reason; a decoder that raised is dropped and made
anew for the next clip. The clip is handed over with an event: the caller's stream waits for the
decoding thread's stream, nothing blocks the host.

EngineCache holds one thread's decoders: made on first use of a codec with room for frames up to
`max_size`, reconfigured (not recreated) when the frame size changes within that, made anew with a
larger room when a clip is larger. PyNvVideoCodec is imported only when a GPU decoder is made.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from loaders.decode.common import (DecodeError, DecodeOutput, FramePlan, check_inputs, counts_as_frame,
                                   decode_or_reason,
                                   resize_short_side, short_reason, to_device, too_few_frames)
from loaders.decode.nv12 import chroma_is_left_sited, nv12_to_rgb
from loaders.decode.packets import NVDEC_CODECS, DemuxedVideo

# Room a new decoder gets (width, height): SSv2 / Kinetics sizes reconfigure within it instead of
# making a new decoder; each decoder's surfaces at this size take a few tens of MB of GPU memory.
DEFAULT_MAX_SIZE = (1920, 1088)


class Engine(Protocol):
    """One NVDEC decoder (or a stand-in with the same behaviour, for tests on the CPU)."""

    max_size: tuple[int, int]

    def decode(self, data: np.ndarray | None, pts: int) -> list:
        """Feed one packet (None: end of stream, flush everything in flight); returns the frames
        it completes, in presentation order, as opaque handles valid until the next call."""

    def timestamp(self, frame) -> int:
        """The pts of the packet a frame came from."""

    def nv12(self, frame) -> torch.Tensor:
        """uint8 NV12 [H*3/2, W] (a view of the decoder's buffer) of a frame handle."""

    def reconfigure(self, width: int, height: int) -> None:
        """Get ready for frames of a new size (within max_size)."""

    def close(self) -> None: ...


class PyNvEngine:
    """An NVDEC decoder made by PyNvVideoCodec (CreateDecoder), fed one packet at a time.

    Output NV12 in device memory on `stream` (the thread's stream, so the copies and the colour
    conversion that follow queue behind the decoder's own work on one stream). Decode releases the
    GIL while NVDEC parses and decodes.
    """

    def __init__(self, codec: str, max_size: tuple[int, int], stream: torch.cuda.Stream, device_index: int):
        import PyNvVideoCodec as nvc

        self.max_size = max_size
        self._decoder = nvc.CreateDecoder(gpuid=device_index, codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec]),
                                          cudacontext=0, cudastream=stream.cuda_stream, usedevicememory=True,
                                          maxwidth=max_size[0], maxheight=max_size[1],
                                          outputColorType=nvc.OutputColorType.NATIVE)
        self._packet = nvc.PacketData()

    def decode(self, data: np.ndarray | None, pts: int) -> list:
        packet = self._packet
        if data is None:  # an empty packet is NVDEC's end of stream: it returns what is in flight
            packet.bsl_data, packet.bsl = 0, 0
        else:
            packet.bsl_data, packet.bsl = int(data.ctypes.data), int(data.size)  # `data` outlives the call
        packet.pts = pts
        return list(self._decoder.Decode(packet))

    def timestamp(self, frame) -> int:
        return int(frame.timestamp)

    def nv12(self, frame) -> torch.Tensor:
        return torch.from_dlpack(frame)  # the stream waits on the decoder's event (DLPack protocol)

    def reconfigure(self, width: int, height: int) -> None:
        self._decoder.setReconfigParams(width, height)

    def close(self) -> None:
        self._decoder = None


@dataclass
class EngineCache:
    """One thread's decoders, one per codec, reused across clips (see the module docstring).

    make(codec, max_size) -> Engine. Counters say what happened, for the benchmark and the tests.
    """

    make: Callable[[str, tuple[int, int]], Engine]
    min_size: tuple[int, int] = DEFAULT_MAX_SIZE
    created: int = 0
    reused: int = 0
    reconfigured: int = 0
    dropped: int = 0
    _engines: dict = field(default_factory=dict)  # codec -> (engine, (width, height) of its last clip)

    def get(self, codec: str, width: int, height: int) -> Engine:
        engine, size = self._engines.get(codec, (None, None))
        if engine is not None and (width > engine.max_size[0] or height > engine.max_size[1]):
            room = (max(width, engine.max_size[0]), max(height, engine.max_size[1]))
            self.drop(codec)  # too small: a larger one below (NVDEC cannot grow a decoder)
            engine = None
        else:
            room = (max(width, self.min_size[0]), max(height, self.min_size[1]))
        if engine is None:
            engine = self.make(codec, room)
            self.created += 1
        elif size != (width, height):
            engine.reconfigure(width, height)
            self.reconfigured += 1
        else:
            self.reused += 1
        self._engines[codec] = (engine, (width, height))
        return engine

    def drop(self, codec: str) -> None:
        """Forget the decoder of `codec` (after it raised: its state is unknown)."""
        engine, _ = self._engines.pop(codec, (None, None))
        if engine is not None:
            self.dropped += 1
            with contextlib.suppress(Exception):
                engine.close()

    def close(self) -> None:
        for codec in list(self._engines):
            engine, _ = self._engines.pop(codec)
            with contextlib.suppress(Exception):
                engine.close()


class FrameCollector:
    """Decoded frames, in presentation order, -> the positions of the clip's plan they fill.

    offer(pts) gives each frame its index by the shared rule (common.counts_as_frame) and says
    which slot of `plan.wanted` it fills (None: not wanted, not counted, or the clip is complete).
    """

    def __init__(self, plan: FramePlan):
        self.plan = plan
        self.count = 0  # frames counted so far
        self._slot = {int(index): k for k, index in enumerate(plan.wanted)}

    @property
    def done(self) -> bool:
        """True once the last wanted frame is out: no more packets are needed."""
        return self.count > self.plan.last

    def offer(self, pts: int | None) -> int | None:
        if self.done or not counts_as_frame(pts):
            return None
        index, self.count = self.count, self.count + 1
        return self._slot.get(index)

    def check(self) -> None:
        """DecodeError if the video ended before the last wanted frame."""
        if not self.done:
            raise DecodeError(too_few_frames(self.count, self.plan.last + 1))


@dataclass
class _ThreadState:
    stream: torch.cuda.Stream | None
    engines: EngineCache


class NvdecDecoder:
    """Decodes clips on NVDEC; see the module docstring.

    threads: clips decoded at once, each thread with its own decoders and CUDA stream (one
        thread keeps at most one NVDEC engine busy; an H100 / H200 has 7).
    device: the CUDA device to decode on; clips land there.
    short_side: short side of the returned frames (None keeps the source size).
    max_size: (width, height) room of a new decoder (larger clips get a larger one).
    make_engine: (codec, max_size, stream) -> Engine; default PyNvVideoCodec's decoder. Tests pass
        a stand-in so everything but NVDEC itself runs on the CPU.
    """

    name = "nvdec"

    def __init__(self, threads: int = 4, *, device: torch.device | str = "cuda", short_side: int | None = 256,
                 max_size: tuple[int, int] = DEFAULT_MAX_SIZE, make_engine: Callable | None = None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.device = torch.device(device)
        if make_engine is None:
            if self.device.type != "cuda":
                raise ValueError(f"NVDEC decodes on a CUDA device, got {self.device}")
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)

            def make_engine(codec, room, stream):
                return PyNvEngine(codec, room, stream, index)
        self.threads = threads
        self.short_side = short_side
        self.max_size = max_size
        self.codecs = frozenset(NVDEC_CODECS)
        self._make_engine = make_engine
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nvdec")
        self._local = threading.local()
        self._states: list[_ThreadState] = []  # every thread's, to close them and to count
        self._lock = threading.Lock()

    # -- one clip, on a pool thread --------------------------------------------------------------

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            state = _ThreadState(stream, EngineCache(lambda codec, room: self._make_engine(codec, room, stream),
                                                     min_size=self.max_size))
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def decode_clip(self, data, indices) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """The frames `indices` of one encoded video: uint8 [T, H', W', 3] on the device, and the
        event that marks it ready on this thread's stream (None on the CPU). Raises DecodeError."""
        plan = FramePlan.of(indices)  # wanted [U], inverse [T]
        state = self._state()
        with (torch.cuda.stream(state.stream) if state.stream is not None else contextlib.nullcontext()):
            with DemuxedVideo(data) as video:
                if video.codec not in self.codecs:
                    raise DecodeError(f"codec {video.codec} not taken by NVDEC here "
                                      f"(takes {', '.join(sorted(self.codecs))})")
                height, width = video.height, video.width
                if height % 2 or width % 2:
                    raise DecodeError(f"odd frame size {width}x{height}: not decoded on NVDEC")
                nv12 = torch.empty((len(plan.wanted), height * 3 // 2, width), dtype=torch.uint8,
                                   device=self.device)  # [U, H*3/2, W], filled as frames come out
                collector = FrameCollector(plan)
                engine = state.engines.get(video.codec, width, height)
                try:
                    for packet in video.packets():
                        self._keep(engine, engine.decode(packet.data, packet.pts), collector, nv12)
                        if collector.done:
                            break  # the rest of the file is never read
                    self._keep(engine, engine.decode(None, 0), collector, nv12)  # flush, ready for the next clip
                except Exception as error:  # noqa: BLE001 - the decoder's state is unknown now
                    state.engines.drop(video.codec)
                    if isinstance(error, DecodeError):
                        raise DecodeError(f"{error} after {collector.count} frames") from error
                    raise DecodeError(f"NVDEC failed after {collector.count} frames: {short_reason(error)}") from error
                collector.check()
                left = chroma_is_left_sited(video.codec)
                rgb = nv12_to_rgb(nv12, height, width, full_range=video.full_range, left_sited=left)  # [U, H, W, 3]
            clip = resize_short_side(rgb, self.short_side)  # [U, H', W', 3]
            if not plan.identity:
                clip = clip[to_device(torch.from_numpy(plan.inverse), self.device)]  # [T, H', W', 3]
            event = None
            if state.stream is not None:
                event = torch.cuda.Event()
                event.record(state.stream)
        return clip, event

    @staticmethod
    def _keep(engine: Engine, frames: list, collector: FrameCollector, out: torch.Tensor) -> None:
        """Copy the wanted ones of `frames` into their slots of `out` [U, H*3/2, W] (the decoder
        reuses its buffers on the next call)."""
        for frame in frames:
            slot = collector.offer(engine.timestamp(frame))
            if slot is None:
                continue
            view = engine.nv12(frame)
            if view.numel() != out[slot].numel():
                raise DecodeError(f"frame size changes inside the video ({view.numel()} bytes of NV12, "
                                  f"expected {out[slot].numel()})")
            out[slot].copy_(view.reshape(out.shape[1:]), non_blocking=True)

    def _decode_item(self, data, indices):
        return decode_or_reason(self.decode_clip, data, indices)

    # -- the public interface ---------------------------------------------------------------------

    def decode(self, datas: list, indices: list, codecs: list | None = None) -> DecodeOutput:
        """Decode a batch: clips uint8 [T, H, W, 3] on `device`, per-item failures reported.
        codecs (per item) is not needed: the demuxer reads each item's codec from its bytes."""
        check_inputs(datas, indices)
        results = list(self._pool.map(self._decode_item, datas, indices))
        consumer = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        out = DecodeOutput(clips=[])
        for position, (result, reason) in enumerate(results):
            if result is None:
                out.clips.append(None)
                out.failures.append((position, reason))
                continue
            clip, event = result
            if event is not None:  # the caller's stream waits for the decoding thread's work
                consumer.wait_event(event)
                clip.record_stream(consumer)  # and its memory is not reused before the caller is done
            out.clips.append(clip)
        return out

    def stats(self) -> dict[str, int]:
        """Decoders created, reused, reconfigured and dropped, summed over the threads."""
        with self._lock:
            states = list(self._states)
        keys = ("created", "reused", "reconfigured", "dropped")
        return {key: sum(getattr(state.engines, key) for state in states) for key in keys}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for state in self._states:
                state.engines.close()
            self._states = []

    def __enter__(self) -> "NvdecDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
