"""data.storage: one section of reader settings in both config trees, one reader per process."""

from __future__ import annotations

import pytest

from omnimae.config import ConfigError, load_config
from omnimae.finetune.config import load_finetune_config
from omnimae.model import build_model
from omnimae.parallel import DistInfo

FT_BASE = ["data.root=/data/ssv2"]


@pytest.mark.parametrize("load, base", [(load_config, ["data.video.root=/v"]),
                                        (load_finetune_config, FT_BASE)])
def test_the_moved_key_is_refused_with_one_line_naming_the_new_one(load, base, tmp_path):
    with pytest.raises(ConfigError) as info:
        load(None, base + ["data.max_in_flight=8"])
    assert str(info.value) == "data.max_in_flight: moved to data.storage.max_in_flight"
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  max_in_flight: 128\n")
    with pytest.raises(ConfigError, match="^data.max_in_flight: moved to data.storage.max_in_flight$"):
        load(old, base)


@pytest.mark.parametrize("load, base", [(load_config, ["data.video.root=/v"]),
                                        (load_finetune_config, FT_BASE)])
@pytest.mark.parametrize("override, message", [
    ("max_in_flight=0", "max_in_flight: must be >= 1"),
    ("timeout_s=0", "timeout_s: must be > 0"),
    ("retries=-1", "retries: must be >= 0"),
    ("backoff_max_s=0", "backoff_max_s: must be > 0"),
    ("hedge_after_s=-1", "hedge_after_s: must be >= 0 (0 = off)"),
    ("max_failure_share=1.5", "max_failure_share: must be in [0, 1]"),
    ("outage_s=0", "outage_s: must be > 0"),
])
def test_storage_values_are_checked_in_both_trees(load, base, override, message):
    with pytest.raises(ConfigError) as info:
        load(None, base + [f"data.storage.{override}"])
    assert str(info.value) == f"data.storage.{message}"


def test_one_reader_with_the_configured_settings_shared_by_every_data_set(tiny_config):
    from omnimae.data import build_train_loader

    cfg = tiny_config(**{"data.storage.max_in_flight": 5, "data.storage.timeout_s": 7,
                         "data.storage.retries": 1, "data.storage.hedge_after_s": 0.5,
                         "data.storage.outage_s": 42, "data.storage.backoff_max_s": 3})
    derived = {"micro_batch": 8, "accumulation_steps": 1}
    patch_size = build_model(cfg.model.name).patch_size  # the trainer's: the built model's
    loader = build_train_loader(cfg, derived, DistInfo(), patch_size=patch_size)
    try:
        readers = {id(child.reader) for child in loader.loaders.values()}
        assert set(loader.loaders) == {"image", "video"} and readers == {id(loader.reader)}
        reader = loader.reader
        assert (reader.max_in_flight, reader.timeout_s, reader.retries, reader.hedge_after_s) == (5, 7, 1, 0.5)
        assert reader._config["outage_s"] == 42 and reader._config["backoff_max_s"] == 3
        next(iter(loader))
    finally:
        loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.read_many([])


def test_fine_tuning_shares_one_reader_too(tiny_data):
    from loaders.manifest import read_manifest
    from omnimae.finetune.data import EvalViews, build_train_loader

    cfg = load_finetune_config(None, [f"data.root={tiny_data / 'videos'}", "model.name=debug",
                                      "model.img_size=64", "model.num_frames=4", "data.short_side=64",
                                      "data.storage.max_in_flight=3", "data.storage.hedge_after_s=0"])
    manifest = read_manifest(tiny_data / "videos" / "manifest_train.jsonl")
    loader = build_train_loader(cfg, manifest, micro_batch=2, accumulation=1, dist_info=DistInfo(),
                                patch_size=build_model(cfg.model.name).patch_size)
    loader.close()
    (child,) = loader.loaders.values()
    assert child.reader is loader.reader and loader.reader.max_in_flight == 3
    assert loader.reader.hedge_after_s is None  # 0 = off
    views = EvalViews(manifest, modality="video", crop_size=64, num_frames=4, num_clips=1, num_crops=1,
                      storage=cfg.data.storage, max_items=2)
    assert sum(len(b) for b in views) == 2  # its own reader, built from the same section
    views.close()
