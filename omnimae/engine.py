"""The training engine pretraining and fine-tuning share: the optimizer step and the loop around it.

A trainer describes only what is its own, as a `Task`: what the loss of a batch is, its FLOPs, what
follows a step (fine-tuning's weight EMA) and what runs between steps (pictures, tests). The engine
owns the rest, once:

- `TrainStep`: one optimizer step over `accumulation` micro batches: `no_sync` on all but the last
  (DDP), a non-finite loss kept out of the gradients, the skip of non-finite steps agreed across
  ranks (fused AdamW reads `found_inf` and leaves the parameters untouched), clipping;
- `run`: the LR schedule (a pure function of the step), the logging window, per-stage timings,
  the profiler, preemption at a step boundary, the checkpoint cadence and the end-of-run summary.

The host syncs with the device only on logging steps (each marked `# sync`).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from omnimae import checkpoint as ckpt
from omnimae import cluster
from omnimae.attention import AttentionPart, choose_kernels
from omnimae.config import ConfigError, to_dict
from omnimae.metrics import MetricsWriter, StageClock, bottleneck_summary, device_peak_flops
from omnimae.parallel import DistInfo, all_reduce_mean, compile_scope_for, parallelize
from omnimae.profiling import StepProfiler, format_report
from omnimae.progress import Progress, write as progress_write
from omnimae.resume import check_run_folder_writable, prepare_run_folder

# The loader's own seconds per batch (batch.stats), timed on its threads.
LOADER_STAGES = ("read_wait", "decode", "assembly")


# ---- pieces of the recipe --------------------------------------------------------------------------

def lr_at(step: int, *, peak: float, floor: float, warmup: int, total: int) -> float:
    """Linear warmup to `peak`, then half a cosine down to `floor` at `total` (step is 0-based)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_adamw(param_groups: list[dict], *, lr: float, betas) -> torch.optim.AdamW:
    # Fused AdamW (CPU and CUDA) also lets a non-finite step be skipped on the device: the kernel
    # reads `found_inf` and leaves parameters, moments and the step count untouched.
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), fused=True)


def autocast_for(cfg, device: torch.device):
    """(context, "bf16" | "fp32") for cfg.train.precision ("auto": bf16 on GPUs, fp32 on the CPU)."""
    mode = cfg.train.precision
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "fp32"
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    return nullcontext(), "fp32"


def wrap_for_training(model: torch.nn.Module, cfg, dist_info: DistInfo, *,
                      attention_parts: Sequence[AttentionPart] = (), batch: int = 1) -> torch.nn.Module:
    """The model as cfg.parallel asks: each attention part's SDPA kernel pinned (omnimae.attention,
    timed at `batch` samples per forward), compiled, DDP or FSDP2 (omnimae.parallel)."""
    p = cfg.parallel
    if attention_parts:
        dtype = torch.bfloat16 if autocast_for(cfg, dist_info.device)[1] == "bf16" else torch.float32
        try:
            line, _ = choose_kernels(p.attention, list(attention_parts), batch=batch, dtype=dtype,
                                  device=dist_info.device)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        say(dist_info, line)
    scope = compile_scope_for(p.compile_scope, strategy=p.strategy, distributed=dist_info.distributed,
                              activation_checkpointing=p.activation_checkpointing)
    if p.compile:
        say(dist_info, f"compile: {'the whole forward and loss' if scope == 'model' else 'each block'}"
                       f" (parallel.compile_scope={p.compile_scope}, mode {p.compile_mode})")
    return parallelize(model, dist_info=dist_info, compile=p.compile, strategy=p.strategy,
                       activation_checkpointing=p.activation_checkpointing,
                       compile_scope=scope, compile_mode=p.compile_mode)


def say(dist_info: DistInfo, *args) -> None:
    """Print on rank 0 (above the progress bar where there is one)."""
    if dist_info.is_main:
        progress_write(" ".join(str(a) for a in args))


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


# ---- what a trainer supplies -----------------------------------------------------------------------

class Task:
    """What differs between the trainers. `loss` is required; the hooks default to nothing."""

    checkpoint_extra: dict | None = None  # objects with state_dict/load_state_dict saved with each checkpoint

    def loss(self, batch, step: int, micro: int) -> tuple[torch.Tensor, str]:
        """The scalar loss of one micro batch (forward under the task's autocast) and its metric name."""
        raise NotImplementedError

    def flops(self, batch) -> float:
        """Training FLOPs of the batch's forward (for TFLOP/s and MFU); 0 = not reported."""
        return 0.0

    def after_step(self, step: int) -> None:
        """After each optimizer step (step = steps done), e.g. a weight EMA."""

    def between_steps(self, step: int, last: bool, metrics: MetricsWriter) -> None:
        """After each step, before its checkpoint: pictures, tests. Not counted as training time."""

    def at_end(self, step: int, stopped_by: str, metrics: MetricsWriter) -> None:
        """After the final checkpoint (none when stopped_by == "nonfinite")."""


@dataclass
class Schedule:
    """Plain numbers of the run: its length, its batches and its LR."""

    total_steps: int
    accumulation: int
    peak_lr: float
    min_lr: float
    warmup_steps: int
    clip_grad: float = 0.0  # 0 = no clipping (the norm is still measured on logging steps)

    @classmethod
    def from_derived(cls, derived: dict, *, clip_grad: float = 0.0) -> "Schedule":
        """From the derived values of a config (omnimae.config.derive / derive_finetune)."""
        return cls(total_steps=derived["total_steps"], accumulation=derived["accumulation_steps"],
                   peak_lr=derived["lr"], min_lr=derived["min_lr"], warmup_steps=derived["warmup_steps"],
                   clip_grad=clip_grad)

    def lr(self, step: int) -> float:
        return lr_at(step, peak=self.peak_lr, floor=self.min_lr, warmup=self.warmup_steps, total=self.total_steps)


# ---- one optimizer step ----------------------------------------------------------------------------

@dataclass
class Micro:
    """One micro batch of a step: the batch, its loss (detached, fp32, 0 where non-finite), its name,
    and the seconds the step waited for it."""

    batch: Any
    loss: torch.Tensor
    key: str
    data_wait: float


@dataclass
class StepResult:
    micro: list[Micro]
    finite: torch.Tensor  # [] bool, the same on every rank
    grad_norm: torch.Tensor | None  # [] when measured this step


class TrainStep:
    """One optimizer step over `accumulation` micro batches (the benchmarks time this very object).

    train_model: the wrapped model (compiled, DDP or FSDP2); loss_fn(batch, step, micro) -> (loss, key)
    runs its forward. The LR of each parameter group is `lr * group.get("lr_scale", 1)` (fine-tuning's
    layer-wise decay).
    """

    def __init__(self, train_model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                 loss_fn: Callable, dist_info: DistInfo, accumulation: int = 1, clip_grad: float = 0.0):
        self.train_model = train_model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.dist_info = dist_info
        self.accumulation = accumulation
        self.clip_grad = clip_grad
        # The wait for the slowest rank, measured at the step's first collective (omnimae.cluster).
        self.collective = cluster.CollectiveTimer(dist_info.device)

    def __call__(self, step: int, batches: Iterator, lr: float, *, measure_grad_norm: bool = False) -> StepResult:
        device, accum = self.dist_info.device, self.accumulation
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        finite = torch.ones((), dtype=torch.bool, device=device)
        micro_results = []
        for micro in range(accum):
            t0 = time.perf_counter()
            with torch.profiler.record_function("data_wait"):
                batch = next(batches)
            waited = time.perf_counter() - t0
            # DDP: reduce gradients only on the last micro batch.
            sync_ctx = (self.train_model.no_sync() if self.dist_info.distributed and micro < accum - 1
                        and hasattr(self.train_model, "no_sync") else nullcontext())
            with sync_ctx:
                loss, key = self.loss_fn(batch, step, micro)
                ok = torch.isfinite(loss)
                finite &= ok
                if micro == accum - 1:
                    finite = self._agree(finite)
                # A NaN must not poison the gradient buffers of the other micro batches.
                (torch.where(ok, loss, torch.zeros_like(loss)) / accum).backward()
            micro_results.append(Micro(batch, torch.where(ok, loss.detach(), 0.0).float(), key, waited))
        grad_norm = None
        if self.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.train_model.parameters(), self.clip_grad)
        elif measure_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.train_model.parameters(), float("inf"))
        self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(micro_results, finite, grad_norm)

    def _agree(self, finite: torch.Tensor) -> torch.Tensor:
        """Every rank must skip the same steps: a non-finite loss anywhere skips everywhere. The first
        collective of the step, before the last backward (and its gradient all-reduce): the time a
        rank spends in it is its wait for the slowest rank."""
        if not self.dist_info.distributed:
            return finite
        bad = (~finite).float()
        self.collective.start()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self.collective.stop()
        return bad == 0


# ---- the logging window ----------------------------------------------------------------------------

@dataclass
class LogWindow:
    """What the loop gathers between two logging steps; `values()` turns it into one metrics record.

    Losses stay on the device (one sum per metric name) until a logging step reads them.
    """

    dist_info: DistInfo
    peak_flops: float | None = None
    clock: StageClock = field(default_factory=StageClock)  # data_wait and the loader's stages, per run too
    # Under torchrun: the step's collective wait, every rank's identity and its storage latency p95,
    # for the per-rank record of each logging step (omnimae.cluster).
    collective: cluster.CollectiveTimer | None = None
    who: list = field(default_factory=list)
    storage_p95: Callable[[], float] = lambda: 0.0

    def __post_init__(self):
        device = self.dist_info.device
        self.grad_norm = torch.zeros((), device=device)  # the latest measured
        self.nonfinite_total = torch.zeros((), device=device)
        self.nonfinite_run = torch.zeros((), device=device)  # non-finite steps in a row, now
        self.nonfinite_max_run = torch.zeros((), device=device)
        self._reset()

    def _reset(self) -> None:
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.loss_counts: dict[str, int] = {}
        self.samples = 0
        self.flops = 0.0
        self.items_decoded = 0
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, result: StepResult, flops_of: Callable) -> dict[str, float]:
        """Counts one step; returns its stage seconds (for the profiler)."""
        stages = {"data_wait": 0.0}
        for m in result.micro:
            if m.key in self.loss_sums:
                self.loss_sums[m.key] += m.loss
            else:
                # 0 + loss, as the two loops summed before: the golden losses are bit for bit.
                self.loss_sums[m.key] = torch.zeros((), device=m.loss.device) + m.loss
            self.loss_counts[m.key] = self.loss_counts.get(m.key, 0) + 1
            self.samples += len(m.batch)
            self.flops += len(m.batch) * flops_of(m.batch)
            self.clock.add("data_wait", m.data_wait)
            stages["data_wait"] += m.data_wait
            batch_stats = m.batch.stats  # the loader's seconds and counts for this batch
            self.items_decoded += int(batch_stats.get("items", 0))
            for k in LOADER_STAGES:
                if k in batch_stats:
                    self.clock.add(k, batch_stats[k])
                    stages[k] = stages.get(k, 0.0) + batch_stats[k]
        if result.grad_norm is not None:
            self.grad_norm = result.grad_norm
        bad = (~result.finite).float()
        self.nonfinite_total += bad
        self.nonfinite_run = (self.nonfinite_run + 1) * bad
        self.nonfinite_max_run = torch.maximum(self.nonfinite_max_run, self.nonfinite_run)
        self.steps += 1
        return stages

    def exclude(self, seconds: float) -> None:
        """Time spent between steps on something else (a test pass, pictures): not training time."""
        self.t0 += seconds

    def values(self, lr: float) -> dict:
        """A logging step: the only place the loop syncs with the device. Starts a new window."""
        device, world = self.dist_info.device, self.dist_info.world_size
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # sync: time the window exactly
        elapsed = time.perf_counter() - self.t0
        steps = max(1, self.steps)
        values: dict = {"lr": lr, "grad_norm": float(self.grad_norm)}  # sync
        for key, total in sorted(self.loss_sums.items()):
            mean = total / self.loss_counts[key]
            if self.dist_info.distributed:
                mean = all_reduce_mean(mean, self.dist_info)  # sync
            values[key] = mean.item()  # sync
        values["nonfinite_steps"] = int(self.nonfinite_total.item())  # sync
        if self.dist_info.distributed and self.collective is not None:
            self.clock.add("collective_wait", self.collective.take())
        stages = self.clock.take()
        if self.dist_info.distributed:
            per_rank = cluster.gather(cluster.rank_totals(stages, elapsed, self.storage_p95()), self.dist_info)
            values.update(cluster.spread(per_rank, steps))
            verdict = cluster.diagnose(per_rank, self.who, wall_s=elapsed, steps=steps)
            values["ranks/straggler"] = -1 if verdict["rank"] is None else verdict["rank"]
            values["ranks/verdict"] = verdict["line"]
        values["step_time_s"] = elapsed / steps
        values["data_wait_s"] = stages.get("data_wait", 0.0) / steps
        values["data_wait_share"] = stages.get("data_wait", 0.0) / elapsed if elapsed > 0 else 0.0
        for k in LOADER_STAGES:
            if k in stages:
                values[f"stage/{k}_s"] = stages[k] / steps
        values["samples_per_s"] = self.samples * world / elapsed
        values["videos_decoded_per_s"] = self.items_decoded * world / elapsed
        tflops = self.flops / elapsed / 1e12  # per rank
        values["tflops_per_device"] = tflops
        if self.peak_flops:
            values["mfu"] = tflops * 1e12 / self.peak_flops
        if device.type == "cuda":
            values["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        self._reset()
        return values


# ---- the loop --------------------------------------------------------------------------------------

@dataclass
class RunResult:
    stopped_by: str  # "finished", "preempted" or "nonfinite"
    steps: int
    wall_s: float
    summary: dict


@dataclass
class Run:
    """Everything the loop needs, built by a trainer. `model` is the unwrapped module (checkpoints),
    `train_model` the wrapped one (the step); `cfg` the trainer's config tree (its `train` section is
    a RunConfig; checkpoints hold it redacted)."""

    task: Task
    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any  # a loaders Loader: iter, state_dict, load_state_dict, stats, close
    schedule: Schedule
    dist_info: DistInfo
    run_dir: Path
    cfg: Any
    preempt: Preemption
    max_nonfinite: int = 0  # stop after this many non-finite steps in a row; 0 = never stop
    start_step: int = 0


def begin(run_dir: Path, seed: int, dist_info: DistInfo) -> None:
    """First thing of a run: the seed (model initialization follows) and a writable run folder."""
    torch.manual_seed(seed)
    if dist_info.is_main:
        check_run_folder_writable(run_dir)


def record(cfg, run_dir: Path, dist_info: DistInfo, *, derived: dict, extra_json: dict) -> Path | None:
    """Compares the config with the run folder's (omnimae.resume), writes config.json, prints the
    redacted config and the derived values; returns the checkpoint to resume from, if any."""
    resume_path = prepare_run_folder(cfg, run_dir, dist_info, derived=derived, extra_json=extra_json,
                                     say=lambda line: say(dist_info, line))
    say(dist_info, "config: " + json.dumps(to_dict(cfg), default=str))
    say(dist_info, "derived: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in derived.items()))
    return resume_path


def resume(run: Run, path: Path | None) -> None:
    """Loads a checkpoint (model, optimizer, loader, RNG, the task's extra state) into `run`."""
    if path is None:
        return
    run.start_step = ckpt.load_training_state(path, model=run.model, optimizer=run.optimizer, loader=run.loader,
                                              rank=run.dist_info.rank, extra=run.task.checkpoint_extra)
    say(run.dist_info, f"resumed from {path} at step {run.start_step}")


def _save(run: Run, step: int) -> Path:
    return ckpt.save_training_state(run.run_dir, step=step, model=run.model, optimizer=run.optimizer,
                                    loader=run.loader, config=to_dict(run.cfg), dist_info=run.dist_info,
                                    keep_last=run.cfg.train.keep_last, extra=run.task.checkpoint_extra)


def run(r: Run) -> RunResult:
    """Trains from r.start_step to the schedule's end (or a preemption, or too many non-finite steps),
    checkpoints, calls the task's `at_end` and writes summary.json; closes the loader.

    Metrics go to the run folder (metrics.jsonl, TensorBoard; rank 0 only), from r.start_step on."""
    dist_info, c, task, schedule = r.dist_info, r.cfg.train, r.task, r.schedule
    metrics = MetricsWriter(r.run_dir, enabled=dist_info.is_main, start_step=r.start_step)
    step_fn = TrainStep(r.train_model, r.optimizer, loss_fn=task.loss, dist_info=dist_info,
                        accumulation=schedule.accumulation, clip_grad=schedule.clip_grad)
    who = cluster.identities(dist_info)
    window = LogWindow(dist_info, device_peak_flops(dist_info.device), collective=step_fn.collective, who=who,
                       storage_p95=lambda: cluster.storage_p95(r.loader.stats()))
    # Under torchrun every rank records its own trace (profile/rank<R>-<host>/); rank 0 compares them.
    me = who[dist_info.rank]
    profiler = StepProfiler(r.run_dir, c.profile_steps, dist_info.device,
                            name=f"rank{me['rank']}-{me['host']}" if dist_info.distributed else "")
    total = schedule.total_steps
    bar = Progress(total, initial=r.start_step, desc=c.run_name or r.run_dir.name, enabled=dist_info.is_main)
    stopped_by = "finished"
    run_t0 = time.perf_counter()
    step = r.start_step
    batches = iter(r.loader)
    try:
        while step < total:
            lr = schedule.lr(step)
            result = step_fn(step, batches, lr, measure_grad_norm=(step + 1) % c.log_every == 0)
            stages = window.add(result, task.flops)
            task.after_step(step + 1)
            profiler.step(stages, r.loader)
            step += 1
            bar.update(1)

            last = step == total
            if step % c.log_every == 0 or last:
                values = window.values(lr)
                metrics.write(step, values)
                bar.log(step, values)
                if r.max_nonfinite and window.nonfinite_max_run.item() >= r.max_nonfinite:  # sync
                    batch = result.micro[-1].batch
                    say(dist_info, f"stopping: {int(window.nonfinite_max_run.item())} non-finite losses in a row "
                        f"(train.max_nonfinite={r.max_nonfinite}); last batch: {batch.modality}, "
                        f"pixels finite={bool(torch.isfinite(batch.pixels).all())}, lr={lr:.3g}")
                    stopped_by = "nonfinite"
                    break
            # Alone, a signal is acted on at the next step boundary; under torchrun the ranks must agree
            # on the step, which costs a collective, so they check on logging steps only.
            if (not dist_info.distributed or step % c.log_every == 0) and r.preempt.agreed(dist_info):
                say(dist_info, f"preemption signal: checkpointing at step {step} and exiting")
                stopped_by = "preempted"
                break
            t0 = time.perf_counter()
            task.between_steps(step, last, metrics)
            window.exclude(time.perf_counter() - t0)
            if c.ckpt_every and step % c.ckpt_every == 0 and not last:
                _save(r, step)
    except BaseException:
        # A stop mid-run (storage down, a bug, Ctrl-C) still stops the loader's threads and closes the
        # reader's HTTP sessions; the success path closes it after the last checkpoint below.
        r.loader.close()
        metrics.close()
        raise
    finally:
        bar.close()
        report = profiler.finish()
        if report is not None and not dist_info.distributed:
            say(dist_info, format_report(report) + f"profile trace: {profiler.out}")

    if stopped_by != "nonfinite":
        say(dist_info, f"checkpoint: {_save(r, step)}")
    task.at_end(step, stopped_by, metrics)
    if dist_info.distributed and profiler.report is not None:
        _compare_profiles(profiler, who, dist_info)
    wall = time.perf_counter() - run_t0
    totals = window.clock.run_totals
    stage, advice = bottleneck_summary(totals, wall)
    summary = {"stopped_by": stopped_by, "steps": step, "wall_s": wall, "precision": autocast_for(r.cfg, dist_info.device)[1],
               "stage_seconds": totals, "bottleneck": stage, "suggestion": advice, "loader": r.loader.stats()}
    if dist_info.distributed:
        # Every rank's run totals (one gather): the bottleneck is the cluster's, not rank 0's.
        storage = cluster.storage_p95(summary["loader"])
        per_rank = cluster.gather(cluster.rank_totals(totals, wall, storage), dist_info)
        verdict = cluster.diagnose(per_rank, who, wall_s=wall, steps=step - r.start_step)
        summary["ranks"] = [dict(who[i], **per_rank[i]) for i in range(len(per_rank))]
        summary["cluster"] = verdict
        if verdict["verdict"] != "balanced":
            summary["bottleneck"] = verdict["stage"]
            summary["suggestion"] = verdict["line"]
        advice = verdict["line"]
    if dist_info.is_main:
        (r.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        shares = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(totals.items()) if v)
        say(dist_info, f"done: {step} steps in {wall:.0f}s ({shares}); bottleneck: {summary['bottleneck']} -> {advice}")
        say(dist_info, f"run folder: {r.run_dir}")
    metrics.close()
    r.loader.close()
    return RunResult(stopped_by, step, wall, summary)


def _compare_profiles(profiler: StepProfiler, who: list[dict], dist_info: DistInfo) -> None:
    """Every rank profiled the same steps; rank 0 prints each rank's means and the verdict."""
    means = profiler.report.get("mean", {})
    keys = ("step_s", "data_wait", "read_wait", "decode", "assembly")
    per_rank = cluster.gather({k: means.get(k, 0.0) for k in keys}, dist_info)
    steps = profiler.report.get("steps", 0)
    lines = [f"profile over {steps} steps, per rank (ms per step):"]
    for i, p in enumerate(per_rank):
        lines.append(f"  rank {i} ({who[i]['host']}): " + ", ".join(f"{k} {p[k] * 1e3:.1f}" for k in keys))
    totals = [{k: p[k] for k in keys[1:]} for p in per_rank]
    verdict = cluster.diagnose(totals, who, wall_s=per_rank[0]["step_s"], steps=1)
    lines.append(f"bottleneck: {verdict['line']}")
    say(dist_info, "\n".join(lines) + f"\nprofile traces: {profiler.out.parent}/rank*")

