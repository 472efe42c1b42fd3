import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from loaders.assembly import (IMAGENET_MEAN, IMAGENET_STD, AssemblySettings, assemble_batch, replicate_and_augment,
                              resized_crops, sample_crop_boxes)

# The paper's pretraining values (appendix B): SSv2 crops scale [0.08, 1], bilinear, no flip, 95% masked;
# IN1K [0.2, 1], bicubic, flip 0.5, 90% masked.
PAPER = {
    "video": AssemblySettings(replication=1, crop_size=224, crop_scale=(0.08, 1.0), flip_p=0.0,
                              interpolation="bilinear", mask_ratio=0.95, mask_type="random", patch_size=(2, 16, 16)),
    "image": AssemblySettings(replication=1, crop_size=224, crop_scale=(0.2, 1.0), flip_p=0.5,
                              interpolation="bicubic", mask_ratio=0.9, mask_type="random", patch_size=(2, 16, 16)),
}


def settings(kind: str = "video", **changes) -> AssemblySettings:
    return replace(PAPER[kind], **changes)


def crops(kind: str = "video", **changes) -> AssemblySettings:
    """Settings for replicate_and_augment alone: nothing is masked, so any crop size goes."""
    return settings(kind, patch_size=(1, 1, 1), **changes)


def smooth_clip(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 [T, H, W, 3] of smooth random content (so resampling differences stay small)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, max(2, height // 8), max(2, width // 8), generator=g) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- boxes ----------------------------------------------------------------------------------------

def test_boxes_follow_random_resized_crop():
    n = 4000
    heights = torch.full((n,), 256)
    widths = torch.full((n,), 341)
    boxes = sample_crop_boxes(heights, widths, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=gen())
    top, left, h, w = boxes.unbind(1)
    assert torch.all(boxes == boxes.round())
    assert torch.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert torch.all((top + h <= 256) & (left + w <= 341))
    frac = h * w / (256 * 341)
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    log_ratio = torch.log(w / h)
    assert log_ratio.abs().max() <= math.log(4 / 3) + 0.05

    # Same distribution as torchvision's RandomResizedCrop.get_params (means of area and ratio).
    torch.manual_seed(0)
    image = torch.empty(3, 256, 341)
    ref = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                       dtype=torch.float32)
    ref_frac = ref[:, 2] * ref[:, 3] / (256 * 341)
    assert abs(frac.mean() - ref_frac.mean()) < 0.02
    assert abs(log_ratio.mean() - torch.log(ref[:, 3] / ref[:, 2]).mean()) < 0.02
    # offsets uniform over the free range: the box centre averages to the image centre
    assert abs((top + h / 2).mean() - 128) < 3 and abs((left + w / 2).mean() - 170.5) < 4


def test_boxes_fall_back_to_a_centre_crop():
    # 4 x 1000: no box of area >= 8% and ratio <= 4/3 fits, so every try fails -> centre crop
    boxes = sample_crop_boxes(torch.tensor([4, 1000]), torch.tensor([1000, 4]), scale=(0.08, 1.0),
                              generator=gen())
    assert boxes[0].tolist() == [0.0, (1000 - 5) // 2, 4.0, 5.0]  # h = H, w = round(4 * 4/3)
    assert boxes[1].tolist() == [(1000 - 5) // 2, 0.0, 5.0, 4.0]  # w = W, h = round(4 / (3/4))


def test_boxes_are_deterministic_given_the_generator():
    args = (torch.tensor([100, 200]), torch.tensor([150, 120]))
    a = sample_crop_boxes(*args, scale=(0.2, 1.0), generator=gen(3))
    b = sample_crop_boxes(*args, scale=(0.2, 1.0), generator=gen(3))
    c = sample_crop_boxes(*args, scale=(0.2, 1.0), generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- crops ----------------------------------------------------------------------------------------

BOXES = [(10, 20, 40, 30), (0, 0, 96, 128), (5, 7, 33, 50), (60, 100, 36, 28)]


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_grid_crop_matches_torchvision_resized_crop(box, interpolation):
    clip = smooth_clip(2, 96, 128, seed=1)  # [T, H, W, 3]
    size = 48
    pixels, source = resized_crops([clip], torch.tensor([box], dtype=torch.float32), replication=1,
                                   out_size=size, interpolation=interpolation, normalize=False, method="grid")
    assert pixels.shape == (1, 3, 2, size, size) and source.tolist() == [0]
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    frames = clip.permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    ref = TF.resized_crop(frames, *box, [size, size], interpolation=mode, antialias=False)  # [T, 3, S, S]
    ours = pixels[0].permute(1, 0, 2, 3)  # [T, 3, S, S]
    # Inside the crop both read the same source points; at the crop's edge F.interpolate clamps to
    # the crop while grid_sample reads the real neighbour outside it: skip the output pixels whose
    # taps (1 source pixel for bilinear, 2 for bicubic) reach past the crop.
    reach = 0.5 if interpolation == "bilinear" else 1.5
    border = math.ceil(reach * size / min(box[2], box[3]))
    inner = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    torch.testing.assert_close(ours[inner], ref[inner], atol=2e-3, rtol=0)
    assert (ours - ref).abs().mean() < 1.0


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_crop_is_torchvision_resized_crop_on_uint8(box, interpolation):
    """The CPU path is torchvision's uint8 resized_crop exactly, and within rounding of the grid."""
    clip = smooth_clip(2, 96, 128, seed=1)
    size = 48
    pixels, _ = resized_crops([clip], torch.tensor([box], dtype=torch.float32), out_size=size,
                              interpolation=interpolation, normalize=False, method="resize")
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    ref = TF.resized_crop(clip.permute(0, 3, 1, 2), *box, [size, size], interpolation=mode, antialias=False)
    assert torch.equal(pixels[0].permute(1, 0, 2, 3), ref.float())  # [T, 3, S, S], 0..255
    grid, _ = resized_crops([clip], torch.tensor([box], dtype=torch.float32), out_size=size,
                            interpolation=interpolation, normalize=False, method="grid")
    reach = 0.5 if interpolation == "bilinear" else 1.5
    border = math.ceil(reach * size / min(box[2], box[3]))
    inner = (..., slice(border, -border), slice(border, -border))
    # uint8 rounding (<= 1) and, for bicubic, the overshoot uint8 clamps and float keeps
    assert (pixels[inner] - grid[inner]).abs().max() <= (1.0 if interpolation == "bilinear" else 4.0) + 1e-3


def test_flip_mirrors_the_crop():
    clip = smooth_clip(1, 64, 64)[0]  # an image [H, W, 3]
    box = torch.tensor([[4.0, 8.0, 40.0, 50.0]])
    plain, _ = resized_crops([clip], box, torch.tensor([False]), out_size=32, normalize=False)
    flipped, _ = resized_crops([clip], box, torch.tensor([True]), out_size=32, normalize=False)
    assert plain.shape == (1, 3, 32, 32)
    torch.testing.assert_close(flipped, plain.flip(-1))


def test_normalization_uses_imagenet_mean_and_std():
    value = torch.tensor([10, 128, 250], dtype=torch.uint8)
    clip = value.view(1, 1, 1, 3).expand(4, 20, 30, 3).contiguous()
    pixels, _ = replicate_and_augment([clip], crops(replication=2, crop_size=16), kind="video", generator=gen())
    expected = (value.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert pixels.dtype == torch.float32 and pixels.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(pixels.mean(dim=(0, 2, 3, 4)), expected, atol=1e-5, rtol=0)
    assert pixels.std(dim=(0, 2, 3, 4)).max() < 1e-5


# ---- replication ---------------------------------------------------------------------------------

def test_replicas_share_the_clip_but_not_the_crop():
    clips = [smooth_clip(4, 64, 80, seed=s) for s in range(3)]
    t = 4
    pixels, source = replicate_and_augment(clips, crops(replication=t, crop_size=32, interpolation="bilinear"),
                                           kind="video", generator=gen(1))
    assert pixels.shape == (12, 3, 4, 32, 32)
    assert source.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    # each replica is its own crop of its clip: redo the crops with the same draws, one at a time
    g = gen(1)
    sizes = torch.tensor([[64, 80]] * 12)
    boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale=(0.08, 1.0), generator=g)
    for row in range(12):
        one, _ = resized_crops([clips[row // t]], boxes[row:row + 1], out_size=32)
        torch.testing.assert_close(pixels[row:row + 1], one)
    for k in range(3):
        replicas = pixels[k * t:(k + 1) * t]
        assert all(not torch.allclose(replicas[0], replicas[r]) for r in range(1, t))


def test_one_crop_for_all_frames_of_a_replica():
    # frame f = frame 0 + 10*f everywhere: with one box per replica, output frame f - frame 0 is
    # exactly 10*f / 255 / std (resampling is linear and the box is the same)
    base = smooth_clip(1, 48, 64)[0].to(torch.int16).clamp(0, 150)
    clip = torch.stack([base + 10 * f for f in range(4)]).to(torch.uint8)  # [4, 48, 64, 3]
    pixels, _ = replicate_and_augment([clip], crops(replication=3, crop_size=24), kind="video", generator=gen(2))
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for f in range(4):
        diff = (pixels[:, :, f] - pixels[:, :, 0]) * std * 255  # [3, 3, S, S] back in pixel units
        torch.testing.assert_close(diff, torch.full_like(diff, 10.0 * f), atol=1e-3, rtol=0)


def test_clips_of_different_sizes():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]
    sizes = [(32, 48), (40, 40), (32, 48), (40, 40)]
    clips = [torch.tensor(c, dtype=torch.uint8).view(1, 1, 1, 3).expand(2, h, w, 3).contiguous()
             for c, (h, w) in zip(colours, sizes)]
    pixels, source = replicate_and_augment(clips, crops(replication=2, crop_size=16), kind="video", generator=gen())
    assert pixels.shape == (8, 3, 2, 16, 16)
    assert sorted(source.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert source.tolist() == [0, 0, 2, 2, 1, 1, 3, 3]  # grouped by size, input order inside
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1)
    for row, k in enumerate(source.tolist()):
        rgb = (pixels[row].reshape(3, -1) * std + mean) * 255  # each sample is its own clip's colour
        torch.testing.assert_close(rgb, torch.tensor(colours[k], dtype=torch.float32).view(3, 1).expand_as(rgb),
                                   atol=1e-3, rtol=0)


def test_images_get_bicubic_and_flips():
    clips = [smooth_clip(1, 50, 70, seed=s)[0] for s in range(8)]
    pixels, source = replicate_and_augment(clips, crops("image", crop_size=32), kind="image", generator=gen(5))
    assert pixels.shape == (8, 3, 32, 32) and source.tolist() == list(range(8))
    # redo with flips forced off and the same draws: about half of the samples come out mirrored
    g = gen(5)
    sizes = torch.tensor([[50, 70]] * 8)
    boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale=(0.2, 1.0), generator=g)
    flips = torch.rand(8, generator=g) < 0.5
    plain, _ = resized_crops(clips, boxes, None, out_size=32, interpolation="bicubic")
    for row in range(8):
        expected = plain[row].flip(-1) if flips[row] else plain[row]
        torch.testing.assert_close(pixels[row], expected)
    assert 0 < int(flips.sum()) < 8


def test_bad_clips_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        replicate_and_augment([torch.zeros(4, 8, 8, 3)], crops(), generator=gen())
    with pytest.raises(ValueError, match="same frame count"):
        replicate_and_augment([torch.zeros(4, 8, 8, 3, dtype=torch.uint8),
                               torch.zeros(2, 8, 8, 3, dtype=torch.uint8)], crops(), generator=gen())
    with pytest.raises(ValueError, match="kind"):
        replicate_and_augment([torch.zeros(8, 8, 3, dtype=torch.uint8)], crops(), kind="audio")
    with pytest.raises(ValueError, match=r"video clips must be \[T, H, W, 3\]"):
        replicate_and_augment([torch.zeros(8, 8, 3, dtype=torch.uint8)], crops(), kind="video", generator=gen())


# ---- batches --------------------------------------------------------------------------------------

def test_assemble_video_batch():
    clips = [smooth_clip(16, 64, 85, seed=s) for s in range(2)]
    batch = assemble_batch(clips, settings(replication=4), kind="video", labels=[7, 9], generator=gen(0))
    assert batch.pixels.shape == (8, 3, 16, 224, 224)
    assert batch.mask.shape == (8, 1568) and batch.mask.dtype == torch.bool
    assert batch.num_visible == 78
    assert torch.all((~batch.mask).sum(1) == 78)
    assert batch.modality == "video"
    assert batch.labels.tolist() == [7, 7, 7, 7, 9, 9, 9, 9]
    assert batch.source.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # replicas of one clip: different masks, different crops
    assert len({tuple(m.nonzero().flatten().tolist()) for m in batch.mask[:4]}) == 4
    again = assemble_batch(clips, settings(replication=4), kind="video", labels=[7, 9], generator=gen(0))
    assert torch.equal(batch.pixels, again.pixels) and torch.equal(batch.mask, again.mask)


def test_assemble_image_batch():
    clips = [smooth_clip(1, 60, 80, seed=s)[0] for s in range(3)]
    batch = assemble_batch(clips, settings("image", mask_type="random"), kind="image", generator=gen(0))
    assert batch.pixels.shape == (3, 3, 224, 224)
    assert batch.mask.shape == (3, 196) and batch.num_visible == 19
    assert batch.labels.tolist() == [-1, -1, -1]
    tube = assemble_batch([smooth_clip(16, 32, 32)], settings(mask_type="tube", crop_size=32, patch_size=(2, 16, 16)),
                          kind="video", generator=gen(0))
    assert tube.mask.shape == (1, 8 * 2 * 2)
    with pytest.raises(ValueError, match="divisible"):
        assemble_batch(clips, settings("image", crop_size=100), kind="image", generator=gen(0))


def test_stacked_tensor_input_is_accepted():
    stacked = torch.stack([smooth_clip(2, 24, 24, seed=s) for s in range(2)])  # [n, T, H, W, 3]
    pixels, source = replicate_and_augment(stacked, crops(replication=2, crop_size=8), generator=gen())
    assert pixels.shape == (4, 3, 2, 8, 8) and source.tolist() == [0, 0, 1, 1]
    assert np.isfinite(pixels.numpy()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crops_on_the_gpu_match_the_cpu():
    clips = [smooth_clip(4, 64, 80, seed=s) for s in range(2)] + [smooth_clip(4, 48, 48, seed=9)]
    sizes = torch.tensor([[64, 80], [64, 80], [48, 48]]).repeat_interleave(2, dim=0)
    boxes = sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale=(0.08, 1.0), generator=gen())
    for interpolation in ("bilinear", "bicubic"):
        a, sa = resized_crops(clips, boxes, replication=2, out_size=32, interpolation=interpolation,
                              method="grid")
        b, sb = resized_crops([c.cuda() for c in clips], boxes.cuda(), replication=2, out_size=32,
                              interpolation=interpolation, device="cuda")  # auto: grid on CUDA
        assert b.is_cuda and torch.equal(sa, sb.cpu())
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = assemble_batch(clips[:2], settings(replication=2), generator=g, device="cuda")
    assert batch.pixels.is_cuda and batch.mask.is_cuda and batch.source.is_cuda
    assert batch.pixels.shape == (4, 3, 4, 224, 224) and batch.mask.shape == (4, 2 * 14 * 14)
