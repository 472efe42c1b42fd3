import pytest

from omnimae.flops import OURS, PAPER, compute_savings_table, main

KEYS = ("image_full", "video_full", "mae", "videomae")


@pytest.fixture(scope="module")
def rows():
    return {r["size"]: r for r in compute_savings_table()}


def test_rows_and_token_counts(rows):
    assert list(rows) == ["base", "large", "huge"]
    assert rows["base"]["tokens"] == {"image": 196, "video": 1568}
    assert rows["huge"]["tokens"] == {"image": 256, "video": 2048}


def test_masking_saves_compute_in_order(rows):
    for r in rows.values():
        for modality in ("image", "video"):
            g = r["gflops"][modality]
            assert g["full"] > g["earlier"] > g["ours"] > 0
        assert 4 < r["ratios"]["image_full"] < 9
        assert 6 < r["ratios"]["video_full"] < 13
        assert 1.5 < r["ratios"]["mae"] < 2.5
        assert 1.1 < r["ratios"]["videomae"] < 1.7
        for key in KEYS:  # counting the cheap projections too makes every saving smaller
            assert r["ratios"][key] < r["ratios_blocks"][key]


def test_savings_grow_with_model_size(rows):
    assert rows["base"]["ratios"]["video_full"] < rows["large"]["ratios"]["video_full"]
    assert rows["base"]["ratios"]["mae"] < rows["large"]["ratios"]["mae"]


def test_close_to_paper(rows):
    for size, paper in PAPER.items():
        for key in KEYS:
            assert rows[size]["ratios_blocks"][key] == pytest.approx(paper[key], rel=0.08), (size, key)
            assert rows[size]["ratios"][key] == pytest.approx(paper[key], rel=0.11), (size, key)


def test_main_prints_table(capsys):
    main()
    out = capsys.readouterr().out
    assert "full/ours img" in out and "VideoMAE/ours" in out
    for size in ("base", "large", "huge"):
        assert size in out
    assert "11.6" in out  # a paper figure (ViT-L video)


def test_our_masking_is_the_configs_default():
    from omnimae.config import DataConfig

    data = DataConfig()
    assert OURS == {"image": data.image.mask_ratio, "video": data.video.mask_ratio} == {"image": 0.9, "video": 0.95}
