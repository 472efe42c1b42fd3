"""Tar shards someone else wrote (webdataset's ShardWriter, plain `tar`): tar headers read by ranged
reads, `omnimae-data index ROOT` writing the shard index, labels, probing, damaged shards."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from loaders.cli import main
from loaders.devtools.objserver import ObjectServer
from loaders.errors import DataError
from loaders.manifest import read_manifest
from loaders.shards.index import read_shard_index
from loaders.shards.indexer import expand_braces, index_shards, sample_key
from loaders.shards.tar import Ranges, TarBuilder, header_matches, scan

from tests.loaders._loader_data import make_images, make_videos
from tests.loaders._shard_data import omnimae_shards, write_webdataset_shards


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root, per_class=2)  # 16 JPEGs, 8 classes


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, make_videos(root, count=6)  # 6 VP9 WebMs, 24-36 frames


def members_by_tarfile(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


def scan_file(path: Path, chunk: int = 700) -> list[tuple[str, int, int]]:
    data = path.read_bytes()
    return [tuple(m) for m in scan(Ranges(lambda a, b: data[a:b], len(data), chunk=chunk))]


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_scan_finds_what_tarfile_finds_in_tars_of_the_tar_command(tmp_path, fmt):
    folder = tmp_path / "d"
    folder.mkdir()
    for i, size in enumerate([0, 7, 512, 513, 3000]):
        long = "n" * (110 if fmt != "ustar" else 20)  # past ustar's 100 characters: a GNU 'L' or a pax record
        (folder / f"{long}{i}.bin").write_bytes(bytes([i]) * size)
    archive = tmp_path / "x.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(archive), "-C", str(tmp_path), "d"], check=True)
    assert scan_file(archive) == members_by_tarfile(archive)
    data = archive.read_bytes()
    assert all(header_matches(data, offset, size) is None for _, offset, size in scan_file(archive))


def test_tar_builder_offsets_are_those_tarfile_reads(tmp_path):
    builder = TarBuilder()
    builder.add("a.jpg", b"x" * 1000)
    builder.add("b" * 150 + ".json", b"{}")  # a pax header first
    archive = tmp_path / "b.tar"
    archive.write_bytes(builder.getvalue())
    assert members_by_tarfile(archive) == [tuple(m) for m in builder.members] == scan_file(archive)
    assert archive.stat().st_size % 10240 == 0
    again = TarBuilder()
    again.add("a.jpg", b"x" * 1000)
    again.add("b" * 150 + ".json", b"{}")
    assert again.getvalue() == archive.read_bytes()  # deterministic: a rewritten shard is the same


def test_header_matches_names_what_is_wrong():
    builder = TarBuilder()
    member = builder.add("a.jpg", b"x" * 100)
    data = builder.getvalue()
    assert header_matches(data, member.offset, 100) is None
    assert "not a member of 99 bytes" in header_matches(data, member.offset, 99)
    assert "beyond the 300 bytes" in header_matches(data[:300], member.offset, 100)
    damaged = bytearray(data)
    damaged[10] ^= 0xFF  # inside the name: the checksum no longer matches
    assert "damaged tar header at byte 0" in header_matches(bytes(damaged), member.offset, 100)


def test_sample_keys_and_brace_patterns():
    assert sample_key("a/b.seg.jpg") == ("a/b", "seg.jpg")
    assert sample_key("x.cls") == ("x", "cls")
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("{0..1}/{00..01}") == ["0/00", "0/01", "1/00", "1/01"]


def test_index_webdataset_image_shards_with_cls_labels(images, tmp_path, capsys):
    root, manifest = images
    write_webdataset_shards(manifest, tmp_path / "wds", per_shard=5)  # 4 shards: 5, 5, 5, 1
    assert main(["index", str(tmp_path / "wds"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("16 items in 4 shards, 8 classes, 0 skipped (jpeg 16; ")  # labels from .cls
    index = read_shard_index(tmp_path / "wds" / "shards_train.jsonl")
    assert [e.label for e in index] == [e.label for e in manifest]
    assert [e.codec for e in index] == ["jpeg"] * 16 and all(e.is_image for e in index)
    first = index.shards[0]
    assert (first.count, first.url) == (5, str(tmp_path / "wds" / "wds-000000.tar"))
    # Offsets and sizes are tarfile's, and slice the source files' bytes out of the shard.
    assert [tuple(m) for m in first.members] == members_by_tarfile(Path(first.url))
    data = Path(first.url).read_bytes()
    for i in range(5):
        offset, size = int(index.item_offset[i]), int(index.item_size[i])
        assert data[offset:offset + size] == Path(manifest[i].uri).read_bytes()
    text = (tmp_path / "wds" / "shards_train.jsonl").read_text().splitlines()
    assert json.loads(text[1])["url"] == "wds-000000.tar"  # beside the index: relative


def test_index_webdataset_video_shards_probes_frames_and_reads_json_labels(videos, tmp_path):
    root, manifest = videos
    write_webdataset_shards(manifest, tmp_path / "wds", per_shard=4, label="json")
    result = index_shards(str(tmp_path / "wds"), workers=2)
    got = result.manifest
    assert [(e.label, e.num_frames, e.fps, e.codec) for e in got] == \
        [(e.label, e.num_frames, e.fps, e.codec) for e in manifest]  # probed as `index` probes files


def test_unlabelled_and_media_less_samples(images, tmp_path):
    root, manifest = images
    paths = write_webdataset_shards(manifest[:3], tmp_path / "wds", per_shard=10, label="none")
    with tarfile.open(paths[0], "a") as tar:  # a sample with no media member
        info = tarfile.TarInfo("lonely.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    result = index_shards(str(tmp_path / "wds"))
    assert [e.label for e in result.manifest] == [-1, -1, -1]
    assert result.manifest.class_names is None
    assert [(uri.rsplit("#", 1)[1], "no image or video member" in reason) for uri, reason in result.skipped] == \
        [("lonely", True)]


def test_a_damaged_shard_keeps_the_samples_before_the_damage(images, tmp_path):
    root, manifest = images
    paths = write_webdataset_shards(manifest[:6], tmp_path / "wds", per_shard=10)
    data = bytearray(paths[0].read_bytes())
    fourth = members_by_tarfile(paths[0])[6]  # sample 3's image
    data[fourth[1] - 512 + 20] ^= 0xFF  # its header's checksum no longer holds
    paths[0].write_bytes(bytes(data))
    corrupt_image = tmp_path / "wds" / "wds-000001.tar"
    builder = TarBuilder()
    builder.add("bad.jpg", b"not a jpeg")
    corrupt_image.write_bytes(builder.getvalue())
    result = index_shards(str(tmp_path / "wds"))
    assert len(result.manifest) == 3
    reasons = dict(result.skipped)
    assert f"not a tar from byte {fourth[1] - 512}" in reasons[str(paths[0])]
    assert "UnidentifiedImageError" in reasons[f"{corrupt_image}#bad.jpg"]


def test_indexing_omnimae_shards_over_http_reads_headers_and_metadata_only(videos, tmp_path):
    """Shards whose .json says frames, fps and codec are indexed from ranged reads around the headers:
    the media members are jumped over, far less than the shards is fetched."""
    root, manifest = videos
    written = omnimae_shards(root, tmp_path / "shards", per_shard=3)
    with ObjectServer(tmp_path / "shards") as server:
        result = index_shards(f"{server.url}train-{{000000..000001}}.tar", out=str(tmp_path / "re" / "shards_train.jsonl"),
                              chunk=1024)
        gets, url = server.request_count(method="GET"), server.url
    assert [(e.label, e.num_frames, e.fps, e.codec) for e in result.manifest] == \
        [(e.label, e.num_frames, e.fps, e.codec) for e in written]
    assert result.bytes_read < result.bytes_total / 4
    # Per sample its media's header and its .json's, per shard the end: one ranged GET each.
    assert gets == result.requests == 2 * len(written) + len(written.shards)
    again = read_shard_index(tmp_path / "re" / "shards_train.jsonl")
    assert again.shards[0].url == f"{url}train-000000.tar"  # elsewhere than the index: as given
    assert (again.item_offset == written.item_offset).all()


def test_index_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    builder = TarBuilder()
    builder.add("a.txt", b"no media")
    (tmp_path / "empty" / "x.tar").write_bytes(builder.getvalue())
    with pytest.raises(SystemExit) as info:
        main(["index", str(tmp_path / "empty"), "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("omnimae-data: error: ") and "nothing to index in 1 shards" in err[-1]
    with pytest.raises(DataError, match="no \\*.tar shards"):
        index_shards(str(tmp_path), split="train")  # a folder with no tar


def test_a_manifest_folder_is_still_indexed_as_before(images, tmp_path, capsys):
    """--layout auto picks shards only where there are *.tar files: class folders index as they did."""
    root, manifest = images
    copy = tmp_path / "copy"
    shutil.copytree(root / "train", copy / "train")
    assert main(["index", str(copy), "--no-progress"]) == 0
    assert "16 entries, 8 classes, 0 skipped (imagenet layout; jpeg 16)" in capsys.readouterr().out
    assert len(read_manifest(copy / "manifest_train.jsonl")) == 16
