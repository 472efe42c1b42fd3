"""Micro-benchmarks of the per-step pieces around the model (pytest-benchmark).

Kept out of the default run by the `benchmark` marker (pyproject addopts: -m 'not benchmark'):

    python -m pytest -m benchmark tests/omnimae/test_microbench.py

Each benchmark also checks its result, so a fast but wrong version fails. Sizes are the paper's
where they are cheap (video grid 8x14x14 = 1568 tokens, batch 64 masks) and small elsewhere, so
the whole file takes seconds on a 2-core CPU.
"""

import pytest
import torch

from omnimae.masking import make_mask, num_visible
from omnimae.model import build_model, gather_tokens, get_sinusoid_encoding_table

pytestmark = pytest.mark.benchmark(group="omnimae", min_rounds=3, max_time=0.5)

VIDEO_GRID = (8, 14, 14)  # 16 frames x 224 pixels, patch 2x16x16
DEBUG_VIDEO = (2, 3, 16, 224, 224)  # [B, 3, T, H, W]: two full-size clips for the debug model


@pytest.fixture(scope="module")
def debug_model():
    torch.manual_seed(0)
    return build_model("debug").eval()


@pytest.mark.parametrize("kind", ["random", "tube"])
def test_bench_make_mask_video(benchmark, kind):
    g = torch.Generator().manual_seed(0)
    mask = benchmark(make_mask, kind, 64, VIDEO_GRID, 0.95, generator=g)  # [64, 1568]
    assert mask.shape == (64, 1568)
    assert (mask.sum(dim=1) == 1568 - num_visible(1568, 0.95)).all()  # 1490 hidden, 78 kept


def test_bench_position_table(benchmark):
    table = benchmark(get_sinusoid_encoding_table, 1568, 768)  # ViT-B video table
    assert table.shape == (1, 1568, 768)
    assert torch.allclose(table[0, :, 0], torch.arange(1568.0).sin(), atol=1e-4)  # j = 0: sin(pos)


def test_bench_patchify_video(benchmark, debug_model):
    x = torch.randn(DEBUG_VIDEO)
    patches = benchmark(debug_model.patchify, x)  # [B, 1568, 1536]
    assert patches.shape == (2, 1568, 1536)
    # First token, first pixel of the patch (t=0, h=0, w=0): channels 0..2 of x[:, :, 0, 0, 0].
    assert torch.equal(patches[:, 0, :3], x[:, :, 0, 0, 0])


def test_bench_loss_video(benchmark, debug_model):
    x = torch.randn(DEBUG_VIDEO)
    mask = make_mask("random", 2, VIDEO_GRID, 0.95, generator=torch.Generator().manual_seed(0))
    _, ids_hidden = debug_model.split_tokens(mask, num_visible(1568, 0.95))
    hidden = gather_tokens(debug_model.patchify(x), ids_hidden)  # [2, 1490, P]
    pred = torch.randn(2, 1490, debug_model.patch_dim)
    loss = benchmark(debug_model.forward_loss, hidden, pred)
    # Targets are normalized per patch and channel, pred ~ N(0, 1) independent: MSE close to 2.
    assert loss.ndim == 0 and 1.8 < float(loss) < 2.2


augment = pytest.importorskip("loaders.assembly")
# The pretraining recipe's assembly (paper: videos 95% hidden, bilinear; images 90%, bicubic, flips).
VIDEO = augment.AssemblySettings(replication=4, crop_size=224, crop_scale=(0.08, 1.0), flip_p=0.0,
                                 interpolation="bilinear", mask_ratio=0.95, mask_type="random", patch_size=(2, 16, 16))
IMAGE = augment.AssemblySettings(replication=1, crop_size=224, crop_scale=(0.2, 1.0), flip_p=0.5,
                                 interpolation="bicubic", mask_ratio=0.9, mask_type="random", patch_size=(2, 16, 16))


def _clips(count, frames, height=256, width=340, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (frames, height, width, 3) if frames else (height, width, 3)  # channels last, uint8
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for _ in range(count)]


def test_bench_replicate_and_augment_video(benchmark):
    clips = _clips(2, 16)  # two decoded SSv2-like clips, short side 256
    g = torch.Generator().manual_seed(0)
    pixels, source = benchmark(augment.replicate_and_augment, clips, VIDEO, kind="video", generator=g)
    assert pixels.shape == (8, 3, 16, 224, 224) and pixels.dtype == torch.float32
    assert sorted(source.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_bench_assemble_batch_image(benchmark):
    clips = _clips(8, 0)
    g = torch.Generator().manual_seed(0)
    batch = benchmark(augment.assemble_batch, clips, IMAGE, kind="image", labels=list(range(8)),
                      generator=g)
    assert batch.pixels.shape == (8, 3, 224, 224) and batch.num_visible == 19
    assert (batch.mask.sum(dim=1) == 196 - 19).all()
    assert sorted(batch.labels.tolist()) == list(range(8))
