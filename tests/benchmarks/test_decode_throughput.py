"""benchmarks/decode_throughput.py end to end on a handful of small clips (CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import decode_throughput as bench  # noqa: E402


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The benchmark sets torch's thread count for its process; the test process gets its own back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(120)
def test_a_tiny_run_writes_every_section(tmp_path, capsys):
    out = tmp_path / "result.json"
    bench.main(["--num-videos", "4", "--data", str(tmp_path / "vp9"), "--height", "64", "--batch-size", "4",
                "--batches", "1", "--frames", "4", "--crop", "32", "--mask-ratio", "0.5", "--threads", "1",
                "--passes", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [row["replication"] for row in result["loader"]["rows"]] == [1, 2, 4]
    assert all(row["samples"] == 4 and row["failures"] == 0 for row in result["loader"]["rows"])
    summary = result["loader"]["summary"]
    assert summary["rep4_over_rep1"] > 0 and 0 <= summary["decode_share_rep1"] <= 1
    assert {row["decoder"] for row in result["decode"]} >= {"pyav"}
    assert all(row["failures"] == 0 and row["clips"] == 4 for row in result["decode"])
    printed = capsys.readouterr().out
    assert "rep4/rep1 =" in printed and "| replication | samples/s |" in printed
    if isinstance(result["gpu"], str):
        assert "CUDA is not available" in printed
