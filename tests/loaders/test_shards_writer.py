"""`omnimae-data shard SRC DEST`: WebDataset tars the `webdataset` package reads, the shard index,
shard sizes, resuming, ranks sharing the work, any fsspec destination, bad source items."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import av
import fsspec
import pytest
import webdataset as wds
from PIL import Image

from loaders.cli import main
from loaders.errors import DataError
from loaders.manifest import read_manifest, write_manifest
from loaders.shards.index import read_shard_index
from loaders.shards.writer import PARTS, items_per_shard, shard_dataset

from tests.loaders._loader_data import image_loader, make_images, make_videos


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root, per_class=2)  # 16 JPEGs


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, make_videos(root, count=5)


def test_shards_from_omnimae_data_are_read_by_webdataset(images, tmp_path, capsys):
    root, manifest = images
    dest = tmp_path / "shards"
    assert main(["shard", str(root), str(dest), "--per-shard", "5", "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.strip().startswith("wrote 4 shards, kept 0 from an earlier run, of 4 (5 items each): 16 items")
    assert out.strip().endswith(f"-> {dest / 'shards_train.jsonl'}")
    tars = sorted(str(p) for p in dest.glob("*.tar"))
    assert [Path(t).name for t in tars] == [f"train-00000{i}.tar" for i in range(4)]
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == 16
    for sample, entry in zip(samples, manifest):
        source = Path(entry.uri).read_bytes()
        assert sample["jpeg"] == source  # the encoded bytes as they are
        meta = json.loads(sample["json"])
        width, height = Image.open(io.BytesIO(source)).size
        assert meta == {"label": entry.label, "num_frames": 1, "fps": 0.0, "codec": "jpeg",
                        "width": width, "height": height}
        assert "." not in sample["__key__"] and sample["__key__"].startswith(f"{manifest.entries.index(entry):08d}_")


def test_the_index_slices_each_item_out_of_its_shard(videos, tmp_path):
    root, manifest = videos
    result = shard_dataset(str(root), str(tmp_path / "s"), per_shard=2)
    index = read_shard_index(result.index)
    assert (len(index), len(index.shards), index.class_names) == (5, 3, manifest.class_names)
    for i, entry in enumerate(manifest):
        shard = Path(index.shards[int(index.item_shard[i])].url).read_bytes()
        offset, size = int(index.item_offset[i]), int(index.item_size[i])
        assert shard[offset:offset + size] == Path(entry.uri).read_bytes()
        assert (index[i].label, index[i].num_frames, index[i].fps, index[i].codec) == \
            (entry.label, entry.num_frames, entry.fps, entry.codec)
    assert index.member_name(0).endswith(".webm")
    sample = next(iter(wds.WebDataset([index.shards[0].url], shardshuffle=False)))
    with av.open(manifest[0].uri) as container:
        context = container.streams.video[0].codec_context
        size = {"width": context.width, "height": context.height}
    assert {k: json.loads(sample["json"])[k] for k in ("width", "height")} == size


def test_shard_size_sets_the_items_per_shard(images, tmp_path):
    root, manifest = images
    mean = sum(os.path.getsize(e.uri) for e in manifest) / len(manifest)
    assert items_per_shard(manifest, int(mean * 4)) == 4
    result = shard_dataset(str(root), str(tmp_path / "s"), shard_size=int(mean * 4))
    assert (result.shards, result.per_shard) == (4, 4)


def test_a_rerun_keeps_finished_shards_and_writes_the_rest(images, tmp_path):
    root, _ = images
    dest = tmp_path / "s"
    shard_dataset(str(root), str(dest), per_shard=4)
    index_text = (dest / "shards_train.jsonl").read_text()
    kept = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.tar")}
    (dest / "train-000001.tar").unlink()  # a shard lost
    (dest / PARTS / "train-000002.json").unlink()  # a shard whose writer stopped before its part
    (dest / "shards_train.jsonl").unlink()
    again = shard_dataset(str(root), str(dest), per_shard=4)
    assert (again.written, again.kept, again.items) == (2, 2, 8)
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.tar")
            if p.name in ("train-000000.tar", "train-000003.tar")} == \
        {k: v for k, v in kept.items() if k in ("train-000000.tar", "train-000003.tar")}  # not rewritten
    assert (dest / "shards_train.jsonl").read_text() == index_text  # the same shards, byte for byte
    done = shard_dataset(str(root), str(dest), per_shard=4)
    assert (done.written, done.kept) == (0, 4) and done.index is not None


def test_ranks_split_the_shards_and_the_last_one_writes_the_index(images, tmp_path, capsys):
    root, _ = images
    dest = tmp_path / "s"
    assert main(["shard", str(root), str(dest), "--per-shard", "3", "--rank", "1", "--world-size", "2",
                 "--no-progress"]) == 0
    assert "index is written by the process that finds every shard done" in capsys.readouterr().out
    assert sorted(p.name for p in dest.glob("*.tar")) == ["train-000001.tar", "train-000003.tar", "train-000005.tar"]
    assert not (dest / "shards_train.jsonl").exists()
    result = shard_dataset(str(root), str(dest), per_shard=3, rank=0, world_size=2)
    assert (result.written, result.kept, result.shards) == (3, 0, 6)
    assert len(read_shard_index(result.index)) == 16


def test_another_plan_is_refused_rather_than_mixed(images, tmp_path, capsys):
    root, _ = images
    shard_dataset(str(root), str(tmp_path / "s"), per_shard=4)
    with pytest.raises(SystemExit) as info:
        main(["shard", str(root), str(tmp_path / "s"), "--per-shard", "5", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds shards of another plan" in err


def test_unreadable_source_items_are_skipped_with_their_reason(images, tmp_path, capsys):
    root, manifest = images
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "fake.jpeg").write_bytes(b"not an image")
    entries = list(manifest[:3]) + [manifest[0].__class__(str(folder / "gone.jpeg"), 0, 1, 0.0, 0.0, "jpeg"),
                                    manifest[0].__class__(str(folder / "fake.jpeg"), 0, 1, 0.0, 0.0, "jpeg")]
    write_manifest(entries, folder / "manifest_train.jsonl", class_names=manifest.class_names)
    assert main(["shard", str(folder / "manifest_train.jsonl"), str(tmp_path / "s"), "--per-shard", "10",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "3 items written, 2 skipped" in captured.out
    assert f"skipped {folder / 'gone.jpeg'}: " in captured.err and "permanent" in captured.err
    assert f"skipped {folder / 'fake.jpeg'}: UnidentifiedImageError" in captured.err
    assert len(read_shard_index(tmp_path / "s" / "shards_train.jsonl")) == 3


def test_any_fsspec_destination_and_reading_from_it(images):
    """Shards written to memory:// (any fsspec filesystem), then trained on from there."""
    root, manifest = images
    result = shard_dataset(str(root), "memory://omnimae-test/in", per_shard=8)
    try:
        assert result.index == "memory://omnimae-test/in/shards_train.jsonl"
        index = read_shard_index(result.index)
        assert index.shards[0].url == "memory://omnimae-test/in/train-000000.tar"
        loader = image_loader(index, batch_size=4)
        try:
            batch = loader.next_batch()
        finally:
            loader.close()
        assert batch.pixels.shape == (4, 3, 32, 32) and loader.stats()["failures"] == 0
    finally:
        fsspec.filesystem("memory").rm("/omnimae-test", recursive=True)


def test_shard_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["shard", str(tmp_path / "nowhere"), str(tmp_path / "s"), "--no-progress"])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["shard", str(tmp_path), str(tmp_path / "s"), "--shard-size", "lots"])
    assert "expected a size such as 64M" in capsys.readouterr().err
    write_manifest([], tmp_path / "manifest_train.jsonl")
    with pytest.raises(DataError, match="lists no items"):
        shard_dataset(str(tmp_path), str(tmp_path / "s"))
    assert read_manifest(tmp_path / "manifest_train.jsonl").entries == []
