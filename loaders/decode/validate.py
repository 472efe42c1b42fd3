"""A cheap check of an encoded video before it goes into a batch decoder.

DALI decodes a whole batch in one call: one empty, truncated or corrupt file, a codec its backend
cannot take, or a video with fewer frames than the manifest says fails the whole batch, or, worse,
comes back padded with black frames without an error (DALI pads an index past the end). So every
item is probed first with PyAV's demuxer (no decoding, ~0.1 ms for a short clip): the container
must open, hold a video stream of an accepted codec with a frame size, and have at least as many
video packets as the largest frame index needs (one packet per frame for the codecs we take; VP9
hidden frames travel inside superframes). The probe stops reading at the needed packet.

It cannot see corrupt payloads (the bitstream is only parsed by the decoder); the decoders catch
those and isolate the bad item (see dali.py).
"""

from __future__ import annotations

import io
from collections.abc import Collection

import av

from loaders.decode.common import counts_as_frame, too_few_frames


def _open(data) -> av.container.InputContainer:
    return av.open(io.BytesIO(data), mode="r")


def probe_video(data, *, needed_frames: int, codecs: Collection[str] | None = None) -> str | None:
    """Why `data` cannot give frames 0..needed_frames-1, or None if it can.

    data: the encoded file (bytes, bytearray, memoryview or uint8 numpy array).
    needed_frames: 1 + the largest frame index the clip needs.
    codecs: accepted codec names as FFmpeg spells them ("vp9", "h264", ...); None accepts any.
    """
    if data is None or len(data) == 0:
        return "empty file"
    try:
        with _open(data) as container:
            if not container.streams.video:
                return "no video stream"
            stream = container.streams.video[0]
            codec = stream.codec_context.codec.canonical_name
            if codecs is not None and codec not in codecs:
                return f"codec {codec} not taken by this decoder (takes {', '.join(sorted(codecs))})"
            if not stream.codec_context.width or not stream.codec_context.height:
                return "video stream has no frame size"
            count = 0
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                # DALI's frame index skips packets with a negative timestamp; count as it does.
                if not counts_as_frame(packet.pts if packet.pts is not None else packet.dts):
                    continue
                count += 1
                if count >= needed_frames:
                    return None
            return too_few_frames(count, needed_frames)
    except Exception as error:  # noqa: BLE001 - a probe reports, it never raises
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"cannot demux: {type(error).__name__}: {text}"[:200]


def detect_codec(data) -> str | None:
    """The codec of the first video stream ("vp9", "h264", ...), or None if it cannot be read."""
    try:
        with _open(data) as container:
            return container.streams.video[0].codec_context.codec.canonical_name
    except Exception:  # noqa: BLE001
        return None
