"""RandAugment and RandomErasing for fine-tuning, on batches already on the device (torchvision v2).

v2 applies one draw of parameters to everything in one call, and treats a `tv_tensors.Video`
[T, C, H, W] as frames sharing those parameters: so each sample is one call (its own ops and box),
and the frames of a clip get the same ops and the same erased box, as the official video recipe
does. There is no batched v2 form with per-sample parameters, so both loop over the samples; each
call runs on the tensor's device and draws its parameters from torch's global CPU generator (host
scalars, no device sync).

Order (paper Tables 4-5): RandAugment on pixels in [0, 1] (or uint8), then normalize, then
RandomErasing (p = 0.25, noise fill) on the normalized batch. `rand_augment(normalized=True)`
undoes and redoes the ImageNet normalization for batches that come out of the loaders normalized.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from omnimae.model import IMAGENET_MEAN, IMAGENET_STD


def build_rand_augment(num_ops: int = 2, magnitude: int = 9, max_magnitude: int = 10,
                       interpolation: str = "bilinear", magnitude_std: float = 0.0):
    """RandAugment with the paper's magnitude on a 0..max_magnitude scale (timm / pytorchvideo).

    Paper: images m9 (timm's rand-m9-mstd0.5: 2 ops), SSv2 m7 with 4 ops, K400 m9 with 2 ops.
    torchvision picks magnitude bin `magnitude` of `max_magnitude + 1` equal steps up to each op's
    maximum. magnitude_std > 0 draws each op's magnitude from N(magnitude, magnitude_std) instead
    (timm's mstd, pytorchvideo's gaussian sampling; both use 0.5), clipped to the scale and rounded
    to its bin: torchvision takes whole bins only.
    """
    if not 0 <= magnitude <= max_magnitude:
        raise ValueError(f"magnitude must be in [0, {max_magnitude}], got {magnitude}")
    if magnitude_std < 0:
        raise ValueError(f"magnitude_std must be >= 0, got {magnitude_std}")
    mode = v2.InterpolationMode(interpolation)
    if magnitude_std == 0:
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=max_magnitude + 1,
                              interpolation=mode)
    return NoisyRandAugment(num_ops, magnitude, magnitude_std, max_magnitude, mode)


class NoisyRandAugment(torch.nn.Module):
    """num_ops RandAugment ops, each at a magnitude bin drawn from N(magnitude, std) (torch's CPU RNG).

    One single-op v2.RandAugment per bin; as in v2.RandAugment, each op is drawn uniformly and
    independently of the others, so with std 0 this is the same distribution as v2.RandAugment.
    """

    def __init__(self, num_ops: int, magnitude: int, std: float, max_magnitude: int,
                 interpolation: v2.InterpolationMode):
        super().__init__()
        self.num_ops, self.magnitude, self.std, self.max_magnitude = num_ops, magnitude, std, max_magnitude
        self.bins = torch.nn.ModuleList(
            v2.RandAugment(num_ops=1, magnitude=m, num_magnitude_bins=max_magnitude + 1, interpolation=interpolation)
            for m in range(max_magnitude + 1))

    def draw_bin(self) -> int:
        m = self.magnitude + self.std * float(torch.randn(()))
        return int(round(min(max(m, 0.0), float(self.max_magnitude))))

    def forward(self, x):
        for _ in range(self.num_ops):
            x = self.bins[self.draw_bin()](x)
        return x


def rand_augment(x: torch.Tensor, transform: v2.Transform, *, normalized: bool = False,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Applies `transform` to each sample with its own parameters; returns a new batch, same layout.

    x: images [B, 3, H, W] or videos [B, 3, T, H, W]; uint8, float in [0, 1], or (normalized=True)
    float normalized with mean/std, which is undone first, clamped to [0, 1], and redone after.
    """
    if x.ndim not in (4, 5) or x.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] or [B, 3, T, H, W], got {tuple(x.shape)}")
    if normalized:
        m, s = _stats(x, mean, std)
        x = (x * s + m).clamp_(0.0, 1.0)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        if x.ndim == 5:
            clip = tv_tensors.Video(x[i].transpose(0, 1))  # [T, 3, H, W]: one draw for all frames
            out[i] = transform(clip).transpose(0, 1)
        else:
            out[i] = transform(x[i])
    if normalized:
        out.sub_(m).div_(s)
    return out


def random_erasing(x: torch.Tensor, p: float = 0.25, *, scale=(0.02, 1.0 / 3.0),
                   ratio=(0.3, 3.3)) -> torch.Tensor:
    """Erases one random box per sample with probability p, filled with N(0, 1) noise; in place.

    x: normalized float images [B, 3, H, W] or videos [B, 3, T, H, W] (one box for all frames).
    """
    if x.ndim not in (4, 5) or not x.is_floating_point():
        raise ValueError(f"expected float [B, 3, H, W] or [B, 3, T, H, W], got {x.dtype} {tuple(x.shape)}")
    erase = v2.RandomErasing(p=1.0, scale=scale, ratio=ratio, value="random")
    chosen = (torch.rand(x.shape[0]) < p).nonzero().flatten().tolist()  # host draw: no device sync
    for i in chosen:
        if x.ndim == 5:
            x[i] = erase(tv_tensors.Video(x[i].transpose(0, 1))).transpose(0, 1)
        else:
            x[i] = erase(x[i])
    return x


def _stats(x: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 3) + (1,) * (x.ndim - 2)
    return (torch.tensor(mean, device=x.device, dtype=x.dtype).view(shape),
            torch.tensor(std, device=x.device, dtype=x.dtype).view(shape))
