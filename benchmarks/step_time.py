"""Model-only training speed on synthetic tensors: the fast forward vs the reference one, eager vs
compiled, fp32 vs bf16, image vs video, in one run.

Each measured step is the trainer's own (`omnimae.engine.TrainStep`, built as the trainer builds
it by `benchmarks._common.trainer_step`): forward, backward, the non-finite guard, fused AdamW
step. Inputs are random pixels (ImageNet-normalized) and exact-count random masks (90% of image
tokens, 95% of video tokens hidden), made on the device before timing, so the figures hold the
model alone, with no loader cost. Two forwards on the same weights: "fast" is the model's
(`OmniMAE.forward`: only the visible patches embedded and projected, the pixel head and loss on the
hidden tokens; compiled as `--compile-scope` says, the trainer's default: the whole forward and
loss in one graph) and "reference" the direct computation it replaced
(`omnimae.reference_forward`, compiled per block as the trainer did before). Compiling goes
through `omnimae.parallel.parallelize` exactly as the trainer does it. The SDPA kernel of each
attention part is chosen as `--attention` says (omnimae.attention; auto times them on a GPU) and
reported. Per-part forward FLOPs of both are printed first.

Warm-up steps (the first ones compile) are timed apart; then `--steps` measured steps between
device syncs. On the CPU the eager and compiled models are measured in alternating rounds
(`--rounds`), so other processes on a shared machine slow both alike; a load average above the
core count is reported with the table. Reported: ms/step (and the median step on the CPU),
steps/s, samples/s, TFLOP/s from `model.flops_per_sample`, MFU against the device's bf16 peak (GPUs
the metrics table knows; none on the CPU), peak GPU memory. Then the compute-savings table of
`omnimae.flops`. bf16 on the CPU runs where torch supports it (`--precision both`).

    python benchmarks/step_time.py                                   # CPU: debug model, ~4 min
    python benchmarks/step_time.py --model base --device cuda --batch 64 --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import host_info, sync, trainer_step  # noqa: E402

import torch  # noqa: E402

from omnimae import flops as flops_table  # noqa: E402
from omnimae.attention import SETTINGS, AttentionPart, choose_kernels  # noqa: E402
from omnimae.reference_forward import reference_flops_breakdown, reference_forward  # noqa: E402
from omnimae.masking import make_mask, num_visible  # noqa: E402
from omnimae.metrics import device_peak_flops  # noqa: E402
from omnimae.model import IMAGENET_MEAN, IMAGENET_STD, MODALITIES, SIZES, build_model  # noqa: E402
from omnimae.config import COMPILE_MODES, DataConfig  # noqa: E402

MASK_RATIO = {m: getattr(DataConfig(), m).mask_ratio for m in MODALITIES}  # the config's (paper) defaults
DEFAULT_BATCH = {"cpu": 4, "cuda": 64}
# Distinct synthetic batches cycled through the measured steps (each a fresh mask draw).
NUM_BATCHES = 2


def synthetic_batches(model, modality: str, batch: int, frames: int, device, seed: int):
    """NUM_BATCHES (pixels, mask, kept) of random pixels in [0, 1], ImageNet-normalized."""
    size = model.config.img_size
    shape = (batch, 3, size, size) if modality == "image" else (batch, 3, frames, size, size)
    g = torch.Generator(device=device).manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, *([1] * (len(shape) - 2)))
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, *([1] * (len(shape) - 2)))
    grid = model.token_grid(shape)
    kept = num_visible(grid[0] * grid[1] * grid[2], MASK_RATIO[modality])
    out = []
    for _ in range(NUM_BATCHES):
        pixels = (torch.rand(shape, device=device, generator=g) - mean) / std  # [B, 3, (T,) H, W]
        mask = make_mask("random", batch, grid, MASK_RATIO[modality], device=device, generator=g)  # [B, N]
        out.append((pixels, mask, kept))
    return out


class ReferenceMAE(torch.nn.Module):
    """The model's weights under `reference_forward`; blocks exposed so they compile per block."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.blocks, self.decoder_blocks = model.blocks, model.decoder_blocks

    def forward(self, x, mask, num_visible):
        return reference_forward(self.model, x, mask, num_visible)


def build(args, device, modality: str, precision: str):
    """A fresh seeded model with the attention kernels pinned as --attention asks; (model, line)."""
    torch.manual_seed(0)
    model = build_model(args.model, img_size=args.img_size, num_frames=args.frames,
                        **({"decoder_heads": args.decoder_heads} if args.decoder_heads else {})).to(device)
    n = model.num_tokens(modality)
    parts = [AttentionPart("encoder", model.blocks, num_visible(n, MASK_RATIO[modality])),
             AttentionPart("decoder", model.decoder_blocks, n)]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    line, _ = choose_kernels(args.attention, parts, batch=args.batch, dtype=dtype, device=device)
    return model, line


class Variant:
    """One configuration (modality, forward, compiled or not, precision): a fresh model, optimizer,
    batches."""

    def __init__(self, args, device: torch.device, modality: str, forward: str, compiled: bool, precision: str):
        self.args, self.device = args, device
        self.modality, self.forward, self.compiled, self.precision = modality, forward, compiled, precision
        self.model, self.attention = build(args, device, modality, precision)
        stepped = self.model if forward == "fast" else ReferenceMAE(self.model)
        scope = args.compile_scope if forward == "fast" else "blocks"
        self.compile_scope = scope if compiled else None
        self.train_step = trainer_step(stepped, device=device, compile=compiled, precision=precision,
                                       compile_scope=scope, compile_mode=args.compile_mode)
        self.batches = synthetic_batches(self.model, modality, args.batch, args.frames, device, seed=1)
        self.steps_done = 0
        self.warmup_s = 0.0
        self.elapsed = 0.0  # seconds of measured steps, between device syncs
        self.durations: list[float] = []  # per measured step, host clock, no syncs
        self.loss = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def step(self) -> None:
        batch = iter([self.batches[self.steps_done % NUM_BATCHES]])
        self.loss = self.train_step(self.steps_done, batch, lr=1e-4).micro[0].loss
        self.steps_done += 1

    def warm_up(self, steps: int) -> None:
        """The first steps compile (when compiled) and fill the allocator: timed apart."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        self.warmup_s = time.perf_counter() - t0

    def measure(self, steps: int) -> None:
        # Per-step times without syncs: exact on the CPU (it runs synchronously), launch times on a
        # GPU, where only the total between the two syncs counts. Their median resists a busy CPU.
        sync(self.device)
        t0 = last = time.perf_counter()
        for _ in range(steps):
            self.step()
            now = time.perf_counter()
            self.durations.append(now - last)
            last = now
        sync(self.device)
        self.elapsed += time.perf_counter() - t0

    def result(self) -> dict:
        args, device = self.args, self.device
        n = self.batches[0][1].shape[1]
        kept = self.batches[0][2]
        measured = len(self.durations)
        ratio = 1 - kept / n
        parts = (self.model.flops_breakdown(self.modality, ratio, args.batch) if self.forward == "fast"
                 else reference_flops_breakdown(self.model, self.modality, ratio))
        flops = 3 * sum(parts.values())
        samples_per_s = args.batch * measured / self.elapsed
        peak = device_peak_flops(device)
        durations = sorted(self.durations)
        return {
            "modality": self.modality, "forward": self.forward, "compile": self.compiled,
            "compile_scope": self.compile_scope, "attention": self.attention, "precision": self.precision,
            "batch": args.batch, "tokens": n, "visible": kept, "warmup_s": self.warmup_s,
            "measured_steps": measured, "ms_per_step": 1e3 * self.elapsed / measured,
            "ms_per_step_median": 1e3 * durations[measured // 2] if device.type == "cpu" else None,
            "steps_per_s": measured / self.elapsed, "samples_per_s": samples_per_s,
            "gflops_per_sample": flops / 1e9, "tflops": flops * samples_per_s / 1e12,
            "mfu": flops * samples_per_s / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "final_loss": float(self.loss),  # sync, after timing: the step ran on real numbers
        }

    def close(self) -> None:
        del self.model, self.train_step, self.batches
        torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _error_row(modality, key, precision, e: Exception) -> dict:
    message = str(e).splitlines()[0] if str(e) else ""
    return {"modality": modality, "forward": key[0], "compile": key[1], "precision": precision,
            "error": f"{type(e).__name__}: {message}"}


def run_group(args, device, modality: str, precision: str, keys) -> list[dict]:
    """The (forward, compiled) variants `keys` of one modality and precision.

    rounds == 1: one variant at a time (clean peak-memory figures). rounds > 1: the variants are
    built and warmed together, then measured in alternating rounds, so a load change on a shared
    machine hits them alike and their ratio stays fair (peak memory then counts both models).
    """
    rows: dict[tuple, dict] = {}
    together = args.rounds > 1

    def failed(key: tuple, fn) -> bool:
        try:
            fn()
            return False
        except Exception as e:  # e.g. bf16 or compile unsupported here: report it, go on
            rows[key] = _error_row(modality, key, precision, e)
            torch._dynamo.reset()
            return True

    variants: list[tuple[tuple, Variant]] = []
    for key in keys:
        made: list[Variant] = []
        if failed(key, lambda: made.append(Variant(args, device, modality, *key, precision))):
            continue
        v = made[0]
        if failed(key, lambda: v.warm_up(args.warmup)):
            v.close()
        elif together:
            variants.append((key, v))
        else:
            if not failed(key, lambda: v.measure(args.steps)):
                rows[key] = v.result()
            v.close()
    per_round = math.ceil(args.steps / args.rounds)
    for _ in range(args.rounds if together else 0):
        for key, v in list(variants):
            if failed(key, lambda: v.measure(per_round)):
                variants.remove((key, v))
                v.close()
    for key, v in variants:
        rows[key] = v.result()
        v.close()
    return [rows[k] for k in keys if k in rows]


def hardware(device: torch.device) -> dict:
    """host_info() plus the device's bf16 peak and the 1-minute load before the run."""
    info = host_info()
    info["load_average_1m"] = info["load_average"][0]
    info["peak_bf16_tflops"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        peak = device_peak_flops(device)
        info["peak_bf16_tflops"] = peak / 1e12 if peak else None
    return info


def print_flops(args) -> None:
    """Forward GFLOP per sample by part, fast and reference, at the run's batch."""
    with torch.device("meta"):
        model = build_model(args.model, img_size=args.img_size, num_frames=args.frames)
    print(f"Forward GFLOP per sample by part (batch {args.batch}; training = 3x):")
    for modality in MODALITIES:
        fast = model.flops_breakdown(modality, MASK_RATIO[modality], args.batch)
        ref = reference_flops_breakdown(model, modality, MASK_RATIO[modality])
        cells = "  ".join(f"{k} {fast[k] / 1e9:.3f}/{ref[k] / 1e9:.3f}" for k in fast)
        print(f"  {modality}: fast/reference  {cells}  total {sum(fast.values()) / 1e9:.2f}/"
              f"{sum(ref.values()) / 1e9:.2f}")


def print_table(rows: list[dict]) -> None:
    header = (f"{'modality':8} {'forward':9} {'compile':7} {'prec':5} {'batch':>5} {'vis/tok':>9} {'warmup s':>8} "
              f"{'ms/step':>9} {'median':>8} {'steps/s':>8} {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'mem GiB':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        compiled = r.get("compile_scope") or str(r["compile"])
        if "error" in r:
            print(f"{r['modality']:8} {r['forward']:9} {compiled:7} {r['precision']:5}  failed: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "     -"
        mem = f"{r['peak_memory_gib']:7.2f}" if r["peak_memory_gib"] is not None else "      -"
        median = f"{r['ms_per_step_median']:8.1f}" if r["ms_per_step_median"] is not None else "       -"
        print(f"{r['modality']:8} {r['forward']:9} {compiled:7} {r['precision']:5} {r['batch']:>5} "
              f"{r['visible']:>4}/{r['tokens']:<4} {r['warmup_s']:8.1f} {r['ms_per_step']:9.1f} {median} "
              f"{r['steps_per_s']:8.2f} {r['samples_per_s']:10.1f} {r['tflops']:8.3f} {mfu} {mem}")
    ok = {(r["modality"], r["precision"], r["forward"], r["compile"]): r for r in rows if "error" not in r}

    def ratio(a: dict, b: dict) -> str:
        line = f"{b['ms_per_step'] / a['ms_per_step']:.2f}x samples/s"
        if a["ms_per_step_median"] is not None:
            line += f" ({b['ms_per_step_median'] / a['ms_per_step_median']:.2f}x by median step)"
        return line

    for (modality, precision, forward, compiled), r in ok.items():
        base = ok.get((modality, precision, forward, False))
        if compiled and base:
            print(f"compiled / eager, {forward} {modality} {precision}: {ratio(r, base)}")
        ref = ok.get((modality, precision, "reference", compiled))
        if forward == "fast" and ref:
            print(f"fast / reference, {modality} {precision} {'compiled' if compiled else 'eager'}: {ratio(r, ref)}")
    for line in sorted({r["attention"] for r in rows if "attention" in r}):
        print(line)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(SIZES), default="debug", help="model size")
    p.add_argument("--batch", type=int, default=None,
                   help=f"samples per step (default {DEFAULT_BATCH['cpu']} on the CPU, "
                        f"{DEFAULT_BATCH['cuda']} on a GPU)")
    p.add_argument("--steps", type=int, default=10, help="measured steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (the first compiles)")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure eager and compiled in this many alternating rounds (default 5 on the "
                        "CPU, where other processes add noise; 1 on a GPU: one model at a time)")
    p.add_argument("--compile", choices=("both", "on", "off"), default="both",
                   help="torch.compile: eager, compiled or both")
    p.add_argument("--compile-scope", choices=("auto", "model", "blocks"), default="auto",
                   help="the fast forward's compiled graphs (parallel.compile_scope; the reference's "
                        "are per block)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile mode (parallel.compile_mode; reduce-overhead = CUDA graphs)")
    p.add_argument("--forward", choices=("both", "fast", "reference"), default="both",
                   help="the model's forward, the reference forward, or both side by side")
    p.add_argument("--attention", choices=SETTINGS, default="auto",
                   help="SDPA kernel per attention part (parallel.attention)")
    p.add_argument("--decoder-heads", type=int, default=0,
                   help="model.decoder_heads (0 = the size's own; 6 is the speed option for base)")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default=None,
                   help="fp32 and/or bf16 autocast (default: both on a GPU, fp32 on the CPU)")
    p.add_argument("--modality", choices=("image", "video", "both"), default="both",
                   help="which training steps to measure")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--img-size", type=int, default=224, help="input height and width")
    p.add_argument("--frames", type=int, default=16, help="video frames")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's); 1 is steadier on a busy machine")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.batch is None:
        args.batch = DEFAULT_BATCH[args.device]
    if args.rounds is None:
        args.rounds = 1 if args.device == "cuda" else 5
    if args.precision is None:
        args.precision = "both" if args.device == "cuda" else "fp32"
    if min(args.batch, args.steps, args.warmup, args.rounds) < 1:
        p.error("--batch, --steps, --warmup and --rounds must be at least 1 (the warm-up compiles)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modalities = ("image", "video") if args.modality == "both" else (args.modality,)
    compiles = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
    forwards = {"both": ("reference", "fast"), "fast": ("fast",), "reference": ("reference",)}[args.forward]
    keys = [(f, c) for c in compiles for f in forwards]
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)

    with torch.device("meta"):
        config = build_model(args.model, img_size=args.img_size, num_frames=args.frames).config
    hw = hardware(device)
    print(f"step_time: model {args.model}, {args.device} ({hw['gpu'] or hw['cpu']}, "
          f"{hw['torch_threads']} threads), torch {torch.__version__}, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} measured steps in {args.rounds} round(s)")
    print_flops(args)
    rows = []
    for modality in modalities:
        for precision in precisions:
            for row in run_group(args, device, modality, precision, keys):
                rows.append(row)
                print(f"  {modality} {row['forward']} compile={row['compile']} {precision}: "
                      + (row["error"] if "error" in row else f"{row['ms_per_step']:.1f} ms/step"), flush=True)
    print()
    print_table(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    hw["load_average_1m_after"] = load
    if device.type == "cpu" and max(load, hw["load_average_1m"] or 0.0) > (os.cpu_count() or 1):
        print(f"warning: load average {hw['load_average_1m']:.1f} -> {load:.1f} on {os.cpu_count()} cores: "
              "other processes shared the CPU, so these timings are inflated and noisy")
    print()
    flops_table.main()

    if args.out is not None:
        report = {
            "benchmark": "step_time", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "hardware": hw, "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                                         "python": platform.python_version()},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "model_config": asdict(config), "mask_ratio": MASK_RATIO,
            "results": rows, "compute_savings": flops_table.compute_savings_table(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 1 if all("error" in r for r in rows) else 0  # a partial failure is reported in the table


if __name__ == "__main__":
    sys.exit(main())
