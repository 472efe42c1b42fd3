"""Decode-bound loader throughput: what replication buys, and which decoder to use where.

    python benchmarks/decode_throughput.py                       # CPU: ~1-2 min on 2 cores
    python benchmarks/decode_throughput.py --device cuda --batch-size 64 --threads 1 4 --pipelines 1 2 4

Data: `--num-videos` generated SSv2-like VP9 WebM videos, 240p, 4 s at 12 fps (48 frames), made
in benchmarks/out/decode_vp9 if missing (H.264 MP4 in decode_h264, only where a GPU will decode
it). Clips as in training: 16 frames over a 2.7 s window, short side 256, 224 crops, 95% masked.
Files are read from the local disk (page cache): no storage latency, so decoding and assembly
are what is left to measure.

Sections:
  loader      VideoLoader (auto backend: PyAV) at replication 1, 2, 4
              with the same batch size: samples/s, and per batch the stage times (read wait,
              decode, assembly). rep4/rep1 should reach >= 3x when decoding is the bottleneck;
              the run says whether it was (decode's share of the stage time at replication 1) and
              what the ratio would be with free assembly (decode time per sample, rep1 / rep4).
  decode      DALI CPU vs PyAV clips/s on the same VP9 clips at each --threads (decode only,
              bytes in memory), and CPU ms per clip (all threads of this process).
  gpu         with CUDA: batch assembly samples/s on the GPU at replication 1 and 4, and DALI
              mixed (NVDEC) clips/s for VP9 and H.264 with each --pipelines; skipped with a line
              saying so otherwise.
Prints a table per section and writes everything, with the machine, to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import host_info, sync  # noqa: E402
from loaders.manifest import Manifest, index_folder, read_manifest  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
FPS, SECONDS, HEIGHT = 12.0, 4.0, 240


# ---- data ----------------------------------------------------------------------------------------

def ensure_videos(codec: str, count: int, root: Path | None = None, workers: int = 2,
                  height: int = HEIGHT) -> Manifest:
    """`count` videos of 48 frames, `height` pixels high, in `root` (default benchmarks/out/decode_<codec>)."""
    from loaders.devtools.synthetic import make_video_dataset

    root = root or OUT / f"decode_{codec}"
    manifest_path = root / "manifest_train.jsonl"
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        if len(manifest) >= count:
            return manifest[:count]
    make_video_dataset(root, count, 0, codec=codec, height=height, fps=FPS, min_s=SECONDS, max_s=SECONDS,
                       workers=workers, progress=False)
    result = index_folder(root, split="train", out=manifest_path, workers=workers)
    if result.skipped:
        raise RuntimeError(f"generated videos unreadable, first {result.skipped[0]}")
    return result.manifest


def load_clips(manifest: Manifest, num_frames: int, seed: int = 0) -> tuple[list[bytes], list[np.ndarray]]:
    """Encoded bytes and training frame indices (random 2.7 s windows) of every video."""
    from loaders.frames import sample_frame_indices

    rng = np.random.default_rng(seed)
    datas = [Path(entry.uri).read_bytes() for entry in manifest]
    indices = [sample_frame_indices(e.num_frames, e.fps, num_frames=num_frames, rng=rng) for e in manifest]
    return datas, indices


# ---- measurements --------------------------------------------------------------------------------

def video_settings(replication: int, crop: int, mask_ratio: float):
    """The paper's SSv2 pretraining assembly (appendix B) at `crop` pixels."""
    from loaders.assembly import AssemblySettings

    return AssemblySettings(replication=replication, crop_size=crop, crop_scale=(0.08, 1.0), flip_p=0.0,
                            interpolation="bilinear", mask_ratio=mask_ratio, mask_type="random",
                            patch_size=(2, 16, 16))


def loader_rate(manifest: Manifest, *, replication: int, batch_size: int, batches: int, warmup: int,
                backend: str, threads: int, device: torch.device, crop: int, num_frames: int,
                mask_ratio: float = 0.95) -> dict:
    """VideoLoader samples/s and mean stage seconds per batch, after `warmup` batches."""
    from loaders.video_loader import VideoLoader

    loader = VideoLoader(manifest, video_settings(replication, crop, mask_ratio), batch_size=batch_size,
                         num_frames=num_frames, decode_backend=backend, decode_threads=threads, device=device,
                         max_in_flight=2 * batch_size)
    try:
        for _ in range(warmup):
            loader.next_batch()
        sync(device)
        stages = {"read_wait": 0.0, "decode": 0.0, "assembly": 0.0}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(batches):
            batch = loader.next_batch()
            for key in stages:
                stages[key] += batch.stats[key]
        sync(device)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stats = loader.stats()
    finally:
        loader.close()
    samples = batches * batch_size
    return {"replication": replication, "batch_size": batch_size, "samples": samples,
            "samples_per_s": samples / wall, "clips_per_s": samples / replication / wall,
            "stage_ms_per_batch": {k: 1e3 * v / batches for k, v in stages.items()},
            "cpu_ms_per_sample": 1e3 * cpu / samples, "backend": type(loader.decoder).__name__,
            "failures": stats["failures"]}


def decode_rate(datas: list, indices: list, *, backend: str, threads: int, device: torch.device,
                codec: str, pipelines: int = 1, passes: int = 2, chunk: int = 8) -> dict:
    """Decoder clips/s (bytes in memory, decode only) and CPU ms per clip, after one warm-up chunk."""
    from loaders.decode import make_video_decoder

    decoder = make_video_decoder(backend, codec=codec, device=device, batch_size=chunk, threads=threads,
                                 short_side=256, num_frames=len(indices[0]), pipelines=pipelines)
    try:
        decoder.decode(datas[:chunk], indices[:chunk])  # builds / warms the pipelines
        sync(device)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        failed = 0
        for _ in range(passes):
            out = decoder.decode(datas, indices)  # split into `chunk`-item runs, round robin
            failed += len(out.failures)
        sync(device)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        decoder.close()
    clips = passes * len(datas)
    return {"backend": backend, "decoder": getattr(decoder, "dali_device", None) or "pyav", "codec": codec,
            "threads": threads, "pipelines": pipelines, "clips": clips, "clips_per_s": clips / wall,
            "cpu_ms_per_clip": 1e3 * cpu / clips, "failures": failed}


def assembly_rate(clips: list[torch.Tensor], *, replication: int, batch_size: int, device: torch.device,
                  crop: int = 224, batches: int = 10) -> dict:
    """assemble_batch samples/s on decoded clips already on `device` (replicate, crop, normalize, mask)."""
    from loaders.assembly import assemble_batch

    per_batch = batch_size // replication
    clips = [clips[k % len(clips)] for k in range(per_batch)]
    generator = torch.Generator(device=device).manual_seed(0)
    settings = video_settings(replication, crop, 0.95)

    def one():
        return assemble_batch(clips, settings, kind="video", generator=generator, device=device)

    one()
    sync(device)
    wall0 = time.perf_counter()
    for _ in range(batches):
        one()
    sync(device)
    wall = time.perf_counter() - wall0
    return {"replication": replication, "batch_size": batch_size, "device": str(device),
            "samples_per_s": batches * batch_size / wall}


# ---- sections ------------------------------------------------------------------------------------

def run_loader_section(args, manifest: Manifest, device: torch.device) -> dict:
    rows = [loader_rate(manifest, replication=t, batch_size=args.batch_size, batches=args.batches,
                        warmup=args.warmup, backend=args.backend, threads=max(args.threads), device=device,
                        crop=args.crop, num_frames=args.frames, mask_ratio=args.mask_ratio)
            for t in (1, 2, 4)]
    by_t = {row["replication"]: row for row in rows}
    one, four = by_t[1], by_t[4]
    stages = one["stage_ms_per_batch"]
    decode_share = stages["decode"] / max(1e-9, sum(stages.values()))
    decode_per_sample = {t: r["stage_ms_per_batch"]["decode"] / r["batch_size"] for t, r in by_t.items()}
    assembly_per_sample = {t: r["stage_ms_per_batch"]["assembly"] / r["batch_size"] for t, r in by_t.items()}
    summary = {
        "rep4_over_rep1": four["samples_per_s"] / one["samples_per_s"],
        # the same ratio from CPU time per sample: what it would be with the cores to ourselves
        "rep4_over_rep1_cpu": one["cpu_ms_per_sample"] / max(1e-9, four["cpu_ms_per_sample"]),
        "decode_share_rep1": decode_share,
        "decode_bound": decode_share >= 0.5,
        # what rep4 would give over rep1 if assembly cost nothing (decode time per sample)
        "rep4_over_rep1_decode_only": decode_per_sample[1] / max(1e-9, decode_per_sample[4]),
        "decode_ms_per_sample": decode_per_sample,
        "assembly_ms_per_sample": assembly_per_sample,
        "target_rep4_over_rep1": 3.0,
    }
    return {"rows": rows, "summary": summary}


def run_decode_section(args, datas: list, indices: list) -> list[dict]:
    from loaders.decode import dali_import_error

    rows = []
    backends = ["pyav"] + (["dali"] if dali_import_error() is None else [])
    for threads in args.threads:
        for backend in backends:
            rows.append(decode_rate(datas, indices, backend=backend, threads=threads, device=torch.device("cpu"),
                                    codec="vp9", passes=args.passes))
    if dali_import_error() is not None:
        print(f"decode: DALI does not import ({dali_import_error()}): PyAV only")
    return rows


def run_gpu_section(args, clips_by_codec: dict[str, tuple[list, list]]) -> dict:
    """GPU assembly at replication 1 and 4, DALI mixed clips/s per codec and pipeline count."""
    from loaders.decode import dali_import_error

    device = torch.device("cuda")
    out: dict = {"assembly": [], "dali_mixed": [], "notes": []}
    datas, indices = clips_by_codec["vp9"]
    from loaders.decode.pyav import PyAVDecoder

    with PyAVDecoder(max(args.threads), short_side=256, device=device) as decoder:
        decoded = [c for c in decoder.decode(datas[:8], indices[:8]).clips if c is not None]
    for t in (1, 4):
        out["assembly"].append(assembly_rate(decoded, replication=t, batch_size=args.gpu_batch_size, device=device,
                                             crop=args.crop))
    if dali_import_error() is not None:
        out["notes"].append(f"DALI mixed skipped: DALI does not import ({dali_import_error()})")
        return out
    for codec, (datas, indices) in clips_by_codec.items():
        for pipelines in args.pipelines:
            try:
                out["dali_mixed"].append(decode_rate(datas, indices, backend="dali", threads=max(args.threads),
                                                     device=device, codec=codec, pipelines=pipelines,
                                                     passes=args.passes, chunk=args.gpu_chunk))
            except Exception as error:  # noqa: BLE001 - one codec failing must not hide the others
                out["notes"].append(f"DALI mixed {codec} x{pipelines}: {type(error).__name__}: {error}"[:300])
    return out


# ---- report --------------------------------------------------------------------------------------

def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A markdown table (readable as text, pastes into an issue)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + " |")


def report(results: dict) -> None:
    if "loader" in results:
        loader = results["loader"]
        print_table("VideoLoader, same batch size, local files (decode-bound regime)",
                    ["replication", "samples/s", "clips/s", "read wait ms", "decode ms", "assembly ms",
                     "cpu ms/sample"],
                    [[r["replication"], r["samples_per_s"], r["clips_per_s"], r["stage_ms_per_batch"]["read_wait"],
                      r["stage_ms_per_batch"]["decode"], r["stage_ms_per_batch"]["assembly"], r["cpu_ms_per_sample"]]
                     for r in loader["rows"]])
        s = loader["summary"]
        verdict = "decode-bound" if s["decode_bound"] else "NOT decode-bound (assembly/read dominate)"
        print(f"\nrep4/rep1 = {s['rep4_over_rep1']:.2f}x in samples/s, {s['rep4_over_rep1_cpu']:.2f}x in CPU time "
              f"per sample (target >= {s['target_rep4_over_rep1']:.0f}x when decode-bound); decode is "
              f"{100 * s['decode_share_rep1']:.0f}% of the stage time at rep 1: "
              f"{verdict}; with free assembly rep4/rep1 would be {s['rep4_over_rep1_decode_only']:.2f}x "
              f"(assembly {s['assembly_ms_per_sample'][1]:.1f} ms/sample vs decode "
              f"{s['decode_ms_per_sample'][1]:.1f} ms/sample at rep 1)")
    if "decode" in results:
        print_table("VP9 decode only (bytes in memory), CPU", ["decoder", "threads", "clips/s", "cpu ms/clip"],
                    [[r["decoder"] if r["decoder"] == "pyav" else f"dali-{r['decoder']}", r["threads"],
                      r["clips_per_s"], r["cpu_ms_per_clip"]] for r in results["decode"]])
    gpu = results.get("gpu")
    if isinstance(gpu, str):
        print(f"\n### GPU\n\n{gpu}")
    elif gpu:
        print_table("GPU batch assembly", ["replication", "batch", "samples/s"],
                    [[r["replication"], r["batch_size"], r["samples_per_s"]] for r in gpu["assembly"]])
        if gpu["dali_mixed"]:
            print_table("DALI mixed (NVDEC) decode", ["codec", "pipelines", "clips/s", "cpu ms/clip", "failures"],
                        [[r["codec"], r["pipelines"], r["clips_per_s"], r["cpu_ms_per_clip"], r["failures"]]
                         for r in gpu["dali_mixed"]])
        for note in gpu["notes"]:
            print(f"\n{note}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=24, help="generated videos per codec")
    parser.add_argument("--data", type=Path, default=None, help="VP9 data folder (default benchmarks/out/decode_vp9)")
    parser.add_argument("--height", type=int, default=HEIGHT, help="height of generated videos (with --data)")
    parser.add_argument("--batch-size", type=int, default=16, help="loader batch size (samples), all replications")
    parser.add_argument("--batches", type=int, default=6, help="measured batches per replication")
    parser.add_argument("--warmup", type=int, default=1, help="batches before measuring")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--mask-ratio", type=float, default=0.95, help="hidden share of video tokens")
    parser.add_argument("--backend", default="auto", choices=["auto", "dali", "pyav", "nvdec"], help="loader decode backend")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="decoder threads to compare; the loader uses the largest")
    parser.add_argument("--passes", type=int, default=2, help="passes over the videos per decode measurement")
    parser.add_argument("--pipelines", type=int, nargs="+", default=[1, 2, 4], help="DALI mixed pipelines (GPU)")
    parser.add_argument("--gpu-batch-size", type=int, default=64, help="GPU assembly batch size")
    parser.add_argument("--gpu-chunk", type=int, default=16, help="clips per DALI mixed pipeline run")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for assembly on the CPU (1 keeps a shared machine's "
                             "numbers stable; OpenMP threads spin on busy cores)")
    parser.add_argument("--device", default="cpu", help="loader device: cpu or cuda")
    parser.add_argument("--sections", nargs="+", default=["loader", "decode", "gpu"],
                        choices=["loader", "decode", "gpu"])
    parser.add_argument("--out", type=Path, default=OUT / "decode_throughput.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    workers = max(1, min(8, (os.cpu_count() or 2)))
    started = time.perf_counter()
    manifest = ensure_videos("vp9", args.num_videos, args.data, workers, args.height)
    results: dict = {"host": host_info(), "args": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items()}}
    print(f"data: {len(manifest)} VP9 videos, {args.height}p, {manifest[0].num_frames} frames; "
          f"{args.frames} frames per clip; torch threads {args.torch_threads}; device {device}")
    if "loader" in args.sections:
        results["loader"] = run_loader_section(args, manifest, device)
    datas, indices = load_clips(manifest, args.frames)
    if "decode" in args.sections:
        results["decode"] = run_decode_section(args, datas, indices)
    if "gpu" in args.sections:
        if torch.cuda.is_available():
            h264 = ensure_videos("h264", args.num_videos, None, workers, args.height)
            results["gpu"] = run_gpu_section(args, {"vp9": (datas, indices), "h264": load_clips(h264, args.frames)})
            results["gpu"]["device"] = torch.cuda.get_device_name()
        else:
            results["gpu"] = "CUDA is not available: GPU assembly and DALI mixed (NVDEC) skipped."
    results["wall_s"] = time.perf_counter() - started
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
