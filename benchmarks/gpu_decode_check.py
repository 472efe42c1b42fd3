"""GPU decode check: NVDEC (decoders reused across clips), DALI mixed and PyAV side by side, and
the GPU JPEG decoders against CPU threads; writes the table `data.decode_backend=auto` reads.

    python benchmarks/gpu_decode_check.py --out-dir "$OUT"   # one H100/H200: <= ~5.5 min (estimate printed first)
    python benchmarks/gpu_decode_check.py --quick            # no GPU: the CPU rows, small counts, ~20 s
    python benchmarks/gpu_decode_check.py --backends dali --tag dali   # DALI's rows alone (its wheel comes later)

Video rows (generated SSv2-like clips: 4 s at 12 fps, 16 frames over a 2.7 s window, short side
256, as training; H.264 MP4 and VP9 WebM at 240p, 480p and 720p):
  - PyAV on `--cpu-threads` CPU threads;
  - NVDEC (loaders/decode/nvdec.py) with 1/2/4/7 threads, one reused decoder per thread;
  - DALI mixed with 1/2/4/7 pipelines x `--dali-threads` (the 240p rows; one setting elsewhere).
Image rows (ImageNet-like JPEGs, ~500x375 and ~110 KB, generated; batches of 256): CPU threads,
nvJPEG (torchvision), DALI mixed (hardware JPEG decoder).
Plus GPU batch assembly at replication 1 and 4 (as before: it is never the bottleneck).

Fair by construction: every row measures at least `--clips` (512) clips or `--images` images
after a warm-up that reaches every pipeline / decoder thread (checked: NVDEC rows start only once
each thread has made its decoder), with each decode call large enough to keep every pipeline /
thread busy; per row: items/s, CPU cores busy (process CPU time / wall time) and the NVDEC or
JPEG engine utilisation from NVML (nvidia-ml-py, optional: "n/a" without it). A row stops early
only at `--row-cap-s` and says so; rows that would overrun `--budget-s` are skipped with a line.

Writes <out-dir>/<GPU>_<yyyymmdd>_decode.md (the table, versions) and
<out-dir>/<GPU>_<yyyymmdd>_decode_table.json (loaders.decode.measured's format: commit it under
benchmarks/results/ and `auto` uses it on that GPU model). Without CUDA only the CPU rows run and
nothing is written to benchmarks/results/. Exit status 1 if a row that should have run failed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import host_info, sync  # noqa: E402
from benchmarks.decode_throughput import assembly_rate, ensure_videos, load_clips  # noqa: E402
from loaders.decode import dali_import_error, nvdec_import_error, pyav_import_error  # noqa: E402
from loaders.decode.measured import row_dict, write_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "gpu_decode"
RESULTS = Path(__file__).resolve().parent / "results"
NUM_FRAMES = 16
# Pessimistic clips/s for the time estimate and the budget before a backend's first row has run
# (PyAV and DALI: the H100 rows of benchmarks/results/NVIDIA_H100_80GB_HBM3_202611.md, scaled by
# pixels; NVDEC: a guess well below what a reused decoder should reach).
GUESS = {("pyav", 240): 200, ("pyav", 480): 60, ("pyav", 720): 25, ("nvdec", 240): 80, ("nvdec", 480): 40,
         ("nvdec", 720): 20, ("dali", 240): 20, ("dali", 480): 10, ("dali", 720): 5}
WARMUP_S = 3.0  # per row: building pipelines / decoders and the warm-up passes


# ---- what each row measures ----------------------------------------------------------------------

class EngineMeter:
    """Mean NVDEC or JPEG engine utilisation (%) over a row, sampled by NVML every 50 ms; None
    where nvidia-ml-py is missing or the query is not supported."""

    def __init__(self, kind: str, device_index: int = 0):
        self.kind, self.samples, self._stop = kind, [], threading.Event()
        self._query = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            name = "nvmlDeviceGetDecoderUtilization" if kind == "nvdec" else "nvmlDeviceGetJpgUtilization"
            function = getattr(pynvml, name)
            function(handle)  # raises where the query is not supported
            self._query = lambda: function(handle)[0]
        except Exception:  # noqa: BLE001 - no NVML: the row says n/a
            self._query = None
        self._thread = threading.Thread(target=self._run, daemon=True) if self._query else None

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.samples.append(float(self._query()))
            except Exception:  # noqa: BLE001
                return

    def __enter__(self) -> "EngineMeter":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


@dataclass
class Measured:
    items: int
    wall_s: float
    cpu_s: float
    failures: int
    capped: bool
    engine_util: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.wall_s

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s


def timed(decode_call, *, total: int, per_call: int, device: torch.device, cap_s: float, meter: str) -> Measured:
    """Call decode_call(start, count) -> failures until `total` items are done (or `cap_s` passed)."""
    failures, done = 0, 0
    with EngineMeter(meter, device.index or 0) if device.type == "cuda" else _NoMeter() as engines:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while done < total:
            count = min(per_call, total - done)
            failures += decode_call(done, count)
            done += count
            if time.perf_counter() - wall0 > cap_s and done < total:
                break
        sync(device)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Measured(done, wall, cpu, failures, done < total, engines.mean)


class _NoMeter:
    mean = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def cycled(datas: list, indices: list, start: int, count: int) -> tuple[list, list]:
    """Clips start..start+count of `indices` (window j belongs to video j % len(datas): each pass
    over the files takes fresh windows), with their files."""
    picks = [(start + k) % len(indices) for k in range(count)]
    return [datas[p % len(datas)] for p in picks], [indices[p] for p in picks]


def warm_every_thread(nvdec, threads: int, decode_more, tries: int = 10) -> dict:
    """Decode more until each of the NVDEC backend's threads has made its decoder (a fast thread can
    take every clip of a short warm-up); RuntimeError if that never happens."""
    for _ in range(tries):
        stats = nvdec.stats()
        if stats["created"] >= threads:
            return stats
        decode_more()
    raise RuntimeError(f"after {tries} warm-up calls only {nvdec.stats()['created']} of {threads} threads "
                       "made a decoder")


def video_row(backend: str, datas: list, indices: list, *, device: torch.device, codec: str, threads: int,
              pipelines: int | None, args) -> tuple[Measured, dict]:
    """One video row: build the decoder, warm every pipeline / thread, then measure."""
    from loaders.decode import make_video_decoder

    chunk = 16
    if backend == "dali":
        decoder = make_video_decoder("dali", codec=codec, device=device, batch_size=chunk, threads=threads,
                                     short_side=256, num_frames=NUM_FRAMES, pipelines=pipelines)
        per_call = chunk * pipelines * 2  # every pipeline gets two chunks per call
        warm = [chunk * pipelines] * 2  # each pipeline runs twice before timing
    elif backend == "nvdec":
        decoder = make_video_decoder("nvdec", codec=codec, device=device, threads=threads, short_side=256)
        per_call = max(64, 8 * threads)
        warm = [per_call]
    else:
        decoder = make_video_decoder("pyav", codec=codec, device=device, threads=threads, short_side=256)
        per_call = max(64, 8 * threads)
        warm = [per_call]
    extra: dict = {}
    decode_cycled = decoder.decode

    def decode_items(start: int, count: int):
        items, windows = cycled(datas, indices, start, count)
        return decode_cycled(items, windows, codecs=[codec] * count)  # the manifest's codec, as the loader passes

    try:
        for count in warm:
            decode_items(0, count)
        if backend == "nvdec":  # warm means every thread has its decoder
            extra["decoders"] = warm_every_thread(decoder.primary, threads,
                                                  lambda: decode_items(0, per_call))
        sync(device)

        # measured clips start after the warm-up clips: other windows of the same files
        offset = sum(warm)

        def call(start: int, count: int) -> int:
            return len(decode_items(offset + start, count).failures)

        result = timed(call, total=args.clips, per_call=per_call, device=device, cap_s=args.row_cap_s,
                       meter="nvdec")
        if backend == "nvdec":
            after = decoder.primary.stats()
            extra["decoders"] = after
            result.notes.append(f"decoders made {after['created']}, reused {after['reused']}, "
                                f"reconfigured {after['reconfigured']}, dropped {after['dropped']}")
    finally:
        decoder.close()
    return result, extra


# ---- data ----------------------------------------------------------------------------------------

def videos(codec: str, height: int, count: int, workers: int, seed: int) -> tuple[list, list]:
    manifest = ensure_videos(codec, count, OUT / f"{codec}_{height}p", workers, height)
    datas, indices = load_clips(manifest, NUM_FRAMES, seed=seed)
    # more windows than files: every pass over the files takes fresh random windows
    rng = np.random.default_rng(seed + 1)
    from loaders.frames import sample_frame_indices

    more = [sample_frame_indices(e.num_frames, e.fps, num_frames=NUM_FRAMES, rng=rng)
            for _ in range(7) for e in manifest]
    return datas, indices + more


def imagenet_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` JPEGs of ~500x375 and ~110 KB (ImageNet's typical size): smooth shapes plus
    texture noise, quality 90; sizes vary a little (480-520 x 360-390, some portrait)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        w, h = int(rng.integers(480, 521)), int(rng.integers(360, 391))
        if k % 5 == 4:
            w, h = h, w
        coarse = torch.from_numpy(rng.random((1, 3, 6, 8)).astype(np.float32) * 200 + 28)
        base = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        noise = torch.from_numpy(rng.normal(0, 26, (3, h, w)).astype(np.float32))  # ~110 KB at quality 90
        pixels = (base + noise).clamp(0, 255).byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def image_row(jpeg: str, jpegs: list[bytes], *, device: torch.device, threads: int, args) -> Measured:
    from loaders.decode.image import ImageDecoder

    batch = 256
    decoder = ImageDecoder(device, threads=threads, jpeg=jpeg, dali_threads=threads, batch_size=batch)
    try:
        for start in (0, batch):  # warm: nvJPEG / DALI allocate on their first batches
            decoder.decode(jpegs[start % len(jpegs):][:batch])

        def call(start: int, count: int) -> int:
            first = start % len(jpegs)
            items = (jpegs[first:] + jpegs[:first])[:count]
            return len(decoder.decode(items).failures)

        return timed(call, total=args.images, per_call=batch, device=device, cap_s=args.row_cap_s, meter="jpeg")
    finally:
        decoder.close()


# ---- the plan, the budget, the report ----------------------------------------------------------

@dataclass
class Planned:
    modality: str
    codec: str
    height: int | None
    backend: str
    threads: int
    pipelines: int | None = None

    def label(self) -> str:
        if self.pipelines:
            return f"{self.backend} {self.pipelines} pipelines x {self.threads} threads"
        return f"{self.backend} {self.threads} threads"


def plan_rows(args, cuda: bool) -> list[Planned]:
    """Rows in priority order (the budget skips from the end): 1. at the first height (240p) PyAV,
    NVDEC, DALI with its first num_threads, then the images; 2. the other heights, PyAV and NVDEC;
    3. DALI's other num_threads at the first height; 4. DALI at the other heights (one setting)."""
    first, others = args.heights[0], args.heights[1:]
    rows: list[Planned] = []
    for codec in args.codecs:
        rows += [Planned("video", codec, first, "pyav", t) for t in args.cpu_threads]
        if cuda:
            rows += [Planned("video", codec, first, "nvdec", t) for t in args.nvdec_threads]
            rows += [Planned("video", codec, first, "dali", args.dali_threads[0], p) for p in args.pipelines]
    rows += [Planned("image", "jpeg", None, "cpu", max(args.cpu_threads))]
    if cuda:
        rows += [Planned("image", "jpeg", None, "nvjpeg", max(args.cpu_threads)),
                 Planned("image", "jpeg", None, "dali", args.dali_threads[-1])]
    for height in others:
        for codec in args.codecs:
            rows += [Planned("video", codec, height, "pyav", t) for t in args.cpu_threads]
            if cuda:
                rows += [Planned("video", codec, height, "nvdec", t) for t in args.nvdec_threads]
    if cuda:
        rows += [Planned("video", codec, first, "dali", t, p) for t in args.dali_threads[1:]
                 for codec in args.codecs for p in args.pipelines]
        rows += [Planned("video", codec, height, "dali", max(args.dali_threads), max(args.pipelines))
                 for height in others for codec in args.codecs]
    return rows


def estimate_s(row: Planned, args, rates: dict) -> float:
    """Seconds a row will take: from the best rate measured so far for its backend (at another
    height: scaled by the pixels), else the pessimistic GUESS; never more than the row cap."""
    if row.modality == "image":
        return WARMUP_S + 2.0
    rate = rates.get((row.backend, row.height))
    if rate is None:
        seen = [(h, r) for (b, h), r in rates.items() if b == row.backend]
        rate = max(r * (h / row.height) ** 2 for h, r in seen) if seen else GUESS.get((row.backend, row.height), 10)
    return WARMUP_S + min(args.row_cap_s, args.clips / rate)


def versions() -> dict:
    """host_info's library versions plus CUDA, the NVDEC and NVML bindings and the driver."""
    out = {**host_info()["versions"], "cuda": torch.version.cuda}
    for name, module in (("PyNvVideoCodec", "PyNvVideoCodec"), ("nvidia-ml-py", "pynvml")):
        try:
            mod = __import__(module, fromlist=["__version__"])
            out[name] = getattr(mod, "__version__", "present")
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            out[name] = None
    try:
        import pynvml

        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001
        pass
    return out


def fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count() or 1
    parser.add_argument("--quick", action="store_true", help="small counts (the CPU dry run)")
    parser.add_argument("--clips", type=int, default=512, help="measured clips per video row")
    parser.add_argument("--images", type=int, default=1024, help="measured images per image row")
    parser.add_argument("--num-videos", type=int, default=64, help="generated videos per codec and height")
    parser.add_argument("--num-jpegs", type=int, default=512, help="generated JPEGs")
    parser.add_argument("--heights", type=int, nargs="+", default=[240, 480, 720])
    parser.add_argument("--codecs", nargs="+", default=["h264", "vp9"], choices=["h264", "vp9"])
    parser.add_argument("--cpu-threads", type=int, nargs="+", default=[min(16, cores)], help="PyAV / CPU JPEG threads")
    parser.add_argument("--nvdec-threads", type=int, nargs="+", default=[1, 2, 4, 7])
    parser.add_argument("--pipelines", type=int, nargs="+", default=[1, 2, 4, 7], help="DALI mixed pipelines")
    parser.add_argument("--dali-threads", type=int, nargs="+", default=[2, 4], help="DALI num_threads per pipeline")
    parser.add_argument("--batch-size", type=int, default=64, help="GPU assembly batch size")
    parser.add_argument("--row-cap-s", type=float, default=25.0, help="a row stops here even if short of --clips")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="seconds in all (data generation included): rows that would end later are skipped")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the report and the table go (default benchmarks/results with CUDA, "
                             "benchmarks/out/gpu_decode without)")
    parser.add_argument("--backends", nargs="+", default=["pyav", "nvdec", "dali", "cpu", "nvjpeg"],
                        choices=["pyav", "nvdec", "dali", "cpu", "nvjpeg"],
                        help="rows of these backends only (video: pyav, nvdec, dali; images: cpu, nvjpeg, dali)")
    parser.add_argument("--tag", default="", help="added to the file names (two runs of one day side by side)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.images, args.num_videos, args.num_jpegs = 24, 64, 8, 64
        args.heights, args.row_cap_s, args.budget_s = [240], 10.0, 120.0
        args.cpu_threads = [min(2, cores)]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if cuda else "no CUDA device"
    missing = {"pyav": pyav_import_error(), "dali": dali_import_error() if cuda else "no CUDA",
               "nvdec": nvdec_import_error() if cuda else "no CUDA"}
    rows = [row for row in plan_rows(args, cuda) if row.backend in args.backends]
    workers = max(1, min(16, os.cpu_count() or 1))
    # ~0.8 s to encode one 720p video on one core (measured on the development machine), ~ pixels
    wanted = {(r.codec, r.height) for r in rows if r.modality == "video"}
    gen_s = sum(args.num_videos * 0.8 * (h / 720) ** 2 for _, h in wanted) / workers + 5
    estimate = gen_s + sum(estimate_s(r, args, {}) for r in rows if missing.get(r.backend) is None)
    print(f"gpu_decode_check: {gpu}; {len(rows)} rows planned, {estimate:.0f} s at pessimistic rates; "
          f"the run stops starting rows at --budget-s {args.budget_s:.0f} s (a row takes at most "
          f"--row-cap-s {args.row_cap_s:.0f} s + warm-up): expect <= {min(estimate, args.budget_s + args.row_cap_s):.0f} s",
          flush=True)
    for name, why in missing.items():
        if why:
            print(f"  {name}: unavailable ({why}); its rows are skipped", flush=True)

    results: list[tuple[Planned, Measured | str]] = []
    table_rows: list[dict] = []
    rates: dict = {}
    errors = 0
    clips_cache: dict = {}
    jpegs: list[bytes] | None = None
    for row in rows:
        if missing.get(row.backend) is not None and row.modality == "video":
            results.append((row, f"skipped: {row.backend} unavailable"))
            continue
        if row.modality == "image" and row.backend == "dali" and missing["dali"] is not None:
            results.append((row, "skipped: DALI unavailable"))
            continue
        spent = time.perf_counter() - started
        if spent + estimate_s(row, args, rates) > args.budget_s:
            results.append((row, f"skipped: time budget ({spent:.0f} s spent)"))
            continue
        print(f"  [{time.perf_counter() - started:5.0f} s] {row.modality} {row.codec} "
              f"{row.height or ''} {row.label()}", flush=True)
        try:
            if row.modality == "video":
                key = (row.codec, row.height)
                if key not in clips_cache:
                    clips_cache[key] = videos(row.codec, row.height, args.num_videos, workers, args.seed)
                datas, indices = clips_cache[key]
                result, _ = video_row(row.backend, datas, indices, device=device, codec=row.codec,
                                      threads=row.threads, pipelines=row.pipelines, args=args)
                rates[(row.backend, row.height)] = max(rates.get((row.backend, row.height), 0), result.rate)
            else:
                if jpegs is None:
                    jpegs = imagenet_like_jpegs(args.num_jpegs, args.seed)
                    sizes = [len(j) for j in jpegs]
                    print(f"    {len(jpegs)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB", flush=True)
                result = image_row(row.backend, jpegs, device=device if row.backend != "cpu" else
                                   torch.device("cpu"), threads=row.threads, args=args)
        except Exception as error:  # noqa: BLE001 - report the row, measure the others
            errors += 1
            traceback.print_exc(file=sys.stderr)
            results.append((row, f"FAILED: {type(error).__name__}: {str(error)[:160]}"))
            continue
        results.append((row, result))
        table_rows.append(row_dict(modality=row.modality, codec=row.codec, height=row.height, backend=row.backend,
                                   rate=round(result.rate, 2), unit="clips/s" if row.modality == "video" else "images/s",
                                   items=result.items, threads=row.threads, pipelines=row.pipelines,
                                   cpu_cores=round(result.cores, 2),
                                   engine_util=None if result.engine_util is None else round(result.engine_util, 1)))

    assembly = []
    if cuda and clips_cache:
        from loaders.decode.pyav import PyAVDecoder

        datas, indices = next(iter(clips_cache.values()))
        with PyAVDecoder(max(args.cpu_threads), short_side=256, device=device) as decoder:
            decoded = [c for c in decoder.decode(datas[:8], indices[:8]).clips if c is not None]
        for replication in (1, 4):
            try:
                assembly.append(assembly_rate(decoded, replication=replication, batch_size=args.batch_size,
                                              device=device))
            except Exception as error:  # noqa: BLE001
                errors += 1
                assembly.append({"replication": replication, "error": f"{type(error).__name__}: {error}"})

    today = date.today()
    lines = [f"# GPU decode check: {gpu}, {today.isoformat()}" + ("" if cuda else " (CPU rows only: not a GPU measurement)"),
             "", f"`python benchmarks/gpu_decode_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", "```", json.dumps(versions()), f"cpus {os.cpu_count()}", "```", "",
             f"Video: generated {args.num_videos} SSv2-like clips per codec and height (12 fps, 4 s), {NUM_FRAMES} frames "
             f"over a 2.7 s window, short side 256; >= {args.clips} clips per row after a warm-up of every "
             "pipeline / decoder thread. Images: generated ImageNet-like JPEGs, batches of 256. cores: process "
             "CPU time / wall time. engine: NVDEC (video) or JPEG (images) utilisation from NVML.", "",
             "| modality | codec | height | setting | items/s | items | cores busy | engine % | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, result in results:
        head = f"| {row.modality} | {row.codec} | {row.height or '-'} | {row.label()} |"
        if isinstance(result, str):
            lines.append(f"{head} - | - | - | - | {result} |")
            continue
        note = "; ".join(result.notes + ([f"stopped at the {args.row_cap_s:.0f} s cap"] if result.capped else [])
                         + ([f"{result.failures} failed"] if result.failures else []))
        lines.append(f"{head} {result.rate:.1f} | {result.items} | {result.cores:.1f} | {fmt(result.engine_util)} | "
                     f"{note} |")
    if assembly:
        lines += ["", "| GPU batch assembly | samples/s |", "|---|---|"]
        lines += [f"| replication {a['replication']}, batch {args.batch_size} | "
                  f"{a.get('samples_per_s', 0):,.0f} |" if "error" not in a else
                  f"| replication {a['replication']} | FAILED: {a['error'][:120]} |" for a in assembly]
    lines.append(f"\n({time.perf_counter() - started:.0f} s in all)")
    report = "\n".join(lines) + "\n"
    print("\n" + report)

    out_dir = args.out_dir or (RESULTS if cuda else OUT)
    stem = (f"{gpu.replace(' ', '_')}_{today.strftime('%Y%m%d')}" if cuda else "cpu_dryrun") \
        + (f"_{args.tag}" if args.tag else "")
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}_decode.md").write_text(report)
    table = write_table(out_dir / f"{stem}_decode_table.json", device=gpu if cuda else "cpu",
                        rows=table_rows, versions=versions(), date=today.isoformat())
    print(f"wrote {out_dir / f'{stem}_decode.md'} and {table}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
