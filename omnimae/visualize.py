"""Reconstruction pictures that show what the loss sees, for images and video frames.

Per sample, one row each (columns: up to 4 frames of a clip), and the sample's loss:

  masked input   RGB; hidden patches grey
  prediction     in the space the loss compares it in, hidden patches only:
                 normalized targets (model.norm_pix_loss, the paper's default): each patch as
                 z-scores of its own per-channel mean and spread, on one fixed scale (grey = the
                 patch's mean, +-2 std saturate, each colour channel apart); visible patches black
                 (no loss there). Raw targets (norm_pix_loss=false): RGB, visible patches pasted from
                 the input (labelled so)
  target         normalized targets only: the normalized original, on the prediction's scale
  original       RGB

A normalized prediction cannot be drawn in RGB without the hidden patch's mean and spread, which
the model never saw: painting it with them shows an untrained model's picture as a blocky copy of
the input. So no panel does; to see reconstructions in colour, pretrain on raw pixels
(configs/demo_pixels.yaml), as the paper does for its figures (appendix B.4).
"""

from __future__ import annotations

import textwrap
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from loaders.batch import Batch

Z_SATURATE = 2.0  # normalized panels: z in [-2, 2] fills the scale, beyond saturates
Z_FLOOR = 0.12  # the darkest a normalized value is drawn
NOT_IN_LOSS = 0.0  # black: visible patches in the prediction and target panels
LABEL_WIDTH = 112  # pixels of the label column (PIL's default font: ~5 px per character)


def eager():
    """Runs compiled modules eagerly inside the block: a picture of 2 samples is a new batch shape,
    and with static-shape compiles (omnimae.parallel) each new shape would compile every block graph
    again, tens of seconds for one picture."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else nullcontext()


@dataclass
class Reconstruction:
    """Panels as clips [B, 3, T, H, W] in [0, 1] (an image: T = 1), and the loss of each sample."""

    masked: torch.Tensor
    prediction: torch.Tensor  # loss space: normalized (z-scale) or RGB, hidden patches
    target: torch.Tensor  # loss space, on the prediction's scale (raw targets: the original)
    original: torch.Tensor
    hidden: torch.Tensor  # [B, 1, T, H, W], 1 where a pixel belongs to a hidden patch
    loss: torch.Tensor  # [B]: each sample's mean squared error over its hidden patches
    normalized: bool  # targets normalized per patch and colour channel


def rgb_patches(model, pixels: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized pixels [B, 3, (T,) H, W] -> their colours in [0, 1] as patches [B, N, P]."""
    return model.patch_colours(model.patchify(pixels.float()))


def loss_targets(model, pixels: torch.Tensor) -> torch.Tensor:
    """What the loss compares the prediction with (OmniMAE.loss_targets): [B, N, P] in (t, h, w,
    channel) order for every token. tests/omnimae/test_visualize.py checks it against the model's loss."""
    return model.loss_targets(model.patchify(pixels.float()))


def _z_scale(z: torch.Tensor) -> torch.Tensor:
    """One fixed scale for normalized panels: z = 0 (the patch's mean) mid-grey, +-Z_SATURATE
    saturate; values stay above Z_FLOOR, so black (NOT_IN_LOSS) means a visible patch only."""
    return Z_FLOOR + (1.0 - Z_FLOOR) * 0.5 * (1.0 + (z / Z_SATURATE).clamp(-1.0, 1.0))


@torch.no_grad()
def reconstruction(model, pixels: torch.Tensor, mask: torch.Tensor, num_visible: int,
                   autocast=None) -> Reconstruction:
    """The model (eval mode, eagerly) on pixels [B, 3, (T,) H, W] (ImageNet-normalized) with mask
    [B, N] (True = hidden); the panels of `Reconstruction`. An image's prediction is the mean of the
    pt frames the model predicts for it (its target's frames are equal)."""
    was_training = model.training
    model.eval()
    with autocast or nullcontext(), eager():
        _, pred = model(pixels, mask, num_visible, predict_all=True)
    model.train(was_training)
    pred = pred.float()  # [B, N, P]
    normalized = model.config.norm_pix_loss
    rgb = rgb_patches(model, pixels)  # [B, N, P]
    target = loss_targets(model, pixels)
    rgb = rgb.clamp(0, 1)
    hidden = mask.unsqueeze(-1).to(target.dtype)  # [B, N, 1]
    per_token = (pred - target).pow(2).mean(dim=-1)  # [B, N]
    loss = (per_token * hidden[..., 0]).sum(dim=1) / hidden[..., 0].sum(dim=1).clamp(min=1.0)  # [B]
    if normalized:
        prediction = _z_scale(pred) * hidden + NOT_IN_LOSS * (1 - hidden)
        shown_target = _z_scale(target) * hidden + NOT_IN_LOSS * (1 - hidden)
    else:
        prediction = pred.clamp(0, 1) * hidden + rgb * (1 - hidden)  # visible: the input itself
        shown_target = rgb

    def clip(patches: torch.Tensor) -> torch.Tensor:  # [B, N, P] -> [B, 3, T, H, W]
        x = model.unpatchify(patches, pixels.shape)
        return x if x.ndim == 5 else x.unsqueeze(2)

    return Reconstruction(masked=clip(rgb * (1 - hidden) + 0.5 * hidden), prediction=clip(prediction),
                          target=clip(shown_target), original=clip(rgb),
                          hidden=clip(hidden.expand_as(target))[:, :1], loss=loss, normalized=normalized)


def reconstruct(model, pixels: torch.Tensor, mask: torch.Tensor, num_visible: int, autocast=None):
    """(masked, prediction, original) clips [B, 3, T, H, W] in [0, 1]: the panels of `reconstruction`."""
    r = reconstruction(model, pixels, mask, num_visible, autocast)
    return r.masked, r.prediction, r.original


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8."""
    frame = torch.nan_to_num(frame.float(), nan=0.0)
    return (frame.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _caption(normalized: bool) -> str:
    if normalized:
        return ("Normalized targets: prediction and target as each patch's z-scores per colour channel "
                f"(grey = the patch's mean, +-{Z_SATURATE:g} std saturate), hidden patches only; black = "
                "visible, not in the loss. The prediction is never drawn with a hidden patch's own colours.")
    return "Raw-pixel targets: the prediction in RGB on hidden patches; its visible patches are the input."


def reconstruction_grid(r: Reconstruction, *, samples: int = 2, frames: int = 4) -> np.ndarray:
    """One picture [H, W, 3] uint8: a caption, then per sample its rows (see the module docstring)."""
    b, _, t, h, w = r.original.shape
    frame_ids = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    rows, labels = [], []
    for i in range(min(samples, b)):
        space = "normalized" if r.normalized else "RGB"
        panels = [(r.masked, "masked input"),
                  (r.prediction, f"prediction\n({space}{'' if r.normalized else ', visible: input'})"
                                 f"\nloss {r.loss[i].item():.3f}")]  # sync: drawing only
        if r.normalized:
            panels.append((r.target, "target\n(normalized)"))
        panels.append((r.original, "original"))
        for clip, label in panels:
            rows.append(np.concatenate([_to_uint8(clip[i, :, f]) for f in frame_ids], axis=1))
            labels.append(f"sample {i}\n{label}" if label == "masked input" else label)
    width = LABEL_WIDTH + rows[0].shape[1]
    caption = textwrap.fill(_caption(r.normalized), width=max(20, width // 5 - 2))
    top = 14 * (caption.count("\n") + 1) + 6
    pad = 4
    grid = np.full((top + len(rows) * (h + pad), width, 3), 255, dtype=np.uint8)
    for k, row in enumerate(rows):
        grid[top + k * (h + pad):top + k * (h + pad) + h, LABEL_WIDTH:] = row
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    draw.multiline_text((4, 3), caption, fill=(0, 0, 0), spacing=2)
    for k, label in enumerate(labels):
        lines = label.count("\n") + 1
        draw.multiline_text((4, top + k * (h + pad) + max(0, h // 2 - 7 * lines)), label, fill=(0, 0, 0), spacing=2)
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
        r = reconstruction(model, batch.pixels[:n], batch.mask[:n], batch.num_visible, autocast)
        grid = reconstruction_grid(r, samples=n, frames=1 if modality == "image" else 4)
        path = out_dir / f"{modality}_step{step:08d}.png"
        Image.fromarray(grid).save(path, optimize=True)
        if metrics is not None:
            metrics.add_image(f"reconstruction/{modality}", grid, step)
        paths.append(path)
    return paths
