"""Metrics: JSON lines and TensorBoard in the run folder, device peaks for MFU, stage summaries."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on the device name.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None (CPU, unknown GPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return peak
    return None


class MetricsWriter:
    """Writes one JSON object per logging step to `metrics.jsonl` and the same scalars to TensorBoard.

    Only rank 0 constructs a writer that writes; other ranks get `enabled=False` and every call is a
    no-op, so call sites need no rank checks.

    start_step: the step the run (re)starts from. Records past it, written by the interrupted run after
    its last checkpoint, are dropped from metrics.jsonl and TensorBoard (`purge_step`), so every step
    appears once and the curves are those of an uninterrupted run.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, start_step: int = 0):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        _drop_records_after(self.path, start_step)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except Exception as e:  # tensorboard missing or broken: JSON lines still work
                print(f"metrics: TensorBoard disabled ({type(e).__name__}: {e})")

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **values}
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def add_image(self, tag: str, image_hwc_uint8, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, image_hwc_uint8, step, dataformats="HWC")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _drop_records_after(path: Path, step: int) -> None:
    """Rewrite `path` keeping the records of steps <= `step` (atomically; a torn last line goes too)."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class StageClock:
    """Accumulates seconds per pipeline stage between logging steps (host-side; no device syncs)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.run_totals: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        self.run_totals[stage] = self.run_totals.get(stage, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The totals since the last call, then reset."""
        out, self.totals = self.totals, {}
        return out


# What a user can do when a stage holds training back.
SUGGESTIONS = {
    "read_wait": "raise data.storage.max_in_flight (more requests in flight hide storage latency) or data.video.replication",
    "decode": "raise data.decode_threads (up to the CPU cores per GPU) or data.video.replication",
    "assembly": "run batch assembly on the GPU (train.device=cuda) or lower the crop size",
    "data_wait": "the loader cannot keep up: see read_wait/decode; raise data.prefetch or data.video.replication",
    "step": "the model step sets the pace, as it should; compile (parallel.compile=true) and bf16 make it faster",
}


def bottleneck_summary(stage_seconds: dict[str, float], wall_s: float) -> tuple[str, str]:
    """Names the slowest stage and a suggestion. stage_seconds: totals over the run.

    The trainer waits for data only when the loader falls behind, so a data wait above 10% of the
    wall time makes data the bottleneck, whichever loader stage is largest; otherwise it is the step.
    """
    wait = stage_seconds.get("data_wait", 0.0)
    if wall_s > 0 and wait / wall_s > 0.10:
        loader_stages = {k: v for k, v in stage_seconds.items() if k in ("read_wait", "decode", "assembly")}
        stage = max(loader_stages, key=loader_stages.get) if loader_stages else "data_wait"
    else:
        stage = "step"
    return stage, SUGGESTIONS.get(stage, "")
