"""Multi-process training under torchrun (gloo on the CPU), and compile without recompilation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _two_ranks(tiny_data, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests/omnimae/_dist_worker.py"), str(tiny_data), str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(out: Path) -> list[tuple[int, str, float]]:
    from omnimae.metrics import read_jsonl

    return [(r["step"], k, v) for r in read_jsonl(out / "runs" / "run" / "metrics.jsonl")
            for k, v in r.items() if k.startswith("loss/")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_end_identical_and_read_disjoint_data(tiny_data, tmp_path):
    _two_ranks(tiny_data, tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["state"].keys() == r1["state"].keys()
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    # The parameters moved from their initialization (training happened on both ranks).
    from omnimae.model import build_model

    torch.manual_seed(0)
    init = build_model("debug", img_size=64, num_frames=4).state_dict()
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], r0["state"]["blocks.0.attn.qkv.weight"])
    from loaders.manifest import read_manifest

    for modality, folder in (("image", "images"), ("video", "videos")):
        a, b = r0["read"][modality], r1["read"][modality]
        assert a and b, modality
        # Within one epoch (each rank's half of the manifest) the ranks read disjoint items.
        per_rank = -(-len(read_manifest(tiny_data / folder / "manifest_train.jsonl")) // 2)
        k = min(len(a), len(b), per_rank)
        assert not set(a[:k]) & set(b[:k]), modality
    # Only rank 0 wrote the run folder.
    assert (tmp_path / "runs" / "run" / "metrics.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_ranks_compiled_whole_model_match_eager(tiny_data, tmp_path):
    """DDP around the whole compiled forward and loss (the default on GPUs): the ranks stay in step
    and the losses are the eager run's (measured: within 4e-7)."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    _two_ranks(tiny_data, eager)
    proc = _two_ranks(tiny_data, compiled, "compile")
    assert "compile: the whole forward and loss" in proc.stdout
    r0 = torch.load(compiled / "rank0.pt", weights_only=True)
    r1 = torch.load(compiled / "rank1.pt", weights_only=True)
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    a, b = _losses(eager), _losses(compiled)
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 6
    assert all(abs(x[2] - y[2]) <= 1e-5 * abs(x[2]) for x, y in zip(a, b)), (a, b)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_model_does_not_recompile_across_modalities():
    """The whole forward and loss (parallel.compile_scope=auto on one process) is one graph per
    modality, equal to the eager forward; many more steps of both add no graph, no break."""
    from torch._dynamo.utils import counters

    from omnimae.masking import make_mask, num_visible
    from omnimae.model import build_model
    from omnimae.parallel import DistInfo, parallelize

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("debug", img_size=64, num_frames=4)
    train_model = parallelize(model, dist_info=DistInfo(), compile=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(modality, check=False):
        if modality == "image":
            x, grid, ratio = torch.randn(4, 3, 64, 64), (1, 4, 4), 0.75
        else:
            x, grid, ratio = torch.randn(4, 3, 4, 64, 64), (2, 4, 4), 0.9
        mask = make_mask("random", 4, grid, ratio)
        kept = num_visible(grid[0] * grid[1] * grid[2], ratio)
        if check:  # the eager forward on the same weights (the class's forward, not the compiled call)
            with torch.no_grad():
                eager, _ = type(model).forward(model, x, mask, kept)
        loss, _ = train_model(x, mask, kept)
        if check:
            assert abs(loss.item() - eager.item()) <= 1e-5 * abs(eager.item())
        loss.backward()
        opt.step()
        opt.zero_grad()

    counters.clear()
    step("image", check=True)
    step("video", check=True)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2  # one graph per modality: the whole forward and loss
    assert not counters["graph_break"]
    for modality in ["image", "video", "video", "image"] * 3:
        step(modality)
    assert counters["stats"]["unique_graphs"] == graphs
    assert not counters["graph_break"]
    # A reconstruction picture (2 samples, eval mode) is a new shape: it runs eagerly, no new graph.
    from omnimae.visualize import reconstruct

    x, grid = torch.randn(2, 3, 4, 64, 64), (2, 4, 4)
    masked, prediction, original = reconstruct(model, x, make_mask("random", 2, grid, 0.9),
                                               num_visible(32, 0.9))
    assert prediction.shape == original.shape == (2, 3, 4, 64, 64)
    assert counters["stats"]["unique_graphs"] == graphs
