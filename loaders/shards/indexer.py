"""`omnimae-data index ROOT` for tar shards someone else wrote (webdataset's ShardWriter, plain `tar`).

    result = index_shards("s3://bucket/laion-shards", split="train")   # -> ROOT/shards_train.jsonl
    index_shards("https://host/data/shard-{000000..000099}.tar", out="index/shards_train.jsonl")

ROOT is a folder or fsspec URL holding `*.tar` files, a single `.tar`, or a brace pattern
(`{000..099}`, zero-padded ranges) for stores that cannot list (plain HTTP). Each shard is read by
ranged requests (`tar.Ranges`): the tar headers, and only the members the index needs. Members group
into samples by WebDataset's rule (the key is the path up to the first dot of the file name); a
sample's media member is its first image or video. Labels come from a `.cls` member (an integer) or a
`.json` one ("label"), else -1. A `.json` that already says num_frames, fps and codec (as
`omnimae-data shard` writes) is taken as it is, so re-indexing such shards reads only headers and
metadata; other media members are read and probed as `omnimae-data index` probes files (every frame
decoded: what the manifest promises decodes). Samples without media, or whose media does not probe,
are skipped with a reason; a shard that stops being a tar keeps the samples before the damage.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import PurePosixPath

import fsspec
from tqdm import tqdm

from loaders.errors import DataError
from loaders.manifest import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ManifestEntry, parent_folder, probe_entry
from loaders.redact import redact
from loaders.shards.index import ShardRecord, ShardedManifest, index_name, item_fields, write_shard_index
from loaders.shards.tar import Member, Ranges, scan
from loaders.storage.backends import protocol_options

_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass
class ShardIndexResult:
    """index_shards' answer: the index as a manifest, what was skipped (uri, reason), where it went."""

    manifest: ShardedManifest
    skipped: list[tuple[str, str]]
    out: str | None
    requests: int  # ranged reads made
    bytes_read: int  # what they fetched (a shard's media members are skipped when its .json describes them)
    bytes_total: int  # the shards' sizes


def expand_braces(pattern: str) -> list[str]:
    """`a-{00..02}.tar` -> a-00.tar, a-01.tar, a-02.tar (every {lo..hi} range, zero-padded to lo's width)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    lo, hi = match.groups()
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [url for n in range(int(lo), int(hi) + 1)
            for url in expand_braces(f"{head}{n:0{len(lo)}d}{tail}")]


def looks_like_shards(root: str) -> bool:
    """ROOT names tar shards: a URL, a .tar, a brace pattern, or a local folder holding *.tar files."""
    if "://" in root or root.endswith(".tar") or _BRACES.search(root):
        return True
    return os.path.isdir(root) and any(name.endswith(".tar") for name in os.listdir(root))


def _filesystem(url: str, storage_options: dict | None):
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    return fsspec.core.url_to_fs(url, **protocol_options(storage_options, protocol))


def list_shards(root: str, storage_options: dict | None = None) -> list[str]:
    """The shard urls ROOT names, sorted (module docstring)."""
    if _BRACES.search(root):
        return expand_braces(root)
    if root.endswith(".tar"):
        return [root]
    fs, path = _filesystem(root, storage_options)
    protocol = fsspec.core.split_protocol(root)[0]
    found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".tar"))
    base = root.rstrip("/")
    return [f"{base}/{PurePosixPath(p).name}" if protocol else os.path.join(os.path.abspath(root), os.path.basename(p))
            for p in found]


def sample_key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member path: (key, extension), `a/b.seg.jpg` -> (`a/b`, `seg.jpg`)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _media_kind(name: str) -> str | None:
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _label(members: dict[str, bytes]) -> tuple[int, dict]:
    """(label, the .json's object) from a sample's .cls / .json members; -1 and {} when absent."""
    meta = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    label = meta.get("label", meta.get("cls"))
    if "cls" in members:
        try:
            label = int(members["cls"].decode().strip())
        except ValueError:
            pass
    return (label if isinstance(label, int) and not isinstance(label, bool) and label >= 0 else -1), meta


def _described(meta: dict, label: int, uri: str, image: bool) -> ManifestEntry | None:
    """The entry a .json already describes (num_frames, fps, codec), or None."""
    frames, fps, codec = meta.get("num_frames"), meta.get("fps"), meta.get("codec")
    if not (isinstance(frames, int) and isinstance(fps, (int, float)) and isinstance(codec, str) and codec):
        return None
    if image != (frames == 1 and fps == 0):
        return None
    try:
        return ManifestEntry.from_dict({"uri": uri, "label": label, "num_frames": frames, "fps": fps,
                                        "duration": frames / fps if fps else 0.0, "codec": codec})
    except ValueError:
        return None


def index_shard(url: str, storage_options: dict | None = None, *, chunk: int = 1 << 20
                ) -> tuple[ShardRecord, list[tuple[str, str]], Ranges]:
    """One shard's index line (url as given), the samples skipped (uri, reason), and its Ranges (the
    ranged reads made, the bytes they fetched)."""
    fs, path = _filesystem(url, storage_options)
    size = int(fs.size(path))
    ranges = Ranges(lambda start, end: fs.cat_file(path, start=start, end=end), size, chunk=chunk)
    members: list[Member] = []
    small: dict[Member, bytes] = {}  # .cls / .json data, taken while the scan's chunk still holds it
    skipped: list[tuple[str, str]] = []
    try:
        for member in scan(ranges):
            members.append(member)
            if sample_key(member.name)[1] in ("cls", "json"):
                small[member] = ranges.get(member.offset, member.size)
    except ValueError as error:
        skipped.append((url, f"not a tar from {error} on: the samples before it are kept"))
    items = []
    positions = {m: k for k, m in enumerate(members)}
    for key, group in groupby(members, key=lambda m: sample_key(m.name)[0]):
        group = list(group)
        media = next((m for m in group if _media_kind(m.name)), None)
        uri = f"{url}#{media.name if media else key}"
        if media is None:
            skipped.append((uri, f"no image or video member (members: {', '.join(m.name for m in group)})"))
            continue
        label, meta = _label({sample_key(m.name)[1]: small[m] for m in group if m in small})
        image = _media_kind(media.name) == "image"
        entry = _described(meta, label, uri, image)
        if entry is None:
            entry = probe_entry(ranges.get(media.offset, media.size), label, uri, image=image)
        if not isinstance(entry, ManifestEntry):
            skipped.append(entry)
            continue
        items.append({"key": key, "member": positions[media], **item_fields(entry)})
    return ShardRecord(url, size, [tuple(m) for m in members], items), skipped, ranges


def index_shards(root: str, *, split: str = "train", out: str | None = None, workers: int = 4,
                 base_url: str | None = None, storage_options: dict | None = None, progress: bool = False,
                 chunk: int = 1 << 20) -> ShardIndexResult:
    """Index every shard ROOT names (module docstring) and write the index to `out` (default
    ROOT/shards_<split>.jsonl; the folder of a pattern or a .tar). Shard urls are written relative to
    the index's folder when they are in it, else as they are; with base_url, as base_url + the name
    (index local shards for a copy in a bucket). Raises DataError when no sample is left."""
    urls = list_shards(root, storage_options)
    if not urls:
        raise DataError(f"{redact(root)}: no *.tar shards")
    folder = parent_folder(root) if root.endswith(".tar") or _BRACES.search(root) else root.rstrip("/")
    out = out or f"{folder}/{index_name(split)}"
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(tqdm(pool.map(lambda u: index_shard(u, storage_options, chunk=chunk), urls), total=len(urls),
                         desc=f"index shards {split}", unit="shard", disable=None if progress else True))
    records = [record for record, _, _ in done]
    skipped = [s for _, shard_skipped, _ in done for s in shard_skipped]
    manifest = ShardedManifest.from_records(records)
    if not len(manifest):
        first = f"; first: {redact(skipped[0][0])}: {skipped[0][1]}" if skipped else ""
        raise DataError(f"{redact(root)}: nothing to index in {len(urls)} shards ({len(skipped)} skipped{first})")
    written = write_shard_index([replace(r, url=_written_url(r.url, parent_folder(out), base_url)) for r in records],
                                out, storage_options=protocol_options(
        storage_options, fsspec.core.split_protocol(out)[0] or "file"))
    return ShardIndexResult(manifest, skipped, written, requests=sum(r.requests for _, _, r in done),
                            bytes_read=sum(r.bytes_read for _, _, r in done), bytes_total=sum(r.size for r in records))


def _written_url(url: str, folder: str, base_url: str | None) -> str:
    """A shard's url in the index: base_url + its name, its name when it sits in the index's folder,
    else as it is."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if base_url is not None:
        return f"{base_url.rstrip('/')}/{name}"
    return name if parent_folder(url) == folder else url
