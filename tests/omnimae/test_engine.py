"""The shared training engine: its step in isolation, and what fine-tuning gains by running on it
(per-stage timings, a summary, preemption at the next step boundary). The golden losses of both
trainers (test_golden_losses.py) guard that the engine computes what the two loops computed."""

from __future__ import annotations

import itertools
import json
import os
import signal

import pytest
import torch

from omnimae.engine import LOADER_STAGES, TrainStep, build_adamw
from omnimae.finetune.cli import finetune_main
from omnimae.metrics import read_jsonl
from omnimae.parallel import DistInfo
from tests.omnimae.test_finetune_train import ft_overrides


def _linear_step(losses, accumulation=1, clip_grad=0.0):
    """A TrainStep over a Linear whose micro batch i has loss `losses[i]` * (sum of the weights)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = build_adamw([{"params": list(model.parameters()), "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.95))

    def loss_fn(batch, step, micro):
        return model.weight.sum() * batch, "loss"

    return model, TrainStep(model, optimizer, loss_fn=loss_fn, dist_info=DistInfo(), accumulation=accumulation,
                            clip_grad=clip_grad), iter(losses)


def test_a_non_finite_micro_batch_skips_the_whole_step():
    model, step, batches = _linear_step([1.0, float("nan")], accumulation=2)
    before = [p.detach().clone() for p in model.parameters()]
    result = step(0, batches, lr=0.1)
    assert not bool(result.finite)
    # The NaN micro batch is counted as 0, not summed; the finite one as its loss.
    assert [m.loss.item() for m in result.micro] == [pytest.approx(before[0].sum().item()), 0.0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # fused AdamW skipped it
    assert all(p.grad is None for p in model.parameters())  # and the next step starts clean


def test_a_finite_step_moves_the_weights_and_sets_lr_per_group():
    model, step, batches = _linear_step([1.0, 3.0], accumulation=2, clip_grad=1.0)
    step.optimizer.param_groups[0]["lr_scale"] = 0.5  # layer-wise decay
    before = model.weight.detach().clone()
    result = step(0, batches, lr=0.2)
    assert bool(result.finite) and step.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    # The accumulated gradient is the mean over micro batches: d/dw of (1 + 3) / 2 * sum(w) = 2 per weight.
    assert result.grad_norm.item() == pytest.approx(2 * 3 ** 0.5)
    assert not torch.equal(before, model.weight)


def test_the_benchmarks_time_the_engines_step(monkeypatch):
    from benchmarks._common import measure_step

    calls = []
    real = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    row = measure_step("debug", batch_size=2, crop_size=64, num_frames=4, mask_ratio=0.75, warmup=1, steps=2)
    assert len(calls) == 3 and row["samples_per_s"] > 0


def test_finetuning_reports_stage_timings_and_a_bottleneck(tiny_data, tmp_path):
    assert finetune_main(ft_overrides(tiny_data, tmp_path / "runs", **{"train.ckpt_every": 0})) == 0
    run = tmp_path / "runs" / "ft"
    record = read_jsonl(run / "metrics.jsonl")[0]
    assert {f"stage/{k}_s" for k in LOADER_STAGES} <= record.keys() and record["data_wait_s"] >= 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "finished" and summary["steps"] == 3
    assert set(summary["stage_seconds"]) >= {"data_wait", *LOADER_STAGES} and summary["bottleneck"]


def test_finetuning_stops_at_the_next_step_boundary_on_sigterm(tiny_data, tmp_path, monkeypatch):
    """Logging every 10 steps: the signal during step 2 still stops the run after step 2."""
    import omnimae.finetune.train as ft_train

    real = ft_train.build_train_loader

    class SignalsDuringStep2:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for n, batch in zip(itertools.count(1), self.loader):
                if n == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        def __getattr__(self, name):
            return getattr(self.loader, name)

    monkeypatch.setattr(ft_train, "build_train_loader", lambda *a, **k: SignalsDuringStep2(real(*a, **k)))
    args = ft_overrides(tiny_data, tmp_path / "runs", **{"train.max_steps": 6, "train.log_every": 10,
                                                         "train.ckpt_every": 0})
    assert finetune_main(args) == 0
    run = tmp_path / "runs" / "ft"
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000002"]
    results = json.loads((run / "results.json").read_text())
    assert results["stopped_by"] == "preempted" and results["steps"] == 2 and "final" not in results
