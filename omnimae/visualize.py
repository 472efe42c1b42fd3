"""Reconstruction pictures: masked input, prediction and original, for images and video frames."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from loaders.batch import Batch


def eager():
    """Runs compiled modules eagerly inside the block: a picture of 2 samples is a new batch shape,
    and with static-shape compiles (omnimae.parallel) each new shape would compile every block graph
    again, tens of seconds for one picture."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else nullcontext()


@torch.no_grad()
def reconstruct(model, pixels: torch.Tensor, mask: torch.Tensor, num_visible: int, autocast=None):
    """Returns (masked, prediction, original) as [B, 3, T, H, W] floats in [0, 1].

    With normalized-pixel targets the prediction of each patch is in units of that patch's own
    per-channel standard deviation, so it is drawn with the original patch's mean and spread (as
    MAE's demo does): the picture shows the predicted structure, the colours come from the input.
    Visible patches of `prediction` are the model's own output too, not pasted from the input.
    """
    was_training = model.training
    model.eval()
    with autocast or nullcontext(), eager():
        _, pred = model(pixels, mask, num_visible)
    model.train(was_training)
    video = pixels if pixels.ndim == 5 else model._as_video(pixels)
    original = (video.float() * model.pixel_std + model.pixel_mean).clamp(0, 1)  # [B, 3, T, H, W]
    target = model.patchify(original)  # [B, N, P], P in (t, h, w, channel) order
    pred = pred.float()
    if model.config.norm_pix_loss:
        b, n, _ = target.shape
        per_channel = target.reshape(b, n, -1, 3)
        mean = per_channel.mean(dim=2, keepdim=True)
        std = (per_channel.var(dim=2, keepdim=True) + 1e-6 / 255.0**2).sqrt()
        pred = (pred.reshape(b, n, -1, 3) * std + mean).reshape(b, n, -1)
    hidden = mask.unsqueeze(-1).to(target.dtype)  # [B, N, 1]
    masked = model.unpatchify(target * (1 - hidden) + 0.5 * hidden, original.shape)  # grey = hidden
    prediction = model.unpatchify(pred, original.shape).clamp(0, 1)
    return masked, prediction, original


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8."""
    frame = torch.nan_to_num(frame.float(), nan=0.0)
    return (frame.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def reconstruction_grid(masked, prediction, original, *, samples: int = 2, frames: int = 4,
                        labels: tuple[str, str, str] = ("masked", "predicted", "original")) -> np.ndarray:
    """Rows: (masked, prediction, original) per sample; columns: up to `frames` frames of each clip."""
    b, _, t, h, w = original.shape
    frame_ids = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    rows = []
    for i in range(min(samples, b)):
        for clip in (masked, prediction, original):
            rows.append(np.concatenate([_to_uint8(clip[i, :, f]) for f in frame_ids], axis=1))
    pad = 4
    width = rows[0].shape[1]
    grid = np.full((len(rows) * (h + pad), width + 90, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        grid[r * (h + pad):r * (h + pad) + h, 90:] = row
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for r in range(len(rows)):
        draw.text((4, r * (h + pad) + h // 2 - 6), labels[r % 3], fill=(0, 0, 0))
    return np.asarray(image)


def save_reconstructions(model, batches: dict[str, Batch] | Batch, out_dir: Path, step: int, *, metrics=None,
                         autocast=None, samples: int = 2) -> list[Path]:
    """Writes `<out_dir>/<modality>_step<step>.png` for each batch; returns the paths."""
    if isinstance(batches, Batch):
        batches = {batches.modality: batches}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for modality, batch in sorted(batches.items()):
        n = min(samples, len(batch))
        masked, prediction, original = reconstruct(model, batch.pixels[:n], batch.mask[:n], batch.num_visible,
                                                   autocast)
        # A normalized-pixel model predicts structure only; its colours are borrowed from the input.
        middle = "pred*stats" if model.config.norm_pix_loss else "predicted"
        grid = reconstruction_grid(masked, prediction, original, samples=n,
                                   frames=1 if modality == "image" else 4,
                                   labels=("masked", middle, "original"))
        path = out_dir / f"{modality}_step{step:08d}.png"
        Image.fromarray(grid).save(path)
        if metrics is not None:
            metrics.add_image(f"reconstruction/{modality}", grid, step)
        paths.append(path)
    return paths
