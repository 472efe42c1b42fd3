"""Mixup / CutMix with label smoothing on a batch already on the device, and the soft-target loss.

Paper Tables 4-5 (official omnivision CutMixUp, mode "batch"): mixup alpha 0.8, CutMix alpha 1.0,
switch to CutMix with probability 0.5, label smoothing 0.1. One lambda and one box per batch;
sample i is mixed with sample B-1-i (the batch flipped), as timm does. A video gets one box for all
of its frames. The random draws are a handful of host scalars from the object's own NumPy
generator: no device sync, and the state can be saved for exact resume.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """[B] int64 -> [B, C] float: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    target = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return target.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c * log_softmax(logits)_c; targets [B, C] rows sum to 1."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Mixup:
    """Mixes a batch in place and returns soft targets.

    x: [B, 3, H, W] or [B, 3, T, H, W] float (normalized or not); labels: [B] int64 on the same
    device. `mixup_alpha` or `cutmix_alpha` 0 turns that one off; both 0 leaves only label smoothing.
    `prob`: chance that a batch is mixed at all.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, prob: float = 1.0, label_smoothing: float = 0.1,
                 seed: int = 0):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        if not (0.0 <= switch_prob <= 1.0 and 0.0 <= prob <= 1.0 and 0.0 <= label_smoothing < 1.0):
            raise ValueError("switch_prob and prob must be in [0, 1], label_smoothing in [0, 1)")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.prob, self.label_smoothing = switch_prob, prob, label_smoothing
        self.rng = np.random.default_rng(seed)

    def draw(self, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """(lam, box): the share of each sample kept, and the CutMix box (y0, y1, x0, x1) or None.

        For CutMix lam is corrected to the box's true area (the box is clipped at the borders).
        """
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or self.rng.random() >= self.prob:
            return 1.0, None
        cutmix = use_cutmix and (not use_mixup or self.rng.random() < self.switch_prob)
        if not cutmix:
            return float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)), None
        lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        # A box of area (1 - lam) * H * W with the image's aspect ratio, centred anywhere.
        cut = np.sqrt(1.0 - lam)
        cy, cx = int(self.rng.integers(0, height)), int(self.rng.integers(0, width))
        half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        return lam, (y0, y1, x0, x1)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x mixed in place, soft targets [B, C] float whose rows sum to 1)."""
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the batch {tuple(x.shape)}")
        lam, box = self.draw(x.shape[-2], x.shape[-1])
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)  # [B, C]
        if lam == 1.0:
            return x, targets
        if box is None:
            partner = x.flip(0)  # a copy, taken before x changes
            x.mul_(lam).add_(partner, alpha=1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]  # every frame of a video alike
        return x, targets * lam + targets.flip(0) * (1.0 - lam)

    def reseed(self, *key: int) -> None:
        """Draw from a generator seeded by `key` (e.g. seed, rank, step): mixing that is a pure
        function of the step needs no saved state to resume exactly."""
        self.rng = np.random.default_rng(list(key))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
