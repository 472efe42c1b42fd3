import numpy as np
import pytest

from loaders.frames import clip_starts, sample_frame_indices, window_length


def test_sixteen_frames_evenly_over_a_2_7_s_window():
    rng = np.random.default_rng(0)
    idx = sample_frame_indices(100, 12.0, rng=rng)
    assert idx.dtype == np.int64 and idx.shape == (16,)
    assert window_length(12.0) == 32  # 2.7 s at 12 fps
    start = idx[0]
    # first and last frame of the window, floor(linspace) in between
    assert idx[-1] == start + 31
    np.testing.assert_array_equal(idx - start, np.floor(np.linspace(0, 31, 16)).astype(np.int64))
    steps = np.diff(idx)
    assert set(steps.tolist()) <= {2, 3}  # stride ~ fps / 6 at 12 fps


@pytest.mark.parametrize("fps", [12.0, 24.0, 25.0, 30.0, 60.0])
def test_sampling_rate_is_about_six_fps(fps):
    idx = sample_frame_indices(10_000, fps, mode="center")
    covered = (idx[-1] - idx[0] + 1) / fps  # seconds of video the window's frames cover
    assert abs(covered - 2.7) <= 0.5 / fps + 1e-6  # 2.7 s, up to rounding to whole frames
    rate = 15 / ((idx[-1] - idx[0]) / fps)  # 16 frames, 15 gaps
    assert 5.5 < rate < 6.1


def test_short_video_is_padded_with_its_last_frame():
    idx = sample_frame_indices(10, 12.0, rng=np.random.default_rng(1))
    assert idx.shape == (16,)
    assert idx[0] == 0 and idx.max() == 9
    assert np.all(np.diff(idx) >= 0)
    # the window would reach frame 31: everything past frame 9 repeats frame 9
    expected = np.minimum(np.floor(np.linspace(0, 31, 16)).astype(np.int64), 9)
    np.testing.assert_array_equal(idx, expected)
    assert (idx == 9).sum() >= 11
    # a one-frame video gives sixteen copies of frame 0
    np.testing.assert_array_equal(sample_frame_indices(1, 30.0, rng=np.random.default_rng(0)), np.zeros(16))


def test_deterministic_given_rng_and_starts_cover_the_video():
    a = [sample_frame_indices(60, 12.0, rng=np.random.default_rng(s)) for s in range(5)]
    b = [sample_frame_indices(60, 12.0, rng=np.random.default_rng(s)) for s in range(5)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    rng = np.random.default_rng(123)
    starts = [int(sample_frame_indices(60, 12.0, rng=rng)[0]) for _ in range(2000)]
    assert min(starts) == 0 and max(starts) == 60 - 32  # every start keeps the window inside
    counts = np.bincount(starts, minlength=29)
    assert counts.min() > 2000 / 29 * 0.5  # roughly uniform


def test_center_and_explicit_start():
    idx = sample_frame_indices(100, 12.0, mode="center")
    assert idx[0] == (100 - 32) // 2
    assert sample_frame_indices(100, 12.0, start=5)[0] == 5
    assert sample_frame_indices(100, 12.0, start=500)[-1] == 99  # clamped into the video
    assert clip_starts(100, 12.0, 5) == [0, 17, 34, 51, 68]
    assert clip_starts(100, 12.0, 1) == [34]


def test_errors_name_the_bad_argument():
    with pytest.raises(ValueError, match="fps"):
        sample_frame_indices(10, 0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_frames_in_video"):
        sample_frame_indices(0, 12.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        sample_frame_indices(10, 12.0)
    with pytest.raises(ValueError, match="mode"):
        sample_frame_indices(10, 12.0, mode="middle")
