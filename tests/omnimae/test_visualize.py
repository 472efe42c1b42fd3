"""omnimae.visualize: the pictures show the prediction where the loss compares it, and nothing of a
hidden patch the model did not see."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from loaders.batch import Batch
from omnimae.masking import make_mask, num_visible
from omnimae.model import IMAGENET_MEAN, IMAGENET_STD, build_model
from omnimae.visualize import reconstruction, reconstruct, save_reconstructions

SMALL = dict(img_size=32, num_frames=4, patch=(2, 8, 8))  # 16 tokens per slot, 384 values each
RATIO = 0.75


def model_for(normalized: bool, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("debug", norm_pix_loss=normalized, **SMALL)


def smooth_pixels(shape, seed: int) -> torch.Tensor:
    """ImageNet-normalized pixels of smooth colour fields (structure at the patch scale, not noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(*shape[:-2], 6, 6, generator=g)
    fine = F.interpolate(coarse, size=shape[2:], mode="bicubic" if len(shape) == 4 else "trilinear")
    rgb = torch.sigmoid(2 * fine)  # [0, 1]
    view = (1, 3) + (1,) * (len(shape) - 2)
    return (rgb - torch.tensor(IMAGENET_MEAN).view(view)) / torch.tensor(IMAGENET_STD).view(view)


def masked_batch(model, shape, seed: int):
    x = smooth_pixels(shape, seed)
    mask = make_mask("random", shape[0], model.token_grid(shape), RATIO, generator=torch.Generator().manual_seed(seed))
    return x, mask, num_visible(mask.shape[1], RATIO)


def panel_error(r) -> float:
    """Mean |prediction - target| over hidden pixels, relative to the target's own spread there."""
    hidden = r.hidden.expand_as(r.target).bool()
    target, prediction = r.target[hidden], r.prediction[hidden]
    return ((prediction - target).abs().mean() / (target - target.mean()).abs().mean()).item()


@pytest.mark.parametrize("normalized", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 4, 32, 32)], ids=["image", "video"])
def test_each_sample_loss_is_the_models_loss(normalized, shape):
    model = model_for(normalized)
    x, mask, nv = masked_batch(model, shape, seed=1)
    r = reconstruction(model, x, mask, nv)
    with torch.no_grad():
        loss, _ = model(x, mask, nv)
    # Every row hides the same count, so the batch loss is the mean of the samples' losses.
    assert r.loss.shape == (shape[0],)
    assert torch.allclose(r.loss.mean(), loss, rtol=1e-5, atol=1e-6)
    frames = 1 if len(shape) == 4 else shape[2]
    for panel in (r.masked, r.prediction, r.target, r.original):
        assert panel.shape == (shape[0], 3, frames, 32, 32)
        assert panel.min() >= 0 and panel.max() <= 1


@pytest.mark.parametrize("normalized", [True, False], ids=["normalized", "raw"])
def test_the_prediction_panel_knows_nothing_of_hidden_pixels(normalized):
    """Changing what hides under the mask changes the target panel, never the prediction panel (a
    prediction painted with the hidden patch's mean and spread would change with them)."""
    model = model_for(normalized)
    x, mask, nv = masked_batch(model, (2, 3, 4, 32, 32), seed=2)
    hidden = model.unpatchify(mask.unsqueeze(-1).float().expand(-1, -1, model.patch_dim), x.shape)  # [B,3,T,H,W]
    other = x + hidden * (torch.randn_like(x) * 2.0 + 1.0)  # hidden pixels replaced, visible ones kept
    a, b = reconstruction(model, x, mask, nv), reconstruction(model, other, mask, nv)
    assert torch.allclose(a.prediction, b.prediction, atol=1e-6)
    assert torch.allclose(a.masked, b.masked, atol=1e-6)
    assert (a.target - b.target).abs().max() > 0.1


@pytest.mark.parametrize("normalized", [True, False], ids=["normalized", "raw"])
def test_random_init_is_far_from_its_target_and_an_overfit_model_is_close(normalized):
    model = model_for(normalized)
    x, mask, nv = masked_batch(model, (2, 3, 32, 32), seed=3)
    before = panel_error(reconstruction(model, x, mask, nv))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):  # one fixed batch and mask: overfit (about 1 s)
        loss, _ = model(x, mask, nv)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = panel_error(reconstruction(model, x, mask, nv))
    assert before > 0.9, before
    assert after < 0.35, after


def test_pictures_hold_a_row_per_panel(tmp_path):
    for normalized, rows in ((True, 4), (False, 3)):
        model = model_for(normalized)
        x, mask, nv = masked_batch(model, (2, 3, 4, 32, 32), seed=4)
        batch = Batch(x, mask, nv, "video", torch.full((2,), -1))
        (path,) = save_reconstructions(model, batch, tmp_path / str(normalized), 7)
        assert path.name == "video_step00000007.png"
        picture = np.asarray(Image.open(path))
        caption = picture.shape[0] - 2 * rows * (32 + 4)
        assert 10 < caption < 120  # the caption, then `rows` rows per sample
        masked, prediction, original = reconstruct(model, x, mask, nv)  # the trainer's FSDP path
        assert prediction.shape == original.shape == masked.shape == (2, 3, 4, 32, 32)
