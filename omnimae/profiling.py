"""`train.profile_steps=N`: a torch.profiler timeline of N steps plus a plain-text bottleneck report.

The timeline (`<run>/profile/*.pt.trace.json`) opens in Perfetto (ui.perfetto.dev) or TensorBoard's
profiler plugin; it shows the step's ops on the main thread and the loader's `read`, `decode` and
`assembly` ranges on its thread. The report adds what a timeline hides: seconds per stage per step,
the depth of the prefetch queue and of the storage requests in flight, and which stage holds the
run back, with what to change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from omnimae.metrics import bottleneck_summary

WARMUP_STEPS = 2  # profiled but not reported: first-step allocations and compiles distort them


def _all_threads_config():
    """Record the loader thread's ranges too (torch >= 2.7 knows `profile_all_threads`)."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return None


class StepProfiler:
    def __init__(self, run_dir: Path, steps: int, device: torch.device, enabled: bool = True, name: str = ""):
        """name: a sub-folder of `<run>/profile/` for this process's trace (one per rank)."""
        self.enabled = enabled and steps > 0
        self.steps = steps
        self.out = Path(run_dir) / "profile" / name if name else Path(run_dir) / "profile"
        self.device = device
        self.samples: list[dict] = []
        self._prof = None
        self._seen = 0
        self._t0 = 0.0
        self.report: dict | None = None
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=0, warmup=WARMUP_STEPS, active=steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.out)),
            record_shapes=False, with_stack=False, experimental_config=_all_threads_config())
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    @property
    def active(self) -> bool:
        return self._prof is not None

    def step(self, stages: dict[str, float], loader=None) -> None:
        """Called once per optimizer step with that step's stage seconds (data_wait, read_wait, ...)."""
        if self._prof is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync: profiling only, the step's true length
        now = time.perf_counter()
        self._seen += 1
        if self._seen > WARMUP_STEPS:
            record = {"step_s": now - self._t0, **stages}
            if loader is not None and hasattr(loader, "queue_depths"):
                record.update(loader.queue_depths())
            self.samples.append(record)
        self._t0 = now
        self._prof.step()
        if self._seen >= WARMUP_STEPS + self.steps:
            self.finish()

    def finish(self) -> dict | None:
        """Stops the profiler (once) and writes the report; later calls return the same report."""
        if self._prof is None:
            return self.report
        self._prof.__exit__(None, None, None)
        self._prof = None
        self.report = summarize(self.samples)
        (self.out / "summary.json").write_text(json.dumps(self.report, indent=2))
        (self.out / "summary.txt").write_text(format_report(self.report))
        return self.report


def summarize(samples: list[dict]) -> dict:
    """Per-step means of every recorded quantity, and the bottleneck."""
    if not samples:
        return {"steps": 0}
    keys = sorted({k for s in samples for k in s})
    means = {k: sum(s.get(k, 0.0) for s in samples) / len(samples) for k in keys}
    wall = means.get("step_s", 0.0) * len(samples)
    totals = {k: means[k] * len(samples) for k in ("data_wait", "read_wait", "decode", "assembly") if k in means}
    stage, advice = bottleneck_summary(totals, wall)
    return {"steps": len(samples), "mean": means, "bottleneck": stage, "suggestion": advice}


def format_report(report: dict) -> str:
    if not report.get("steps"):
        return "profile: no steps recorded\n"
    m = report["mean"]
    step = m.get("step_s", 0.0)
    lines = [f"profile over {report['steps']} steps: {step * 1e3:.1f} ms per step"]
    for key, what in (("data_wait", "trainer blocked on the loader"),
                      ("read_wait", "loader blocked on storage (its thread)"),
                      ("decode", "decoding (loader thread)"),
                      ("assembly", "replication, crops, masks (loader thread)")):
        if key in m:
            share = m[key] / step if step else 0.0
            lines.append(f"  {key:<10} {m[key] * 1e3:8.1f} ms/step  {share:6.1%} of the step  ({what})")
    for key in sorted(k for k in m if k.startswith("queue/")):
        lines.append(f"  {key:<22} {m[key]:6.1f} on average")
    lines.append(f"bottleneck: {report['bottleneck']} -> {report['suggestion']}")
    return "\n".join(lines) + "\n"
