"""benchmarks/storage_latency.py --shards: a tiny run end to end (one object per item against shards)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import storage_latency as bench  # noqa: E402
from loaders.shards.index import read_shard_index  # noqa: E402


def test_the_item_set_is_the_same_bytes_as_objects_and_in_shards(tmp_path):
    names = bench.write_item_set(tmp_path, "image", 12, shard_bytes=400_000)
    index = read_shard_index(tmp_path / "image-shards" / "shards_train.jsonl")
    assert len(index) == 12 and len(index.shards) == 4  # ~110 KB items, a shard once 400 KB are in
    for i, name in enumerate(names):
        shard = Path(index.shards[int(index.item_shard[i])].url).read_bytes()
        offset, size = int(index.item_offset[i]), int(index.item_size[i])
        assert shard[offset:offset + size] == (tmp_path / name).read_bytes()
        assert 55_000 <= size <= 165_000


@pytest.mark.timeout(120)
def test_a_tiny_shard_run_writes_rows_and_targets(tmp_path, capsys):
    out = tmp_path / "shards.json"
    bench.main(["--shards", "--items", "120", "--kinds", "image", "--latencies-ms", "0", "20", "--shard-mb", "1",
                "--shard-reads", "4", "--in-flight", "8", "--batch", "16", "--repeat", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "fewer req" in printed and "targets met" in printed
    report = json.loads(out.read_text())
    assert [(r["kind"], r["latency_ms"]) for r in report["rows"]] == [("image", 0), ("image", 20)]
    for row in report["rows"]:
        assert row["objects"]["failures"] == row["shards"]["failures"] == 0
        assert row["objects"]["requests_per_item"] >= 1.0  # one GET per item, plus those read ahead
        assert row["fewer_requests_per_item"] > 3  # ~9 items per 1 MB shard, 4 shards read ahead of 120 items
        assert row["shards"]["peak_held_mb"] <= 4 * row["shard_mb"]
    assert set(report["targets_met"]) == {"fewer_requests_per_item", "image_shards_100ms_share_of_0ms"}
    assert report["targets_met"]["image_shards_100ms_share_of_0ms"] is None  # no 100 ms row to judge
