"""GPU decode check (a fragment of benchmarks/gpu_check.sh): NVDEC vs CPU decoding, GPU batch assembly.

    python benchmarks/gpu_decode_check.py            # <= 2 min on one H100; prints a markdown table

Measures, on generated 240p clips (16 frames of a 48-frame video, short side 256, as training):
- decode clips/s: DALI mixed (NVDEC) with 1 and 4 pipelines vs the CPU decoders (DALI CPU and
  PyAV for VP9, PyAV for H.264) with `--cpu-threads` threads, for VP9 WebM and H.264 MP4;
- batch assembly samples/s on the GPU (replicate, crop, normalize, mask; 224 crops, 95% masked)
  at replication 1 and 4 with the same batch size.
Without DALI the NVDEC rows say so; without CUDA every GPU row is skipped with a line saying so
and only the CPU decode rows run. Exit status 1 if a measurement that should have run failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.decode_throughput import assembly_rate, decode_rate, ensure_videos, load_clips  # noqa: E402
from loaders.decode import dali_import_error  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=24, help="generated videos per codec")
    parser.add_argument("--cpu-threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--pipelines", type=int, nargs="+", default=[1, 4], help="DALI mixed pipelines")
    parser.add_argument("--batch-size", type=int, default=64, help="GPU assembly batch size")
    parser.add_argument("--passes", type=int, default=2, help="passes over the clips per decode row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    dali_error = dali_import_error()
    rows: list[tuple[str, str, str, str]] = []  # (what, codec, setting, result)
    errors = 0

    def measure(what: str, codec: str, setting: str, fn) -> None:
        nonlocal errors
        try:
            result = fn()
        except Exception as error:  # noqa: BLE001 - report the row, keep measuring the others
            errors += 1
            traceback.print_exc(file=sys.stderr)
            rows.append((what, codec, setting, f"FAILED: {type(error).__name__}: {str(error)[:120]}"))
            return
        rate = result["clips_per_s"] if "clips_per_s" in result else result["samples_per_s"]
        unit = "clips/s" if "clips_per_s" in result else "samples/s"
        extra = f", {result['failures']} failed" if result.get("failures") else ""
        rows.append((what, codec, setting, f"{rate:.1f} {unit}{extra}"))

    workers = max(1, min(8, os.cpu_count() or 1))
    clips = {codec: load_clips(ensure_videos(codec, args.num_videos, workers=workers), 16)
             for codec in ("vp9", "h264")}
    cpu = torch.device("cpu")
    threads = args.cpu_threads
    for codec, (datas, indices) in clips.items():
        measure("decode CPU", codec, f"PyAV, {threads} threads",
                lambda: decode_rate(datas, indices, backend="pyav", threads=threads, device=cpu, codec=codec,
                                    passes=args.passes))
        if codec == "vp9" and dali_error is None:
            measure("decode CPU", codec, f"DALI cpu, {threads} threads",
                    lambda: decode_rate(datas, indices, backend="dali", threads=threads, device=cpu, codec=codec,
                                        passes=args.passes))
        for pipelines in args.pipelines:
            setting = f"DALI mixed, {pipelines} pipeline{'s' * (pipelines > 1)}"
            if not cuda:
                rows.append(("decode NVDEC", codec, setting, "skipped: CUDA is not available"))
            elif dali_error is not None:
                rows.append(("decode NVDEC", codec, setting, f"skipped: DALI does not import ({dali_error[:80]})"))
            else:
                measure("decode NVDEC", codec, setting,
                        lambda: decode_rate(datas, indices, backend="dali", threads=4, device=torch.device("cuda"),
                                            codec=codec, pipelines=pipelines, passes=args.passes, chunk=16))
    for replication in (1, 4):
        setting = f"replication {replication}, batch {args.batch_size}"
        if not cuda:
            rows.append(("assembly GPU", "-", setting, "skipped: CUDA is not available"))
            continue

        def assemble(replication=replication):
            from loaders.decode.pyav import PyAVDecoder

            datas, indices = clips["vp9"]
            with PyAVDecoder(threads, short_side=256, device="cuda") as decoder:
                decoded = [c for c in decoder.decode(datas[:8], indices[:8]).clips if c is not None]
            return assembly_rate(decoded, replication=replication, batch_size=args.batch_size,
                                 device=torch.device("cuda"))

        measure("assembly GPU", "-", setting, assemble)

    device = torch.cuda.get_device_name() if cuda else "no CUDA device"
    print(f"\n### GPU decode check ({device}; DALI {'absent' if dali_error else 'present'}; "
          f"{len(clips['vp9'][0])} clips per codec, 240p, 16 frames)\n")
    print("| what | codec | setting | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if not cuda:
        print("\nCUDA is not available: the NVDEC and GPU assembly rows were skipped.")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
