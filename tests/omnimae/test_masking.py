import pytest
import torch

from omnimae.masking import KINDS, make_mask, num_visible


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, ratio, kept", [
    (196, 0.9, 19), (1568, 0.95, 78), (196, 0.75, 49), (1568, 0.9, 156),
    (256, 0.9, 25), (2048, 0.95, 102), (200, 0.9, 20), (10, 0.7, 3), (196, 0.0, 196),
])
def test_num_visible(n, ratio, kept):
    assert num_visible(n, ratio) == kept


@pytest.mark.parametrize("n, ratio", [(196, 1.0), (196, -0.1), (4, 0.9), (0, 0.5)])
def test_num_visible_rejects(n, ratio):
    with pytest.raises(ValueError):
        num_visible(n, ratio)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", [(1, 14, 14), (8, 14, 14), (8, 4, 4), (3, 5, 7)])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 0.95])
def test_exact_hidden_count(kind, grid, ratio):
    n = grid[0] * grid[1] * grid[2]
    mask = make_mask(kind, 5, grid, ratio, generator=gen())
    assert mask.shape == (5, n) and mask.dtype == torch.bool
    assert ((~mask).sum(dim=1) == num_visible(n, ratio)).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask kind 'block'"):
        make_mask("block", 2, (1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="grid"):
        make_mask("random", 2, (4, 4), 0.5)
    with pytest.raises(ValueError, match="grid"):
        make_mask("random", 2, (0, 4, 4), 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_generator_makes_masks_reproducible(kind):
    a = make_mask(kind, 8, (4, 6, 6), 0.8, generator=gen(1))
    b = make_mask(kind, 8, (4, 6, 6), 0.8, generator=gen(1))
    c = make_mask(kind, 8, (4, 6, 6), 0.8, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # causal too: 28 kept of slot 0's 36 are chosen at random


def test_random_is_uniform_over_tokens():
    mask = make_mask("random", 4000, (1, 4, 4), 0.75, generator=gen())
    kept_freq = (~mask).float().mean(dim=0)  # each token kept with probability 4/16
    assert torch.allclose(kept_freq, torch.full((16,), 0.25), atol=0.03)
    assert len({tuple(r.tolist()) for r in mask[:50]}) > 40  # rows differ


def test_tube_keeps_whole_tubes_and_one_partial():
    t, h, w = 8, 14, 14
    mask = make_mask("tube", 16, (t, h, w), 0.95, generator=gen())  # 78 kept = 9 tubes of 8 + 6
    kept_per_position = (~mask).view(16, t, h * w).sum(dim=1)  # [B, h*w]: slots kept per position
    for row in kept_per_position:
        assert (row == t).sum() == 9
        assert (row == 6).sum() == 1
        assert ((row == 0) | (row == t) | (row == 6)).all()


def test_tube_is_pure_when_count_divides():
    mask = make_mask("tube", 16, (4, 4, 4), 0.75, generator=gen()).view(16, 4, 16)  # 16 kept = 4 tubes
    assert (mask == mask[:, :1]).all()  # the same spatial set in every slot
    assert len({tuple(r.tolist()) for r in mask[:, 0]}) > 1  # different sets per sample


def test_causal_image_keeps_raster_prefix():
    mask = make_mask("causal", 3, (1, 14, 14), 0.9)
    expected = torch.tensor([False] * 19 + [True] * 177)
    assert (mask == expected).all()


def test_causal_video_keeps_earliest_slots():
    t, h, w = 4, 3, 3
    mask = make_mask("causal", 50, (t, h, w), 0.6, generator=gen()).view(50, t, h * w)  # 14 kept
    assert not mask[:, 0].any()  # slot 0 kept whole
    assert ((~mask[:, 1]).sum(dim=1) == 5).all()  # 5 random positions of the boundary slot
    assert mask[:, 2:].all()  # the future is hidden
    assert len({tuple(r.tolist()) for r in mask[:, 1]}) > 10  # random inside the boundary slot
    exact = make_mask("causal", 2, (t, h, w), 0.5).view(2, t, h * w)  # 18 kept = 2 slots
    assert not exact[:, :2].any() and exact[:, 2:].all()


def test_frame_hides_whole_slots():
    mask = make_mask("frame", 32, (8, 2, 2), 0.5, generator=gen()).view(32, 8, 4)  # 16 kept = 4 slots
    per_slot = mask.sum(dim=2)  # hidden tokens per slot
    assert ((per_slot == 0) | (per_slot == 4)).all()
    assert ((per_slot == 0).sum(dim=1) == 4).all()
    assert len({tuple(r.tolist()) for r in per_slot}) > 5  # random slots


def test_frame_keeps_one_slot_at_95_percent():
    t, hw = 8, 196
    mask = make_mask("frame", 16, (t, 14, 14), 0.95, generator=gen()).view(16, t, hw)  # 78 kept
    kept_per_slot = (~mask).sum(dim=2)
    assert ((kept_per_slot > 0).sum(dim=1) == 1).all()
    assert (kept_per_slot.max(dim=1).values == 78).all()
