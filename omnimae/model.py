"""OmniMAE: one plain ViT encoder for images and videos, pretrained by masked autoencoding.

Images [B, 3, H, W] are repeated to pt frames and go through the same Conv3d patch embedding as
videos [B, 3, T, H, W], so an image is one temporal slot of tokens. Tokens are numbered t-major
(slot*h*w + y*w + x), and a fixed 1-D sinusoid table over that index gives their positions: an
image takes the rows of slot 0. No CLS token. The encoder sees only the visible tokens; a light
decoder (official omnivore layout) sees all of them; the loss covers the hidden ones only.

Masks are [B, N] bool, True = hidden (omnimae.masking). The model knows nothing of distribution
or compile: `blocks` and `decoder_blocks` are ModuleLists of standalone blocks so the trainer can
compile each one (fullgraph=True, dynamic=False) and wrap them for FSDP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnimae.masking import num_visible as count_visible
from omnimae.modalities import MODALITIES

# Same values as loaders/assembly.py (0-1 scale); kept here because the model may not import loaders.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OmniMAEConfig:
    img_size: int = 224  # input height and width in pixels
    num_frames: int = 16  # video frames; sets the position table's length with img_size
    patch: tuple[int, int, int] = (2, 16, 16)  # patch (t, h, w); an image is repeated to t frames
    dim: int = 768  # encoder width
    depth: int = 12  # encoder blocks
    heads: int = 12  # encoder attention heads
    decoder_dim: int = 384  # decoder width
    decoder_depth: int = 4  # decoder blocks
    decoder_heads: int = 16  # decoder attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / block width
    norm_pix_loss: bool = True  # normalize each target patch per colour channel (paper); off to draw


# Paper Table 3 / official omnivore configs; debug and small are for tests and smoke runs.
SIZES: dict[str, dict] = {
    "debug": dict(dim=64, depth=2, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4),
    "small": dict(dim=192, depth=6, heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4),
    "base": dict(dim=768, depth=12, heads=12, decoder_dim=384, decoder_depth=4, decoder_heads=16),
    "large": dict(dim=1024, depth=24, heads=16, decoder_dim=512, decoder_depth=4, decoder_heads=16),
    "huge": dict(patch=(2, 14, 14), dim=1280, depth=32, heads=16,
                 decoder_dim=512, decoder_depth=8, decoder_heads=16),
}


def get_sinusoid_encoding_table(n_position: int, d: int) -> torch.Tensor:
    """Fixed positions [1, n_position, d]: angle = pos / 10000^(2*(j//2)/d); sin on even j, cos on odd."""
    pos = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)  # [n, 1]
    j = torch.arange(d, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2.0 * torch.div(j, 2, rounding_mode="floor") / d)  # [n, d]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
    """Forward matmul FLOPs (2 per multiply-add) of one transformer block on `tokens` tokens."""
    linear = 2 * tokens * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio))  # qkv, proj, fc1, fc2
    attention = 2 * 2 * tokens * tokens * dim  # q @ k^T and attn @ v over all heads
    return linear + attention


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # [B, L, 3, heads, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, L, Dh]
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, Dh]
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # [B, L, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; parameter names match the official checkpoints."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class OmniMAE(nn.Module):
    def __init__(self, config: OmniMAEConfig):
        super().__init__()
        c = self.config = config
        pt, ph, pw = c.patch
        if c.img_size % ph or c.img_size % pw or c.num_frames % pt:
            raise ValueError(f"img_size {c.img_size} / num_frames {c.num_frames} "
                             f"are not multiples of the patch {c.patch}")
        self.grid = (c.num_frames // pt, c.img_size // ph, c.img_size // pw)  # video token grid
        self.patch_dim = 3 * pt * ph * pw  # pixels per token, (t, h, w, channel) order
        max_tokens = self.grid[0] * self.grid[1] * self.grid[2]

        self.patch_embed = nn.Conv3d(3, c.dim, kernel_size=c.patch, stride=c.patch)
        # Fixed tables are derived from the config, so they are not saved (persistent=False).
        self.register_buffer("pos_embed", torch.zeros(1, max_tokens, c.dim), persistent=False)
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(1, 3, 1, 1, 1), persistent=False)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.heads, c.mlp_ratio, qkv_bias=True) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)

        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim))  # encoder width, as official
        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_dim, c.decoder_heads, c.mlp_ratio, qkv_bias=False)
            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_dim, self.patch_dim)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """MAE init; also refills the fixed buffers (call after `to_empty` on a meta-built model)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight  # initialized as the Linear it is: [D, 3*pt*ph*pw]
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        device = self.pos_embed.device
        self.pos_embed.copy_(get_sinusoid_encoding_table(self.pos_embed.shape[1], self.config.dim))
        self.pixel_mean.copy_(torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1, 1))
        self.pixel_std.copy_(torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1, 1))

    # ---- shapes -------------------------------------------------------------------------------

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Patch (t, h, w) in frames and pixels: what a loader's crops and clips must be multiples of."""
        return tuple(self.config.patch)

    def token_grid(self, x_shape) -> tuple[int, int, int]:
        """(t, h, w) tokens of an input shape [B, 3, H, W] (t = 1) or [B, 3, T, H, W]."""
        pt, ph, pw = self.config.patch
        if len(x_shape) not in (4, 5) or x_shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] or [B, 3, T, H, W], got {tuple(x_shape)}")
        frames = pt if len(x_shape) == 4 else x_shape[2]
        size = (frames, x_shape[-2], x_shape[-1])
        if any(s % p for s, p in zip(size, self.config.patch)):
            raise ValueError(f"input {tuple(x_shape)} is not a multiple of the patch {self.config.patch}")
        t, h, w = frames // pt, x_shape[-2] // ph, x_shape[-1] // pw
        if (h, w) != self.grid[1:] or t > self.grid[0]:
            raise ValueError(f"input {tuple(x_shape)} gives token grid {(t, h, w)}; this model "
                             f"takes {self.grid[1:]} spatially and at most {self.grid[0]} slots")
        return t, h, w

    def num_tokens(self, modality: str) -> int:
        """Tokens of a full-size image (one slot) or video (all slots)."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        t, h, w = self.grid
        return h * w * (1 if modality == "image" else t)

    def _as_video(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 3, pt, H, W] (repeated, one temporal slot); videos pass through."""
        if x.ndim == 4:
            return x.unsqueeze(2).expand(-1, -1, self.config.patch[0], -1, -1)
        return x

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, (T,) H, W] -> [B, N, 3*pt*ph*pw], values in (t, h, w, channel) order."""
        t, h, w = self.token_grid(x.shape)
        pt, ph, pw = self.config.patch
        b = x.shape[0]
        v = self._as_video(x).reshape(b, 3, t, pt, h, ph, w, pw)
        v = v.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, t, h, w, pt, ph, pw, 3]
        return v.reshape(b, t * h * w, self.patch_dim)

    def unpatchify(self, p: torch.Tensor, x_shape) -> torch.Tensor:
        """[B, N, 3*pt*ph*pw] -> pixels shaped like x_shape; an image averages its pt frames."""
        t, h, w = self.token_grid(x_shape)
        pt, ph, pw = self.config.patch
        b = p.shape[0]
        v = p.reshape(b, t, h, w, pt, ph, pw, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B,3,t,pt,h,ph,w,pw]
        v = v.reshape(b, 3, t * pt, h * ph, w * pw)
        return v.mean(dim=2) if len(x_shape) == 4 else v

    # ---- MAE's four steps ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_visible: int | None = None):
        """x: [B, 3, H, W] or [B, 3, T, H, W], ImageNet-normalized; mask: [B, N] bool, True = hidden.

        num_visible: tokens every row keeps, known on the host (Batch.num_visible); None derives it
        from the mask with a host sync. Returns (loss: scalar, pred: [B, N, 3*pt*ph*pw]).
        """
        t, h, w = self.token_grid(x.shape)
        if mask.shape != (x.shape[0], t * h * w):
            raise ValueError(f"mask {tuple(mask.shape)} does not match input {tuple(x.shape)}: "
                             f"expected {(x.shape[0], t * h * w)}")
        latent, ids_keep = self.forward_encoder(x, mask, num_visible)
        pred = self.forward_decoder(latent, ids_keep, mask.shape[1])
        return self.forward_loss(x, pred, mask), pred

    def forward_encoder(self, x, mask, num_visible=None):
        """Encode the visible tokens only: (latent [B, V, D] after the final norm, ids_keep [B, V])."""
        tokens = self.patch_embed(self._as_video(x)).flatten(2).transpose(1, 2)  # [B, N, D]
        n, d = tokens.shape[1], tokens.shape[2]
        tokens = tokens + self.pos_embed[:, :n]  # an image takes slot 0's rows
        if num_visible is None:
            num_visible = self._visible_count(mask)
        # Stable sort puts the visible tokens (False = 0) first, in token order: a gather of fixed
        # size instead of boolean indexing, so shapes stay static.
        ids_keep = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :num_visible]  # [B, V]
        x = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # [B, V, D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x), ids_keep

    @staticmethod
    def _visible_count(mask: torch.Tensor) -> int:
        # Host sync (.tolist): only when the caller did not pass num_visible.
        counts = (~mask).sum(dim=1)
        low, high = torch.stack([counts.min(), counts.max()]).tolist()
        if low != high:
            raise ValueError(f"mask rows keep different token counts ({low}..{high}); "
                             "every row must keep the same number")
        return low

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor, num_tokens: int):
        """Decode all tokens: visible latents scattered back, mask token elsewhere -> [B, N, P]."""
        b, _, d = latent.shape
        x = self.mask_token.to(latent.dtype).expand(b, num_tokens, d)  # [B, N, D]
        x = x.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), latent)  # visible rows replaced
        x = self.decoder_embed(x + self.pos_embed[:, :num_tokens])  # [B, N, Dd]
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))  # [B, N, 3*pt*ph*pw]

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over each hidden token's pixels, averaged over hidden tokens only.

        Targets come from x.detach(): hidden pixels are targets, never inputs. With norm_pix_loss
        they are the original 0-255 pixel values (paper, appendix B), each patch normalized per
        colour channel by its own mean and (unbiased, as official) variance, eps 1e-6; this is
        scale invariant up to eps. Without it they are the un-normalized pixels in [0, 1], so
        `unpatchify(pred)` can be drawn as a picture.
        """
        pixels = self._as_video(x.detach()) * self.pixel_std + self.pixel_mean  # [B, 3, T, H, W] in [0, 1]
        target = self.patchify(pixels)  # [B, N, P]
        if self.config.norm_pix_loss:
            b, n, _ = target.shape
            per_channel = (target * 255.0).reshape(b, n, -1, 3)  # [B, N, pt*ph*pw, 3]
            mean = per_channel.mean(dim=2, keepdim=True)
            var = per_channel.var(dim=2, keepdim=True)
            target = ((per_channel - mean) / (var + 1e-6).sqrt()).reshape(b, n, -1)
        per_token = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
        hidden = mask.to(per_token.dtype)
        return (per_token * hidden).sum() / hidden.sum().clamp(min=1.0)

    # ---- cost ---------------------------------------------------------------------------------

    def flops_breakdown(self, modality: str, mask_ratio: float) -> dict[str, int]:
        """Forward matmul FLOPs per sample by part (2 per multiply-add; norms and softmax left out)."""
        c = self.config
        n = self.num_tokens(modality)
        v = count_visible(n, mask_ratio)
        return {
            "patch_embed": 2 * n * self.patch_dim * c.dim,  # runs on all tokens, before the gather
            "encoder": c.depth * block_flops(v, c.dim, c.mlp_ratio),
            "decoder_embed": 2 * n * c.dim * c.decoder_dim,
            "decoder": c.decoder_depth * block_flops(n, c.decoder_dim, c.mlp_ratio),
            "decoder_pred": 2 * n * c.decoder_dim * self.patch_dim,
        }

    def flops_per_sample(self, modality: str, mask_ratio: float) -> int:
        """Training matmul FLOPs per sample: forward + backward = 3 x forward."""
        return 3 * sum(self.flops_breakdown(modality, mask_ratio).values())


def build_model(name: str, **overrides) -> OmniMAE:
    """A model of size `name` (see SIZES) with config fields overridden, e.g. img_size=112."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; expected one of {sorted(SIZES)}")
    known = {f.name for f in fields(OmniMAEConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
    if "patch" in overrides:
        overrides["patch"] = tuple(int(p) for p in overrides["patch"])
    return OmniMAE(replace(OmniMAEConfig(), **{**SIZES[name], **overrides}))
