"""The direct computation of OmniMAE's loss, kept as the reference the fast forward answers to.

`OmniMAE.forward` (omnimae/model.py) leaves out work whose results the loss never uses: it embeds
only the visible patches, runs decoder_embed on the visible latents only (by linearity) and the
pixel head on the hidden tokens only. This module computes the same loss the way the paper's code
does, on the same modules and weights: the Conv3d over every token and then the gather,
decoder_embed over all N tokens after scattering the mask token in at the encoder's width, the
pixel head on all N tokens and the loss weighted by the mask. tests/omnimae/test_fast_forward.py
holds the two equal (1e-5 in fp32); benchmarks/step_time.py times both in one run.
"""

from __future__ import annotations

import torch



def reference_forward(model, x: torch.Tensor, mask: torch.Tensor, num_visible: int):
    """(loss, pred [B, N, P]) for x [B, 3, (T,) H, W] (ImageNet-normalized), mask [B, N] (True = hidden)."""
    tokens = model.patch_embed(model._as_video(x)).flatten(2).transpose(1, 2)  # [B, N, D]: every token
    n, d = tokens.shape[1], tokens.shape[2]
    tokens = tokens + model.pos_embed[:, :n]
    ids_keep = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :num_visible]  # [B, V]
    latent = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [B, V, D]
    for block in model.blocks:
        latent = block(latent)
    latent = model.norm(latent)

    b = latent.shape[0]
    z = model.mask_token.to(latent.dtype).expand(b, n, d)  # [B, N, D]
    z = z.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), latent)
    z = model.decoder_embed(z + model.pos_embed[:, :n])  # [B, N, Dd]: every token projected
    for block in model.decoder_blocks:
        z = block(z)
    pred = model.decoder_pred(model.decoder_norm(z))  # [B, N, P]: every token predicted

    pixels = model._as_video(x.detach()) * model.pixel_std + model.pixel_mean  # [B, 3, T, H, W] in [0, 1]
    target = model.patchify(pixels)  # [B, N, P]
    if model.config.norm_pix_loss:
        per_channel = (target * 255.0).reshape(b, n, -1, 3)  # [B, N, pt*ph*pw, 3]
        mean = per_channel.mean(dim=2, keepdim=True)
        var = per_channel.var(dim=2, keepdim=True)
        target = ((per_channel - mean) / (var + 1e-6).sqrt()).reshape(b, n, -1)
    per_token = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    hidden = mask.to(per_token.dtype)
    return (per_token * hidden).sum() / hidden.sum().clamp(min=1.0), pred


def reference_flops_breakdown(model, modality: str, mask_ratio: float) -> dict[str, int]:
    """Forward matmul FLOPs per sample of `reference_forward` by part (model.flops_breakdown's keys)."""
    c = model.config
    n = model.num_tokens(modality)
    per_sample = model.flops_breakdown(modality, mask_ratio)
    return {**per_sample,
            "patch_embed": 2 * n * model.patch_dim * c.dim,  # every token, before the gather
            "decoder_embed": 2 * n * c.dim * c.decoder_dim,  # every token
            "decoder_positions": 0,
            "decoder_pred": 2 * n * c.decoder_dim * model.patch_dim}  # every token
