"""benchmarks/loader_throughput.py: a tiny sweep end to end, and the pieces it is built from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import loader_throughput as bench  # noqa: E402
from benchmarks.baseline_loader import ReplicatingCollate  # noqa: E402
from loaders.manifest import Manifest, ManifestEntry  # noqa: E402


def _row(loader, latency, t, samples_per_s, decode=1.0, assembly=1.0):
    return {"loader": loader, "latency_ms": latency, "replication": t, "samples_per_s": samples_per_s,
            "samples": 8, "stage_s": {"read_wait": 0.0, "decode": decode, "assembly": assembly}}


def test_targets_are_min_ratios_over_replications():
    rows = [_row("ours", 0, 1, 10.0, decode=3.0), _row("ours", 100, 1, 9.5),
            _row("ours", 0, 4, 32.0), _row("ours", 100, 4, 25.0),
            _row("baseline", 100, 1, 4.0), _row("baseline", 100, 4, 10.0)]
    targets = bench.evaluate_targets(rows, [1, 4])
    assert targets["ours_100ms_over_0ms"]["value"] == pytest.approx(25.0 / 32.0)
    assert targets["ours_100ms_over_0ms"]["pass"] is False  # rep 4 keeps only 78%
    assert targets["ours_over_baseline_100ms"]["value"] == pytest.approx(2.375)
    assert targets["ours_over_baseline_100ms"]["pass"] is True
    assert targets["rep4_over_rep1"]["value"] == pytest.approx(3.2)
    assert targets["rep4_over_rep1"]["decode_share_at_rep1"] == pytest.approx(0.75)
    # Without the 100 ms rows the first two targets cannot be judged.
    partial = bench.evaluate_targets([r for r in rows if r["latency_ms"] == 0], [1, 4])
    assert partial["ours_100ms_over_0ms"] is None and partial["ours_over_baseline_100ms"] is None


def test_rebase_moves_uris_below_the_url(tmp_path):
    (tmp_path / "videos").mkdir()
    manifest = Manifest([ManifestEntry(str(tmp_path / "videos" / "1.webm"), 3, 40, 12.0, 3.3)], ["a"])
    moved = bench.rebase(manifest, tmp_path, "http://127.0.0.1:9/bench/")
    assert moved[0].uri == "http://127.0.0.1:9/bench/videos/1.webm"
    assert (moved[0].label, moved[0].num_frames, moved.class_names) == (3, 40, ["a"])


def test_baseline_collate_replicates_with_own_crops_and_exact_masks():
    torch.manual_seed(0)
    clips = [torch.randint(0, 256, (4, 3, 40, 60), dtype=torch.uint8) for _ in range(2)]  # [T, 3, H, W]
    items = [(clip, label, 0.01, 0.02, 0.03) for clip, label in zip(clips, (5, 7))]
    batch = ReplicatingCollate(replication=3, crop_size=32, mask_ratio=0.75)(items)
    assert batch["pixels"].shape == (6, 3, 4, 32, 32)  # [B, 3, T, S, S]
    assert batch["source"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["labels"].tolist() == [5, 5, 5, 7, 7, 7]
    grid_tokens = 2 * 2 * 2  # (4 / 2) x (32 / 16) x (32 / 16)
    assert batch["mask"].shape == (6, grid_tokens)
    assert batch["mask"].sum(1).tolist() == [grid_tokens - batch["num_visible"]] * 6
    replicas = batch["pixels"][:3]
    assert not torch.equal(replicas[0], replicas[1]) or not torch.equal(replicas[1], replicas[2])
    assert batch["read_s"].tolist() == [0.01, 0.01]
    assert batch["cpu_s"].item() >= 0.06  # the items' CPU time plus the collate's


def test_quick_sweep_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "result.json"
    report = bench.main(["--quick", "--data", str(tmp_path / "data"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "targets:" in printed and "data wait = max(0, 1 - loader" in printed

    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    rows = saved["rows"]
    assert {(r["loader"], r["latency_ms"], r["replication"]) for r in rows} == {
        (loader, latency, t) for loader in ("ours", "baseline") for latency in (0, 100) for t in (1, 4)}
    step_rate = saved["step"]["samples_per_s"]
    assert saved["step"]["measured"] and step_rate > 0
    for r in rows:
        assert r["samples"] == 4 * 2 and r["videos"] == r["samples"] // r["replication"]
        assert r["samples_per_s"] == pytest.approx(r["replication"] * r["videos_per_s"])
        assert r["data_wait_share"] == pytest.approx(max(0.0, 1 - r["samples_per_s"] / step_rate))
        assert r["decode_ms_per_video"] > 0 and r["cpu_ms_per_sample"] > 0
        assert r["read_p95_ms"] >= r["read_p50_ms"] > 0
    # The injected latency shows in the baseline's synchronous reads.
    slow = [r["read_p50_ms"] for r in rows if r["loader"] == "baseline" and r["latency_ms"] == 100]
    assert min(slow) >= 100
    assert set(saved["targets"]) == set(bench.TARGETS)
    assert all(isinstance(t["pass"], bool) for t in saved["targets"].values())

    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
