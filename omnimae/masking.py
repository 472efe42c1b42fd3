"""Token masks for masked autoencoding: which tokens each sample hides (paper Fig. 4).

Every row hides exactly N - num_visible(N, ratio) tokens, so every sample of a batch keeps the same
number of tokens and the encoder sees static shapes (one compile per modality). A mask is a
`[B, N] bool` tensor, True = hidden, over the t-major token index `i = s*h*w + y*w + x` of a
`(t, h, w)` token grid (s: temporal slot, y/x: spatial position).

All four kinds are built the same way on `device`: give every token a sort key, keep the
num_visible tokens with the lowest keys (one argsort over the batch, no Python loop over samples).
A "grouped" key `group_rank * N + random_int(0, N)` keeps whole groups in rank order and picks at
random inside the one group the count cuts through; integer keys keep groups apart exactly (a
float rank + uniform noise can round across a group boundary).

- random: uniform over all tokens (the default, and MAE's/VideoMAE's random masking).
- tube:   the same spatial positions are kept in every temporal slot. Groups are the h*w spatial
          positions (each a tube of t tokens) in random order: the first num_visible // t tubes are
          kept whole, and the remaining num_visible % t tokens come from one more tube, at random
          slots. That is the closest to a pure tube mask an exact count allows.
- causal: images (t == 1): keep the first num_visible tokens in raster order, hide the "future".
          videos (t > 1): groups are the temporal slots in time order: keep the earliest slots
          whole and random positions inside the boundary slot; every later slot is hidden.
- frame:  groups are the temporal slots in random order: ceil(num_visible / (h*w)) random slots
          hold the kept tokens (whole slots, random positions in the last one), every other slot
          is hidden entirely. With t == 1 this is random masking.
"""

from __future__ import annotations

import math

import torch

KINDS = ("random", "tube", "causal", "frame")


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """Tokens a sample keeps: floor(N * (1 - ratio)), robust to float error (196 @ 0.9 -> 19)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    # round() first: 200 * (1 - 0.9) is 19.999999999999996 in binary floating point.
    kept = math.floor(round(num_tokens * (1.0 - mask_ratio), 6))
    if kept < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no token of {num_tokens}")
    return kept


def make_mask(
    kind: str,
    batch_size: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask for a batch: [B, N] bool, True = hidden, exactly N - num_visible(N, ratio) per row.

    grid: (t, h, w) token grid, N = t*h*w, token index t-major. `generator` must live on `device`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"grid must be three positive ints (t, h, w), got {grid}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    t, h, w = (int(g) for g in grid)
    n = t * h * w
    keep = num_visible(n, mask_ratio)

    if kind == "random":
        keys = torch.rand(batch_size, n, device=device, generator=generator)  # [B, N]
    elif kind == "tube":
        # group of token i = its spatial position i % (h*w); a random order of the positions
        spatial_rank = _random_ranks(batch_size, h * w, device, generator)  # [B, h*w]
        group_rank = spatial_rank.repeat(1, t)  # [B, N]: slot s repeats the spatial ranks
        keys = _grouped_keys(group_rank, device, generator)
    elif kind == "causal" and t == 1:
        # raster order: key = token index, the same for every row
        keys = torch.arange(n, device=device).expand(batch_size, n)  # [B, N]
    else:
        # causal (t > 1) or frame: group of token i = its temporal slot i // (h*w)
        if kind == "causal":
            slot_rank = torch.arange(t, device=device).expand(batch_size, t)  # time order
        else:
            slot_rank = _random_ranks(batch_size, t, device, generator)  # [B, t]
        group_rank = slot_rank.repeat_interleave(h * w, dim=1)  # [B, N]
        keys = _grouped_keys(group_rank, device, generator)
    return _mask_lowest_kept(keys, keep)


def _random_ranks(batch_size, num_groups, device, generator) -> torch.Tensor:
    """A random permutation of 0..G-1 per row, [B, G] int64, used as each group's rank."""
    noise = torch.rand(batch_size, num_groups, device=device, generator=generator)
    return torch.argsort(noise, dim=1)


def _grouped_keys(group_rank: torch.Tensor, device, generator) -> torch.Tensor:
    """Keys that order tokens by group rank, randomly inside a group: [B, N] int64.

    key = rank * N + u with u in [0, N): every key of group rank k lies in [k*N, (k+1)*N), so the
    lowest keys fill groups in rank order and ties can only fall inside one group.
    """
    b, n = group_rank.shape
    jitter = torch.randint(0, n, (b, n), device=device, generator=generator)
    return group_rank.to(torch.int64) * n + jitter


def _mask_lowest_kept(keys: torch.Tensor, keep: int) -> torch.Tensor:
    """Hide every token except the `keep` lowest keys of each row: [B, N] bool, True = hidden."""
    ids_keep = torch.argsort(keys, dim=1)[:, :keep]  # [B, keep]
    mask = torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    return mask.scatter_(1, ids_keep, False)
