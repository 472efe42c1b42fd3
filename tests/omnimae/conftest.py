"""A tiny generated image + video data set and a debug-model config shared by the trainer tests."""

from __future__ import annotations

import pytest

from omnimae.config import load_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from loaders.devtools.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("tiny_data")
    make_demo_data(video_root=root / "videos", image_root=root / "images", num_train_videos=16,
                   num_val_videos=4, images_per_class_train=4, images_per_class_val=1, height=64,
                   progress=False)
    return root


def tiny_overrides(data_root, run_dir, **extra) -> list[str]:
    """A debug model on 64-pixel crops of 4 frames: 16 image tokens (4 kept), 32 video tokens (3 kept)."""
    values = {
        "model.name": "debug", "model.img_size": 64, "model.num_frames": 4,
        "data.image.mask_ratio": 0.75, "data.video.mask_ratio": 0.9,
        "data.image.root": str(data_root / "images"), "data.video.root": str(data_root / "videos"),
        "data.video.replication": 2, "data.short_side": 64, "data.decode_threads": 1,
        "data.storage.max_in_flight": 8, "data.decode_backend": "pyav",
        "optim.lr": 1e-3, "optim.lr_batch": 8, "optim.warmup_epochs": 0.5,
        "train.batch_size": 8, "train.max_steps": 6, "train.log_every": 1, "train.ckpt_every": 0,
        "train.out_dir": str(run_dir), "train.run_name": "run", "parallel.compile": False,
        "train.device": "cpu", "data.synth_if_missing": "",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    def make(**extra):
        return load_config(None, tiny_overrides(tiny_data, tmp_path / "runs", **extra))

    return make
