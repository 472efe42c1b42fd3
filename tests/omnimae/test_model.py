import math

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from omnimae.masking import make_mask, num_visible
from omnimae.model import IMAGENET_MEAN, IMAGENET_STD, SIZES, build_model, get_sinusoid_encoding_table

# Tiny inputs: 32x32 pixels and 4 frames give a (2, 2, 2) video grid and a (1, 2, 2) image grid.
TINY = dict(img_size=32, num_frames=4)


def tiny_model(size="debug", seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(size, **{**TINY, **overrides})


def inputs(modality, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, 32, 32) if modality == "image" else (batch, 3, 4, 32, 32)
    return torch.randn(shape, generator=g)


def mask_for(model, x, ratio=0.5, seed=0):
    grid = model.token_grid(x.shape)
    return make_mask("random", x.shape[0], grid, ratio, generator=torch.Generator().manual_seed(seed))


# ---- sizes ----------------------------------------------------------------------------------------

EXPECTED = {  # dim, depth, heads, decoder dim/depth/heads, patch, image/video tokens at 224x16
    "base": (768, 12, 12, 384, 4, 16, (2, 16, 16), 196, 1568),
    "large": (1024, 24, 16, 512, 4, 16, (2, 16, 16), 196, 1568),
    "huge": (1280, 32, 16, 512, 8, 16, (2, 14, 14), 256, 2048),
}


def expected_param_count(dim, depth, ddim, ddepth, patch):
    p = 3 * patch[0] * patch[1] * patch[2]
    block = lambda d, qkv_bias: 3 * d * d + 3 * d * qkv_bias + d * d + d + 8 * d * d + 5 * d + 4 * d
    encoder = p * dim + dim + depth * block(dim, True) + 2 * dim
    decoder = dim + dim * ddim + ddim + ddepth * block(ddim, False) + 2 * ddim + ddim * p + p
    return encoder + decoder


@pytest.mark.parametrize("size", sorted(EXPECTED))
def test_paper_sizes_on_meta(size):
    dim, depth, heads, ddim, ddepth, dheads, patch, n_img, n_vid = EXPECTED[size]
    with torch.device("meta"):
        model = build_model(size)
    p = 3 * patch[0] * patch[1] * patch[2]
    assert model.patch_embed.weight.shape == (dim, 3, *patch)
    assert len(model.blocks) == depth and len(model.decoder_blocks) == ddepth
    assert model.blocks[0].attn.heads == heads and model.decoder_blocks[0].attn.heads == dheads
    assert model.blocks[0].attn.qkv.weight.shape == (3 * dim, dim)
    assert model.blocks[0].attn.qkv.bias is not None
    assert model.decoder_blocks[0].attn.qkv.weight.shape == (3 * ddim, ddim)
    assert model.decoder_blocks[0].attn.qkv.bias is None
    assert model.blocks[0].mlp.fc1.weight.shape == (4 * dim, dim)
    assert model.mask_token.shape == (1, 1, dim)
    assert model.decoder_embed.weight.shape == (ddim, dim)
    assert model.decoder_pred.weight.shape == (p, ddim)
    assert model.pos_embed.shape == (1, n_vid, dim)  # decoder uses the same table: encoder width
    assert model.num_tokens("image") == n_img and model.num_tokens("video") == n_vid
    assert model.blocks[0].norm1.eps == 1e-6 and model.decoder_norm.eps == 1e-6
    count = sum(t.numel() for t in model.parameters())
    assert count == expected_param_count(dim, depth, ddim, ddepth, patch)


def test_base_parameter_count_matches_vit_b():
    with torch.device("meta"):
        model = build_model("base")
    encoder = sum(t.numel() for n, t in model.named_parameters()
                  if n.startswith(("patch_embed", "blocks", "norm.")))
    # ViT-B/16 is 86.6M with a CLS token, learned positions and a 2-D patch embedding
    assert 85.5e6 < encoder < 87.0e6


@pytest.mark.parametrize("size", ["debug", "small"])
@pytest.mark.parametrize("modality", ["image", "video"])
def test_forward_shapes(size, modality):
    model = tiny_model(size)
    x = inputs(modality)
    grid = model.token_grid(x.shape)
    assert grid == ((1, 2, 2) if modality == "image" else (2, 2, 2))
    n = math.prod(grid)
    mask = mask_for(model, x, 0.5)
    v = num_visible(n, 0.5)
    loss, pred = model(x, mask, v)
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (2, n - v, 3 * 2 * 16 * 16)  # the hidden tokens only
    loss_all, pred_all = model(x, mask, v, predict_all=True)
    assert pred_all.shape == (2, n, 3 * 2 * 16 * 16) == model.patchify(x).shape
    assert loss_all == loss
    assert torch.equal(pred_all[mask], pred.reshape(-1, pred.shape[-1]))  # hidden rows, token order


def test_full_size_token_grids():
    model = tiny_model("debug", img_size=224, num_frames=16)
    assert model.token_grid((2, 3, 224, 224)) == (1, 14, 14)
    assert model.token_grid((2, 3, 16, 224, 224)) == (8, 14, 14)
    assert model.token_grid((2, 3, 8, 224, 224)) == (4, 14, 14)  # fewer frames: earlier rows
    assert tiny_model("debug", img_size=112, num_frames=16).token_grid((1, 3, 16, 112, 112)) == (8, 7, 7)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="dimm"):
        build_model("debug", dimm=3)
    with pytest.raises(ValueError, match="gigantic"):
        build_model("gigantic")
    with pytest.raises(ValueError, match="patch"):
        build_model("debug", img_size=100)


def test_token_grid_rejects_other_sizes():
    model = tiny_model()
    with pytest.raises(ValueError, match="token grid"):
        model.token_grid((1, 3, 64, 64))
    with pytest.raises(ValueError, match="at most 2 slots"):
        model.token_grid((1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch"):
        model.token_grid((1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="expected"):
        model.token_grid((1, 1, 32, 32))


def test_mask_checks():
    model = tiny_model()
    x = inputs("video")
    with pytest.raises(ValueError, match="does not match input"):
        model(x, torch.zeros(2, 4, dtype=torch.bool))
    ragged = torch.tensor([[True] * 4 + [False] * 4, [True] * 5 + [False] * 3])
    with pytest.raises(ValueError, match="different token counts"):
        model(x, ragged)


def test_num_visible_none_matches_given():
    model = tiny_model()
    x = inputs("video")
    mask = mask_for(model, x, 0.75)
    loss_a, pred_a = model(x, mask, 2)
    loss_b, pred_b = model(x, mask)  # derived from the mask (host sync)
    assert torch.equal(loss_a, loss_b) and torch.equal(pred_a, pred_b)


# ---- layout ---------------------------------------------------------------------------------------

def test_patchify_order_and_round_trip():
    model = tiny_model()
    b, t, hh, ww = 1, 4, 32, 32
    c_idx, t_idx, y_idx, x_idx = torch.meshgrid(
        torch.arange(3), torch.arange(t), torch.arange(hh), torch.arange(ww), indexing="ij")
    video = (c_idx * 1e6 + t_idx * 1e4 + y_idx * 1e2 + x_idx).float().unsqueeze(0)  # encodes (c,t,y,x)
    p = model.patchify(video)  # [1, 8, 1536]
    # token 5 = slot 1, row 0, column 1; value 7 = (dt 0, dy 0, dx 2, channel 1)
    assert p[0, 5, 7].item() == 1 * 1e6 + 2 * 1e4 + 0 * 1e2 + 18
    # last value of token 5 = (dt 1, dy 15, dx 15, channel 2)
    assert p[0, 5, -1].item() == 2 * 1e6 + 3 * 1e4 + 15 * 1e2 + 31
    assert torch.equal(model.unpatchify(p, video.shape), video)
    image = inputs("image")
    assert model.patchify(image).shape == (2, 4, 1536)
    assert torch.allclose(model.unpatchify(model.patchify(image), image.shape), image)


def test_position_table_formula():
    d = 64
    table = get_sinusoid_encoding_table(300, d)
    assert table.shape == (1, 300, d)
    for pos, j in [(0, 0), (0, 1), (5, 2), (5, 3), (200, 10), (299, 63), (17, 0)]:
        angle = pos / 10000 ** (2 * (j // 2) / d)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert table[0, pos, j].item() == pytest.approx(expected, abs=1e-6)


def test_model_table_and_image_slot_zero():
    model = tiny_model()
    assert torch.equal(model.pos_embed, get_sinusoid_encoding_table(8, 64))
    image = inputs("image")
    mask = torch.zeros(2, 4, dtype=torch.bool)  # keep all: the encoder sees every token in order
    latent, ids_keep = model.forward_encoder(image, mask, 4)
    repeated = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # one image = one slot of 2 frames
    tokens = model.patch_embed(repeated).flatten(2).transpose(1, 2) + model.pos_embed[:, :4]
    for block in model.blocks:
        tokens = block(tokens)
    assert torch.allclose(latent, model.norm(tokens), atol=1e-5)
    assert torch.equal(ids_keep, torch.arange(4).expand(2, 4))


def test_encoder_gathers_visible_tokens_in_order():
    model = tiny_model()
    mask = torch.tensor([[True, False, True, True, False, True, True, True],
                         [False, True, True, True, True, True, True, False]])
    _, ids_keep = model.forward_encoder(inputs("video"), mask, 2)
    assert ids_keep.tolist() == [[1, 4], [0, 7]]


def test_meta_build_then_init_matches():
    with torch.device("meta"):
        model = build_model("debug", **TINY)
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.equal(model.pos_embed, tiny_model().pos_embed)
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor(IMAGENET_STD))


def test_init_like_mae():
    model = tiny_model("small")
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    assert (model.blocks[0].norm1.weight == 1).all()
    w = model.blocks[0].attn.qkv.weight  # xavier uniform bound sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= math.sqrt(6 / (192 + 576)) and w.abs().max() > 0.9 * math.sqrt(6 / (192 + 576))
    assert 0.015 < model.mask_token.std().item() < 0.025


# ---- loss and gradients ---------------------------------------------------------------------------

def reference_loss(x, pred, mask, pt, ph, pw, norm_pix):
    """Loss written out with loops in float64, independent of the model's reshapes."""
    x = x.double()
    if x.ndim == 4:
        x = torch.stack([x] * pt, dim=2)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1, 1)
    b, _, frames, height, width = x.shape
    t, h, w = frames // pt, height // ph, width // pw
    total, hidden = 0.0, 0
    for i in range(b):
        pixels = x[i] * std + mean  # [3, T, H, W] in [0, 1]
        for token in range(t * h * w):
            if not mask[i, token]:
                continue
            s, y, xx = token // (h * w), (token // w) % h, token % w
            err = 0.0
            for c in range(3):
                patch = pixels[c, s * pt:(s + 1) * pt, y * ph:(y + 1) * ph, xx * pw:(xx + 1) * pw].flatten()
                if norm_pix:
                    patch = patch * 255
                    patch = (patch - patch.mean()) / (patch.var() + 1e-6) ** 0.5
                predicted = pred[i, token].double().view(-1, 3)[:, c]  # (t, h, w, channel) order
                err += ((predicted - patch) ** 2).sum().item()
            total += err / (3 * pt * ph * pw)
            hidden += 1
    return total / hidden


@pytest.mark.parametrize("modality", ["image", "video"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_float64_reference(modality, norm_pix):
    model = tiny_model(norm_pix_loss=norm_pix)
    x = inputs(modality)
    mask = mask_for(model, x, 0.5)
    with torch.no_grad():
        loss, pred = model(x, mask, predict_all=True)
    expected = reference_loss(x, pred, mask, 2, 16, 16, norm_pix)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("modality", ["image", "video"])
def test_gradient_reaches_only_visible_patches(modality):
    model = tiny_model()
    x = inputs(modality).requires_grad_(True)
    mask = mask_for(model, x, 0.5)
    loss, _ = model(x, mask)
    loss.backward()
    grad = model.patchify(x.grad).abs().sum(dim=-1)  # [B, N]
    assert (grad[mask] == 0).all()  # hidden pixels are targets only
    assert (grad[~mask] > 0).all()
    assert model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_short_training_run_lowers_loss():
    model = tiny_model()
    x = inputs("video", batch=4)
    mask = mask_for(model, x, 0.75)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    losses = []
    for _ in range(30):
        loss, _ = model(x, mask, 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # 1.04 -> 0.83 on this seed


# ---- cost -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality", ["image", "video"])
def test_forward_flops_match_torch_counter(modality):
    model = tiny_model("small")
    x = inputs(modality, batch=1)
    ratio = 0.5
    mask = mask_for(model, x, ratio)
    # the math backend runs attention as matmuls the counter sees (it misses the fused CPU kernel)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, mask)
    # num_tokens is for full-size inputs; at this size it is the same grid
    assert counter.get_total_flops() == sum(model.flops_breakdown(modality, ratio).values())
    assert model.flops_per_sample(modality, ratio) == 3 * counter.get_total_flops()


@pytest.mark.parametrize("modality", ["image", "video"])
def test_per_forward_flops_are_shared_by_the_batch(modality):
    """The position table's and the mask token's projections run once per forward, not per sample."""
    model = tiny_model("small")
    x = inputs(modality, batch=3)
    mask = mask_for(model, x, 0.5)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, mask)
    per_sample = model.flops_breakdown(modality, 0.5, batch_size=3)
    assert counter.get_total_flops() == pytest.approx(3 * sum(per_sample.values()), rel=1e-12)
    fixed = 2 * (model.num_tokens(modality) + 1) * 192 * 128  # [N + 1, D] @ [D, Dd]
    assert 3 * per_sample["decoder_positions"] == pytest.approx(fixed, rel=1e-12)


def test_base_video_step_flops():
    with torch.device("meta"):
        model = build_model("base")
    encoder = 12 * (2 * 78 * 768 * 768 * 12 + 4 * 78 * 78 * 768)
    decoder = 4 * (2 * 1568 * 384 * 384 * 12 + 4 * 1568 * 1568 * 384)
    # The patch embedding and decoder_embed on the 78 visible tokens, the pixel head on the 1,490
    # hidden ones, the position table's projection once per forward of 256.
    other = 2 * 78 * 1536 * 768 + 2 * 78 * 768 * 384 + 2 * 1490 * 384 * 1536 + 2 * 1569 * 768 * 384 / 256
    assert model.flops_per_sample("video", 0.95, 256) == pytest.approx(3 * (encoder + decoder + other), rel=1e-12)
    assert 150e9 < model.flops_per_sample("video", 0.95, 256) < 160e9  # docs/design.md: about 158 GFLOP


# ---- compile --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_blocks_compile_with_fullgraph():
    model = tiny_model()
    x = inputs("video")
    mask = mask_for(model, x, 0.5)
    with torch.no_grad():
        eager_loss, eager_pred = model(x, mask, 4)
    for block in list(model.blocks) + list(model.decoder_blocks):
        block.compile(fullgraph=True, dynamic=False)
    with torch.no_grad():
        loss, pred = model(x, mask, 4)
    assert torch.allclose(pred, eager_pred, atol=1e-4) and torch.allclose(loss, eager_loss, atol=1e-5)


def test_sizes_table_has_paper_sizes():
    assert set(SIZES) == {"debug", "small", "base", "large", "huge"}
