"""The fast forward equals the direct one (omnimae/reference_forward.py) on the same weights.

OmniMAE.forward embeds only the visible patches (the Conv3d's weight as a matrix), projects only
the visible latents into the decoder (the mask token's and the positions' projections once per
forward) and runs the pixel head and the loss on the hidden tokens only. Same loss, predictions
and gradients as the reference, in fp32 to 1e-5, for images and videos, every mask type, both loss
targets; and the attention kernels pinned by omnimae.attention really run.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

from omnimae.attention import FUSED, KERNELS, AttentionPart, choose_kernels, time_kernel
from omnimae.masking import KINDS, make_mask, num_visible
from omnimae.model import build_model
from omnimae.reference_forward import reference_flops_breakdown, reference_forward

TOL = 1e-5


def _model(norm_pix_loss=True, **overrides):
    torch.manual_seed(0)
    model = build_model("debug", img_size=64, num_frames=8, norm_pix_loss=norm_pix_loss, **overrides)
    with torch.no_grad():  # non-zero biases and a mask token unlike any latent: nothing cancels
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _inputs(model, modality, kind, ratio, batch=3):
    g = torch.Generator().manual_seed(1)
    shape = (batch, 3, 64, 64) if modality == "image" else (batch, 3, 8, 64, 64)
    x = torch.randn(shape, generator=g)
    grid = model.token_grid(shape)
    mask = make_mask(kind, batch, grid, ratio, generator=g)
    return x, mask, num_visible(grid[0] * grid[1] * grid[2], ratio)


def _close(a, b):
    return (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("modality", ["image", "video"])
def test_fast_forward_equals_the_reference(modality, kind, norm_pix_loss):
    model = _model(norm_pix_loss)
    x, mask, v = _inputs(model, modality, kind, 0.75)

    loss_ref, pred_ref = reference_forward(model, x, mask, v)  # pred [B, N, P]
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    loss, pred_all = model(x, mask, v, predict_all=True)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    assert abs(loss.item() - loss_ref.item()) <= TOL * abs(loss_ref.item())
    assert _close(pred_all, pred_ref)
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        assert _close(g, g_ref), name
    # Training's prediction: the hidden tokens only, in token order, the same values.
    loss_hidden, pred = model(x, mask, v)
    assert loss_hidden.item() == loss.item()
    assert _close(pred, pred_ref[mask].view(x.shape[0], -1, pred.shape[-1]))


def test_reference_detects_a_wrong_fast_forward(monkeypatch):
    """The comparison can fail: a patch embedding in the wrong (channel-first) order is caught."""
    model = _model()
    x, mask, v = _inputs(model, "video", "random", 0.75)
    monkeypatch.setattr(type(model), "patch_embed_matrix",
                        lambda self: self.patch_embed.weight.reshape(self.patch_embed.weight.shape[0], -1))
    _, pred_ref = reference_forward(model, x, mask, v)
    _, pred = model(x, mask, v, predict_all=True)
    assert not _close(pred, pred_ref)


def test_flops_count_less_than_the_reference():
    with torch.device("meta"):
        model = build_model("base")
    fast = model.flops_breakdown("video", 0.95, batch_size=256)
    ref = reference_flops_breakdown(model, "video", 0.95)
    # 78 of 1,568 tokens embedded and projected; the pixel head on the 1,490 hidden ones.
    assert fast["patch_embed"] * 1568 == ref["patch_embed"] * 78
    assert fast["decoder_embed"] * 1568 == ref["decoder_embed"] * 78
    assert fast["decoder_pred"] * 1568 == ref["decoder_pred"] * 1490
    assert fast["encoder"] == ref["encoder"] and fast["decoder"] == ref["decoder"]


# ---- attention kernels ----------------------------------------------------------------------------

def _parts(model):
    return [AttentionPart("encoder", model.blocks, 8), AttentionPart("decoder", model.decoder_blocks, 64)]


def test_timing_reports_kernels_this_machine_lacks():
    cpu = torch.device("cpu")
    assert time_kernel("math", (2, 2, 16, 8), torch.float32, cpu, repeats=1) > 0
    if not torch.cuda.is_available():  # the CPU has math and flash kernels, no cuDNN or efficient one
        assert time_kernel("cudnn", (2, 2, 16, 8), torch.float32, cpu, repeats=1) is None
        assert time_kernel("efficient", (2, 2, 16, 8), torch.float32, cpu, repeats=1) is None


def test_auto_pins_the_fastest_kernel_per_part():
    model = _model()
    line, chosen = choose_kernels("auto", _parts(model), batch=2, dtype=torch.float32,
                                  device=torch.device("cpu"), calibrate=True)
    assert line.startswith("attention: encoder ") and "; decoder " in line
    for part in _parts(model):
        best, times = chosen[part.name]
        assert set(times) == set(FUSED)  # every fused kernel tried, the missing ones reported as None
        assert (times["cudnn"], times["efficient"]) == (None, None) or torch.cuda.is_available()
        assert best == min((k for k in times if times[k] is not None), key=times.get)
        assert f"{part.name} {best} (" in line
        assert all(b.attn.backends == [KERNELS[best]] for b in part.blocks)


def test_auto_falls_back_to_math_where_no_fused_kernel_runs(monkeypatch):
    import omnimae.attention as attention

    real = attention.time_kernel
    monkeypatch.setattr(attention, "time_kernel", lambda name, *a, **k: None if name in FUSED else real(name, *a, **k))
    model = _model()
    line, chosen = choose_kernels("auto", _parts(model), batch=2, dtype=torch.float32,
                                  device=torch.device("cpu"), calibrate=True)
    assert chosen["decoder"][0] == "math" and "flash n/a" in line
    assert all(b.attn.backends == [SDPBackend.MATH] for b in model.decoder_blocks)


def test_auto_on_the_cpu_keeps_pytorchs_choice():
    model = _model()
    line, _ = choose_kernels("auto", _parts(model), batch=2, dtype=torch.float32, device=torch.device("cpu"))
    assert "PyTorch's own kernel choice" in line
    assert all(b.attn.backends is None for b in [*model.blocks, *model.decoder_blocks])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU lacks the memory-efficient kernel")
def test_a_pinned_kernel_really_runs():
    model = _model()
    x, mask, v = _inputs(model, "video", "random", 0.75)
    with pytest.raises(ValueError, match="parallel.attention=efficient: the encoder's attention"):
        choose_kernels("efficient", _parts(model), batch=2, dtype=torch.float32, device=torch.device("cpu"))
    for block in model.decoder_blocks:  # pinned by hand: the forward must use it, and fail
        block.attn.backends = [SDPBackend.EFFICIENT_ATTENTION]
    with pytest.raises(RuntimeError):
        model(x, mask, v)
    expected, _ = model.__class__.forward(_model(), x, mask, v)
    choose_kernels("math", _parts(model), batch=2, dtype=torch.float32, device=torch.device("cpu"))
    assert abs(model(x, mask, v)[0].item() - expected.item()) <= TOL


def test_decoder_heads_option_keeps_the_flops():
    with torch.device("meta"):
        official, six = build_model("base"), build_model("base", decoder_heads=6)
    assert six.decoder_blocks[0].attn.heads == 6
    assert official.flops_per_sample("video", 0.95, 256) == six.flops_per_sample("video", 0.95, 256)
    # The same weights load into either: the head split is not a parameter.
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in six.state_dict().items()}
