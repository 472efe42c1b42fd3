"""DALI (or NVDEC) for the codecs it decodes on this machine, PyAV for the others, chosen per item.

DALI's CPU decoder takes VP8, VP9 and MJPEG only (its libavcodec has no H.264), and NVDEC needs a
GPU, so one decoder for a whole manifest would drop every .mp4 of a folder that mixes .webm and
.mp4 (or refuse to start when the first item is an .mp4). Instead each batch is split:

    datas [N], indices [N], codecs [N] (the manifest's, else read from the bytes)
      -> codec in DALI's set (or unknown): DALIVideoDecoder   positions P
      -> any other codec:                  PyAVDecoder        positions Q (made on first use)
      -> clips and failures merged back into input order       DecodeOutput [N]

Both backends return the same frames for the same indices (see pyav.py), so the split changes no
pixels. The first item of each rerouted codec logs one line. The NVDEC backend (nvdec.py) is
wrapped the same way, for the codecs it does not take (AV1, MPEG-4, ...).
"""

from __future__ import annotations

import logging
from typing import Callable

from loaders.decode.common import DecodeOutput, check_inputs
from loaders.decode.validate import detect_codec

log = logging.getLogger("loaders.decode")


class RoutedDecoder:
    """`dali` (or another primary decoder) for the items whose codec is in `takes`,
    `make_fallback()` (PyAV) for the rest.

    what: how the log line names the primary's limit, e.g. "DALI's CPU decoder (no NVDEC without a GPU)".
    """

    def __init__(self, dali, takes: frozenset[str], make_fallback: Callable, what: str):
        self.primary = self.dali = dali  # `dali`: the name from when DALI was the only primary
        self.name = dali.name
        self.dali_device, self.device = getattr(dali, "dali_device", None), dali.device  # what reports name
        self.takes = takes
        self._make_fallback = make_fallback
        self._what = what
        self.fallback = None
        self.rerouted: set[str] = set()  # codecs sent to the fallback so far (each logged once)

    def _goes_to_dali(self, codec: str | None, data) -> bool:
        codec = codec or detect_codec(data)
        if codec is None or codec in self.takes:
            return True  # unreadable: DALI's probe gives the per-item reason
        if codec not in self.rerouted:
            self.rerouted.add(codec)
            log.warning("%s cannot decode %s (takes %s): %s items are decoded with PyAV", self._what,
                        codec, ", ".join(sorted(self.takes)), codec)
        return False

    def decode(self, datas: list, indices: list, codecs: list | None = None) -> DecodeOutput:
        """Decode a batch; codecs: per item FFmpeg's codec name, or None to read it from the bytes."""
        check_inputs(datas, indices)
        codecs = codecs if codecs is not None else [None] * len(datas)
        to_dali = [self._goes_to_dali(c, d) for c, d in zip(codecs, datas)]
        out = DecodeOutput(clips=[None] * len(datas))
        for use_dali in (True, False):
            positions = [p for p, d in enumerate(to_dali) if d == use_dali]
            if not positions:
                continue
            if not use_dali and self.fallback is None:
                try:
                    self.fallback = self._make_fallback()
                except ImportError as error:  # no PyAV: those items fail, the others decode
                    out.failures.extend((p, f"no decoder for its codec here: {error}") for p in positions)
                    continue
            decoder = self.dali if use_dali else self.fallback
            part = decoder.decode([datas[p] for p in positions], [indices[p] for p in positions])
            for p, clip in zip(positions, part.clips):
                out.clips[p] = clip
            out.failures.extend((positions[k], reason) for k, reason in part.failures)
        out.failures.sort()
        return out

    def close(self) -> None:
        self.dali.close()
        if self.fallback is not None:
            self.fallback.close()
