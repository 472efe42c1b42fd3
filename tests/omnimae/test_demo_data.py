"""configs/demo.yaml (data.synth_if_missing=demo) on someone's own data: only a missing or empty local
root is generated; a folder with a manifest, or any remote root, is used as it is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loaders.devtools.synthetic import IMAGE_CLASSES
from omnimae.config import load_config
from omnimae.data import prepare_data
from omnimae.parallel import DistInfo

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(num_train_videos=2, num_val_videos=1, images_per_class_train=1, images_per_class_val=1,
             height=32, progress=False)


@pytest.fixture
def generated(monkeypatch):
    """Records each make_demo_data call and runs it at a tiny size (the demo's own size takes minutes)."""
    from loaders.devtools import synthetic

    calls, real = [], synthetic.make_demo_data

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**{**kwargs, **SMALL})

    monkeypatch.setattr(synthetic, "make_demo_data", spy)
    return calls


def demo_config(image_root: str, video_root: str):
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.image.root={image_root}",
                                                       f"data.video.root={video_root}"])
    assert cfg.data.synth_if_missing == "demo"
    return cfg


def test_a_folder_with_a_manifest_is_used_as_is(tiny_data, tmp_path, generated):
    from loaders.devtools.synthetic import DEMO_MARKER

    # The user's own data: manifests, no demo marker.
    for kind in ("images", "videos"):
        shutil.copytree(tiny_data / kind, tmp_path / kind, ignore=shutil.ignore_patterns(DEMO_MARKER))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    sizes = prepare_data(demo_config(str(tmp_path / "images"), str(tmp_path / "videos")), DistInfo())
    assert generated == []
    assert sizes == {"image": 4 * len(IMAGE_CLASSES), "video": 16}  # tiny_data's train splits
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_http_root_is_read_never_written_into_the_working_directory(tiny_data, tmp_path, monkeypatch,
                                                                       generated):
    from loaders.devtools import synthetic
    from loaders.devtools.objserver import ObjectServer

    def refuse(**kwargs):  # generating here would write `http:/user:secret@.../` into the working directory
        generated.append(kwargs)
        raise AssertionError("demo generation attempted for an http:// root")

    monkeypatch.setattr(synthetic, "make_demo_data", refuse)
    monkeypatch.chdir(tmp_path)
    with ObjectServer(tiny_data) as server:
        base = server.url.replace("http://", "http://user:secret@")
        sizes = prepare_data(demo_config(f"{base}images", f"{base}videos"), DistInfo())
        assert server.request_count() > 0
    assert generated == []
    assert sizes == {"image": 4 * len(IMAGE_CLASSES), "video": 16}
    assert list(tmp_path.iterdir()) == []  # no `http:` folder, no password in a folder name


def test_a_missing_or_empty_local_root_is_generated(tmp_path, generated):
    (tmp_path / "empty").mkdir()
    sizes = prepare_data(demo_config(str(tmp_path / "missing"), str(tmp_path / "empty")), DistInfo())
    assert [sorted(call) for call in generated] == [["image_root", "seed", "video_root"]]
    assert sizes["image"] > 0 and sizes["video"] == SMALL["num_train_videos"]
    assert (tmp_path / "missing" / "manifest_train.jsonl").exists()
    assert (tmp_path / "empty" / "manifest_train.jsonl").exists()


def test_make_demo_data_refuses_a_url_even_one_that_went_through_path(tmp_path, monkeypatch):
    from loaders.devtools.synthetic import make_demo_data

    monkeypatch.chdir(tmp_path)
    for root in ("http://user:secret@127.0.0.1:1/videos", Path("http://user:secret@127.0.0.1:1/videos")):
        with pytest.raises(ValueError, match="local folders only") as error:
            make_demo_data(video_root=root, **SMALL)
        assert "secret" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
