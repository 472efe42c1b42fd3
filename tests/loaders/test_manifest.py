"""Manifests: JSON-lines round trip, errors with file and line, exact probing, folder indexing."""

import gzip
import json
import shutil

import av
import fsspec
import numpy as np
import pytest

from loaders.devtools.synthetic import VIDEO_CLASSES, encode_video, make_image_dataset, make_video_dataset
from loaders.manifest import (Manifest, ManifestEntry, index_folder, probe_video, read_manifest,
                              write_manifest)

ENTRIES = [
    ManifestEntry("/data/videos/1.webm", 3, 48, 12.0, 4.0),
    ManifestEntry("s3://bucket/train/circle/a.JPEG", 0, 1, 0.0, 0.0),
    ManifestEntry("http://host/x.mp4", -1, 30, 29.97, 1.001),
]


def test_round_trip_with_and_without_class_names(tmp_path):
    names = [f"class {i}" for i in range(5)]
    write_manifest(Manifest(ENTRIES, names), tmp_path / "m.jsonl")
    back = read_manifest(tmp_path / "m.jsonl")
    assert back.entries == ENTRIES and back.class_names == names and back.num_classes == 5
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0]) == {"class_names": names}

    write_manifest(ENTRIES, tmp_path / "plain.jsonl")
    plain = read_manifest(tmp_path / "plain.jsonl")
    assert plain.class_names is None and plain.num_classes == 4  # largest label + 1
    assert len(plain) == 3 and plain[1].is_image and not plain[0].is_image
    assert isinstance(plain[1:], Manifest) and plain[1:].entries == ENTRIES[1:]
    assert [e.uri for e in plain] == [e.uri for e in ENTRIES]


def test_relative_uris_resolve_against_the_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text('\n{"uri": "videos/1.webm", "label": 0, "num_frames": 2, '
                                      '"fps": 12, "duration": 0.2, "extra": "ignored"}\n\n')
    assert read_manifest(tmp_path / "m.jsonl")[0].uri == str(tmp_path / "videos" / "1.webm")
    assert read_manifest(tmp_path / "m.jsonl", resolve_relative=False)[0].uri == "videos/1.webm"


def test_read_through_fsspec_url_and_gzip(tmp_path):
    text = "\n".join(json.dumps(e.__dict__) for e in ENTRIES[:1]) + \
        '\n{"uri": "clips/2.webm", "label": 1, "num_frames": 5, "fps": 12, "duration": 0.4}\n'
    with fsspec.open("memory://bucket/sets/m.jsonl", "wt") as f:
        f.write(text)
    remote = read_manifest("memory://bucket/sets/m.jsonl")
    assert remote[0] == ENTRIES[0]
    assert remote[1].uri == "memory://bucket/sets/clips/2.webm"
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as f:
        f.write(text)
    assert len(read_manifest(tmp_path / "m.jsonl.gz")) == 2
    write_manifest(ENTRIES, "memory://bucket/out/m.jsonl")
    assert read_manifest("memory://bucket/out/m.jsonl").entries == ENTRIES


@pytest.mark.parametrize("line,reason", [
    ("{not json", "Expecting property name"),
    ('{"uri": "a", "label": 0, "num_frames": 2, "fps": 1}', "missing field(s) duration"),
    ('{"uri": "a", "label": "3", "num_frames": 2, "fps": 1, "duration": 1}', "label must be"),
    ('{"uri": "a", "label": 0, "num_frames": 0, "fps": 1, "duration": 1}', "num_frames must be"),
    ('{"uri": "", "label": 0, "num_frames": 2, "fps": 1, "duration": 1}', "uri must be"),
    ('{"uri": "a", "label": 0, "num_frames": 2, "fps": -1, "duration": 1}', "fps must be"),
    ('{"uri": "a", "label": 9, "num_frames": 2, "fps": 1, "duration": 1}', "label 9 out of range"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ENTRIES[0].__dict__)
    path.write_text(f'{{"class_names": ["a", "b", "c", "d"]}}\n{good}\n{line}\n{good}\n')
    with pytest.raises(ValueError, match=f"{path}:3: .*{reason}".replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        read_manifest(path)


# --- probing -----------------------------------------------------------------------------------


def frames_of(count, height=32, width=48):
    for k in range(count):
        frame = np.full((height, width, 3), 40, np.uint8)
        frame[:, (k * 3) % width:(k * 3) % width + 6] = 220
        yield frame


def decoded_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("codec,suffix", [("vp9", ".webm"), ("h264", ".mp4")])
@pytest.mark.parametrize("count,fps", [(2, 12), (7, 12), (34, 12), (35, 12), (31, 30),
                                       (25, 29.97)])
def test_probe_counts_frames_exactly(tmp_path, codec, suffix, count, fps):
    path = tmp_path / f"clip{suffix}"
    assert encode_video(frames_of(count), path, fps, codec) == count
    assert decoded_count(path) == count
    num_frames, probed_fps, duration, found = probe_video(path)
    assert num_frames == count and found == codec
    assert probed_fps == pytest.approx(fps, rel=1e-3)
    assert duration == pytest.approx(count / fps, rel=1e-3)  # from the frames, not the header
    assert probe_video(path.read_bytes()) == (num_frames, probed_fps, duration, codec)


def test_probe_reads_fsspec_urls(tmp_path):
    path = tmp_path / "clip.webm"
    encode_video(frames_of(9), path, 12)
    with fsspec.open("memory://videos/clip.webm", "wb") as f:
        f.write(path.read_bytes())
    assert probe_video("memory://videos/clip.webm") == probe_video(path)


def test_probe_rejects_garbage_and_images(tmp_path):
    with pytest.raises(av.error.InvalidDataError):
        probe_video(b"\x1aE\xdf\xa3 definitely not a video" * 10)
    from PIL import Image
    for name, fmt in (("a.png", "PNG"), ("a.webm", "JPEG")):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format=fmt)
        # FFmpeg opens a still image as a one-frame "video" through its image demuxers.
        with pytest.raises(ValueError, match="not a video: an image"):
            probe_video(tmp_path / name)


def test_probe_counts_the_frames_of_a_truncated_file_not_its_header(tmp_path):
    path = tmp_path / "clip.webm"
    encode_video(frames_of(30), path, 12)
    data = path.read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])
    with av.open(str(tmp_path / "cut.webm")) as container:
        assert container.duration / 1e6 == pytest.approx(2.5, abs=0.01)  # the header still says 30
    info = probe_video(tmp_path / "cut.webm")
    assert 2 <= info.num_frames < 30 and info.num_frames == decoded_count(tmp_path / "cut.webm")
    assert info.duration == pytest.approx(info.num_frames / 12)


# --- indexing ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_video_dataset(root / "ssv2", 6, 4, height=32, min_s=2, max_s=2, progress=False)
    make_video_dataset(root / "ssv2_h264", 3, 0, height=32, min_s=2, max_s=2, codec="h264",
                       progress=False)
    make_image_dataset(root / "imagenet", 2, 1, size=24, classes=("circle", "star", "ring"),
                       progress=False)
    return root


def test_index_ssv2(datasets, tmp_path):
    result = index_folder(datasets / "ssv2", split="validation", out=tmp_path / "m.jsonl")
    assert result.layout == "ssv2" and result.skipped == []
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert manifest.entries == result.manifest.entries
    assert manifest.class_names == [c.name for c in VIDEO_CLASSES]
    records = json.loads((datasets / "ssv2" / "validation.json").read_text())
    assert [e.uri for e in manifest] == [str(datasets / "ssv2" / "videos" / f"{r['id']}.webm")
                                         for r in records]
    for entry, record in zip(manifest, records):
        assert manifest.class_names[entry.label] == record["template"].replace(
            "[", "").replace("]", "")
        assert entry.num_frames == decoded_count(entry.uri) == 24
        assert entry.fps == 12.0
    assert len(index_folder(datasets / "ssv2", split="train").manifest) == 6
    h264 = index_folder(datasets / "ssv2_h264", layout="ssv2").manifest
    assert [e.num_frames for e in h264] == [24, 24, 24] and h264[0].uri.endswith(".mp4")


def test_index_ssv2_official_file_names(datasets, tmp_path):
    root = tmp_path / "official"
    shutil.copytree(datasets / "ssv2" / "videos", root / "20bn-something-something-v2")
    (root / "labels").mkdir()
    for ours, theirs in (("labels", "labels"), ("train", "train"), ("validation", "validation")):
        shutil.copy(datasets / "ssv2" / f"{ours}.json",
                    root / "labels" / f"something-something-v2-{theirs}.json")
    result = index_folder(root, split="val")
    assert result.layout == "ssv2" and len(result.manifest) == 4 and not result.skipped


def test_index_imagenet_and_base_url(datasets):
    result = index_folder(datasets / "imagenet", split="val", base_url="s3://bucket/in1k/")
    assert result.layout == "imagenet" and not result.skipped
    manifest = result.manifest
    assert manifest.class_names == ["circle", "ring", "star"] and len(manifest) == 3
    assert [e.uri for e in manifest] == [
        f"s3://bucket/in1k/val/{name}/{path.name}" for name in ("circle", "ring", "star")
        for path in sorted((datasets / "imagenet" / "val" / name).iterdir())]
    assert all(e.is_image and e.duration == 0 for e in manifest)
    assert [e.label for e in manifest] == [0, 1, 2]
    assert len(index_folder(datasets / "imagenet", layout="imagenet").manifest) == 6


def test_index_class_folders_mixed_media_relative(datasets, tmp_path):
    root = tmp_path / "mixed"
    (root / "dogs").mkdir(parents=True)
    (root / "cats").mkdir()
    shutil.copy(datasets / "ssv2" / "videos" / "1.webm", root / "dogs" / "run.webm")
    shutil.copy(datasets / "ssv2_h264" / "videos" / "1.mp4", root / "cats" / "jump.mp4")
    shutil.copy(next((datasets / "imagenet" / "train" / "star").iterdir()), root / "cats" / "a.jpg")
    (root / "cats" / "notes.txt").write_text("not media, ignored")
    result = index_folder(root, out=root / "lists" / "m.jsonl", relative=True, workers=2)
    assert result.layout == "folder" and not result.skipped
    raw = [json.loads(line) for line in (root / "lists" / "m.jsonl").read_text().splitlines()]
    assert [r["uri"] for r in raw[1:]] == ["../cats/a.jpg", "../cats/jump.mp4", "../dogs/run.webm"]
    back = read_manifest(root / "lists" / "m.jsonl")
    assert back.class_names == ["cats", "dogs"]
    assert [(e.label, e.num_frames, e.is_image) for e in back] == [(0, 1, True), (0, 24, False),
                                                                   (1, 24, False)]
    assert back[2].uri == str(root / "dogs" / "run.webm")


def test_unreadable_and_missing_files_are_counted_and_named(datasets, tmp_path):
    root = tmp_path / "ssv2"
    shutil.copytree(datasets / "ssv2", root)
    records = json.loads((root / "train.json").read_text())
    (root / "videos" / f"{records[0]['id']}.webm").write_bytes(b"\x00garbage" * 50)
    (root / "videos" / f"{records[1]['id']}.webm").unlink()
    result = index_folder(root, split="train")
    assert len(result.manifest) == 4 and len(result.skipped) == 2
    reasons = dict(result.skipped)
    bad = str(root / "videos" / f"{records[0]['id']}.webm")
    assert bad in reasons and "Error" in reasons[bad]
    assert any(f"no video file for id '{records[1]['id']}'" in r for r in reasons.values())

    images = tmp_path / "imagenet"
    shutil.copytree(datasets / "imagenet", images)
    (images / "train" / "ring" / "broken.JPEG").write_bytes(b"not a jpeg")
    result = index_folder(images)
    assert len(result.manifest) == 6
    assert [uri for uri, _ in result.skipped] == [str(images / "train" / "ring" / "broken.JPEG")]


def test_index_errors_name_the_problem(datasets, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        index_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown layout 'coco'"):
        index_folder(datasets / "ssv2", layout="coco")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        index_folder(datasets / "ssv2", split="dev")
    with pytest.raises(ValueError, match="no test folder"):
        index_folder(datasets / "imagenet", layout="imagenet", split="test")
    with pytest.raises(ValueError, match="not an SSv2 layout"):
        index_folder(datasets / "imagenet", layout="ssv2")


def write_audio_only(path):
    """An .mp4 with one AAC stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), np.float32)  # [channels, samples]: 1 s of silence
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_index_skips_what_is_not_a_video_and_records_codecs(datasets, tmp_path):
    from PIL import Image
    root = tmp_path / "classes"
    (root / "a").mkdir(parents=True)
    shutil.copy(datasets / "ssv2" / "videos" / "1.webm", root / "a" / "good.webm")
    shutil.copy(datasets / "ssv2_h264" / "videos" / "1.mp4", root / "a" / "good.mp4")
    Image.new("RGB", (16, 16)).save(root / "a" / "photo.webm", format="JPEG")
    Image.new("RGB", (16, 16)).save(root / "a" / "photo.mp4", format="PNG")
    encode_video(frames_of(1), root / "a" / "one.webm", 12)
    write_audio_only(root / "a" / "sound.mp4")
    shutil.copy(next((datasets / "imagenet" / "train" / "star").iterdir()), root / "a" / "x.jpg")
    result = index_folder(root, out=root / "m.jsonl")
    reasons = {p.rsplit("/", 1)[1]: r for p, r in result.skipped}
    assert sorted(reasons) == ["one.webm", "photo.mp4", "photo.webm", "sound.mp4"]
    assert "not a video: an image (png" in reasons["photo.mp4"]
    assert "not a video: an image (mjpeg" in reasons["photo.webm"]
    assert "1 decodable frame; a video needs at least 2" in reasons["one.webm"]
    assert "no video stream" in reasons["sound.mp4"]
    back = read_manifest(root / "m.jsonl")
    assert [(e.uri.rsplit("/", 1)[1], e.codec) for e in back] == [
        ("good.mp4", "h264"), ("good.webm", "vp9"), ("x.jpg", "jpeg")]


def test_manifests_without_codec_still_read(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps(
        {"uri": "/v/1.webm", "label": 0, "num_frames": 9, "fps": 12.0, "duration": 0.75}) + "\n")
    (entry,) = read_manifest(tmp_path / "m.jsonl")
    assert entry.codec is None
    write_manifest([entry], tmp_path / "again.jsonl")
    assert "codec" not in (tmp_path / "again.jsonl").read_text()  # nothing invented


@pytest.mark.parametrize("below", ["", "train"])
def test_flat_folder_of_unlabelled_media_is_detected(datasets, tmp_path, below):
    root = tmp_path / "flat"
    (root / below).mkdir(parents=True, exist_ok=True)
    for k, video in enumerate(sorted((datasets / "ssv2" / "videos").iterdir())[:3]):
        shutil.copy(video, root / below / f"clip{k}.webm")
    shutil.copy(next((datasets / "imagenet" / "train" / "star").iterdir()), root / below / "a.jpg")
    result = index_folder(root, out=root / "m.jsonl")
    assert result.layout == "flat" and not result.skipped
    back = read_manifest(root / "m.jsonl")
    assert back.class_names is None and back.num_classes == 0
    assert [e.label for e in back] == [-1] * 4 and sum(e.is_image for e in back) == 1


def test_flat_layout_asked_for_recurses_and_class_layout_says_how(datasets, tmp_path):
    root = tmp_path / "shards"
    for shard in ("part0", "part1"):
        (root / shard).mkdir(parents=True)
        shutil.copy(datasets / "ssv2" / "videos" / "1.webm", root / shard / "c.webm")
    (root / "empty").mkdir()
    assert index_folder(root).layout == "folder"  # subfolders read as classes by default
    flat = index_folder(root, layout="flat")
    assert [(e.uri.split("/")[-2], e.label) for e in flat.manifest] == [("part0", -1), ("part1", -1)]
    with pytest.raises(ValueError, match="no class folders .*--layout flat"):
        index_folder(root / "part0", layout="folder")


def test_a_folder_with_nothing_indexable_raises_one_line_and_writes_nothing(tmp_path):
    from loaders.errors import DataError
    root = tmp_path / "bad"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "a.webm").write_bytes(b"\x00garbage" * 50)
    (root / "cls" / "b.mp4").write_bytes(b"")
    with pytest.raises(DataError, match=r"nothing to index for split 'train' \(folder layout\): "
                                        r"2 files skipped; first: .*a.webm: ") as info:
        index_folder(root, out=root / "m.jsonl")
    assert "\n" not in str(info.value) and not (root / "m.jsonl").exists()
    (root / "cls" / "a.webm").unlink()
    (root / "cls" / "b.mp4").unlink()
    with pytest.raises(DataError, match="0 files skipped"):
        index_folder(root)
