"""An encoded video -> the packets NVDEC takes, demuxed on the CPU with PyAV (nothing decoded here).

    data: bytes of an .mp4 / .webm / .mkv
      -> av.open, first video stream: codec, frame size, colour range
      -> packets in decode order, read lazily (the caller stops once its clip's last frame is out)
         H.264 / HEVC with avcC / hvcC extradata (MP4, MKV: length-prefixed NAL units) go through
         FFmpeg's *_mp4toannexb bitstream filter: start codes, and the parameter sets in front of
         every keyframe, which is what NVDEC's parser reads. VP8 / VP9 packets go as they are
         (a VP9 superframe carries its hidden frames, one packet per shown frame).
      -> Packet(data: uint8 [n], pts)    pts in the stream's time base (dts where pts is missing)

NVDEC hands each packet's timestamp back on the frame that packet completes, in presentation
order, so the NVDEC backend counts frames exactly as PyAV and DALI do (common.counts_as_frame).
The demuxer is PyAV's (FFmpeg's) for the same reason: the same container parsing, the same
timestamps, the same reasons for a damaged file as the other backends.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import NamedTuple

import av
import numpy as np

from loaders.decode.common import DecodeError, short_reason

# FFmpeg's codec name -> the name of PyNvVideoCodec's cudaVideoCodec member. Only codecs whose
# packets need nothing beyond the Annex-B filter; AV1 in MP4/MKV keeps its sequence header in the
# av1C box and is not handled here (those items go to PyAV, see loaders.decode.make_video_decoder).
NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9"}
_ANNEX_B_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range samples


class Packet(NamedTuple):
    """One packet for NVDEC: data uint8 [n] (a view that keeps FFmpeg's packet alive), pts."""

    data: np.ndarray
    pts: int


def _is_annex_b(extradata: bytes) -> bool:
    return extradata[:4] == b"\x00\x00\x00\x01" or extradata[:3] == b"\x00\x00\x01"


class DemuxedVideo:
    """The first video stream of `data`, opened for demuxing; raises DecodeError with the reason.

    codec: FFmpeg's canonical name ("h264", "vp9", ...); width, height: the frame size;
    full_range: True for full-range (JPEG) samples, as PyAV's conversion decides (pyav.py).
    """

    def __init__(self, data):
        if data is None or len(data) == 0:
            raise DecodeError("empty file")
        try:
            self._container = av.open(io.BytesIO(data), mode="r")
        except Exception as error:  # noqa: BLE001 - FFmpeg errors become the item's reason
            raise DecodeError(f"cannot demux: {short_reason(error)}") from error
        try:
            if not self._container.streams.video:
                raise DecodeError("no video stream")
            self._stream = self._container.streams.video[0]
            context = self._stream.codec_context
            self.codec = context.codec.canonical_name
            self.width, self.height = int(context.width or 0), int(context.height or 0)
            if not self.width or not self.height:
                raise DecodeError("video stream has no frame size")
            pix_fmt = context.pix_fmt or ""
            self.full_range = context.color_range == _JPEG_RANGE or pix_fmt.startswith("yuvj")
            extradata = bytes(context.extradata or b"")
            self._filter = None
            if self.codec in _ANNEX_B_FILTERS and extradata and not _is_annex_b(extradata):
                from av.bitstream import BitStreamFilterContext

                self._filter = BitStreamFilterContext(_ANNEX_B_FILTERS[self.codec], self._stream)
        except DecodeError:
            self.close()
            raise
        except Exception as error:  # noqa: BLE001
            self.close()
            raise DecodeError(f"cannot demux: {short_reason(error)}") from error

    def packets(self) -> Iterator[Packet]:
        """The stream's packets in decode order, Annex-B where NVDEC needs it. Raises DecodeError
        when the container breaks off (the caller reports how far it got)."""
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker: the caller flushes
                    continue
                for out in (self._filter.filter(packet) if self._filter is not None else (packet,)):
                    pts = out.pts if out.pts is not None else out.dts
                    yield Packet(np.frombuffer(out, dtype=np.uint8), 0 if pts is None else int(pts))
        except Exception as error:  # noqa: BLE001
            raise DecodeError(f"demux failed: {short_reason(error)}") from error

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()

    def __enter__(self) -> "DemuxedVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
