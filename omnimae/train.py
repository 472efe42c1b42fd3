"""The OmniMAE pretraining loop: one entry point for the CPU, one GPU, N GPUs and N nodes.

A flat, step-based loop (STYLE.md 6-8): the LR is a pure function of the step, the loss and the
non-finite guard stay on the device, and the host syncs only on logging steps (each marked `# sync`).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from omnimae.progress import Progress, write as progress_write

from omnimae import checkpoint as ckpt
from omnimae.config import Config, derive, to_dict
from omnimae.data import build_train_loader, prepare_data
from omnimae.metrics import MetricsWriter, StageClock, bottleneck_summary, device_peak_flops
from omnimae.masking import num_visible
from omnimae.model import build_model
from omnimae.profiling import StepProfiler, format_report
from omnimae.resume import check_run_folder_writable, prepare_run_folder
from omnimae.parallel import (DistInfo, all_reduce_mean, parallelize, setup_distributed, teardown_distributed,
                              unwrap)


def lr_at(step: int, *, peak: float, floor: float, warmup: int, total: int) -> float:
    """Linear warmup to `peak`, then half a cosine down to `floor` at `total` (step is 0-based)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms (1-D tensors) and the mask token (MAE's recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("mask_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: float) -> torch.optim.AdamW:
    # Fused AdamW (CPU and CUDA) also lets a non-finite step be skipped on the device: the kernel
    # reads `found_inf` and leaves parameters, moments and the step count untouched.
    return torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=lr,
                             betas=cfg.optim.betas, fused=True)


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; the loop saves a checkpoint at the next step boundary, exits 0."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def install(self) -> "Preemption":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, dist_info: DistInfo) -> bool:
        """All ranks stop at the same step: the flag is max-reduced (a sync; called on log steps)."""
        if not dist_info.distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=dist_info.device)  # nccl needs a GPU tensor
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())  # sync


def autocast_for(cfg: Config, device: torch.device):
    mode = cfg.train.precision
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "fp32"
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    return nullcontext(), "fp32"


def _print(dist_info: DistInfo, *args) -> None:
    if dist_info.is_main:
        progress_write(" ".join(str(a) for a in args))


def train(cfg: Config) -> Path:
    """Runs (or resumes) the experiment; returns the run folder."""
    dist_info = setup_distributed(cfg.train.device)
    preempt = Preemption().install()  # before any slow setup: a signal during it is not lost
    finished = False
    try:
        run_dir = _train(cfg, dist_info, preempt)
        finished = True
        return run_dir
    finally:
        preempt.uninstall()
        teardown_distributed(wait_for_peers=finished)


def _train(cfg: Config, dist_info: DistInfo, preempt: Preemption) -> Path:
    device = dist_info.device
    run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
    torch.manual_seed(cfg.train.seed)
    if dist_info.is_main:
        check_run_folder_writable(run_dir)

    dataset_sizes = prepare_data(cfg, dist_info)  # {"image": n, "video": n}; may generate demo data
    derived = derive(cfg, world_size=dist_info.world_size, dataset_sizes=dataset_sizes)
    model = build_model(cfg.model.name, img_size=cfg.model.img_size, num_frames=cfg.model.num_frames,
                        norm_pix_loss=cfg.model.norm_pix_loss)
    derived["tokens_per_sample"] = {m: model.num_tokens(m) for m in dataset_sizes}
    derived["visible_tokens_per_sample"] = {
        m: num_visible(model.num_tokens(m), getattr(cfg.data, m).mask_ratio) for m in dataset_sizes}
    derived["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    say = lambda line: _print(dist_info, line)  # noqa: E731
    resume_path = prepare_run_folder(cfg, run_dir, dist_info, derived=derived,
                                     extra_json={"dataset_sizes": dataset_sizes}, say=say)
    say("config: " + json.dumps(to_dict(cfg), default=str))
    say("derived: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in derived.items()))

    model = model.to(device)
    train_model = parallelize(model, dist_info=dist_info, compile=cfg.parallel.compile,
                              strategy=cfg.parallel.strategy,
                              activation_checkpointing=cfg.parallel.activation_checkpointing)
    # After parallelize: FSDP2 replaces the parameters with sharded ones, which the optimizer must hold.
    optimizer = build_optimizer(model, cfg, derived["lr"])
    loader = build_train_loader(cfg, derived, dist_info)

    start_step = 0
    if resume_path is not None:
        start_step = ckpt.load_training_state(resume_path, model=model, optimizer=optimizer, loader=loader,
                                              rank=dist_info.rank)
        _print(dist_info, f"resumed from {resume_path} at step {start_step}")

    autocast, precision = autocast_for(cfg, device)
    sharded = dist_info.distributed and cfg.parallel.strategy == "fsdp"  # forwards are collective
    peak_flops = device_peak_flops(device)
    metrics = MetricsWriter(run_dir, enabled=dist_info.is_main, start_step=start_step)
    clock = StageClock()
    profiler = StepProfiler(run_dir, cfg.train.profile_steps, device, enabled=dist_info.is_main)

    total = derived["total_steps"]
    accum = derived["accumulation_steps"]
    # Device-side counters: read only on logging steps.
    nonfinite_total = torch.zeros((), device=device)
    nonfinite_run = torch.zeros((), device=device)
    nonfinite_max_run = torch.zeros((), device=device)
    loss_sums = {m: torch.zeros((), device=device) for m in ("image", "video")}
    loss_counts = {m: 0 for m in loss_sums}
    window = {"samples": 0, "flops": 0.0, "items_decoded": 0, "t0": time.perf_counter(), "steps": 0}
    grad_norm = torch.zeros((), device=device)
    # Per modality, fixed for the run (exact-count masks): computed once, not on every step.
    flops_per_sample = {m: model.flops_per_sample(m, getattr(cfg.data, m).mask_ratio) for m in dataset_sizes}
    last_batches: dict = {}  # modality -> the latest batch, for pictures
    stopped_by = "finished"
    run_t0 = time.perf_counter()

    bar = Progress(total, initial=start_step, desc=cfg.train.run_name, enabled=dist_info.is_main)
    data_iter = iter(loader)
    step = start_step
    try:
        while step < total:
            lr = lr_at(step, peak=derived["lr"], floor=derived["min_lr"], warmup=derived["warmup_steps"], total=total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_finite = torch.ones((), dtype=torch.bool, device=device)
            step_stages = {"data_wait": 0.0}
            for micro in range(accum):
                t0 = time.perf_counter()
                with torch.profiler.record_function("data_wait"):
                    batch = next(data_iter)
                waited = time.perf_counter() - t0
                clock.add("data_wait", waited)
                step_stages["data_wait"] += waited
                # DDP: reduce gradients only on the last micro batch.
                sync_ctx = (train_model.no_sync() if dist_info.distributed and micro < accum - 1
                            and hasattr(train_model, "no_sync") else nullcontext())
                with sync_ctx, autocast:
                    loss, _ = train_model(batch.pixels, batch.mask, batch.num_visible)
                finite = torch.isfinite(loss)
                step_finite &= finite
                # A NaN must not poison the gradient buffers of the other micro batches.
                (torch.where(finite, loss, torch.zeros_like(loss)) / accum).backward()
                loss_sums[batch.modality] += torch.where(finite, loss.detach(), 0.0).float()
                loss_counts[batch.modality] += 1
                window["samples"] += len(batch)
                window["flops"] += len(batch) * flops_per_sample[batch.modality]
                window["items_decoded"] += int(batch.stats.get("items", 0))
                for k, v in batch.stats.items():
                    if k in ("read_wait", "decode", "assembly"):
                        clock.add(k, v)
                        step_stages[k] = step_stages.get(k, 0.0) + v
                last_batches[batch.modality] = batch
            if cfg.optim.clip_grad > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.optim.clip_grad)
            elif (step + 1) % cfg.train.log_every == 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), float("inf"))
            if dist_info.distributed:
                # Every rank must skip the same steps: a non-finite loss anywhere skips everywhere.
                bad = (~step_finite).float()
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                step_finite = bad == 0
            optimizer.found_inf = (~step_finite).float()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            nonfinite_total += (~step_finite).float()
            nonfinite_run = (nonfinite_run + 1) * (~step_finite).float()
            nonfinite_max_run = torch.maximum(nonfinite_max_run, nonfinite_run)
            profiler.step(step_stages, loader)
            step += 1
            window["steps"] += 1
            bar.update(1)

            last = step == total
            if step % cfg.train.log_every == 0 or last:
                _log(step, lr, cfg, dist_info, metrics, clock, window, loss_sums, loss_counts, grad_norm,
                     nonfinite_total, peak_flops, device, bar)
                if nonfinite_max_run.item() >= cfg.train.max_nonfinite:  # sync
                    _print(dist_info, f"stopping: {int(nonfinite_max_run.item())} non-finite losses in a row "
                           f"(train.max_nonfinite={cfg.train.max_nonfinite}); last batch: {batch.modality}, "
                           f"pixels finite={bool(torch.isfinite(batch.pixels).all())}, lr={lr:.3g}")
                    stopped_by = "nonfinite"
                    break
            # Alone, a signal is acted on at the next step boundary; under torchrun the ranks must agree
            # on the step, which costs a collective, so they check on logging steps only.
            if (not dist_info.distributed or step % cfg.train.log_every == 0) and preempt.agreed(dist_info):
                _print(dist_info, f"preemption signal: checkpointing at step {step} and exiting")
                stopped_by = "preempted"
                break
            if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and not last:
                ckpt.save_training_state(run_dir, step=step, model=model, optimizer=optimizer, loader=loader,
                                         config=to_dict(cfg), dist_info=dist_info, keep_last=cfg.train.keep_last)
            if cfg.train.vis_every and step % cfg.train.vis_every == 0 and (dist_info.is_main or sharded):
                _draw(model, last_batches, run_dir, step, metrics, autocast, dist_info)
    except BaseException:
        # A stop mid-run (storage down, a bug, Ctrl-C) still stops the loader's threads and closes the
        # reader's HTTP sessions; the success path closes it after the last checkpoint below.
        loader.close()
        metrics.close()
        raise
    finally:
        bar.close()
        report = profiler.finish()
        if report is not None:
            _print(dist_info, format_report(report) + f"profile trace: {profiler.out}")

    if stopped_by != "nonfinite":
        path = ckpt.save_training_state(run_dir, step=step, model=model, optimizer=optimizer, loader=loader,
                                        config=to_dict(cfg), dist_info=dist_info, keep_last=cfg.train.keep_last)
        _print(dist_info, f"checkpoint: {path}")
    if (dist_info.is_main or sharded) and last_batches and stopped_by != "nonfinite":
        pictures = _draw(model, last_batches, run_dir, step, metrics, autocast, dist_info)
        _print(dist_info, f"reconstructions: {', '.join(str(p) for p in pictures)}")
    wall = time.perf_counter() - run_t0
    stage, advice = bottleneck_summary(clock.run_totals, wall)
    loader_stats = loader.stats() if hasattr(loader, "stats") else {}
    summary = {"stopped_by": stopped_by, "steps": step, "wall_s": wall, "precision": precision,
               "stage_seconds": clock.run_totals, "bottleneck": stage, "suggestion": advice,
               "loader": loader_stats}
    if dist_info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        shares = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(clock.run_totals.items()) if v)
        _print(dist_info, f"done: {step} steps in {wall:.0f}s ({shares}); bottleneck: {stage} -> {advice}")
        _print(dist_info, f"run folder: {run_dir}")
    metrics.close()
    if hasattr(loader, "close"):
        loader.close()
    if stopped_by == "nonfinite":
        raise SystemExit(f"omnimae-train: stopped after {cfg.train.max_nonfinite} non-finite losses in a row")
    return run_dir


def _log(step, lr, cfg, dist_info, metrics, clock, window, loss_sums, loss_counts, grad_norm,
         nonfinite_total, peak_flops, device, bar) -> None:
    """A logging step: the only place the loop syncs with the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync: time the window exactly
    elapsed = time.perf_counter() - window["t0"]
    values: dict = {"lr": lr, "grad_norm": float(grad_norm)}  # sync
    for m, s in loss_sums.items():
        if loss_counts[m]:
            mean = s / loss_counts[m]
            if dist_info.distributed:
                mean = all_reduce_mean(mean, dist_info)  # sync
            values[f"loss/{m}"] = mean.item()  # sync
            s.zero_()
            loss_counts[m] = 0
    values["nonfinite_steps"] = int(nonfinite_total.item())  # sync
    stages = clock.take()
    world = dist_info.world_size
    values["step_time_s"] = elapsed / max(1, window["steps"])
    values["data_wait_s"] = stages.get("data_wait", 0.0) / max(1, window["steps"])
    values["data_wait_share"] = stages.get("data_wait", 0.0) / elapsed if elapsed > 0 else 0.0
    for k in ("read_wait", "decode", "assembly"):
        if k in stages:
            values[f"stage/{k}_s"] = stages[k] / max(1, window["steps"])
    values["samples_per_s"] = window["samples"] * world / elapsed
    values["videos_decoded_per_s"] = window["items_decoded"] * world / elapsed
    tflops = window["flops"] / elapsed / 1e12  # per rank
    values["tflops_per_device"] = tflops
    if peak_flops:
        values["mfu"] = tflops * 1e12 / peak_flops
    if device.type == "cuda":
        values["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    metrics.write(step, values)
    bar.log(step, values)
    window.update(samples=0, flops=0.0, items_decoded=0, t0=time.perf_counter(), steps=0)


def _draw(model, batches, run_dir: Path, step: int, metrics: MetricsWriter, autocast, dist_info) -> list[Path]:
    from omnimae.visualize import reconstruct, save_reconstructions

    if not dist_info.is_main:
        # FSDP2: each forward all-gathers the parameter shards, so every rank runs the same forwards
        # as rank 0 (one per modality; the modalities are the same on every rank); only rank 0 draws.
        for _, batch in sorted(batches.items()):
            reconstruct(unwrap(model), batch.pixels[:2], batch.mask[:2], batch.num_visible, autocast)
        return []

    return save_reconstructions(unwrap(model), batches, run_dir / "reconstructions", step, metrics=metrics,
                                autocast=autocast)


def main(cfg: Config) -> int:
    try:
        train(cfg)
    except KeyboardInterrupt:
        print("omnimae-train: interrupted", file=sys.stderr)
        return 130
    return 0
