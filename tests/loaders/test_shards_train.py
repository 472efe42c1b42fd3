"""omnimae-train on sharded roots: shards written by the `webdataset` package, indexed by
`omnimae-data index`, trained on; a resumed run's losses are those of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loaders.cli import main as data_main
from loaders.devtools.synthetic import make_demo_data
from loaders.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from loaders.shards.index import ShardedManifest
from omnimae.config import ConfigError, DatasetConfig, load_config
from omnimae.data import prepare_data, read_dataset
from omnimae.metrics import read_jsonl
from omnimae.parallel import DistInfo
from omnimae.train import train

from tests.loaders._shard_data import write_webdataset_shards
from tests.omnimae.conftest import tiny_overrides


@pytest.fixture(scope="module")
def sharded_roots(tmp_path_factory) -> Path:
    """The trainer tests' tiny demo set, as webdataset shards (labels in .cls for images, in .json for
    videos), each indexed with `omnimae-data index`: <root>/images and <root>/videos hold no manifest."""
    source = tmp_path_factory.mktemp("tiny_source")
    make_demo_data(video_root=source / "videos", image_root=source / "images", num_train_videos=16,
                   num_val_videos=4, images_per_class_train=4, images_per_class_val=1, height=64, progress=False)
    roots = tmp_path_factory.mktemp("tiny_shards")
    for kind, label, per_shard in (("images", "cls", 5), ("videos", "json", 3)):
        write_webdataset_shards(read_manifest(source / kind / "manifest_train.jsonl"), roots / kind,
                                per_shard=per_shard, label=label)
        assert data_main(["index", str(roots / kind), "--no-progress"]) == 0
    return roots


def config(roots: Path, runs: Path, **extra):
    return load_config(None, tiny_overrides(roots, runs, **{"data.shard_buffer": 2, "data.storage.shard_reads": 2,
                                                           **extra}))


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r.get("loss/image", r.get("loss/video")) for r in read_jsonl(run_dir / "metrics.jsonl")}


def test_trains_on_webdataset_shards_and_resumes_exactly(sharded_roots, tmp_path):
    full = train(config(sharded_roots, tmp_path, **{"train.max_steps": 8, "train.run_name": "full"}))
    summary = json.loads((full / "summary.json").read_text())
    for kind in ("image", "video"):
        loader = summary["loader"][kind]
        assert loader["failures"] == 0 and loader["shards"]["shards_read"] >= 1
        assert loader["reader"]["requests"] <= loader["shards"]["shards_read"] + 2  # a GET per shard
    assert {k.split("/")[1] for r in read_jsonl(full / "metrics.jsonl") for k in r if k.startswith("loss/")} == \
        {"image", "video"}
    part = train(config(sharded_roots, tmp_path, **{"train.max_steps": 4, "train.run_name": "part"}))
    train(config(sharded_roots, tmp_path, **{"train.max_steps": 8, "train.run_name": "part"}))
    a, b = losses(full), losses(part)
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bitwise equal on the CPU


def test_a_changed_shard_buffer_is_refused_on_resume(sharded_roots, tmp_path):
    train(config(sharded_roots, tmp_path, **{"train.max_steps": 2, "train.run_name": "r"}))
    with pytest.raises(ConfigError, match="data.shard_buffer: 2 -> 3"):
        train(config(sharded_roots, tmp_path, **{"train.max_steps": 4, "train.run_name": "r", "data.shard_buffer": 3}))


def test_what_a_root_is_read_through(sharded_roots, tmp_path):
    """A root's manifest wins (nothing changes for indexed folders); without one its shard index is read;
    data.*.manifest may name a shard index; neither: the error names both commands' outputs."""
    images = sharded_roots / "images"
    assert isinstance(read_dataset(DatasetConfig(root=str(images)), {}), ShardedManifest)
    explicit = DatasetConfig(root=str(tmp_path), manifest=str(images / "shards_train.jsonl"))
    assert isinstance(read_dataset(explicit, {}), ShardedManifest)
    both = tmp_path / "both"
    both.mkdir()
    (both / "shards_train.jsonl").write_text((images / "shards_train.jsonl").read_text())
    write_manifest(Manifest([ManifestEntry("/x.jpeg", 0, 1, 0.0, 0.0)]), both / "manifest_train.jsonl")
    got = read_dataset(DatasetConfig(root=str(both)), {})
    assert not isinstance(got, ShardedManifest) and len(got) == 1
    (tmp_path / "empty").mkdir()
    cfg = config(sharded_roots, tmp_path, **{"data.image.root": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="no manifest at .*for \\*.tar shards it writes .*shards_train.jsonl"):
        prepare_data(cfg, DistInfo())


@pytest.mark.parametrize("key", ["data.shard_buffer", "data.storage.shard_reads"])
def test_the_shard_keys_are_checked_in_one_line(key):
    with pytest.raises(ConfigError, match=f"^{key}: must be >= 1$"):
        load_config(None, [f"{key}=0", "data.image.root=/x"])
