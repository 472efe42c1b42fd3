"""Which scaled-dot-product-attention kernel each attention shape runs: timed once at start-up.

PyTorch picks an SDPA kernel per call by its own priority list, not by speed, and the decoder's
shape (base: 16 heads of dim 24 over 1,568 tokens) is where FlashAttention is at its least
efficient (it rounds head dims up to 32). `parallel.attention=auto` times the kernels this machine
has (cuDNN, Flash, memory-efficient; math only where none of them runs) on each part's own shape
(the encoder's visible tokens, the decoder's full sequence) at the run's micro batch and dtype,
forward and backward, and pins the fastest per part; one line says which ran and what each took. On the CPU, auto keeps PyTorch's
choice (its CPU kernels are few and the timing would only cost start-up time); naming a kernel
pins it everywhere and fails at start-up, with the part named, where this machine lacks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from omnimae.config import ATTENTION_SETTINGS

KERNELS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# The math kernel materializes the [B, heads, L, L] scores (ViT-B's decoder at batch 256: 20 GB in
# bf16) and is never the fastest where a fused kernel runs: auto times it only when none does.
FUSED = ("cudnn", "flash", "efficient")
SETTINGS = ATTENTION_SETTINGS  # "auto", "default" and KERNELS' names (omnimae.config stays torch-free)


@dataclass(frozen=True)
class AttentionPart:
    """One set of blocks sharing an attention shape: [batch, heads, tokens, head_dim]."""

    name: str  # "encoder", "decoder"
    blocks: torch.nn.ModuleList
    tokens: int  # the longest sequence this part sees in the run

    @property
    def heads(self) -> int:
        return self.blocks[0].attn.heads

    @property
    def head_dim(self) -> int:
        return self.blocks[0].attn.qkv.in_features // self.heads


def time_kernel(kernel: str, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device,
                repeats: int = 3) -> float | None:
    """Median ms of one forward + backward of SDPA on q, k, v of `shape` with `kernel` alone
    allowed; None where the kernel cannot run this shape, dtype or device here."""
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype)

    def once() -> None:
        with sdpa_kernel([KERNELS[kernel]]):
            F.scaled_dot_product_attention(q, k, v).backward(grad)

    try:
        once()  # warm-up: kernel selection, workspace allocation, cuDNN plan building
    except RuntimeError:  # "No available kernel" / "No viable backend" / out of memory: not here
        return None
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def choose_kernels(setting: str, parts: list[AttentionPart], *, batch: int, dtype: torch.dtype,
                   device: torch.device, calibrate: bool | None = None) -> tuple[str, dict]:
    """Pins each part's kernel as `setting` asks (on its blocks' Attention.backends). Returns (one
    line saying which and why, {part: (kernel or None, {kernel: ms or None})}). calibrate: time the
    kernels (auto's default: on CUDA only)."""
    if setting not in SETTINGS:
        raise ValueError(f"parallel.attention: expected one of {', '.join(SETTINGS)}, got {setting!r}")
    if calibrate is None:
        calibrate = setting == "auto" and device.type == "cuda"
    if setting == "default" or (setting == "auto" and not calibrate):
        for part in parts:
            _pin(part, None)
        why = "asked for" if setting == "default" else f"no timing on {device.type}"
        return f"attention: PyTorch's own kernel choice ({why})", {part.name: (None, {}) for part in parts}
    said, chosen = [], {}
    for part in parts:
        shape = (batch, part.heads, part.tokens, part.head_dim)
        names = list(FUSED) if setting == "auto" else [setting]
        times = {name: time_kernel(name, shape, dtype, device) for name in names}
        if setting == "auto" and all(ms is None for ms in times.values()):
            times["math"] = time_kernel("math", shape, dtype, device)
        usable = {name: ms for name, ms in times.items() if ms is not None}
        if not usable:
            raise ValueError(f"parallel.attention={setting}: the {part.name}'s attention "
                             f"{list(shape)} ({dtype}) cannot run it on {device.type}; use auto or default")
        best = min(usable, key=usable.get)
        _pin(part, best)
        chosen[part.name] = (best, times)
        timings = ", ".join(f"{n} {'n/a' if ms is None else f'{ms:.2f} ms'}" for n, ms in times.items())
        said.append(f"{part.name} {best} ({timings}; [B, heads, tokens, dim] {list(shape)})")
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the timing's tensors: not held for the run
    return "attention: " + "; ".join(said), chosen


def _pin(part: AttentionPart, kernel: str | None) -> None:
    for block in part.blocks:  # before parallelize: the blocks are still plain Blocks
        block.attn.backends = None if kernel is None else [KERNELS[kernel]]
