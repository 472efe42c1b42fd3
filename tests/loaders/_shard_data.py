"""Shards for the test_shards_* files: written by the `webdataset` package (a test dependency only) or
by `omnimae-data shard`, from the tiny generated sets of _loader_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds

from loaders.manifest import Manifest
from loaders.shards.index import ShardedManifest, read_shard_index
from loaders.shards.writer import shard_dataset


def write_webdataset_shards(manifest: Manifest, folder: Path, *, per_shard: int, label: str = "cls") -> list[Path]:
    """webdataset.ShardWriter tars of the manifest's files as they are: <key>.<ext> plus the label as a
    .cls member (label="cls"), in a .json (label="json") or none (label="none")."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "wds-%06d.tar"), maxcount=per_shard, verbose=0, encoder=False) as sink:
        for i, entry in enumerate(manifest):
            path = Path(entry.uri)
            sample = {"__key__": f"sample{i:05d}", path.suffix.lower()[1:]: path.read_bytes()}
            if label == "cls":
                sample["cls"] = str(entry.label).encode()
            elif label == "json":
                sample["json"] = json.dumps({"label": entry.label, "caption": "x"}).encode()
            sink.write(sample)
    return sorted(folder.glob("wds-*.tar"))


def omnimae_shards(source_root: Path, dest: Path, *, per_shard: int, **options) -> ShardedManifest:
    """`omnimae-data shard` of the root's train manifest into dest; the shard index read back."""
    result = shard_dataset(str(source_root), str(dest), per_shard=per_shard, **options)
    assert result.index is not None
    return read_shard_index(result.index)
