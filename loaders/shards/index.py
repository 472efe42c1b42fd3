"""The shard index: which tar shards a data set is, and where each item's bytes lie in them.

`shards_<split>.jsonl` beside the shards, one JSON object per line:

    {"shard_index": 1, "class_names": ["tench", ...], "shards": 2, "items": 5}          header
    {"url": "train-000000.tar", "size": 10240, "count": 3,
     "members": [["000000.jpeg", 512, 1180], ["000000.json", 2048, 96], ...],           name, data offset, size
     "items": [{"key": "000000", "member": 0, "label": 3, "num_frames": 1, "fps": 0.0,
                "duration": 0.0, "codec": "jpeg"}, ...]}                                 one line per shard

url: relative to the index's folder (the shards move with it), or absolute / any fsspec URL. members:
every regular file of the tar, in order, with the offset of its data; an item names its media
member by position there. The item fields are a manifest entry's (loaders.manifest), so the loaders
see a sharded data set as a manifest (`ShardedManifest`) whose items also know their shard, offset
and size; the header's class_names is optional and absent for unlabelled items (label -1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from loaders.manifest import Manifest, ManifestEntry, parent_folder, parse_json_lines, resolve_uri, write_file

FORMAT_VERSION = 1


def index_name(split: str) -> str:
    """The shard index's file name for a split (`shards_train.jsonl`)."""
    return f"shards_{split}.jsonl"


def is_shard_index(path: str) -> bool:
    """A shard index is named shards_<split>.jsonl (or .jsonl.gz); a manifest is anything else."""
    name = os.fspath(path).rstrip("/").rsplit("/", 1)[-1]
    return name.startswith("shards_") and name.endswith((".jsonl", ".jsonl.gz"))


@dataclass
class ShardRecord:
    """One line of the index: a shard, its members and its items (`items[i]["member"]` indexes
    `members`)."""

    url: str
    size: int
    members: list[tuple[str, int, int]]
    items: list[dict]

    @property
    def count(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict:
        return {"url": self.url, "size": self.size, "count": self.count,
                "members": [list(m) for m in self.members], "items": self.items}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardRecord":
        """Raises ValueError naming the bad field."""
        if not isinstance(d, dict) or not isinstance(d.get("url"), str) or not d["url"]:
            raise ValueError("a shard line needs a non-empty url")
        size, members, items = d.get("size"), d.get("members"), d.get("items")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be an integer >= 0, got {size!r}")
        if not isinstance(members, list) or not isinstance(items, list):
            raise ValueError("members and items must be lists")
        parsed = []
        for m in members:
            if not (isinstance(m, list) and len(m) == 3 and isinstance(m[0], str)
                    and all(isinstance(v, int) and v >= 0 for v in m[1:]) and m[1] + m[2] <= size):
                raise ValueError(f"member {m!r} is not [name, offset, size] within the shard's {size} bytes")
            parsed.append((m[0], m[1], m[2]))
        if d.get("count", len(items)) != len(items):
            raise ValueError(f"count {d['count']} but {len(items)} items")
        for item in items:
            member = item.get("member") if isinstance(item, dict) else None
            if not isinstance(member, int) or not 0 <= member < len(parsed):
                raise ValueError(f"item {item!r}: member must index the {len(parsed)} members")
        return cls(d["url"], size, parsed, items)


def item_fields(entry: ManifestEntry) -> dict:
    """The manifest fields an index item carries (the uri is the shard's)."""
    fields = entry.to_dict()
    del fields["uri"]
    return fields


@dataclass
class ShardedManifest(Manifest):
    """A manifest whose items live in tar shards. entries[i].uri is `<shard url>#<member>` (for
    messages); where its bytes are: shards[item_shard[i]], [item_offset[i], + item_size[i])."""

    shards: list[ShardRecord] = field(default_factory=list)  # urls resolved
    item_shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))   # [N]
    item_offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N]
    item_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))    # [N]
    shard_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # [S + 1] first item of each

    @classmethod
    def from_records(cls, records: Sequence[ShardRecord], class_names: list[str] | None = None,
                     where: str = "shard index") -> "ShardedManifest":
        entries, shard_of, offsets, sizes = [], [], [], []
        for s, record in enumerate(records):
            for item in record.items:
                name, offset, size = record.members[item["member"]]
                try:
                    entry = ManifestEntry.from_dict({**item, "uri": f"{record.url}#{name}"})
                except ValueError as error:
                    raise ValueError(f"{where}: {record.url}: item {item.get('key')!r}: {error}") from None
                if class_names is not None and entry.label >= len(class_names):
                    raise ValueError(f"{where}: {record.url}#{name}: label {entry.label} out of range for "
                                     f"{len(class_names)} class names")
                entries.append(entry)
                shard_of.append(s)
                offsets.append(offset)
                sizes.append(size)
        counts = np.array([r.count for r in records], np.int64)
        return cls(entries, class_names, list(records), np.array(shard_of, np.int64),
                   np.array(offsets, np.int64), np.array(sizes, np.int64),
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    @property
    def shard_counts(self) -> np.ndarray:
        """[S] items per shard."""
        return np.diff(self.shard_start)

    def member_name(self, index: int) -> str:
        return self.entries[index].uri.rsplit("#", 1)[1]


def read_shard_index(path_or_url: str | os.PathLike, *, storage_options: dict | None = None) -> ShardedManifest:
    """Read a shard index from a local path or any fsspec URL; shard urls resolved against its folder.
    A bad line raises ValueError("<path>:<line>: <reason>")."""
    path = os.fspath(path_or_url)
    base = parent_folder(path)
    records: list[ShardRecord] = []
    header: dict = {}

    def handle(obj) -> None:
        if not header:
            if not isinstance(obj, dict) or obj.get("shard_index") != FORMAT_VERSION:
                raise ValueError(f'not a shard index (the first line must hold "shard_index": {FORMAT_VERSION})')
            names = obj.get("class_names")
            if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ValueError("class_names must be a list of strings")
            header.update(obj)
            return
        record = ShardRecord.from_dict(obj)
        record.url = resolve_uri(record.url, base)
        records.append(record)

    parse_json_lines(path, handle, storage_options=storage_options)
    if not header:
        raise ValueError(f"{path}: empty file, not a shard index")
    return ShardedManifest.from_records(records, header.get("class_names"), where=path)


def write_shard_index(records: Iterable[ShardRecord], path: str | os.PathLike, *,
                      class_names: Sequence[str] | None = None, storage_options: dict | None = None) -> str:
    """Write the index (header first); returns the path. Local files are written whole, then renamed."""
    records = list(records)
    header = {"shard_index": FORMAT_VERSION, "shards": len(records), "items": sum(r.count for r in records)}
    if class_names is not None:
        header["class_names"] = list(class_names)
    lines = [json.dumps(header)] + [json.dumps(r.to_dict()) for r in records]
    return write_file(path, ("\n".join(lines) + "\n").encode("utf-8"), storage_options=storage_options)
