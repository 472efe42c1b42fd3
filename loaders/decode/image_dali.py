"""JPEG decoding with DALI's image decoder: device "mixed" uses the GPU's hardware JPEG decoder
(A100 / H100 / H200) plus nvJPEG on CUDA cores; "cpu" runs the same pipeline on the CPU (tests).

    encoded  external_source  uint8 [bytes]  a zero-copy view of each file's bytes
      -> fn.decoders.image(device, output_type=RGB)   uint8 [H, W, 3], layout HWC, per image
      -> torch.from_dlpack per sample (no copy; the output lives as long as its tensor, dynamic
         executor)

One pipeline of up to `batch_size` images per run (a batch of 256 ImageNet JPEGs is one run).
DALI fails the whole run on one bad file, so on an error the pipeline is rebuilt and the images
are decoded one at a time to find the bad ones; those come back as None and the caller
(image.ImageDecoder) tries them on the CPU, which also reads what DALI cannot (CMYK, odd files).
"""

from __future__ import annotations

import numpy as np
import torch

from loaders.decode.dali import PipelineSlot


def build_image_pipeline(*, batch_size: int, device: str, device_id: int | None, num_threads: int,
                         hw_decoder_load: float | None = None):
    """A built DALI pipeline with input "encoded" and one output (the RGB images)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    # As dali.build_pipeline: one batch fed and run at once (no prefetch queue), no thread
    # pinning (several ranks share a node).
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads,
                    device_id=device_id if device == "mixed" else None,
                    prefetch_queue_depth=1, set_affinity=False)
    options = {"hw_decoder_load": hw_decoder_load} if (device == "mixed" and hw_decoder_load is not None) else {}
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=True)
        images = fn.decoders.image(encoded, device=device, output_type=types.RGB, **options)  # [H, W, 3]
        pipe.set_outputs(images)
    pipe.build()
    return pipe


class DALIImageDecoder:
    """Decodes JPEGs with DALI; see the module docstring.

    batch_size: most images per pipeline run (longer lists are split).
    device: "mixed" (GPU, needs `device_id`) or "cpu".
    num_threads: DALI CPU threads (JPEG parsing and the host part of the decode).
    hw_decoder_load: share of the images sent to the hardware JPEG decoder (mixed; None: DALI's default).
    """

    name = "dali"

    def __init__(self, batch_size: int = 256, *, device: str = "mixed", device_id: int | None = None,
                 num_threads: int = 4, hw_decoder_load: float | None = None):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"device must be 'cpu' or 'mixed', got {device!r}")
        if device == "mixed" and device_id is None:
            raise ValueError("device='mixed' needs a device_id (the CUDA device to decode on)")
        self.batch_size = batch_size
        self.device = torch.device("cuda", device_id) if device == "mixed" else torch.device("cpu")

        def make_pipeline():
            return build_image_pipeline(batch_size=batch_size, device=device, device_id=device_id,
                                        num_threads=num_threads, hw_decoder_load=hw_decoder_load)

        self._slot = PipelineSlot(make_pipeline, "dali-image")

    def _run_chunk(self, encoded: list[np.ndarray]) -> list[torch.Tensor | None]:
        try:
            (images,) = self._slot.run({"encoded": encoded})
            return [torch.from_dlpack(images[k]) for k in range(len(encoded))]  # [H, W, 3] each
        except Exception:  # noqa: BLE001 - find the bad ones, one run each
            self._slot.rebuild()
        out: list[torch.Tensor | None] = []
        for one in encoded:
            try:
                (images,) = self._slot.run({"encoded": [one]})
                out.append(torch.from_dlpack(images[0]))
            except Exception:  # noqa: BLE001 - the caller tries this one on the CPU
                out.append(None)
                self._slot.rebuild()
        return out

    def decode_jpegs(self, datas: list) -> list[torch.Tensor | None]:
        """uint8 [H, W, 3] on the decoder's device per JPEG, None where DALI could not decode it."""
        encoded = [np.frombuffer(data, dtype=np.uint8) for data in datas]  # zero-copy views
        out: list[torch.Tensor | None] = []
        for start in range(0, len(encoded), self.batch_size):
            out.extend(self._slot.executor.submit(self._run_chunk, encoded[start:start + self.batch_size]).result())
        return out

    def close(self) -> None:
        self._slot.close()
