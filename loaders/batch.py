"""The unit the loaders hand to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IMAGE = "image"
VIDEO = "video"


@dataclass
class Batch:
    """One training step's input, all of one modality.

    pixels: [B, 3, H, W] (image) or [B, 3, T, H, W] (video), float, normalized with the ImageNet
        mean and standard deviation, on the training device.
    mask: [B, N] bool, True = hidden; every row hides exactly N - num_visible tokens.
    num_visible: tokens each sample keeps, known on the host so the model gathers without a sync.
    modality: "image" or "video".
    labels: [B] int64 class indices (-1 where unknown).
    source: [B] int64, index of the decoded item each sample was replicated from (B / t distinct).
    stats: per-stage timings and counters of the step that built this batch (seconds, counts).
    """

    pixels: torch.Tensor
    mask: torch.Tensor
    num_visible: int
    modality: str
    labels: torch.Tensor
    source: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(move(self.pixels), move(self.mask), self.num_visible, self.modality,
                     move(self.labels), move(self.source), dict(self.stats))
