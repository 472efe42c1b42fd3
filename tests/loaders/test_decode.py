"""Decoders: the right frames, the same pixels from every backend, bad files reported per item.

The test videos are generated here with PyAV: 64x48, 24 frames at 12 fps, each frame carrying its
own index as a 5-bit code of black/white blocks along the top, over a moving texture.
"""

import io
import logging

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg, encode_png

import loaders.decode as decode
from loaders.decode import choose_backend, make_video_decoder
from loaders.decode.common import resized_shape
from loaders.decode.image import ImageDecoder
from loaders.decode.pyav import PyAVDecoder
from loaders.decode.validate import detect_codec, probe_video
from loaders.errors import LoaderError

WIDTH, HEIGHT, FRAMES, FPS = 64, 48, 24, 12
BLOCK = 12  # code block width in pixels; 5 blocks along the top 16 rows


def frame_pixels(index: int, texture: np.ndarray) -> np.ndarray:
    """uint8 [48, 64, 3]: a moving texture with the frame index coded in the top 16 rows."""
    img = np.ascontiguousarray(np.roll(texture, index, axis=1)[:HEIGHT, :WIDTH])
    img[:16, :5 * BLOCK] = 128
    for bit in range(5):
        img[2:14, bit * BLOCK + 2:(bit + 1) * BLOCK - 2] = 255 if (index >> bit) & 1 else 0
    return img


def make_video(codec: str = "libvpx-vp9", container: str = "webm", frames: int = FRAMES,
               seed: int = 0, scale: int = 1, options: dict | None = None) -> bytes:
    """Encoded test video of `frames` coded frames, 64x48 times `scale` (NVDEC needs >= 128).
    options: the encoder's (default: near-lossless realtime VP9 settings for VP9, none otherwise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 8, 12)).astype(np.float32) * 160 + 48)
    texture = F.interpolate(coarse, size=(HEIGHT, WIDTH + 32), mode="bicubic", align_corners=False)
    texture = texture[0].clamp(0, 255).byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH * scale, HEIGHT * scale, "yuv420p"
        if options is not None:
            stream.options = options
        elif codec == "libvpx-vp9":
            stream.options = {"crf": "12", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for i in range(frames):
            pixels = frame_pixels(i, texture).repeat(scale, axis=0).repeat(scale, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def read_codes(clip: torch.Tensor) -> list[int]:
    """The frame index coded in each frame of a clip [T, H, W, 3] of any size."""
    scale = clip.shape[1] / HEIGHT
    out = []
    for frame in clip.float():
        code = 0
        for bit in range(5):
            y, x = int(8 * scale), int((bit * BLOCK + BLOCK / 2) * scale)
            patch = frame[y - 1:y + 2, x - 1:x + 2]
            code |= int(patch.mean() > 128) << bit
        out.append(code)
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def vp9() -> bytes:
    return make_video()


@pytest.fixture(scope="module")
def h264() -> bytes:
    return make_video("libx264", "mp4")


def bad_files(good: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "truncated": good[:len(good) // 3],
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
        "zeroed": good[:len(good) // 2] + bytes(len(good) - len(good) // 2),
    }


needs_dali = pytest.mark.skipif(decode.dali_import_error() is not None, reason="DALI is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def dali_cpu(**kwargs):
    from loaders.decode.dali import DALIVideoDecoder

    return DALIVideoDecoder(kwargs.pop("batch_size", 8), device="cpu", num_threads=1, **kwargs)


# ---- the right frames ---------------------------------------------------------------------------

INDICES = [[0, 3, 7, 23], [5, 5, 2, 17, 17], [23]]  # unsorted and repeated indices are allowed


def test_pyav_returns_the_requested_frames(vp9):
    with PyAVDecoder(2, short_side=None) as decoder:
        out = decoder.decode([vp9] * 3, INDICES)
    assert out.failures == []
    for clip, index in zip(out.clips, INDICES):
        assert clip.dtype == torch.uint8 and clip.shape == (len(index), HEIGHT, WIDTH, 3)
        assert read_codes(clip) == index


@needs_dali
@pytest.mark.parametrize("short_side", [None, 96])
def test_dali_cpu_and_pyav_agree_on_vp9(vp9, short_side):
    with dali_cpu(short_side=short_side) as dali, PyAVDecoder(1, short_side=short_side) as pyav:
        a = dali.decode([vp9] * 3, INDICES)
        b = pyav.decode([vp9] * 3, INDICES)
    assert a.failures == [] and b.failures == []
    height, width = resized_shape(HEIGHT, WIDTH, short_side)
    for x, y, index in zip(a.clips, b.clips, INDICES):
        assert x.shape == y.shape == (len(index), height, width, 3)
        assert psnr(x, y) >= 40.0
        assert read_codes(x) == index and read_codes(y) == index


def test_short_side_resize_keeps_aspect_and_rounds_like_dali():
    assert resized_shape(240, 426, 256) == (256, 454)
    assert resized_shape(240, 320, 256) == (256, 341)
    assert resized_shape(64, 97, 32) == (32, 49)  # 48.5 rounds up, as DALI rounds
    assert resized_shape(97, 64, 32) == (49, 32)
    assert resized_shape(48, 64, None) == (48, 64)


# ---- bad input ----------------------------------------------------------------------------------

def test_probe_reasons(vp9, h264):
    assert probe_video(vp9, needed_frames=24) is None
    assert probe_video(vp9, needed_frames=25).startswith("has 24 frames")
    assert probe_video(b"", needed_frames=1) == "empty file"
    assert probe_video(b"not a video" * 100, needed_frames=1).startswith("cannot demux")
    assert "codec h264 not taken" in probe_video(h264, needed_frames=1, codecs={"vp9"})
    assert detect_codec(vp9) == "vp9" and detect_codec(h264) == "h264" and detect_codec(b"x") is None


def check_bad_batch(decoder, good: bytes):
    bad = bad_files(good)
    datas = [good, *bad.values(), good, good]
    indices = [[0, 23]] * len(datas)
    indices[-1] = [0, 30]  # the manifest claims more frames than the file has
    out = decoder.decode(datas, indices)
    failed = dict(out.failures)
    assert set(failed) == {1, 2, 3, 4, 6}, out.failures
    assert failed[1] == "empty file"
    assert "needs 31" in failed[6]
    assert all(isinstance(reason, str) and reason for reason in failed.values())
    for position in (0, 5):
        assert read_codes(out.clips[position]) == [0, 23]
    assert all(out.clips[p] is None for p in failed)


def test_pyav_reports_bad_files_per_item(vp9):
    with PyAVDecoder(2, short_side=None) as decoder:
        check_bad_batch(decoder, vp9)


@needs_dali
def test_dali_reports_bad_files_per_item(vp9, h264):
    with dali_cpu(short_side=None) as decoder:
        check_bad_batch(decoder, vp9)
        out = decoder.decode([h264, vp9], [[0], [0]])  # H.264 is not for DALI's CPU decoder
        assert out.failures[0][0] == 0 and "codec h264" in out.failures[0][1]
        assert read_codes(out.clips[1]) == [0]


@needs_dali
def test_dali_isolates_a_failing_batch_and_recovers(vp9):
    # Without the probe, a garbage file makes DALI fail the whole batch; the decoder then decodes
    # the items one by one, reports the bad one, and its pipeline keeps working.
    with dali_cpu(short_side=None, validate=False) as decoder:
        out = decoder.decode([vp9, b"garbage" * 100, vp9], [[1], [0], [2]])
        assert [p for p, _ in out.failures] == [1]
        assert read_codes(out.clips[0]) == [1] and read_codes(out.clips[2]) == [2]
        again = decoder.decode([vp9], [[3]])
        assert again.failures == [] and read_codes(again.clips[0]) == [3]


@needs_dali
def test_dali_round_robin_keeps_order_and_outputs_outlive_later_runs(vp9):
    indices = [[i, 23 - i] for i in range(7)]
    with dali_cpu(short_side=None, batch_size=2, pipelines=2) as decoder:
        first = decoder.decode([vp9] * 7, indices)
        kept = [clip.clone() for clip in first.clips]
        for _ in range(3):  # later runs must not overwrite the memory the first clips view
            decoder.decode([vp9] * 7, [[4, 4]] * 7)
    for clip, copy, index in zip(first.clips, kept, indices):
        assert read_codes(clip) == index
        assert torch.equal(clip, copy)


# ---- backend choice ---------------------------------------------------------------------------

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("OMNIMAE_DECODE_TABLES", "")  # no measured table: today's rules (a GPU machine
    monkeypatch.setattr(decode, "dali_import_error", lambda: None)  # may have one committed)
    # auto: PyAV wherever it imports (measured fastest, see decode.AUTO_REASON).
    for codec in ("vp9", "h264", "unknown", "theora"):
        for device in (CPU, GPU):
            assert choose_backend("auto", codec, device)[:2] == ("pyav", None)
    assert "measured" in choose_backend("auto", "vp9", GPU)[2]
    assert choose_backend("pyav", "vp9", GPU)[:2] == ("pyav", None)
    assert choose_backend("dali", "h264", GPU)[:2] == ("dali", "mixed")
    assert choose_backend("dali", "vp9", GPU)[:2] == ("dali", "mixed")
    assert choose_backend("dali", "vp9", CPU)[:2] == ("dali", "cpu")
    # H.264 without NVDEC: DALI's CPU decoder still, its H.264 items go to PyAV (routed.py).
    name, dali_device, why = choose_backend("dali", "h264", CPU)
    assert (name, dali_device) == ("dali", "cpu") and "h264 items with PyAV" in why
    with pytest.raises(ValueError, match="backend"):
        choose_backend("ffmpeg", "vp9", CPU)
    # Without PyAV, auto falls back to DALI: NVDEC on a GPU, its CPU decoder for the codecs it takes.
    monkeypatch.setattr(decode, "pyav_import_error", lambda: "ModuleNotFoundError: No module named 'av'")
    assert choose_backend("auto", "h264", GPU)[:2] == ("dali", "mixed")
    assert choose_backend("auto", "vp9", CPU)[:2] == ("dali", "cpu")
    assert "PyAV does not import" in choose_backend("auto", "vp9", CPU)[2]
    with pytest.raises(ValueError, match="h264"):
        choose_backend("auto", "h264", CPU)
    monkeypatch.setattr(decode, "dali_import_error", lambda: "ModuleNotFoundError: No module named 'nvidia'")
    with pytest.raises(RuntimeError, match="no video decoder"):
        choose_backend("auto", "vp9", CPU)


def test_without_dali_auto_is_pyav_and_dali_is_an_error(monkeypatch, caplog):
    monkeypatch.setattr(decode, "dali_import_error", lambda: "ModuleNotFoundError: No module named 'nvidia'")
    assert choose_backend("auto", "vp9", GPU)[:2] == ("pyav", None)
    with pytest.raises(LoaderError, match=r"does not import .*pip install 'omnimae\[gpu\]'"):
        choose_backend("dali", "vp9", CPU)
    with caplog.at_level(logging.INFO, logger="loaders.decode"):
        decoder = make_video_decoder("auto", codec="vp9", device="cpu", threads=1)
    assert isinstance(decoder, PyAVDecoder)
    lines = [r.getMessage() for r in caplog.records if r.name == "loaders.decode"]
    assert len(lines) == 1 and "pyav" in lines[0] and "measured" in lines[0]


@needs_dali
def test_make_video_decoder_gives_dali_cpu_for_vp9(vp9, caplog):
    with caplog.at_level(logging.INFO, logger="loaders.decode"):
        decoder = make_video_decoder("dali", codec="vp9", device="cpu", batch_size=4, threads=1,
                                     short_side=None)
    assert decoder.name == "dali" and decoder.dali.dali_device == "cpu"
    assert "dali-cpu" in caplog.records[-1].getMessage()
    out = decoder.decode([vp9], [[6, 7]])
    assert read_codes(out.clips[0]) == [6, 7]
    decoder.close()


@needs_dali
@pytest.mark.parametrize("given", [True, False])
def test_dali_routes_what_it_cannot_decode_to_pyav_per_item(vp9, h264, given, caplog):
    codecs = ["h264", "vp9", "h264", "vp9"] if given else None  # None: read from the bytes
    with caplog.at_level(logging.INFO, logger="loaders.decode"):
        decoder = make_video_decoder("dali", codec="vp9", device="cpu", batch_size=4, threads=1,
                                     short_side=None)
        try:
            for _ in range(2):
                out = decoder.decode([h264, vp9, h264, vp9], [[3, 4], [5], [6], [7, 7]], codecs=codecs)
                assert out.failures == []
                assert [read_codes(c) for c in out.clips] == [[3, 4], [5], [6], [7, 7]]
            assert decoder.fallback is not None and decoder.rerouted == {"h264"}
        finally:
            decoder.close()
    routed = [r.getMessage() for r in caplog.records if "decoded with PyAV" in r.getMessage()]
    assert len(routed) == 1 and "DALI's CPU decoder (no NVDEC without a GPU) cannot decode h264" in routed[0]


@needs_dali
def test_dali_ffmpeg_lines_are_silenced(vp9, capfd):
    # DALI's own FFmpeg prints "[matroska,webm @ 0x...] File ended prematurely" (no file name) for
    # a truncated file whose first frames the probe accepts; the item's reason is the loader's.
    with dali_cpu(short_side=None) as decoder:
        capfd.readouterr()
        for _ in range(2):
            out = decoder.decode([vp9[: len(vp9) // 2], vp9], [[0, 1], [2]])
    assert out.failures == []
    assert "File ended prematurely" not in capfd.readouterr().err


# ---- images ---------------------------------------------------------------------------------

def test_image_decoder_jpeg_png_and_bad_files():
    coarse = torch.from_numpy(np.random.default_rng(0).random((1, 3, 4, 6)).astype(np.float32) * 255)
    image = F.interpolate(coarse, size=(40, 60), mode="bilinear")[0].byte()  # smooth: JPEG keeps it
    jpeg = encode_jpeg(image, quality=95).numpy().tobytes()
    png = encode_png(image).numpy().tobytes()
    gray = encode_jpeg(image[:1], quality=95).numpy().tobytes()
    with ImageDecoder("cpu", threads=2, max_short_side=None) as decoder:
        out = decoder.decode([jpeg, b"", png, b"\xff\xd8\xff" + b"broken" * 20, gray])
    assert [p for p, _ in out.failures] == [1, 3]
    assert out.failures[0][1] == "empty file"
    hwc = image.permute(1, 2, 0)
    assert out.clips[0].shape == (40, 60, 3) and psnr(out.clips[0], hwc) > 30
    assert torch.equal(out.clips[2], hwc)  # PNG is lossless
    assert out.clips[4].shape == (40, 60, 3)  # grayscale comes back as RGB


def test_image_decoder_caps_the_short_side():
    image = torch.zeros(3, 100, 300, dtype=torch.uint8)
    png = encode_png(image).numpy().tobytes()
    out = ImageDecoder("cpu", max_short_side=50).decode([png])
    assert out.clips[0].shape == (50, 150, 3)


# ---- GPU (skipped without CUDA; run with -m gpu on the GPU machine) ------------------------------

@pytest.mark.gpu
@needs_cuda
@needs_dali
@pytest.mark.parametrize("codec, container", [("libvpx-vp9", "webm"), ("libx264", "mp4")])
def test_dali_mixed_nvdec_matches_pyav(codec, container):
    from loaders.decode.dali import DALIVideoDecoder

    data = make_video(codec, container, scale=4)  # 256x192: above NVDEC's minimum frame size
    with DALIVideoDecoder(4, device="mixed", device_id=0, short_side=96) as nvdec, \
            PyAVDecoder(1, short_side=96) as pyav:
        a = nvdec.decode([data] * 3, INDICES)
        b = pyav.decode([data] * 3, INDICES)
    assert a.failures == [] and b.failures == []
    for x, y, index in zip(a.clips, b.clips, INDICES):
        assert x.is_cuda and x.shape == y.shape == (len(index), 96, 128, 3)
        assert read_codes(x.cpu()) == index
        assert psnr(x.cpu(), y) >= 35.0  # NVDEC's colour conversion and DALI's GPU resize


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("jpeg, size", [("nvjpeg", (120, 160)), ("dali", (375, 500))])
def test_gpu_jpeg_decoders_match_the_cpu_decoder(jpeg, size):
    """nvJPEG (torchvision) and DALI's mixed decoder (the hardware JPEG decoder, on an
    ImageNet-sized image): the CPU's pixels; PNGs go to the CPU, a broken file fails alone."""
    if jpeg == "dali" and decode.dali_import_error() is not None:
        pytest.skip(f"DALI does not import: {decode.dali_import_error()}")
    coarse = torch.from_numpy(np.random.default_rng(0).random((1, 3, 8, 8)).astype(np.float32) * 255)
    image = F.interpolate(coarse, size=size, mode="bilinear")[0].byte()
    data = encode_jpeg(image, quality=95 if jpeg == "nvjpeg" else 90).numpy().tobytes()
    png = encode_png(image).numpy().tobytes()
    with ImageDecoder("cuda", jpeg=jpeg, max_short_side=None) as decoder:
        gpu = decoder.decode([data, png, b"\xff\xd8\xffbroken", data])
    cpu = ImageDecoder("cpu", max_short_side=None).decode([data])
    assert [p for p, _ in gpu.failures] == [2]
    assert all(gpu.clips[i].is_cuda for i in (0, 1, 3))
    assert psnr(gpu.clips[0].cpu(), cpu.clips[0]) >= 35.0
    assert torch.equal(gpu.clips[1].cpu(), image.permute(1, 2, 0))
