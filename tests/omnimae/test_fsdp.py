"""FSDP2 (`parallel.strategy=fsdp`) with activation checkpointing under torchrun (gloo on the CPU),
and activation checkpointing alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnimae.masking import make_mask, num_visible
from omnimae.metrics import read_jsonl
from omnimae.model import build_model
from omnimae.parallel import DistInfo, parallelize

REPO = Path(__file__).resolve().parents[2]


def _torchrun_fsdp(data_root: Path, out: Path, run_name: str, max_steps: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests/omnimae/_fsdp_worker.py"), str(data_root), str(out), run_name, str(max_steps)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r.get("loss/image", r.get("loss/video")) for r in read_jsonl(run_dir / "metrics.jsonl")}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp_with_activation_checkpointing_saves_full_state_and_resumes_exactly(tiny_data, tmp_path):
    # Interrupted: 4 steps (checkpoint at 4), then a second torchrun continues to 8 from it;
    # uninterrupted: 8 steps. Warmup covers the first 4 steps, so both see the same LRs there.
    _torchrun_fsdp(tiny_data, tmp_path, "part", 4)
    part = tmp_path / "runs" / "part"
    first = torch.load(part / "step_00000004" / "state.pt", map_location="cpu", weights_only=True)
    _torchrun_fsdp(tiny_data, tmp_path, "part", 8)
    _torchrun_fsdp(tiny_data, tmp_path, "full", 8)
    full = tmp_path / "runs" / "full"

    for rank in (0, 1):
        seen = json.loads((tmp_path / f"part_rank{rank}.json").read_text())
        assert seen["wrapper"].startswith("FSDP") and seen["all_params_sharded"], seen
        assert seen["checkpoint_wrapped_blocks"] == 3, seen  # debug model: 2 encoder + 1 decoder blocks

    # The saved model is a full state dict under the plain model's names: it loads strictly into an
    # unwrapped model, and every optimizer moment has its parameter's full shape.
    plain = build_model("debug", img_size=64, num_frames=4)
    assert first["world_size"] == 2 and first["step"] == 4
    plain.load_state_dict(first["model"], strict=True)
    shapes = {name: p.shape for name, p in plain.named_parameters()}
    assert set(first["optimizer"]["state"]) == set(shapes)
    for name, moments in first["optimizer"]["state"].items():
        assert moments["exp_avg"].shape == shapes[name], name
    torch.manual_seed(0)
    init = build_model("debug", img_size=64, num_frames=4).state_dict()
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], first["model"]["blocks.0.attn.qkv.weight"])

    # The resumed run went on from step 4, matching the uninterrupted one loss for loss and bit for bit.
    a, b = _losses(full), _losses(part)
    assert sorted(b) == list(range(1, 9))
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]
    end_full = torch.load(full / "step_00000008" / "state.pt", map_location="cpu", weights_only=True)["model"]
    end_part = torch.load(part / "step_00000008" / "state.pt", map_location="cpu", weights_only=True)["model"]
    for name in end_full:
        assert torch.equal(end_full[name], end_part[name]), name
    assert (part / "reconstructions" / "video_step00000008.png").is_file()  # drawn with sharded weights


@pytest.mark.parametrize("modality", ["image", "video"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(modality):
    def build(checkpointing: bool):
        torch.manual_seed(0)
        model = build_model("debug", img_size=64, num_frames=4)
        return model, parallelize(model, dist_info=DistInfo(), compile=False,
                                  activation_checkpointing=checkpointing)

    plain, plain_train = build(False)
    ckpt, ckpt_train = build(True)
    # The checkpoint wrappers do not change the names checkpoints are written under.
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    recomputed = []
    inner = ckpt.blocks[0]._checkpoint_wrapped_module
    # A pre-hook: the recomputation stops early, once it has what the backward needs.
    inner.register_forward_pre_hook(lambda *_: recomputed.append(True))

    gen = torch.Generator().manual_seed(1)
    if modality == "image":
        x, grid, ratio = torch.randn(2, 3, 64, 64, generator=gen), (1, 4, 4), 0.75
    else:
        x, grid, ratio = torch.randn(2, 3, 4, 64, 64, generator=gen), (2, 4, 4), 0.9
    mask = make_mask("random", 2, grid, ratio, generator=gen)
    keep = num_visible(grid[0] * grid[1] * grid[2], ratio)
    results = []
    for train_model in (plain_train, ckpt_train):
        loss, _ = train_model(x, mask, keep)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in train_model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert len(recomputed) == 2  # the forward, then its recomputation in the backward pass
    assert torch.equal(loss_a, loss_b)
    grads_b = {n.replace("._checkpoint_wrapped_module", ""): g for n, g in grads_b.items()}
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)
