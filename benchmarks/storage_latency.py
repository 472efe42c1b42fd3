"""How well AsyncReader hides storage latency, against a one-at-a-time synchronous reader.

Writes `--objects` files of `--size` bytes, serves them with loaders.devtools.objserver (in a subprocess,
so the server does not share the reader's GIL) at each injected latency, and reads them:

- async: AsyncReader, `--in-flight` requests in flight, ordered delivery, best of `--repeat`;
- aiohttp: the same reads straight through one aiohttp.ClientSession under a semaphore of
  `--in-flight` (no reader, no fsspec): what this machine's HTTP stack manages, to tell the
  reader's own overhead from the machine's limits (`--no-aiohttp` skips it);
- sync: http.client on one keep-alive connection, one object at a time. Above 0 ms only the
  first `--sync-objects` objects are read and the rate is extrapolated (the table says so).

The bound at latency L is min(in_flight / L, async rate at 0 ms): Little's law, capped by what
this machine manages when latency costs nothing. Targets: async >= 85% of the bound at every
latency, and >= 20x the synchronous reader at 100 ms.

    python benchmarks/storage_latency.py --out benchmarks/out/storage_latency.json

`--shards` measures instead what sharding changes (loaders.shards): the items of a data set read one
object per item (ItemStream, `--in-flight` requests in flight) against the same items packed in tar
shards of `--shard-mb` (ShardStream: whole shards, `--shard-reads` in flight, `--shard-buffer` open),
for ~110 KB images and SSv2-size videos (88 KB on average: 19.4 GB / 220,847 clips), at each
latency: items/s delivered as bytes (the read stage alone, decoding excluded: it costs the same
either way) and storage requests per item. Targets: at least 20x fewer requests per item, and with
shards at 100 ms at least 95% of the 0 ms items/s for images.

    python benchmarks/storage_latency.py --shards --latencies-ms 0 50 100 --out benchmarks/out/shard_reads.json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ServerProcess  # noqa: E402

from loaders.item_stream import ItemStream  # noqa: E402
from loaders.manifest import Manifest, ManifestEntry  # noqa: E402
from loaders.shards.index import ShardRecord, ShardedManifest, write_shard_index  # noqa: E402
from loaders.shards.stream import ShardSettings, ShardStream  # noqa: E402
from loaders.shards.tar import TarBuilder  # noqa: E402
from loaders.storage import AsyncReader  # noqa: E402
from loaders.storage.event_loop import new_event_loop  # noqa: E402

# Mean encoded bytes per item: an ImageNet JPEG (~110 KB), an SSv2 WebM (19.4 GB / 220,847 clips).
ITEM_BYTES = {"image": 110_000, "video": 88_000}


def write_objects(root: Path, count: int, size: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"obj_{i:05d}.bin"
        (root / name).write_bytes(os.urandom(size))
        names.append(name)
    return names


def _summary(count: int, nbytes: int, elapsed: float, latencies_s: list[float]) -> dict:
    latencies_s = sorted(latencies_s)

    def pct(q: float) -> float:
        return latencies_s[min(len(latencies_s) - 1, int(q * len(latencies_s)))] * 1e3

    return {"objects": count, "seconds": elapsed, "objects_per_s": count / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "p50_ms": pct(0.5), "p95_ms": pct(0.95)}


def read_async(url: str, names: list[str], in_flight: int) -> dict:
    with AsyncReader(max_in_flight=in_flight, timeout_s=30.0) as reader:
        started = time.perf_counter()
        nbytes = failed = 0
        for result in reader.read_many((i, url + name) for i, name in enumerate(names)):
            if result.ok:
                nbytes += len(result.data)
            else:
                failed += 1
        elapsed = time.perf_counter() - started
        stats = reader.stats()
    return {"objects": len(names), "seconds": elapsed, "objects_per_s": len(names) / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "p50_ms": stats["latency_p50_s"] * 1e3,
            "p95_ms": stats["latency_p95_s"] * 1e3, "failed": failed,
            "max_in_flight": stats["max_in_flight"]}


def read_aiohttp(url: str, names: list[str], in_flight: int) -> dict:
    import aiohttp

    async def run() -> dict:
        limit = asyncio.Semaphore(in_flight)
        latencies, sizes = [], []
        connector = aiohttp.TCPConnector(limit=in_flight)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(name: str) -> None:
                async with limit:
                    t0 = time.perf_counter()
                    async with session.get(url + name) as response:
                        sizes.append(len(await response.read()))
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(one(name) for name in names))
            return _summary(len(names), sum(sizes), time.perf_counter() - started, latencies)

    loop = new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def read_sync(url: str, names: list[str]) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    latencies, nbytes = [], 0
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        conn.request("GET", parts.path + name)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"sync read of {name} got HTTP {response.status}")
        nbytes += len(body)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    conn.close()
    return _summary(len(names), nbytes, elapsed, latencies)


def measure(url: str, names: list[str], latency_ms: float, args) -> dict:
    read_async(url, names[: args.in_flight], args.in_flight)  # warm-up: connections, imports
    runs = [read_async(url, names, args.in_flight) for _ in range(args.repeat)]
    best = max(runs, key=lambda r: r["objects_per_s"])
    best["runs_objects_per_s"] = [r["objects_per_s"] for r in runs]
    row = {"latency_ms": latency_ms, "async": best}
    if args.aiohttp:
        row["aiohttp"] = max((read_aiohttp(url, names, args.in_flight)
                              for _ in range(args.repeat)), key=lambda r: r["objects_per_s"])
    sync_names = names if latency_ms == 0 else names[: args.sync_objects]
    row["sync"] = read_sync(url, sync_names)
    row["sync_extrapolated"] = len(sync_names) < len(names)
    return row


# -- one object per item against tar shards ---------------------------------------------------


def write_item_set(root: Path, kind: str, count: int, shard_bytes: int, seed: int = 0) -> list[str]:
    """`count` objects of random bytes, sizes uniform in [0.5, 1.5] x ITEM_BYTES[kind], under root/kind/,
    and the same bytes as tar shards of about shard_bytes under root/kind-shards/ with their shard index
    (members built directly: random bytes would not pass the media probe of `omnimae-data shard`)."""
    rng = random.Random(seed)
    objects, shards = root / kind, root / f"{kind}-shards"
    objects.mkdir(parents=True)
    shards.mkdir()
    names, records, tar = [], [], TarBuilder()
    items, in_tar = [], 0

    def flush() -> None:
        nonlocal tar, items, in_tar
        name = f"train-{len(records):06d}.tar"
        data = tar.getvalue()
        (shards / name).write_bytes(data)
        records.append(ShardRecord(name, len(data), [tuple(m) for m in tar.members], items))
        tar, items, in_tar = TarBuilder(), [], 0

    mean = ITEM_BYTES[kind]
    for i in range(count):
        data = os.urandom(rng.randint(mean // 2, mean * 3 // 2))
        name = f"obj_{i:06d}.bin"
        (objects / name).write_bytes(data)
        names.append(f"{kind}/{name}")
        tar.add(f"{i:06d}.bin", data)
        items.append({"key": f"{i:06d}", "member": len(tar.members) - 1, "label": 0, "num_frames": 1,
                      "fps": 0.0, "duration": 0.0})
        in_tar += len(data)
        if in_tar >= shard_bytes:
            flush()
    if items:
        flush()
    write_shard_index(records, shards / "shards_train.jsonl")
    return names


def read_stream(stream, count: int, batch: int) -> dict:
    """Take `count` items from the stream in batches. items/s and MB/s are the steady state, from the
    first batch on (first_batch_s: the wait for it, the pipeline filling, paid once per run);
    requests per item counts every request issued, the reads ahead at the end included."""
    t0 = time.perf_counter()
    items, _ = stream.next_reads(batch)
    started = time.perf_counter()
    taken = nbytes = 0
    while taken < count:
        items, _ = stream.next_reads(min(batch, count - taken))
        taken += len(items)
        nbytes += sum(len(data) for _, data in items)
    elapsed = time.perf_counter() - started
    stats = stream.reader.stats()
    stream.close()
    return {"items": taken, "seconds": elapsed, "items_per_s": taken / elapsed, "mb_per_s": nbytes / elapsed / 1e6,
            "first_batch_s": started - t0, "requests": stats["requests"],
            "requests_per_item": stats["requests"] / (taken + batch), "failures": stream.failures}


def measure_layouts(url: str, kind: str, names: list[str], args) -> dict:
    """One latency: the items as objects, then as shards (each read once after a short warm-up)."""
    from loaders.shards.index import read_shard_index

    manifest = Manifest([ManifestEntry(url + name, 0, 1, 0.0, 0.0) for name in names])
    index: ShardedManifest = read_shard_index(f"{url}{kind}-shards/shards_train.jsonl")
    settings = ShardSettings(buffer=args.shard_buffer, reads=args.shard_reads)
    row = {"kind": kind, "latency_ms": None}
    for layout in ("objects", "shards"):
        runs = []
        # A warm-up (imports, connections), then the measured runs; the best is kept: other jobs on a
        # shared machine only ever slow a run down.
        for count in [min(len(names), 4 * args.in_flight)] + [len(names)] * args.repeat:
            if layout == "objects":
                reader = AsyncReader(max_in_flight=args.in_flight, timeout_s=60.0)
                stream = ItemStream(manifest, reader, modality=kind)
            else:
                reader = settings.make_reader()
                stream = ShardStream(index, reader, modality=kind, buffer=args.shard_buffer)
            try:
                runs.append(read_stream(stream, count, args.batch))
            finally:
                reader.close()
            if layout == "shards":
                runs[-1]["peak_held_mb"] = stream.shard_stats()["peak_held_bytes"] / 1e6
        best = max(runs[1:], key=lambda r: r["items_per_s"])
        best["runs_items_per_s"] = [r["items_per_s"] for r in runs[1:]]
        row[layout] = best
    row["shard_mb"] = max(r.size for r in index.shards) / 1e6
    return row


def main_shards(args) -> None:
    """--shards: objects against shards, per kind and latency (module docstring)."""
    load_before = os.getloadavg()[0]
    print(f"{args.items} items per kind, shards of ~{args.shard_mb} MB ({args.shard_reads} reads in flight, "
          f"{args.shard_buffer} open), objects {args.in_flight} in flight, best of {args.repeat}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shard_reads_") as tmp:
        root = Path(tmp)
        names = {kind: write_item_set(root, kind, args.items, int(args.shard_mb * 1e6)) for kind in args.kinds}
        for latency_ms in args.latencies_ms:
            server = ServerProcess(root, latency_ms)
            try:
                for kind in args.kinds:
                    row = measure_layouts(server.url, kind, names[kind], args)
                    row["latency_ms"] = latency_ms
                    zero = next((r for r in rows if r["kind"] == kind and r["latency_ms"] == 0), row)
                    for layout in ("objects", "shards"):
                        row[layout]["share_of_0ms"] = row[layout]["items_per_s"] / zero[layout]["items_per_s"]
                    row["fewer_requests_per_item"] = \
                        row["objects"]["requests_per_item"] / row["shards"]["requests_per_item"]
                    rows.append(row)
                    print_shard_row(row, header=len(rows) == 1)
            finally:
                server.close()
    at_100 = [r for r in rows if r["latency_ms"] == 100]
    report = {
        "benchmark": "shard_reads", "items": args.items, "item_bytes": {k: ITEM_BYTES[k] for k in args.kinds},
        "shard_mb": args.shard_mb, "shard_reads": args.shard_reads, "shard_buffer": args.shard_buffer,
        "in_flight": args.in_flight, "repeat": args.repeat, "rows": rows,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                 "load_average_1min": [load_before, os.getloadavg()[0]]},
        "targets": {"fewer_requests_per_item": 20.0, "image_shards_100ms_share_of_0ms": 0.95},
        "targets_met": {
            "fewer_requests_per_item": all(r["fewer_requests_per_item"] >= 20.0 for r in rows),
            "image_shards_100ms_share_of_0ms": (all(r["shards"]["share_of_0ms"] >= 0.95
                                                    for r in at_100 if r["kind"] == "image") if at_100 else None),
        },
    }
    finish(report, args.out, load_before)


def finish(report: dict, out: Path | None, load_before: float) -> None:
    """Print whether the targets are met; write the report as JSON to `out`."""
    print(f"targets met: {report['targets_met']}; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")


def print_shard_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'kind':>5} {'latency':>8} | {'objects/s':>9} {'req/item':>8} {'of 0ms':>6} | "
              f"{'shards/s':>9} {'req/item':>8} {'of 0ms':>6} {'MB/s':>6} | {'fewer req':>9}")
    o, s = row["objects"], row["shards"]
    print(f"{row['kind']:>5} {row['latency_ms']:>6.0f}ms | {o['items_per_s']:>9.0f} {o['requests_per_item']:>8.3f} "
          f"{o['share_of_0ms']:>6.1%} | {s['items_per_s']:>9.0f} {s['requests_per_item']:>8.4f} "
          f"{s['share_of_0ms']:>6.1%} {s['mb_per_s']:>6.0f} | {row['fewer_requests_per_item']:>8.0f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000, help="objects written and read")
    parser.add_argument("--size", type=int, default=100_000, help="bytes per object")
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[0, 20, 50, 100, 200],
                        help="injected server latencies; the first must be 0 (it sets the bound)")
    parser.add_argument("--in-flight", type=int, default=64, help="AsyncReader.max_in_flight")
    parser.add_argument("--sync-objects", type=int, default=100,
                        help="objects the synchronous reader reads above 0 ms (extrapolated)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="async runs per latency; the best is kept (other jobs on a shared "
                             "machine only ever slow a run down)")
    parser.add_argument("--jitter-frac", type=float, default=0.0,
                        help="uniform jitter of +- this share of the latency (mean unchanged)")
    parser.add_argument("--no-aiohttp", dest="aiohttp", action="store_false",
                        help="skip the plain-aiohttp reference reads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    shards = parser.add_argument_group("--shards: one object per item against tar shards")
    shards.add_argument("--shards", action="store_true", help="measure sharded reads instead (module docstring)")
    shards.add_argument("--items", type=int, default=4000, help="items per kind")
    shards.add_argument("--kinds", nargs="+", choices=sorted(ITEM_BYTES), default=["image", "video"])
    shards.add_argument("--shard-mb", type=float, default=16.0, help="shard size in MB")
    shards.add_argument("--shard-reads", type=int, default=16, help="whole-shard reads in flight")
    shards.add_argument("--shard-buffer", type=int, default=4, help="shards open at once")
    shards.add_argument("--batch", type=int, default=64, help="items taken per next_reads call")
    args = parser.parse_args(argv)
    if args.latencies_ms[0] != 0:
        parser.error("--latencies-ms must start with 0: the 0 ms rate is part of the bound")
    if args.shards:
        return main_shards(args)

    load_before = os.getloadavg()[0]
    print(f"{args.objects} objects of {args.size} bytes, {args.in_flight} in flight, latency "
          f"jitter +-{args.jitter_frac:.0%}, best of {args.repeat}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="storage_latency_") as tmp:
        root = Path(tmp)
        names = write_objects(root, args.objects, args.size)
        for latency_ms in args.latencies_ms:
            server = ServerProcess(root, latency_ms, args.jitter_frac * latency_ms)
            try:
                row = measure(server.url, names, latency_ms, args)
            finally:
                server.close()
            rate_at_zero = (rows[0] if rows else row)["async"]["objects_per_s"]
            bound = rate_at_zero if latency_ms == 0 else \
                min(args.in_flight / (latency_ms / 1e3), rate_at_zero)
            row["bound_objects_per_s"] = bound
            row["share_of_bound"] = row["async"]["objects_per_s"] / bound
            row["speedup_vs_sync"] = row["async"]["objects_per_s"] / row["sync"]["objects_per_s"]
            rows.append(row)
            print_row(row, header=len(rows) == 1)

    report = {
        "benchmark": "storage_latency", "objects": args.objects, "object_bytes": args.size,
        "in_flight": args.in_flight, "jitter_frac": args.jitter_frac, "repeat": args.repeat,
        "rows": rows,
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "platform": platform.platform(),
                 # Other jobs on the machine inflate latency at the knee; recorded for context.
                 "load_average_1min": [load_before, os.getloadavg()[0]]},
        "targets": {"share_of_bound": 0.85, "speedup_vs_sync_at_100ms": 20.0},
        "targets_met": {
            "share_of_bound": all(r["share_of_bound"] >= 0.85 for r in rows),
            "speedup_vs_sync_at_100ms": all(r["speedup_vs_sync"] >= 20.0 for r in rows
                                            if r["latency_ms"] == 100),
        },
    }
    print(f"sync rows marked * read only the first {args.sync_objects} objects; their rate is "
          f"extrapolated to all {args.objects}.")
    finish(report, args.out, load_before)


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'latency':>8} | {'async obj/s':>11} {'MB/s':>6} {'p50 ms':>7} {'p95 ms':>7} | "
              f"{'bound':>6} {'share':>6} | {'aiohttp':>7} | {'sync obj/s':>10} {'p50 ms':>7} | "
              f"{'speedup':>7}")
    a, s = row["async"], row["sync"]
    raw = f"{row['aiohttp']['objects_per_s']:>7.0f}" if "aiohttp" in row else f"{'-':>7}"
    mark = "*" if row["sync_extrapolated"] else " "
    print(f"{row['latency_ms']:>6.0f}ms | {a['objects_per_s']:>11.0f} {a['mb_per_s']:>6.1f} "
          f"{a['p50_ms']:>7.1f} {a['p95_ms']:>7.1f} | {row['bound_objects_per_s']:>6.0f} "
          f"{row['share_of_bound']:>6.1%} | {raw} | {s['objects_per_s']:>9.1f}{mark} "
          f"{s['p50_ms']:>7.1f} | {row['speedup_vs_sync']:>6.1f}x", flush=True)


if __name__ == "__main__":
    main()
