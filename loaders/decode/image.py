"""Image decoding: JPEGs on the GPU (nvJPEG through torchvision, or DALI's mixed decoder with the
hardware JPEG decoder), libjpeg/libpng on the CPU.

decode(datas) -> DecodeOutput with clips uint8 [H, W, 3] (channels last, like the video clips) on
the decoder's device. On a GPU all JPEGs of a batch go to the GPU decoder in one call (`jpeg`:
"nvjpeg" torchvision.io.decode_jpeg batched; "dali" image_dali.DALIImageDecoder; "cpu" none: CPU
threads, then a copy); if that call fails (one bad file fails it), each JPEG is tried alone to
isolate the bad one. Other formats (PNG, GIF, WebP, ...) and JPEGs the GPU decoder refuses (CMYK)
are decoded on the CPU, by torchvision and then by PIL, and moved to the device. Failures come
back as (position, reason); nothing raises.

make_image_decoder picks `jpeg` on a GPU by the measured table (loaders.decode.decide_image):
the fastest measured here, else nvJPEG as before; on the CPU it is the CPU path.

max_short_side: images whose short side is larger are shrunk to it (antialiased bilinear) as
soon as they are decoded. RandomResizedCrop keeps crop fractions, not pixel sizes, so this only
drops detail a 224 crop could not hold anyway, bounds the memory of batch assembly (a 4000x3000
photo is 48 M floats once converted), and spares the crop's resampling (which does not
antialias) a large shrink. 448 keeps every crop of scale >= 0.25 at or above 224 pixels.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from loaders.decode.common import DecodeOutput, resize_short_side, short_reason, to_device

_JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_BACKENDS = ("nvjpeg", "dali", "cpu")  # what decodes JPEGs when the device is a GPU


def _decode_cpu(data: bytes) -> torch.Tensor:
    """One image on the CPU: uint8 [3, H, W]; torchvision first, PIL for what it cannot read."""
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception as torchvision_error:  # noqa: BLE001
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                rgb = np.asarray(image.convert("RGB"))  # [H, W, 3]
            return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        except Exception:  # noqa: BLE001 - report torchvision's reason, it is the main decoder
            raise torchvision_error from None


class ImageDecoder:
    """Decodes encoded images; see the module docstring.

    device: where the clips land; a CUDA device decodes JPEGs there with `jpeg`.
    threads: images decoded at once on the CPU (a thread pool; torchvision releases the GIL).
    max_short_side: shrink larger images to this short side (None keeps every size).
    jpeg: the JPEG decoder on a GPU (JPEG_BACKENDS): "nvjpeg" (torchvision), "dali" (DALI mixed,
        the hardware JPEG decoder), "cpu" (CPU threads; the images are copied over).
    dali_threads: DALI's CPU threads (jpeg="dali").
    """

    def __init__(self, device: torch.device | str = "cpu", *, threads: int = 1,
                 max_short_side: int | None = 448, jpeg: str = "nvjpeg", dali_threads: int = 4,
                 batch_size: int = 256):
        if jpeg not in JPEG_BACKENDS:
            raise ValueError(f"jpeg must be one of {JPEG_BACKENDS}, got {jpeg!r}")
        self.device = torch.device(device)
        self.max_short_side = max_short_side
        self.jpeg = jpeg if self.device.type == "cuda" else "cpu"
        self.name = {"nvjpeg": "torchvision-nvjpeg", "dali": "dali-mixed", "cpu": "torchvision"}[self.jpeg]
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="jpeg") if threads > 1 else None
        self._dali = None
        if self.jpeg == "dali":
            from loaders.decode.image_dali import DALIImageDecoder

            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._dali = DALIImageDecoder(batch_size, device="mixed", device_id=index, num_threads=dali_threads)

    def _finish(self, chw: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> [H, W, 3] on the device, short side capped at max_short_side."""
        hwc = to_device(chw, self.device).permute(1, 2, 0)  # [H, W, 3] view
        if self.max_short_side is not None and min(hwc.shape[:2]) > self.max_short_side:
            hwc = resize_short_side(hwc[None], self.max_short_side)[0]
        return hwc

    def _decode_item_cpu(self, data) -> tuple[torch.Tensor | None, str | None]:
        if data is None or len(data) == 0:
            return None, "empty file"
        try:
            return self._finish(_decode_cpu(data)), None
        except Exception as error:  # noqa: BLE001 - one bad item never breaks the batch
            return None, short_reason(error)

    def _map(self, fn, items):
        return list(self._pool.map(fn, items)) if self._pool is not None and len(items) > 1 else [fn(x) for x in items]

    def decode(self, datas: list, indices=None) -> DecodeOutput:
        """Decode a batch of images: clips uint8 [H, W, 3] on `device`; `indices` is ignored
        (it keeps the video decoders' call shape)."""
        results: list[tuple[torch.Tensor | None, str | None]] = [(None, "not decoded")] * len(datas)
        on_cpu = list(range(len(datas)))
        if self.jpeg != "cpu":
            jpegs = [i for i, d in enumerate(datas) if d is not None and bytes(d[:3]) == _JPEG_MAGIC]
            for i, clip in zip(jpegs, self._decode_jpegs_gpu([datas[i] for i in jpegs])):
                if clip is not None:
                    results[i] = (self._finish(clip), None)
            on_cpu = [i for i in on_cpu if results[i][0] is None]
        for i, result in zip(on_cpu, self._map(self._decode_item_cpu, [datas[i] for i in on_cpu])):
            results[i] = result
        out = DecodeOutput(clips=[clip for clip, _ in results])
        out.failures = [(i, reason) for i, (clip, reason) in enumerate(results) if clip is None]
        return out

    def _decode_jpegs_gpu(self, datas: list) -> list[torch.Tensor | None]:
        """nvJPEG (or DALI), batched; on an error each image alone. None where it failed.
        uint8 [3, H, W] per image (DALI's [H, W, 3] are permuted views)."""
        if not datas:
            return []
        if self._dali is not None:
            return [None if hwc is None else hwc.permute(2, 0, 1) for hwc in self._dali.decode_jpegs(datas)]
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
        except Exception:  # noqa: BLE001 - find the bad ones; the CPU path gets them next
            out = []
            for one in encoded:
                try:
                    out.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device))
                except Exception:  # noqa: BLE001
                    out.append(None)
            return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._dali is not None:
            self._dali.close()
            self._dali = None

    def __enter__(self) -> "ImageDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_image_decoder(device: torch.device | str = "cpu", *, threads: int = 1,
                       max_short_side: int | None = 448) -> ImageDecoder:
    """An ImageDecoder whose JPEG path is the fastest measured on this GPU (loaders.decode.decide_image;
    nvJPEG without a table, the CPU path on the CPU); logs one line: which and why."""
    from loaders.decode import decide_image, log

    device = torch.device(device)
    jpeg, why, row = decide_image(device)
    dali_threads = (row.threads or 4) if row is not None and jpeg == "dali" else 4
    decoder = ImageDecoder(device, threads=threads, max_short_side=max_short_side, jpeg=jpeg,
                           dali_threads=dali_threads)
    log.info("image decoder: %s (device %s): %s", decoder.name, device, why)
    return decoder
