"""The GPU decoding paths: NVDEC with reused decoders, DALI's image decoder, auto by measurement.

On the CPU everything but NVDEC itself runs for real: the demuxer, the frame mapping, the NV12
conversion and the whole NvdecDecoder (threads, per-item failures, decoder reuse) with an engine
that decodes the same packets with FFmpeg (EmulatedEngine), DALI's image pipeline on its CPU
device, the table-driven choice with tables the tests write. The `gpu` tests run the real ones.
"""

import io
import json
import logging
import os
import subprocess
import sys
import types

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torchvision.io import encode_jpeg

import loaders.decode as decode
from loaders.decode.common import DecodeError, FramePlan, counts_as_frame, resized_shape
from loaders.decode.image import ImageDecoder, make_image_decoder
from loaders.decode.measured import row_dict, write_table
from loaders.decode.nv12 import nv12_to_rgb
from loaders.decode.nvdec import EngineCache, FrameCollector, NvdecDecoder
from loaders.decode.packets import DemuxedVideo
from loaders.decode.pyav import PyAVDecoder, frame_to_rgb
from loaders.errors import LoaderError
from tests.loaders.test_decode import INDICES, check_bad_batch, make_video, psnr, read_codes

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def make_bframe_h264(scale: int = 4, frames: int = 24, keyint: int = 8) -> bytes:
    """H.264 MP4 with two B-frames between references: packets come in decode order, pts reordered."""
    return make_video("libx264", "mp4", frames=frames, seed=1, scale=scale,
                      options={"x264-params": f"bframes=2:b-adapt=0:keyint={keyint}"})


def shift_to_negative_pts(data: bytes, frames: int = 2) -> bytes:
    """The same H.264 in an MP4 whose first `frames` frames have negative timestamps (an edit
    list's pre-roll): FFmpeg drops them when it decodes; NVDEC gets them and must skip them."""
    buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, \
            av.open(buffer, "w", format="mp4", options={"avoid_negative_ts": "disabled"}) as out:
        stream_in = source.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        shift = frames * 1024  # 1024 ticks per frame at 12 fps (time base 1/12288)
        for packet in source.demux(stream_in):
            if packet.size:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream_out
                out.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def h264b() -> bytes:
    return make_bframe_h264()


@pytest.fixture(scope="module")
def vp9() -> bytes:
    return make_video(scale=4)


class EmulatedEngine:
    """NVDEC's decoder interface (nvdec.Engine) over FFmpeg: the same packets in, frames in
    presentation order with their packet's pts out, NV12, flushed and ready again after an
    empty packet. Everything of nvdec.py around it runs as on the GPU."""

    def __init__(self, codec: str, max_size, fail_on: int | None = None):
        self.codec, self.max_size = codec, max_size
        self.context = av.CodecContext.create(codec, "r")
        self.fed, self.reconfigured, self.fail_on = 0, [], fail_on

    def decode(self, data, pts):
        if data is None:
            frames = list(self.context.decode(None))
            self.context.flush_buffers()
            return frames
        self.fed += 1
        if self.fail_on is not None and self.fed == self.fail_on:
            raise RuntimeError("CUDA_ERROR_UNKNOWN (emulated)")
        packet = av.Packet(bytes(data))
        packet.pts = pts
        return list(self.context.decode(packet))

    def timestamp(self, frame):
        return frame.pts

    def nv12(self, frame):
        return torch.from_numpy(frame.reformat(format="nv12").to_ndarray())  # [H*3/2, W]

    def reconfigure(self, width, height):
        self.reconfigured.append((width, height))

    def close(self):
        self.context = None


def emulated(threads: int = 2, short_side=None, **engine_options) -> NvdecDecoder:
    made = []

    def make_engine(codec, room, stream):
        made.append(EmulatedEngine(codec, room, **engine_options))
        return made[-1]

    decoder = NvdecDecoder(threads, device="cpu", short_side=short_side, make_engine=make_engine)
    decoder.made = made
    return decoder


# ---- the shared frame rules ---------------------------------------------------------------------

def test_frame_plan_sorts_dedups_and_maps_back():
    plan = FramePlan.of([5, 5, 2, 17, 17])
    assert plan.wanted.tolist() == [2, 5, 17] and plan.last == 17
    assert plan.wanted[plan.inverse].tolist() == [5, 5, 2, 17, 17]
    assert not plan.identity and FramePlan.of([0, 3, 7]).identity
    for bad in ([], [-1, 2], [[1, 2]]):
        with pytest.raises(DecodeError, match="non-empty list of non-negative ints"):
            FramePlan.of(bad)
    assert counts_as_frame(None) and counts_as_frame(0) and not counts_as_frame(-1)


def test_collector_counts_like_the_other_backends():
    plan = FramePlan.of([0, 3, 3])
    collector = FrameCollector(plan)
    # an edit list's pre-roll (negative pts) gets no index; then frames 0, 1, 2, 3
    slots = [collector.offer(pts) for pts in (-2048, -1024, 0, 1024, 2048, 3072)]
    assert slots == [None, None, 0, None, None, 1] and collector.done
    assert collector.offer(4096) is None and collector.count == 4  # nothing counted once done
    short = FrameCollector(FramePlan.of([5]))
    for pts in range(3):
        short.offer(pts)
    with pytest.raises(DecodeError, match=r"has 3 frames, needs 6 \(manifest frame count wrong"):
        short.check()


# ---- demuxing for NVDEC --------------------------------------------------------------------------

def test_demuxer_gives_annex_b_h264_and_vp9_as_is(h264b, vp9):
    with DemuxedVideo(h264b) as video:
        assert (video.codec, video.width, video.height, video.full_range) == ("h264", 256, 192, False)
        packets = list(video.packets())
    assert len(packets) == 24
    assert all(bytes(p.data[:4]) == b"\x00\x00\x00\x01" for p in packets)  # start codes, not lengths
    pts = [p.pts for p in packets]
    assert pts != sorted(pts) and sorted(pts) == [1024 * i for i in range(24)]  # decode order, B-frames
    with av.open(io.BytesIO(vp9)) as container:
        raw = [bytes(p) for p in container.demux(video=0) if p.size]
    with DemuxedVideo(vp9) as video:
        assert video.codec == "vp9"
        assert [bytes(p.data) for p in video.packets()] == raw


def test_demuxer_reasons():
    with pytest.raises(DecodeError, match="empty file"):
        DemuxedVideo(b"")
    with pytest.raises(DecodeError, match="cannot demux"):
        DemuxedVideo(b"not a video" * 100)


# ---- NV12 -> RGB ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["h264", "vp9"])
def test_nv12_conversion_matches_pyav(which, h264b, vp9):
    data = h264b if which == "h264" else vp9
    reformatter = VideoReformatter()
    with av.open(io.BytesIO(data)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if i in (0, 7)]
    nv12 = torch.stack([torch.from_numpy(f.reformat(format="nv12").to_ndarray()) for f in frames])
    ours = nv12_to_rgb(nv12, 192, 256, left_sited=which == "h264")  # [2, 192, 256, 3]
    for rgb, frame in zip(ours, frames):
        assert psnr(rgb, torch.from_numpy(frame_to_rgb(frame, reformatter, None))) >= 60.0


def plane(frame, k: int, height: int, width: int) -> np.ndarray:
    """Plane k of a planar frame as uint8 [height, width] (line padding dropped)."""
    data = frame.planes[k]
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, data.line_size)[:height, :width]


def test_nv12_full_range_and_shape_checks():
    coarse = torch.from_numpy(np.random.default_rng(0).random((1, 3, 4, 6)).astype(np.float32) * 255)
    rgb = F.interpolate(coarse, size=(48, 64), mode="bilinear")[0].byte().permute(1, 2, 0).numpy()
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")  # full-range samples
    # NV12 of the same samples (swscale's own nv12 would convert them to studio range)
    uv = np.stack((plane(frame, 1, 24, 32), plane(frame, 2, 24, 32)), axis=-1).reshape(24, 64)
    nv12 = torch.from_numpy(np.concatenate((plane(frame, 0, 48, 64), uv)))[None]  # [1, 72, 64]
    ours = nv12_to_rgb(nv12, 48, 64, full_range=True)[0]
    assert psnr(ours, torch.from_numpy(frame_to_rgb(frame, VideoReformatter(), None))) >= 50.0
    with pytest.raises(ValueError, match="even frame size"):
        nv12_to_rgb(torch.zeros(1, 72, 63, dtype=torch.uint8), 48, 63)
    with pytest.raises(ValueError, match="expected NV12 frames"):
        nv12_to_rgb(torch.zeros(1, 48, 64, dtype=torch.uint8), 48, 64)


# ---- decoder reuse -------------------------------------------------------------------------------

def test_engine_cache_reuses_reconfigures_grows_and_drops():
    made = []

    def make(codec, room):
        made.append(types.SimpleNamespace(codec=codec, max_size=room, sizes=[], closed=False,
                                          reconfigure=lambda w, h: made[-1].sizes.append((w, h)),
                                          close=lambda: None))
        return made[-1]

    cache = EngineCache(make, min_size=(640, 480))
    first = cache.get("h264", 426, 240)
    assert first.max_size == (640, 480) and cache.created == 1
    assert cache.get("h264", 426, 240) is first and cache.reused == 1
    assert cache.get("h264", 320, 240) is first and first.sizes == [(320, 240)] and cache.reconfigured == 1
    assert cache.get("vp9", 426, 240) is not first and cache.created == 2  # one per codec
    bigger = cache.get("h264", 1280, 720)  # larger than its room: a new, larger decoder
    assert bigger is not first and bigger.max_size == (1280, 720) and cache.dropped == 1
    cache.drop("h264")
    assert cache.get("h264", 426, 240) is not bigger and cache.created == 4


# ---- the NVDEC decoder, on the CPU with the emulated engine ------------------------------------

@pytest.mark.parametrize("which", ["h264", "vp9"])
@pytest.mark.parametrize("short_side", [None, 96])
def test_nvdec_decoder_returns_the_pyav_frames(which, short_side, h264b, vp9):
    data = h264b if which == "h264" else vp9
    with emulated(2, short_side) as nvdec, PyAVDecoder(1, short_side=short_side) as pyav:
        a = nvdec.decode([data] * 3, INDICES)
        b = pyav.decode([data] * 3, INDICES)
    assert a.failures == [] and b.failures == []
    height, width = resized_shape(192, 256, short_side)
    for x, y, index in zip(a.clips, b.clips, INDICES):
        assert x.dtype == torch.uint8 and x.shape == y.shape == (len(index), height, width, 3)
        assert read_codes(x) == index
        assert psnr(x, y) >= (60.0 if short_side is None else 40.0)  # resize: torch's vs swscale's


def test_every_backend_skips_frames_before_time_zero(h264b):
    from loaders.decode.validate import probe_video

    data = shift_to_negative_pts(h264b)  # frames 0 and 1 of the source now have pts < 0
    with DemuxedVideo(data) as video:
        assert sum(p.pts < 0 for p in video.packets()) == 2  # NVDEC is fed them
    assert probe_video(data, needed_frames=22) is None and probe_video(data, needed_frames=23)  # DALI's count
    indices = [[0, 1, 21], [5]]
    with emulated(1) as nvdec, PyAVDecoder(1, short_side=None) as pyav:
        for decoder in (nvdec, pyav):
            out = decoder.decode([data, data, data], [*indices, [22]])
            assert [read_codes(c) for c in out.clips[:2]] == [[2, 3, 23], [7]]  # index 0 = the first frame shown
            assert out.failures[0][0] == 2 and "has 22 frames, needs 23" in out.failures[0][1]


def test_nvdec_decoder_stops_reading_at_the_last_needed_frame(vp9):
    with emulated(1) as nvdec:
        assert read_codes(nvdec.decode([vp9], [[1, 2]]).clips[0]) == [1, 2]
        assert nvdec.made[0].fed == 3  # packets 0..2 of 24, then the end-of-stream flush


def test_nvdec_decoder_reports_bad_files_per_item(vp9):
    with emulated(2) as nvdec:
        check_bad_batch(nvdec, vp9)
        out = nvdec.decode([make_video("mpeg4", "mp4", scale=4), vp9], [[0], [1]])
    assert out.failures[0][0] == 0 and "codec mpeg4 not taken by NVDEC" in out.failures[0][1]
    assert read_codes(out.clips[1]) == [1]


def test_nvdec_decoder_keeps_one_decoder_per_thread_and_codec(h264b, vp9):
    small = make_bframe_h264(scale=3)  # 192x144: the same decoder, reconfigured
    with emulated(2) as nvdec:
        for _ in range(3):
            out = nvdec.decode([h264b, vp9, small, h264b, vp9, small], [[1, 2]] * 6)
            assert out.failures == [] and all(read_codes(c) == [1, 2] for c in out.clips)
        stats = nvdec.stats()
        assert stats["created"] <= 4 and stats["created"] == len(nvdec.made)  # <= 2 threads x 2 codecs
        assert stats["reconfigured"] >= 1 and stats["created"] + stats["reused"] + stats["reconfigured"] == 18


def test_nvdec_decoder_drops_a_failing_decoder_and_recovers(vp9):
    with emulated(1, fail_on=30) as nvdec:  # the first engine raises on its 30th packet
        out = nvdec.decode([vp9, vp9], [[0, 23], [0, 23]])  # 24 packets each: the second fails
        assert [p for p, _ in out.failures] == [1] and "NVDEC failed after" in out.failures[0][1]
        assert nvdec.stats()["dropped"] == 1
        again = nvdec.decode([vp9], [[3, 4]])
    assert again.failures == [] and read_codes(again.clips[0]) == [3, 4] and len(nvdec.made) == 2


def test_nvdec_needs_a_gpu_and_the_library(monkeypatch):
    with pytest.raises(ValueError, match="CUDA device"):
        NvdecDecoder(1, device="cpu")
    with pytest.raises(LoaderError, match="nvdec needs a CUDA device"):
        decode.choose_backend("nvdec", "h264", CPU)
    monkeypatch.setattr(decode, "nvdec_import_error", lambda: "ModuleNotFoundError: No module named 'PyNvVideoCodec'")
    with pytest.raises(LoaderError, match=r"PyNvVideoCodec does not import .*pip install .omnimae\[nvdec\]."):
        decode.choose_backend("nvdec", "h264", GPU)
    monkeypatch.setattr(decode, "nvdec_import_error", lambda: None)
    assert decode.choose_backend("nvdec", "h264", GPU) == ("nvdec", None, "asked for")


def test_gpu_libraries_are_imported_lazily():
    # A CPU install never needs them: importing the data path pulls in none of them.
    code = ("import sys, loaders.decode, loaders.decode.nvdec, loaders.decode.image, loaders.decode.image_dali, "
            "loaders.decode.measured, loaders.image_loader, loaders.video_loader; "
            "bad = [m for m in ('PyNvVideoCodec', 'pynvml', 'nvidia.dali') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- auto by measurement -------------------------------------------------------------------------

def video_rows(codec: str, rates: dict, height: int = 240) -> list[dict]:
    settings = {"pyav": {"threads": 16}, "nvdec": {"threads": 7}, "dali": {"threads": 2, "pipelines": 4}}
    return [row_dict(modality="video", codec=codec, height=height, backend=name, rate=rate, unit="clips/s",
                     items=512, cpu_cores=1.5, engine_util=80.0, **settings[name]) for name, rate in rates.items()]


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """Write a table (as gpu_decode_check.py does) for the GPU model "TEST GPU" and point auto at it."""
    monkeypatch.setenv("OMNIMAE_DECODE_TABLES", str(tmp_path))
    monkeypatch.setattr(decode, "_device_name", lambda device: "TEST GPU")
    monkeypatch.setattr(decode, "nvdec_import_error", lambda: None)
    monkeypatch.setattr(decode, "dali_import_error", lambda: None)

    def write(rows, device="TEST GPU", name="TEST_GPU_20261202"):
        return write_table(tmp_path / f"{name}_decode_table.json", device=device, rows=rows, versions={},
                           date="2026-12-02")

    return write


def test_auto_picks_the_fastest_measured_backend(tables, caplog):
    tables(video_rows("h264", {"pyav": 250.0, "nvdec": 812.0, "dali": 40.0})
           + video_rows("vp9", {"pyav": 250.0, "nvdec": 90.0, "dali": 300.0})
           + video_rows("h264", {"pyav": 30.0, "nvdec": 20.0}, height=720)
           + [row_dict(modality="image", codec="jpeg", height=None, backend=name, rate=rate, unit="images/s",
                       items=1024, threads=4) for name, rate in (("cpu", 3000.0), ("nvjpeg", 9000.0), ("dali", 16000.0))])
    name, dali_device, why = decode.choose_backend("auto", "h264", GPU)
    assert (name, dali_device) == ("nvdec", None)
    assert "fastest measured on TEST GPU (video h264 240p, TEST_GPU_20261202_decode_table.json)" in why
    assert "nvdec 7 threads 812 clips/s" in why and "pyav 16 threads 250 clips/s" in why
    assert decode.choose_backend("auto", "vp9", GPU)[:2] == ("dali", "mixed")
    # the rows closest to the asked height (720p: PyAV) rather than 240p
    from loaders.decode import measured

    assert measured.best("video", "h264", "TEST GPU", ["pyav", "nvdec"], height=720).best.backend == "pyav"
    # no row for the codec, another GPU model, or the CPU: today's choice and reason
    assert decode.choose_backend("auto", "hevc", GPU) == ("pyav", None, decode.AUTO_REASON)
    assert decode.choose_backend("auto", "h264", CPU) == ("pyav", None, decode.AUTO_REASON)
    with caplog.at_level(logging.INFO, logger="loaders.decode"):
        decoder = decode.make_video_decoder("auto", codec="h264", device=GPU, threads=3)  # no CUDA call yet
    try:
        assert decoder.name == "nvdec" and decoder.primary.threads == 7  # the measured setting
        lines = [r.getMessage() for r in caplog.records if r.name == "loaders.decode"]
        assert len(lines) == 1 and lines[0].startswith("video decoder: nvdec, 7 threads") and "812" in lines[0]
    finally:
        decoder.close()
    assert decode.decide_image(GPU)[0] == "dali" and "16000 images/s" in decode.decide_image(GPU)[1]


def test_auto_skips_what_cannot_run_here_and_broken_tables(tables, monkeypatch, caplog):
    path = tables(video_rows("h264", {"pyav": 250.0, "nvdec": 812.0, "dali": 400.0}))
    monkeypatch.setattr(decode, "nvdec_import_error", lambda: "RuntimeError: no driver")
    assert decode.choose_backend("auto", "h264", GPU)[:2] == ("dali", "mixed")  # next fastest that runs
    monkeypatch.setattr(decode, "_device_name", lambda device: "OTHER GPU")
    assert decode.choose_backend("auto", "h264", GPU) == ("pyav", None, decode.AUTO_REASON)
    assert decode.decide_image(GPU) == ("nvjpeg", decode.IMAGE_AUTO_REASON, None)
    path.write_text(json.dumps({"schema": 1, "rows": [{"modality": "video"}]}))
    monkeypatch.setattr(decode, "_device_name", lambda device: "TEST GPU")
    with caplog.at_level(logging.WARNING, logger="loaders.decode"):
        assert decode.choose_backend("auto", "h264", GPU) == ("pyav", None, decode.AUTO_REASON)
    assert any("decode tables ignored" in r.getMessage() and "row 0" in r.getMessage() for r in caplog.records)


def test_without_a_table_the_choice_is_todays(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIMAE_DECODE_TABLES", str(tmp_path))  # an empty folder
    monkeypatch.setattr(decode, "_device_name", lambda device: pytest.fail("no table: no device query"))
    assert decode.choose_backend("auto", "h264", GPU) == ("pyav", None, decode.AUTO_REASON)
    assert decode.decide_image(GPU) == ("nvjpeg", decode.IMAGE_AUTO_REASON, None)
    assert decode.decide_image(CPU)[0] == "cpu"


# ---- images on the GPU decoders' paths -------------------------------------------------------------

def test_image_decoder_choice_and_cpu_fallback(caplog):
    with caplog.at_level(logging.INFO, logger="loaders.decode"):
        decoder = make_image_decoder("cpu", threads=1)
    assert decoder.jpeg == "cpu" and decoder.name == "torchvision"
    assert [r.getMessage() for r in caplog.records if r.name == "loaders.decode"][-1].startswith("image decoder: torchvision")
    assert ImageDecoder("cpu", jpeg="dali").jpeg == "cpu"  # no GPU: the CPU path whatever was asked
    with pytest.raises(ValueError, match="jpeg must be one of"):
        ImageDecoder("cpu", jpeg="turbo")


@pytest.mark.skipif(decode.dali_import_error() is not None, reason="DALI is not installed")
def test_dali_image_decoder_isolates_bad_files():
    from loaders.decode.image_dali import DALIImageDecoder

    coarse = torch.from_numpy(np.random.default_rng(0).random((1, 3, 6, 8)).astype(np.float32) * 255)
    image = F.interpolate(coarse, size=(120, 160), mode="bilinear")[0].byte()
    jpeg = encode_jpeg(image, quality=95).numpy().tobytes()
    reference = ImageDecoder("cpu", max_short_side=None).decode([jpeg]).clips[0]
    decoder = DALIImageDecoder(4, device="cpu", num_threads=1)  # the mixed pipeline's CPU twin
    try:
        out = decoder.decode_jpegs([jpeg, b"\xff\xd8\xff" + b"broken" * 20, jpeg, jpeg, jpeg, jpeg])
        assert [c is None for c in out] == [False, True, False, False, False, False]  # 6 items: two runs of 4
        assert all(c.shape == (120, 160, 3) and psnr(c, reference) >= 35.0 for c in out if c is not None)
        again = decoder.decode_jpegs([jpeg])  # the rebuilt pipeline works
        assert psnr(again[0], reference) >= 35.0
    finally:
        decoder.close()


# ---- the benchmark's rows, on the CPU ------------------------------------------------------------

def test_gpu_decode_check_plans_every_row_the_issue_asks_for():
    from benchmarks import gpu_decode_check as check

    rows = check.plan_rows(check.parse_args([]), cuda=True)
    have = {(r.modality, r.codec, r.height, r.backend, r.threads, r.pipelines) for r in rows}
    for codec in ("h264", "vp9"):
        for height in (240, 480, 720):
            assert all(("video", codec, height, "nvdec", t, None) in have for t in (1, 2, 4, 7))
            assert any(r[:4] == ("video", codec, height, "pyav") for r in have)
        assert all(("video", codec, 240, "dali", t, p) in have for t in (2, 4) for p in (1, 2, 4, 7))
    assert {r.backend for r in rows if r.modality == "image"} == {"cpu", "nvjpeg", "dali"}


def test_gpu_decode_check_video_rows_run(vp9, monkeypatch):
    from benchmarks import gpu_decode_check as check

    args = types.SimpleNamespace(clips=8, row_cap_s=30.0)
    datas, indices = [vp9] * 2, [[0, 5], [3, 9], [1, 2], [20, 23]]
    real = decode.make_video_decoder

    def with_emulated_nvdec(backend, **options):
        if backend != "nvdec":
            return real(backend, **options)
        from loaders.decode.routed import RoutedDecoder

        return RoutedDecoder(emulated(options["threads"]), frozenset({"vp9"}), None, "emulated NVDEC")

    monkeypatch.setattr(decode, "make_video_decoder", with_emulated_nvdec)
    result, extra = check.video_row("nvdec", datas, indices, device=CPU, codec="vp9", threads=2, pipelines=None, args=args)
    assert result.items == 8 and result.failures == 0 and extra["decoders"]["created"] == 2
    assert "decoders made 2" in result.notes[0]
    result, _ = check.video_row("pyav", datas, indices, device=CPU, codec="vp9", threads=1, pipelines=None, args=args)
    assert result.items == 8 and result.failures == 0 and result.rate > 0


def test_gpu_decode_check_waits_until_every_thread_has_a_decoder():
    from benchmarks import gpu_decode_check as check

    made = types.SimpleNamespace(created=1)
    nvdec = types.SimpleNamespace(stats=lambda: {"created": made.created})
    calls = []

    def more():
        calls.append(1)
        made.created += 1

    assert check.warm_every_thread(nvdec, 3, more)["created"] == 3 and len(calls) == 2
    with pytest.raises(RuntimeError, match="only 1 of 4 threads"):
        check.warm_every_thread(types.SimpleNamespace(stats=lambda: {"created": 1}), 4, lambda: None)


# ---- on the GPU (skipped without CUDA; run with -m gpu on the GPU machine) ------------------------

needs_nvdec = pytest.mark.skipif(not torch.cuda.is_available() or decode.nvdec_import_error() is not None,
                                 reason="needs a CUDA device and PyNvVideoCodec")


@pytest.mark.gpu
@needs_nvdec
@pytest.mark.parametrize("which", ["vp9", "h264", "h264b"])
def test_nvdec_matches_pyav_on_the_gpu(which):
    data = {"vp9": lambda: make_video(scale=4), "h264": lambda: make_video("libx264", "mp4", scale=4),
            "h264b": make_bframe_h264}[which]()
    with NvdecDecoder(2, device="cuda", short_side=96) as nvdec, PyAVDecoder(1, short_side=96) as pyav:
        a = nvdec.decode([data] * 3, INDICES)
        b = pyav.decode([data] * 3, INDICES)
        torch.cuda.synchronize()
    assert a.failures == [] and b.failures == [], a.failures
    for x, y, index in zip(a.clips, b.clips, INDICES):
        assert x.is_cuda and x.shape == y.shape == (len(index), 96, 128, 3)
        assert read_codes(x.cpu()) == index
        assert psnr(x.cpu(), y) >= 35.0


@pytest.mark.gpu
@needs_nvdec
def test_nvdec_on_the_gpu_reports_bad_files_reuses_and_reconfigures():
    big, small = make_video(scale=4), make_video(scale=3, seed=1)  # 256x192 and 192x144
    with NvdecDecoder(1, device="cuda", short_side=None) as nvdec:
        check_bad_batch(nvdec, big)
        for _ in range(2):
            out = nvdec.decode([big, small, make_bframe_h264(), big], [[2, 3]] * 4)
            assert out.failures == [] and [read_codes(c.cpu()) for c in out.clips] == [[2, 3]] * 4
            assert [tuple(c.shape[1:3]) for c in out.clips] == [(192, 256), (144, 192), (192, 256), (192, 256)]
        stats = nvdec.stats()
    # one live decoder per codec (a damaged item may have cost one), reconfigured, not remade
    assert stats["created"] - stats["dropped"] == 2 and stats["reconfigured"] >= 2, stats


@pytest.mark.gpu
@needs_nvdec
def test_nvdec_clips_outlive_later_decodes():
    data = make_video(scale=4)
    indices = [[i, 23 - i] for i in range(6)]
    with NvdecDecoder(3, device="cuda", short_side=None) as nvdec:
        first = nvdec.decode([data] * 6, indices)
        kept = [clip.clone() for clip in first.clips]
        for _ in range(3):
            nvdec.decode([data] * 6, [[4, 4]] * 6)
        torch.cuda.synchronize()
    for clip, copy, index in zip(first.clips, kept, indices):
        assert read_codes(clip.cpu()) == index and torch.equal(clip, copy)

