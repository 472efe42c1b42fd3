"""Batch assembly on the device: replicate decoded clips, crop each replica, flip, normalize, mask.

    settings = AssemblySettings(replication=4, crop_size=224, crop_scale=(0.08, 1.0), flip_p=0.0,
                                interpolation="bilinear", mask_ratio=0.95, mask_type="random",
                                patch_size=(2, 16, 16))
    batch = assemble_batch(clips, settings, kind="video", labels=labels, generator=gen, device=device)

Every setting is explicit: the paper's values per modality are the config's (omnimae.config), not
defaults of this module.

The paper replicates every decoded SSv2 clip 4 times (IN1K: once): decoding is the expensive part,
so each decoded clip feeds several samples, each with its own RandomResizedCrop (one box for all
frames of a replica), flip and mask. Replication is an index, not a copy: every replica samples
its crop straight from the one decoded clip.

How the crops are applied. Boxes are drawn the same way everywhere; the resampling has two paths
(`resized_crops(method=...)`), the GPU's and the CPU's, which agree to within uint8 rounding:
- Boxes are drawn like torchvision's `RandomResizedCrop.get_params` (10 tries of a random area
  fraction and log-uniform aspect ratio, the first that fits, else a centre crop at the clamped
  ratio), vectorized over all replicas at once on the generator's device (no host sync).
- GPU ("grid", no Python loop over replicas): a crop is a resampling grid: output pixel u of a
  box (left, width) reads source x = left + (u + 0.5) * width / S (pixel-edge coordinates), which
  is what `F.interpolate(align_corners=False)` does on the cropped region; a flip reverses u. `F.grid_sample` then
  resamples all replicas of all clips of one size in one call: the clips are [n, 3*T, H, W]
  (frames folded into channels, so one grid serves all frames of a replica) and the t replicas of
  a clip are stacked along the grid's height, [n, t*S, S, 2], so no input pixel is copied per
  replica. `padding_mode="border"` clamps reads at the image edge as `F.interpolate` does.
- Bilinear or bicubic (a = -0.75, as `F.interpolate`), as the settings say. No path antialiases,
  so a crop much larger than S aliases a little where torchvision's antialiased resize would not
  (crops from 256-pixel frames shrink by at most ~1.5x; downscale large images when decoding).
- Clips of different sizes are grouped by (H, W) and each group is one grid_sample (SSv2 has a
  handful of sizes after the short-side resize). Samples come out ordered by group, then clip,
  then replica; `source` says which input clip each sample came from (use it for labels).
- Normalization ((x / 255 - mean) / std) is fused into the copy of each group's output into the
  batch tensor.
- CPU ("resize"): float grid_sampling of every replica costs as much as decoding the clip
  (~20 ms of CPU per 16x224x224 sample), which would cap what replication gains. So each replica
  is cropped as a view of the uint8 clip and resized with torch's uint8 channels-last kernel
  (torchvision's `resized_crop` on uint8, exactly), and only the S x S output is converted to
  float, normalized in the same pass: ~10 ms per sample, half the CPU time. Same boxes, flips,
  order and `source`; pixels within 1/255 of the grid path, but at the crop's edge, where
  F.interpolate clamps to the crop and grid_sample reads the neighbour outside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loaders.batch import IMAGE, VIDEO, Batch
from loaders.decode.common import empty_host, to_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect ratio range (paper appendix B: both modalities)
INTERPOLATIONS = ("bilinear", "bicubic")  # the random resized crop's kernels (F.interpolate modes)
KINDS = (VIDEO, IMAGE)


def check_interpolation(interpolation: str) -> str:
    """The interpolation unchanged, or a ValueError naming the choices."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    return interpolation


@dataclass(frozen=True)
class AssemblySettings:
    """How one data set's decoded items become a batch; checked once, when made."""

    replication: int
    """Samples t per decoded item, each with its own crop, flip and mask (a batch of B decodes B / t)."""
    crop_size: int
    """Side S of the square RandomResizedCrop output, in pixels."""
    crop_scale: tuple[float, float]
    """RandomResizedCrop area range, as shares of the frame."""
    flip_p: float
    """Horizontal flip probability of each sample."""
    interpolation: str
    """The crop's resampling kernel: bilinear or bicubic."""
    mask_ratio: float
    """Share of tokens hidden (0: every token kept, as in fine-tuning)."""
    mask_type: str
    """Masking pattern: random, tube, causal or frame (omnimae.masking)."""
    patch_size: tuple[int, int, int]
    """(pt, ph, pw): the token grid is (T / pt, S / ph, S / pw) for videos, (1, S / ph, S / pw) for images."""

    def __post_init__(self):
        # tuples whatever came in (lists from YAML): the settings are hashable and compare equal
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if self.replication < 1:
            raise ValueError(f"replication must be >= 1, got {self.replication}")
        check_interpolation(self.interpolation)
        _, ph, pw = self.patch_size
        if self.crop_size % ph or self.crop_size % pw:
            raise ValueError(f"crop_size {self.crop_size} is not divisible by patch size {ph}x{pw}")


TRIES = 10  # torchvision's RandomResizedCrop tries this many boxes before its fallback


def sample_crop_boxes(heights: torch.Tensor, widths: torch.Tensor, *, scale: Sequence[float],
                      ratio: Sequence[float] = RATIO, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop boxes, torchvision's `get_params` vectorized over N images.

    heights, widths: [N] int, the image sizes (on the device the boxes are drawn on).
    Returns float [N, 4] (top, left, height, width), whole pixels, each box inside its image.
    """
    device = heights.device
    n = heights.shape[0]
    h = heights.to(torch.float32)[:, None]  # [N, 1]
    w = widths.to(torch.float32)[:, None]
    area = h * w
    u = torch.rand(n, TRIES, 4, device=device, generator=generator)  # all draws at once
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # [N, TRIES]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # [N, TRIES]
    box_w = torch.round(torch.sqrt(target_area * aspect))
    box_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)  # [N, TRIES]
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits, [N, 1]
    box_w = box_w.gather(1, first)  # [N, 1]
    box_h = box_h.gather(1, first)
    u_top, u_left = u[:, 0, 2:3], u[:, 0, 3:4]  # [N, 1] each; uniform integer offsets
    top = torch.minimum(torch.floor(u_top * (h - box_h + 1)), h - box_h)
    left = torch.minimum(torch.floor(u_left * (w - box_w + 1)), w - box_w)

    # Fallback when no try fits: the whole image, cropped to the nearest allowed aspect ratio.
    in_ratio = w / h
    fb_w = torch.where(in_ratio > ratio[1], torch.round(h * ratio[1]), w)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(w / ratio[0]), h)
    fb_top = torch.div(h - fb_h, 2, rounding_mode="floor")
    fb_left = torch.div(w - fb_w, 2, rounding_mode="floor")
    found = fits.any(dim=1, keepdim=True)  # [N, 1]
    boxes = torch.where(found, torch.cat([top, left, box_h, box_w], 1),
                        torch.cat([fb_top, fb_left, fb_h, fb_w], 1))
    return boxes  # [N, 4]


def _axis_grid(start: torch.Tensor, length: torch.Tensor, size: int, out_size: int,
               flip: torch.Tensor | None = None) -> torch.Tensor:
    """Normalized sample positions (align_corners=False) along one axis: [N, out_size].

    Output pixel u reads the source at start + (u + 0.5) / out_size * length (pixel edges),
    i.e. the centre convention of `F.interpolate(align_corners=False)` on the crop.
    """
    steps = (torch.arange(out_size, device=start.device, dtype=torch.float32) + 0.5) / out_size  # [S]
    steps = steps.expand(start.shape[0], out_size)  # [N, S]
    if flip is not None:
        steps = torch.where(flip[:, None], 1.0 - steps, steps)
    return (start[:, None] + steps * length[:, None]) * (2.0 / size) - 1.0


METHODS = ("auto", "grid", "resize")


def resized_crops(clips: Sequence[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor | None = None, *,
                  replication: int = 1, out_size: int = 224, interpolation: str = "bilinear",
                  normalize: bool = True, device: torch.device | str | None = None,
                  method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Crop `replication` boxes out of every clip and resize each to out_size x out_size.

    clips: n uint8 tensors, channels last: videos [T, H, W, 3] (same T for all), images [H, W, 3].
    boxes: float [n * replication, 4] (top, left, height, width); row i*t + r is replica r of
        clip i. flips: bool [n * replication] (horizontal flip), or None.
    method: "grid" resamples in float with one grid_sample per size group (the GPU's way: a
        few large kernels); "resize" crops each replica (a view) and resizes it with torch's
        uint8 kernel, converting to float only the output (the CPU's way: 2x less CPU time per
        sample, see the module docstring). "auto": grid on CUDA, resize elsewhere. The two agree
        to within uint8 rounding except at the crop's edge (see `_crops_by_resize`).
    Returns pixels, float32 [B, 3, T, S, S] (videos) or [B, 3, S, S] (images), normalized with
    the ImageNet mean/std if `normalize` (else 0..255), ordered by size group, clip, replica; and
    source, int64 [B], the clip each sample came from.
    """
    if not clips:
        raise ValueError("no clips to crop")
    is_image = clips[0].dim() == 3
    frames = 1 if is_image else clips[0].shape[0]
    for clip in clips:
        if clip.dim() != (3 if is_image else 4) or clip.shape[-1] != 3 or clip.dtype != torch.uint8:
            raise ValueError(f"clips must be uint8 [T, H, W, 3] (videos) or [H, W, 3] (images); got "
                             f"{clip.dtype} {tuple(clip.shape)}")
        if not is_image and clip.shape[0] != frames:
            raise ValueError(f"all clips need the same frame count; got {frames} and {clip.shape[0]}")
    mode = check_interpolation(interpolation)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n, t, size = len(clips), replication, out_size
    if boxes.shape != (n * t, 4):
        raise ValueError(f"boxes must be [{n * t}, 4] for {n} clips x {t} replicas, got {tuple(boxes.shape)}")
    device = torch.device(device) if device is not None else clips[0].device
    if method == "auto":
        method = "grid" if device.type == "cuda" else "resize"
    if method == "resize" and device.type != "cpu":
        raise ValueError(f"method='resize' runs on the CPU (torch's uint8 resize kernel); use 'grid' on {device}")
    # Everything below is queued on the device without a host sync: host-side values (group
    # rows, sources, constants) travel through pinned memory (to_device).
    boxes = to_device(boxes, device)
    flips = to_device(flips, device) if flips is not None else None
    affine = None
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        affine = to_device(torch.stack([1.0 / (255.0 * std), -mean / std]).float(), device)  # [2, 3]: x*mul + add
    shape = (n * t, 3, frames, size, size)  # [B, 3, T, S, S]
    out = torch.empty(shape, device=device) if device.type != "cpu" else empty_host(*shape)

    groups: dict[tuple[int, int], list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(tuple(clip.shape[-3:-1]), []).append(i)
    members = [i for group in groups.values() for i in group]  # clips in output order
    source = torch.tensor(members).repeat_interleave(t)  # [B]
    if method == "grid":
        _crops_by_grid(clips, groups, boxes, flips, out, replication=t, mode=mode, affine=affine)
    else:
        _crops_by_resize(clips, members, boxes, flips, out, replication=t, mode=mode, affine=affine)
    pixels = out[:, :, 0] if is_image else out  # images: [B, 3, S, S]
    return pixels, to_device(source, device)


def _crops_by_grid(clips, groups: dict, boxes: torch.Tensor, flips: torch.Tensor | None, out: torch.Tensor, *,
                   replication: int, mode: str, affine: torch.Tensor | None) -> None:
    """One grid_sample per size group: all replicas of all clips of one (H, W) in one call."""
    t, frames, size, device = replication, out.shape[2], out.shape[-1], out.device
    if affine is not None:
        mul, add = affine.view(2, 1, 1, 3, 1, 1, 1).unbind(0)  # [1, 1, 3, 1, 1, 1] each, broadcast
    row = 0
    for (height, width), members in groups.items():
        g = len(members)
        # [g, T, H, W, 3] uint8 -> float [g, 3, T, H, W] -> [g, 3*T, H, W] (frames as channels)
        stacked = torch.stack([clips[i] if clips[i].dim() == 4 else clips[i][None] for i in members])
        stacked = to_device(stacked, device)
        x = torch.empty(g, 3, frames, height, width, device=device)
        x.copy_(stacked.permute(0, 4, 1, 2, 3))
        x = x.view(g, 3 * frames, height, width)

        if len(groups) == 1:
            b, flip = boxes, flips  # [n*t, 4], already in output order
        else:
            rows = (torch.tensor(members)[:, None] * t + torch.arange(t)).reshape(-1)  # [g*t]
            rows = to_device(rows, device)
            b = boxes[rows]  # [g*t, 4]
            flip = flips[rows] if flips is not None else None
        gx = _axis_grid(b[:, 1], b[:, 3], width, size, flip).view(g, t, 1, size)  # [g, t, 1, S]
        gy = _axis_grid(b[:, 0], b[:, 2], height, size).view(g, t, size, 1)  # [g, t, S, 1]
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # [g, t, S, S, 2] (x, y)
        grid = grid.view(g, t * size, size, 2)  # the t replicas stacked along the height
        y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)  # [g, 3T, t*S, S]
        y = y.view(g, 3, frames, t, size, size).permute(0, 3, 1, 2, 4, 5)  # [g, t, 3, T, S, S]
        target = out[row:row + g * t].view(g, t, 3, frames, size, size)
        if affine is not None:
            torch.addcmul(add, y, mul, out=target)  # (x / 255 - mean) / std, one pass
        else:
            target.copy_(y)
        row += g * t


def _crops_by_resize(clips, members: list[int], boxes: torch.Tensor, flips: torch.Tensor | None,
                     out: torch.Tensor, *, replication: int, mode: str, affine: torch.Tensor | None) -> None:
    """Per replica: crop (a view of the clip), resize in uint8, then one float pass into `out`.

    This is torchvision's `resized_crop(clip, top, left, h, w, S, antialias=False)` on uint8
    exactly: F.interpolate clamps its taps at the crop's edge, where the grid path reads the
    neighbours outside the crop. Per 16-frame 224x224 replica on one core: resize ~1.5 ms (uint8,
    channels-last SIMD kernel), uint8 -> float with the transpose ~1.5 ms, normalize ~0.7 ms; the
    Python loop over replicas ~20 us each.
    """
    t = replication
    if affine is not None:
        mul, add = affine.view(2, 3, 1, 1, 1).unbind(0)  # [3, 1, 1, 1] each, broadcast over [3, T, S, S]
    size = out.shape[-1]
    boxes = boxes.to(torch.int64).tolist()  # host values: this path runs on the CPU
    flips = flips.tolist() if flips is not None else None
    for k, i in enumerate(members):
        clip = clips[i].cpu() if clips[i].dim() == 4 else clips[i][None].cpu()  # [T, H, W, 3]
        frames = clip.permute(0, 3, 1, 2)  # [T, 3, H, W], channels last in memory
        for r in range(t):
            top, left, height, width = boxes[i * t + r]
            crop = frames[:, :, top:top + height, left:left + width]  # a view
            y = F.interpolate(crop, size=(size, size), mode=mode, align_corners=False)  # uint8 [T, 3, S, S]
            if flips is not None and flips[i * t + r]:
                y = y.flip(-1)
            target = out[k * t + r]  # [3, T, S, S]
            target.copy_(y.permute(1, 0, 2, 3))  # uint8 [T, 3, S, S] -> float [3, T, S, S]
            if affine is not None:
                # (x / 255 - mean) / std in place, all float: a mixed uint8/float addcmul would take
                # torch's slow casting loop (3x the time of the whole conversion)
                target.mul_(mul).add_(add)


def replicate_and_augment(clips: Sequence[torch.Tensor] | torch.Tensor, settings: AssemblySettings, *,
                          kind: str = VIDEO, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicate each decoded clip `settings.replication` times, each replica with its own crop and flip.

    clips: a list of uint8 tensors (or one stacked tensor), channels last: videos [T, H, W, 3],
        images [H, W, 3]; sizes may differ. None entries are not allowed (drop failures first).
    generator: draws boxes and flips on its own device (a CUDA generator keeps it all on the GPU).
    Returns pixels, normalized float32 [B, 3, T, S, S] or [B, 3, S, S] on `device`
    (B = len(clips) * replication), and source [B] int64 (see `resized_crops` for the order).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    clips = list(clips)
    if not clips:
        raise ValueError("no clips to augment")
    want = 4 if kind == VIDEO else 3
    if any(clip.dim() != want for clip in clips):
        raise ValueError(f"{kind} clips must be {'[T, H, W, 3]' if kind == VIDEO else '[H, W, 3]'}; "
                         f"got shapes {sorted({tuple(c.shape) for c in clips})[:3]}")
    t = settings.replication
    draw_device = generator.device if generator is not None else torch.device(device or clips[0].device)

    sizes = torch.tensor([tuple(c.shape[-3:-1]) for c in clips], dtype=torch.int64)  # [n, 2] (H, W)
    sizes = to_device(sizes.repeat_interleave(t, dim=0), draw_device)  # [n*t, 2]
    boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale=settings.crop_scale, generator=generator)
    flips = None
    if settings.flip_p > 0:
        flips = torch.rand(len(sizes), device=draw_device, generator=generator) < settings.flip_p  # [n*t]
    return resized_crops(clips, boxes, flips, replication=t, out_size=settings.crop_size,
                         interpolation=settings.interpolation, device=device)


def assemble_batch(clips: Sequence[torch.Tensor], settings: AssemblySettings, *, kind: str = VIDEO,
                   labels: Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Batch:
    """Replicate + crop + flip + normalize + mask: one training batch of one modality.

    An image is one temporal slot of the token grid; a video's frames must divide by the temporal patch.
    labels: one per clip (replicated with the clips), or None for -1.
    """
    from omnimae.masking import make_mask, num_visible

    device = torch.device(device) if device is not None else clips[0].device
    pixels, source = replicate_and_augment(clips, settings, kind=kind, generator=generator, device=device)
    pt, ph, pw = settings.patch_size
    size = settings.crop_size
    if kind == VIDEO:
        if pixels.shape[2] % pt:
            raise ValueError(f"{pixels.shape[2]} frames are not divisible by temporal patch {pt}")
        grid = (pixels.shape[2] // pt, size // ph, size // pw)
    else:
        grid = (1, size // ph, size // pw)
    mask_device = generator.device if generator is not None else device
    mask = make_mask(settings.mask_type, pixels.shape[0], grid, settings.mask_ratio, device=mask_device,
                     generator=generator)  # [B, N] bool, True = hidden
    mask = to_device(mask, device) if mask.device != device else mask
    if labels is None:
        per_clip = torch.full((len(clips),), -1, dtype=torch.int64, device=device)
    else:
        per_clip = to_device(torch.as_tensor(labels, dtype=torch.int64).cpu(), device)
    visible = num_visible(grid[0] * grid[1] * grid[2], settings.mask_ratio)
    return Batch(pixels=pixels, mask=mask, num_visible=visible, modality=kind, labels=per_clip[source],
                 source=source)
