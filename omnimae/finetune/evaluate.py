"""Evaluation: multi-view testing, top-k accuracy, and quick checks on frozen features.

Video test protocol (paper B.2, official configs): 5 clips uniformly over the video x 3 spatial
crops; each clip's short side is resized to the crop size and 3 square crops are taken along the
long side (start, centre, end); the softmax probabilities of the 15 views are averaged.

Frozen-feature checks, for a pretrained encoder without fine-tuning: pooled, L2-normalized
features (a mean over all tokens, or per temporal slot for classes that need the order of time);
a linear probe (one Linear, full batch, a few hundred steps) and a DINO-style weighted k-NN
(cosine similarity, votes weighted by exp(sim / temperature)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnimae.finetune.config import PROBE_POOLS as POOLS
from omnimae.model import OmniMAE


def clip_start_times(duration: float, clip_duration: float, num_clips: int = 5) -> list[float]:
    """Start times (s) of `num_clips` test clips: i * (duration - clip) / num_clips, i = 0..n-1.

    pytorchvideo's ConstantClipsPerVideoSampler (official val configs). A video shorter than a clip
    gives starts of 0.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    step = max(duration - clip_duration, 0.0) / num_clips
    return [i * step for i in range(num_clips)]


def resize_short_side(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """[B, 3, (T,) H, W] -> short side `size`, aspect kept; float out.

    As pytorchvideo's ShortSideScale (official test transform): long side floor(L * size / S),
    bilinear, no antialiasing.
    """
    h, w = x.shape[-2:]
    out_h, out_w = (size, math.floor(w * size / h)) if h <= w else (math.floor(h * size / w), size)
    if (out_h, out_w) == (h, w):
        return x if x.is_floating_point() else x.float()
    lead = x.shape[:-2]
    frames = x.reshape(-1, 1, h, w).float()  # every channel and frame of every sample as a map
    frames = F.interpolate(frames, size=(out_h, out_w), mode=mode, align_corners=False)
    return frames.reshape(*lead, out_h, out_w)


def spatial_crop_offsets(height: int, width: int, size: int, num_crops: int = 3) -> list[tuple[int, int]]:
    """(top, left) of the test crops: 1 centre crop, or 3 along the long side (start, centre, end).

    pytorchvideo's uniform_crop: the centre offset is ceil((L - size) / 2); portrait inputs are
    cropped top / centre / bottom, landscape and square ones left / centre / right.
    """
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the input {height}x{width}")
    center = (math.ceil((height - size) / 2), math.ceil((width - size) / 2))
    if num_crops == 1:
        return [center]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if width >= height:  # landscape or square: left, centre, right
        return [(center[0], 0), center, (center[0], width - size)]
    return [(0, center[1]), center, (height - size, center[1])]  # portrait: top, centre, bottom


def spatial_crops(x: torch.Tensor, size: int = 224, num_crops: int = 3,
                  short_side: int | None = None) -> list[torch.Tensor]:
    """Test views of a batch: short side resized to `short_side` (default `size`), then `num_crops`
    square crops of `size`.

    x: [B, 3, (T,) H, W] (uint8 or float); returns num_crops tensors [B, 3, (T,) size, size], float.
    Normalize after (or before: resizing and cropping commute with the per-channel normalization).
    Videos (official): short side = size, 3 crops. Images (MAE): short side = size / 0.875, 1 crop.
    """
    x = resize_short_side(x, short_side or size)
    return [x[..., top:top + size, left:left + size]
            for top, left in spatial_crop_offsets(x.shape[-2], x.shape[-1], size, num_crops)]


@torch.no_grad()
def multiview_logits(classifier: nn.Module, views: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Mean of the softmax probabilities over views: [B, C] (rows sum to 1).

    views: an iterable of [B, 3, (T,) H, W] batches (e.g. 5 clips x 3 crops of the same videos,
    in any order), one forward each; or one tensor [V, B, ...], all views in one forward of V * B.
    Probabilities, not logits, are averaged (official AvgPooledAccuracyListMeter); top-k of the
    mean works like top-k of logits.
    """
    if isinstance(views, torch.Tensor):
        v, b = views.shape[:2]
        if v == 0:
            raise ValueError("multiview_logits: no views given")
        probs = classifier(views.flatten(0, 1)).float().softmax(dim=-1)  # [V * B, C]
        return probs.view(v, b, -1).mean(dim=0)  # [B, C]
    total, count = None, 0
    for view in views:
        probs = classifier(view).float().softmax(dim=-1)  # [B, C]
        total = probs if total is None else total + probs
        count += 1
    if count == 0:
        raise ValueError("multiview_logits: no views given")
    return total / count


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Correct predictions per k: int64 [len(ks)] on the scores' device (sum these over batches)."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # [B, kmax]
    hit = top == labels.view(-1, 1)  # [B, kmax]
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """{k: share of samples whose label is among the k highest scores} (k capped at the class count)."""
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"expected scores [B, C] and labels [B], got {tuple(scores.shape)}, {tuple(labels.shape)}")
    correct = topk_correct(scores, labels, ks).tolist()  # sync: evaluation only
    return {k: c / max(1, scores.shape[0]) for k, c in zip(ks, correct)}


# ---- frozen features ------------------------------------------------------------------------------

def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int, int], pool: str = "mean") -> torch.Tensor:
    """tokens [B, N, D] in (t, h, w) order over `grid` -> features [B, D] ("mean") or [B, T'*D] ("time").

    "time" averages over space within each temporal slot and concatenates the slots in order: a
    mean over all tokens is (nearly) the same for a clip and the clip played backwards, so a frozen
    feature of it cannot tell "left to right" from "right to left"; the slots in order can.
    """
    if pool == "mean":
        return tokens.mean(dim=1)
    if pool == "time":
        b, n, d = tokens.shape
        return tokens.view(b, grid[0], n // grid[0], d).mean(dim=2).flatten(1)  # [B, T' * D]
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable, device: torch.device | str | None = None,
                     pool: str = "mean"):
    """Pooled, L2-normalized features of every batch: (feats [M, F] float CPU, labels [M] | None).

    encoder: an OmniMAE (all tokens through the encoder and its final norm, then `pool_tokens`:
    F = D for "mean", T' * D for "time") or a Classifier (its pooled, normalized feature; "mean"
    only). batches: tensors [B, 3, (T,) H, W], or (pixels, labels) pairs, or objects with .pixels
    and .labels (loaders.batch.Batch).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    was_training = encoder.training
    encoder.eval()
    device = device or next(encoder.parameters()).device
    feats, labels = [], []
    try:
        for batch in batches:
            pixels, y = _unpack(batch)
            pixels = pixels.to(device)
            if isinstance(encoder, OmniMAE):
                grid = encoder.token_grid(pixels.shape)
                n = grid[0] * grid[1] * grid[2]
                keep_all = torch.zeros(pixels.shape[0], n, dtype=torch.bool, device=device)
                tokens = encoder.forward_encoder(pixels, keep_all, n)[0]  # [B, N, D]
                f = pool_tokens(tokens, grid, pool)
            elif pool == "mean":
                f = encoder.forward_features(pixels)  # [B, D]
            else:
                raise ValueError("pool='time' needs the encoder's tokens: pass the OmniMAE, not a Classifier")
            feats.append(F.normalize(f.float(), dim=-1).cpu())
            if y is not None:
                labels.append(torch.as_tensor(y).cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("extract_features: no batches given")
    return torch.cat(feats), (torch.cat(labels) if labels else None)


def _unpack(batch):
    if isinstance(batch, torch.Tensor):
        return batch, None
    if hasattr(batch, "pixels"):
        return batch.pixels, getattr(batch, "labels", None)
    pixels, labels = batch
    return pixels, labels


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, *, epochs: int = 300, lr: float = 1e-2,
                 weight_decay: float = 1e-4, seed: int = 0, standardize: bool = True) -> dict:
    """Full-batch AdamW on one Linear layer over frozen features (CPU tensors are fine).

    standardize: scale every feature to zero mean and unit variance over the training set first
    (MAE's linear probe puts a BatchNorm without affine before the head for the same reason:
    pooled ViT features have very uneven scales, and a plain linear layer underfits them).
    Returns {"top1": val accuracy, "top5": ..., "train_top1": ..., "probe": the trained nn.Linear,
    "mean", "std": the standardization (apply (f - mean) / std before the probe)}.
    """
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    x, y = train_feats.float(), train_labels.long()
    mean, std = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
    if standardize:
        mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6
    x = (x - mean) / std
    val_feats = (val_feats.float() - mean) / std
    g = torch.Generator().manual_seed(seed)
    probe = nn.Linear(train_feats.shape[1], num_classes).to(train_feats.device)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=g) * 0.01)
        probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(probe(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        val = topk_accuracy(probe(val_feats.float()), val_labels.long())
        train = topk_accuracy(probe(x), y, ks=(1,))
    return {"top1": val[1], "top5": val[5], "train_top1": train[1], "probe": probe, "mean": mean, "std": std}


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1024) -> torch.Tensor:
    """DINO's weighted k-NN: class scores [M_val, C] (argmax = prediction; rows sum to 1).

    Cosine similarity to the training features (normalized here), the k nearest vote for their
    class with weight exp(sim / temperature). Processed in chunks of validation rows.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_feats.float(), dim=-1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, val_feats.shape[0], chunk):
        val = F.normalize(val_feats[start:start + chunk].float(), dim=-1)
        sim, idx = (val @ train.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        votes = torch.zeros(val.shape[0], num_classes, device=val.device)
        votes.scatter_add_(1, train_labels[idx].long(), weights)  # [m, C]
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out)
