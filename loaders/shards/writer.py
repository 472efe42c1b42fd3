"""`omnimae-data shard SRC DEST`: an indexed data set -> WebDataset tar shards plus their shard index.

    shard_dataset("/nfs/imagenet", "s3://bucket/imagenet-shards", shard_size=64 << 20, workers=8)

    DEST/train-000000.tar   per item <key>.<ext> (the encoded bytes as they are) and <key>.json
                            ({"label", "num_frames", "fps", "codec", "width", "height"}), in manifest order
    DEST/_parts/train-000000.json   the shard's index line, written once its tar is: the shard is done
    DEST/shards_train.jsonl the shard index (loaders.shards.index), once every shard is done

The source is read through the reader pool (AsyncReader) and `workers` shards are built and written
at once. Shard s holds manifest items [s * per_shard, (s + 1) * per_shard): with `shard_size`,
per_shard comes from the mean size of a sample of the items, so the split is known before anything
is read, every process computes it alone, and a run can stop anywhere: a rerun keeps the shards whose
part file and tar are there and writes the rest. With rank / world_size (a Slurm array, torchrun) a
process writes the shards s with s % world_size == rank; whichever finds every shard done at its
end writes the index. A plan that differs from the one DEST's parts were written with (another
source, split or shard size) is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import av
import fsspec
from PIL import Image
from tqdm import tqdm

from loaders.errors import DataError
from loaders.manifest import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Manifest, ManifestEntry, read_manifest, write_file
from loaders.redact import redact
from loaders.shards.index import ShardRecord, index_name, item_fields, write_shard_index
from loaders.shards.tar import TarBuilder
from loaders.storage import AsyncReader
from loaders.storage.backends import protocol_options

PARTS = "_parts"
_CODEC_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "vp9": "webm", "vp8": "webm",
                     "h264": "mp4", "hevc": "mp4", "av1": "mp4", "mjpeg": "avi"}


@dataclass
class ShardResult:
    """What shard_dataset did: shards in the plan, written now, kept from an earlier run, items
    skipped (uri, reason), and the index path (None while other ranks' shards are missing)."""

    shards: int
    per_shard: int
    written: int = 0
    kept: int = 0
    items: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    index: str | None = None


def source_manifest(src: str, split: str) -> str:
    """SRC is a manifest (.jsonl, .jsonl.gz) or a data set root holding manifest_<split>.jsonl."""
    if src.endswith((".jsonl", ".jsonl.gz")):
        return src
    return f"{src.rstrip('/')}/manifest_{split}.jsonl"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def member_key(index: int, uri: str) -> str:
    """A WebDataset key (no dots: the extension starts at the first one): the manifest position, then
    the file's stem for whoever reads the tar by eye."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", PurePosixPath(uri.split("?")[0]).name.split(".")[0])[:64]
    return f"{index:08d}_{stem}" if stem else f"{index:08d}"


def extension(entry: ManifestEntry) -> str:
    """The media member's extension: the file's own when it is a known one, else from the codec."""
    suffix = PurePosixPath(entry.uri.split("?")[0]).suffix.lower()
    if suffix in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        return suffix[1:]
    return _CODEC_EXTENSIONS.get(entry.codec or "", "bin")


def media_size(data: bytes, image: bool) -> tuple[int, int]:
    """(width, height) from the headers, nothing decoded; raises for what is not an image / a video."""
    if image:
        with Image.open(io.BytesIO(data)) as picture:
            return picture.size
    with av.open(io.BytesIO(data), "r") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        context = container.streams.video[0].codec_context
        return context.width, context.height


def items_per_shard(manifest: Manifest, shard_size: int, storage_options: dict | None = None,
                    sample: int = 256) -> int:
    """shard_size / the mean size of `sample` items spread over the manifest (sizes from the store's
    metadata, nothing read), at least 1."""
    picks = sorted({round(i * (len(manifest) - 1) / max(1, sample - 1)) for i in range(min(sample, len(manifest)))})

    def size(index: int) -> int | None:
        uri = manifest[index].uri
        protocol = fsspec.core.split_protocol(uri)[0] or "file"
        try:
            fs, path = fsspec.core.url_to_fs(uri, **protocol_options(storage_options, protocol))
            return int(fs.size(path))
        except (OSError, ValueError, TypeError):
            return None  # missing: the writer skips it with its reason

    with ThreadPoolExecutor(max_workers=16) as pool:
        sizes = [s for s in pool.map(size, picks) if s]
    if not sizes:
        raise DataError(f"none of {len(picks)} sampled items has a size (first: {redact(manifest[picks[0]].uri)})")
    return max(1, round(shard_size / (sum(sizes) / len(sizes))))


def _fingerprint(manifest: Manifest, split: str, per_shard: int) -> dict:
    digest = hashlib.sha1("\n".join(e.uri for e in manifest).encode()).hexdigest()
    return {"split": split, "items": len(manifest), "per_shard": per_shard, "uris_sha1": digest}


class _Destination:
    """DEST on its filesystem: objects written whole (loaders.manifest.write_file), listings."""

    def __init__(self, url: str, storage_options: dict | None):
        self.url = url.rstrip("/")
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        self._write_options = protocol_options(storage_options, protocol)
        self.fs, self.root = fsspec.core.url_to_fs(url, **self._write_options)

    def join(self, *names: str) -> str:
        return "/".join([self.url, *names])

    def put(self, name: str, data: bytes) -> None:
        write_file(self.join(name), data, storage_options=self._write_options)

    def sizes(self, folder: str = "") -> dict[str, int]:
        """{name: bytes} of the files in DEST (or a folder of it); {} when it does not exist."""
        path = f"{self.root.rstrip('/')}/{folder}" if folder else self.root
        try:
            listing = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {PurePosixPath(e["name"]).name: int(e.get("size") or 0) for e in listing if e.get("type") != "directory"}

    def read_parts(self, names: list[str]) -> dict[str, dict]:
        paths = [f"{self.root.rstrip('/')}/{PARTS}/{n}" for n in names]
        blobs = self.fs.cat(paths) if paths else {}
        return {PurePosixPath(p).name: json.loads(b) for p, b in blobs.items()}


def shard_dataset(src: str, dest: str, *, split: str = "train", shard_size: int | None = None,
                  per_shard: int | None = None, workers: int = 4, rank: int = 0, world_size: int = 1,
                  storage_options: dict | None = None, max_in_flight: int = 64,
                  progress: bool = False) -> ShardResult:
    """Write this rank's shards of SRC's manifest into DEST (module docstring); 64 MiB shards unless
    shard_size or per_shard says otherwise."""
    if not 0 <= rank < world_size:
        raise ValueError(f"--rank must be in [0, --world-size), got {rank} of {world_size}")
    manifest = read_manifest(source_manifest(src, split), storage_options=storage_options)
    if not len(manifest):
        raise DataError(f"{redact(src)}: the manifest lists no items")
    if per_shard is None:
        per_shard = items_per_shard(manifest, shard_size or 64 << 20, storage_options)
    count = math.ceil(len(manifest) / per_shard)
    result = ShardResult(shards=count, per_shard=per_shard)
    out = _Destination(dest, storage_options)
    plan = _fingerprint(manifest, split, per_shard)
    names = [shard_name(split, s) for s in range(count)]
    done = _finished(out, names, plan)
    mine = [s for s in range(count) if s % world_size == rank]
    todo = [s for s in mine if names[s] not in done]
    result.kept = len(mine) - len(todo)
    lock = threading.Lock()
    with AsyncReader(max_in_flight=max_in_flight, storage_options=storage_options) as reader, \
            tqdm(total=sum(len(range(s * per_shard, min(len(manifest), (s + 1) * per_shard))) for s in todo),
                 desc=f"shard {split}", unit="item", disable=None if progress else True) as bar:
        def write(number: int) -> None:
            items = range(number * per_shard, min(len(manifest), (number + 1) * per_shard))
            record, skipped = _build_shard(manifest, items, reader, names[number], out, bar)
            out.put(f"{PARTS}/{names[number][:-4]}.json",
                    json.dumps({"plan": plan, "record": record.to_dict(), "skipped": skipped}).encode())
            with lock:
                result.written += 1
                result.items += record.count
                result.skipped.extend(tuple(s) for s in skipped)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(write, todo))  # raises the first error of a shard
    done = _finished(out, names, plan)
    if len(done) == count:
        records = [ShardRecord.from_dict(done[n]["record"]) for n in names]
        result.index = write_shard_index(records, out.join(index_name(split)), class_names=manifest.class_names,
                                         storage_options=out._write_options)
    return result


def _finished(out: _Destination, names: list[str], plan: dict) -> dict[str, dict]:
    """{shard name: its part} for the shards done: part file there, of this plan, tar of its size."""
    parts = out.sizes(PARTS)
    tars = out.sizes()
    wanted = [f"{n[:-4]}.json" for n in names if f"{n[:-4]}.json" in parts]
    done = {}
    for part_name, part in out.read_parts(wanted).items():
        if part["plan"] != plan:
            raise DataError(f"{redact(out.url)} holds shards of another plan ({part_name}: {part['plan']}, now "
                            f"{plan}): write into a new DEST, or delete its shards and {PARTS}/ first")
        name = f"{part_name[:-5]}.tar"
        if tars.get(name) == part["record"]["size"]:
            done[name] = part
    return done


def _build_shard(manifest: Manifest, items: range, reader: AsyncReader, name: str, out: _Destination,
                 bar) -> tuple[ShardRecord, list[list[str]]]:
    """Read the items, write the tar; its index line and the items skipped [[uri, reason]]."""
    tar, entries, skipped = TarBuilder(), [], []
    for result in reader.read_many((i, manifest[i].uri) for i in items):
        bar.update(1)
        entry = manifest[result.key]
        if not result.ok or not result.data:
            skipped.append([redact(entry.uri), result.error or "empty file"])
            continue
        try:
            width, height = media_size(result.data, entry.is_image)
        except Exception as error:  # noqa: BLE001 - a file that is not what the manifest says is skipped
            skipped.append([redact(entry.uri), f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"])
            continue
        key = member_key(result.key, entry.uri)
        tar.add(f"{key}.{extension(entry)}", result.data)
        media = len(tar.members) - 1
        meta = {"label": entry.label, "num_frames": entry.num_frames, "fps": entry.fps, "codec": entry.codec,
                "width": width, "height": height}
        tar.add(f"{key}.json", json.dumps(meta).encode())
        entries.append({"key": key, "member": media, **item_fields(entry)})
    data = tar.getvalue()
    out.put(name, data)
    return ShardRecord(name, len(data), [tuple(m) for m in tar.members], entries), skipped
