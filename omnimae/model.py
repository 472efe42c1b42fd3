"""OmniMAE: one plain ViT encoder for images and videos, pretrained by masked autoencoding.

Images [B, 3, H, W] are repeated to pt frames and go through the same Conv3d patch embedding as
videos [B, 3, T, H, W], so an image is one temporal slot of tokens. Tokens are numbered t-major
(slot*h*w + y*w + x), and a fixed 1-D sinusoid table over that index gives their positions: an
image takes the rows of slot 0. No CLS token. The encoder sees only the visible tokens (only they
are embedded); a light decoder (official omnivore layout) sees all of them; its pixel head and the
loss cover the hidden ones only (tests/omnimae/test_fast_forward.py holds this against the direct
computation, omnimae/reference_forward.py).

Masks are [B, N] bool, True = hidden (omnimae.masking). The model knows nothing of distribution
or compile: `blocks` and `decoder_blocks` are ModuleLists of standalone blocks so the trainer can
compile each one (fullgraph=True, dynamic=False) and wrap them for FSDP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

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


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, C], ids [B, K] -> [B, K, C]: each row's tokens ids, in the order given."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        # SDPA kernels allowed (torch.nn.attention.SDPBackend); None = PyTorch's own choice.
        # omnimae.attention sets it, before compile (the compiled graph bakes the choice in).
        self.backends: list | None = None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)  # [B, L, 3, heads, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, L, Dh]
        if self.backends is None:
            x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, Dh]
        else:
            with sdpa_kernel(self.backends):
                x = F.scaled_dot_product_attention(q, k, v)
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_visible: int | None = None, *,
                predict_all: bool = False):
        """x: [B, 3, H, W] or [B, 3, T, H, W], ImageNet-normalized; mask: [B, N] bool, True = hidden.

        num_visible: tokens every row keeps, known on the host (Batch.num_visible); None derives it
        from the mask with a host sync. Returns (loss: scalar, pred): pred [B, M, P] for the M hidden
        tokens in token order (training: the pixel head runs on those only; `pred` fills
        `full[mask]`), or [B, N, P] for every token with predict_all=True (pictures).
        """
        t, h, w = self.token_grid(x.shape)
        n = t * h * w
        if mask.shape != (x.shape[0], n):
            raise ValueError(f"mask {tuple(mask.shape)} does not match input {tuple(x.shape)}: "
                             f"expected {(x.shape[0], n)}")
        patches = self.patchify(x)  # [B, N, P]: the embedding's input and the loss's target
        ids_keep, ids_hidden = self.split_tokens(mask, num_visible)  # [B, V], [B, M]
        decoded = self.forward_decoder(self.encode(patches, ids_keep), ids_keep, n)  # [B, N, Dd]
        pred = self.decoder_pred(self.decoder_norm(gather_tokens(decoded, ids_hidden)))  # [B, M, P]
        loss = self.forward_loss(gather_tokens(patches, ids_hidden), pred)
        if predict_all:
            pred = self.decoder_pred(self.decoder_norm(decoded))  # [B, N, P]
        return loss, pred

    def split_tokens(self, mask: torch.Tensor, num_visible: int | None = None):
        """(ids_keep [B, V], ids_hidden [B, M]): each row's visible and hidden tokens in token order.

        A stable sort puts the visible tokens (False = 0) first: gathers of fixed size instead of
        boolean indexing, so shapes stay static (every row keeps the same count).
        """
        if num_visible is None:
            num_visible = self._visible_count(mask)
        order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # [B, N]
        return order[:, :num_visible], order[:, num_visible:]

    def forward_encoder(self, x, mask, num_visible=None):
        """Encode the visible tokens only: (latent [B, V, D] after the final norm, ids_keep [B, V])."""
        ids_keep, _ = self.split_tokens(mask, num_visible)
        return self.encode(self.patchify(x), ids_keep), ids_keep

    def patch_embed_matrix(self) -> torch.Tensor:
        """The Conv3d's weight [D, 3, pt, ph, pw] as the matrix [D, P] over patchify's (t, h, w,
        channel) order: with stride = kernel the convolution is this matrix times each patch."""
        w = self.patch_embed.weight
        return w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)

    def encode(self, patches: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """patches [B, N, P] -> latent [B, V, D]: only the V visible patches are embedded (a matrix
        product, not a convolution over every token) and go through the blocks and final norm."""
        visible = gather_tokens(patches, ids_keep)  # [B, V, P]
        x = F.linear(visible, self.patch_embed_matrix(), self.patch_embed.bias)  # [B, V, D]
        x = x + self.pos_embed[0][ids_keep]  # each token's own row; an image's are slot 0's
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

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
        """The decoder over all N tokens: latent [B, V, D] -> [B, N, Dd] after its blocks (before
        its norm and pixel head).

        Its input is decoder_embed(z + p) per token, z the visible latent or the mask token, p the
        position. decoder_embed is linear, W(z + p) + b = Wz + (Wp + b): W runs on the V visible
        latents only, on the mask token and the position table once per call (not per sample), and
        the [B, N, Dd] input is one scatter plus one add in the autocast dtype.
        """
        b = latent.shape[0]
        weight = self.decoder_embed.weight  # [Dd, D]
        positions = self.decoder_embed(self.pos_embed[0, :num_tokens])  # [N, Dd], the bias included
        mask_token = F.linear(self.mask_token[0], weight)  # [1, Dd]
        visible = F.linear(latent, weight)  # [B, V, Dd]
        dd = visible.shape[-1]
        x = mask_token.to(visible.dtype).expand(b, num_tokens, dd)
        x = x.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dd), visible)  # visible rows replaced
        x = x + positions.to(visible.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return x

    def patch_colours(self, patches: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalized patches [..., P] -> their colours in [0, 1] (channel is fastest in P)."""
        per_value = self.patch_dim // 3
        return patches.float() * self.pixel_std.view(3).repeat(per_value) + self.pixel_mean.view(3).repeat(per_value)

    def loss_targets(self, patches: torch.Tensor) -> torch.Tensor:
        """What the prediction is compared with, from ImageNet-normalized patches [B, M, P].

        With norm_pix_loss the original 0-255 pixel values (paper, appendix B), each patch normalized
        per colour channel by its own mean and (unbiased, as official) variance, eps 1e-6; this is
        scale invariant up to eps. Without it the colours in [0, 1], so a prediction can be drawn.
        Detached: hidden pixels are targets, never inputs.
        """
        target = self.patch_colours(patches.detach())  # [B, M, P]
        if not self.config.norm_pix_loss:
            return target
        b, m, _ = target.shape
        per_channel = (target * 255.0).reshape(b, m, -1, 3)  # [B, M, pt*ph*pw, 3]
        mean = per_channel.mean(dim=2, keepdim=True)
        var = per_channel.var(dim=2, keepdim=True)
        return ((per_channel - mean) / (var + 1e-6).sqrt()).reshape(b, m, -1)

    def forward_loss(self, hidden_patches: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """MSE over the hidden tokens' pixels: hidden_patches [B, M, P] (the input's), pred [B, M, P].
        Every row hides M tokens, so the mean over [B, M] is the mean over hidden tokens."""
        if pred.shape[1] == 0:  # nothing hidden (mask ratio 0): nothing to reconstruct
            return pred.float().sum() * 0.0
        return (pred.float() - self.loss_targets(hidden_patches)).pow(2).mean()

    # ---- cost ---------------------------------------------------------------------------------

    def flops_breakdown(self, modality: str, mask_ratio: float, batch_size: int = 1) -> dict[str, float]:
        """Forward matmul FLOPs per sample by part (2 per multiply-add; norms and softmax left out),
        as `forward` computes them: the patch embedding on the V visible tokens, the encoder on V,
        decoder_embed on V plus its per-call projections of the position table and the mask token
        (shared by the batch_size samples of a forward: "decoder_positions"), the decoder on all N,
        the pixel head on the M hidden tokens."""
        c = self.config
        n = self.num_tokens(modality)
        v = count_visible(n, mask_ratio)
        return {
            "patch_embed": 2 * v * self.patch_dim * c.dim,
            "encoder": c.depth * block_flops(v, c.dim, c.mlp_ratio),
            "decoder_embed": 2 * v * c.dim * c.decoder_dim,
            "decoder_positions": 2 * (n + 1) * c.dim * c.decoder_dim / batch_size,
            "decoder": c.decoder_depth * block_flops(n, c.decoder_dim, c.mlp_ratio),
            "decoder_pred": 2 * (n - v) * c.decoder_dim * self.patch_dim,
        }

    def flops_per_sample(self, modality: str, mask_ratio: float, batch_size: int = 1) -> float:
        """Training matmul FLOPs per sample at batch_size samples per forward: forward + backward =
        3 x forward."""
        return 3 * sum(self.flops_breakdown(modality, mask_ratio, batch_size).values())


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
