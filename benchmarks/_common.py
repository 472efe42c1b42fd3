"""Pieces the loader benchmarks share: a latency-injecting object server process, the model step
the data must keep up with, percentiles, and a record of the machine."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`python -m loaders.devtools.objserver ROOT --port 0 --latency-ms L` in a child process, and its URL.

    A process of its own, so the server's event loop never competes for the GIL of the loader
    being measured; it still competes for the cores, as a real store's client stack would not.
    """

    def __init__(self, root: str | os.PathLike, latency_ms: float, jitter_ms: float = 0.0):
        self.latency_ms = latency_ms
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loaders.devtools.objserver", str(root), "--port", "0",
             "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "serving ROOT at URL", once it listens
        if " at " not in line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"loaders.devtools.objserver did not start (latency {latency_ms} ms): {line!r}")
        self.url = line.rsplit(" at ", 1)[1].strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def percentile(values, q: float) -> float:
    """Nearest-rank percentile of `values` (q in [0, 1]); nan for none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_step(model, *, device: torch.device, compile: bool = False, precision: str = "auto",
                 compile_scope: str = "auto", compile_mode: str = "default"):
    """The trainer's own step (omnimae.engine.TrainStep) over `model`, on batches of
    (pixels, mask, num_visible): wrapped as the trainer wraps it (compiled as compile_scope says
    when asked: omnimae.parallel), fused AdamW over the trainer's parameter groups with the config's
    defaults, the non-finite guard included. precision: bf16, fp32, or auto (bf16 on a GPU, fp32 on
    the CPU)."""
    from contextlib import nullcontext

    from omnimae.config import OptimConfig
    from omnimae.engine import TrainStep, build_adamw
    from omnimae.parallel import DistInfo, parallelize
    from omnimae.train import param_groups

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    dist_info = DistInfo(device=device)
    optim = OptimConfig()
    train_model = parallelize(model, dist_info=dist_info, compile=compile, compile_scope=compile_scope,
                              compile_mode=compile_mode)
    optimizer = build_adamw(param_groups(model, optim.weight_decay), lr=1e-4, betas=optim.betas)

    def mae_loss(batch, step, micro):
        pixels, mask, kept = batch
        with autocast:
            loss, _ = train_model(pixels, mask, kept)
        return loss, "loss"

    return TrainStep(train_model, optimizer, loss_fn=mae_loss, dist_info=dist_info)


def measure_step(model_name: str, *, batch_size: int, crop_size: int, num_frames: int,
                 mask_ratio: float, device: torch.device | str = "cpu", warmup: int = 2,
                 steps: int = 5, seed: int = 0) -> dict:
    """Time the trainer's step (`trainer_step`: forward, backward, fused AdamW) on random video batches.

    Eager, fp32 on the CPU and bf16 autocast on a GPU; the pixels [B, 3, T, S, S] and the mask
    [B, N] are made before timing, so this is the model's demand alone. Returns ms_per_step
    (median of the measured steps on the CPU, the mean between two syncs on a GPU) and
    samples_per_s = batch_size / step time.
    """
    import itertools

    from omnimae.masking import make_mask, num_visible
    from omnimae.model import build_model

    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(model_name, img_size=crop_size, num_frames=num_frames).to(device)
    train_step = trainer_step(model, device=device)
    shape = (batch_size, 3, num_frames, crop_size, crop_size)
    grid = model.token_grid(shape)
    kept = num_visible(grid[0] * grid[1] * grid[2], mask_ratio)
    pixels = torch.randn(shape, device=device)  # [B, 3, T, S, S], already "normalized"
    mask = make_mask("random", batch_size, grid, mask_ratio, device=device)  # [B, N] bool
    batches = itertools.repeat((pixels, mask, kept))

    for i in range(warmup):
        train_step(i, batches, lr=1e-4)
    sync(device)
    durations = []
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        train_step(i, batches, lr=1e-4)
        durations.append(time.perf_counter() - t0)
    sync(device)
    mean_s = (time.perf_counter() - start) / steps
    # On the CPU each step ran to its end, and the median resists a shared machine's noise; on a
    # GPU only the time between the two syncs is real.
    step_s = percentile(durations, 0.5) if device.type == "cpu" else mean_s
    return {"model": model_name, "batch_size": batch_size, "crop_size": crop_size,
            "num_frames": num_frames, "visible_tokens": kept, "device": str(device),
            "ms_per_step": step_s * 1e3, "samples_per_s": batch_size / step_s, "measured": True}


def host_info() -> dict:
    """Machine, load and library versions, recorded beside the results."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name, module in (("av", "av"), ("torchvision", "torchvision"), ("dali", "nvidia.dali")):
        try:
            versions[name] = __import__(module, fromlist=["__version__"]).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            versions[name] = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "versions": versions}
