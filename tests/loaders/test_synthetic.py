"""Synthetic datasets: SSv2 / ImageNet layouts, determinism, temporal classes, frame stamps."""

import json
import math
from collections import Counter

import av
import numpy as np
import pytest
from PIL import Image

from loaders.devtools import synthetic
from loaders.devtools.synthetic import (IMAGE_CLASSES, VIDEO_CLASSES, make_background, make_demo_data,
                                        make_image_dataset, make_video_dataset, read_frame_index,
                                        render_clip, sample_clip_spec, stamp_frame_index)
from loaders.manifest import read_manifest

TINY = dict(height=48, min_s=2, max_s=3, progress=False)


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    make_video_dataset(root, 20, 10, seed=3, **TINY)
    return root


def test_layout_and_json_like_ssv2(ssv2):
    labels = json.loads((ssv2 / "labels.json").read_text())
    assert labels == {c.template.replace("[", "").replace("]", ""): str(i)
                      for i, c in enumerate(VIDEO_CLASSES)}
    assert len(labels) >= 8
    train = json.loads((ssv2 / "train.json").read_text())
    val = json.loads((ssv2 / "validation.json").read_text())
    assert len(train) == 20 and len(val) == 10
    ids = [r["id"] for r in train + val]
    assert len(set(ids)) == 30 and all(isinstance(i, str) for i in ids)
    for record in train + val:
        assert set(record) == {"id", "label", "template", "placeholders"}
        assert (ssv2 / "videos" / f"{record['id']}.webm").is_file()
        assert record["template"].replace("[", "").replace("]", "") in labels
        # The label is the template with its placeholder filled in, as in SSv2.
        filled = record["template"].replace("[something]", record["placeholders"][0])
        assert record["label"] == filled[0].lower() + filled[1:]
    assert len(list((ssv2 / "videos").iterdir())) == 30


def test_classes_balanced_per_split(ssv2):
    for name, size in (("train.json", 20), ("validation.json", 10)):
        counts = Counter(r["template"] for r in json.loads((ssv2 / name).read_text()))
        assert sum(counts.values()) == size
        per_class = size // len(VIDEO_CLASSES)
        assert all(per_class <= counts[c.template] <= per_class + 1 for c in VIDEO_CLASSES)


def test_video_size_rate_and_duration(ssv2):
    for path in sorted((ssv2 / "videos").iterdir())[:6]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "vp9"
            assert float(stream.average_rate) == 12
            assert stream.height == 48 and stream.width % 2 == 0
            assert stream.width in {64, 72, 86}  # 4:3, 3:2 or 16:9 at 48 px, rounded to even
        frames = decode(path)
        assert 24 <= len(frames) <= 36  # 2..3 s at 12 fps
        assert frames[0].shape[0] == 48


def test_fixed_width_and_h264(tmp_path):
    make_video_dataset(tmp_path, 2, 0, codec="h264", width=64, **TINY)
    path = tmp_path / "videos" / "1.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        assert (stream.width, stream.height) == (64, 48)


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path, codec):
    suffix = synthetic.CODECS[codec][2]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_video_dataset(tmp_path / name, 3, 0, seed=seed, codec=codec, **TINY)
    a, b, c = (tmp_path / n / "videos" / f"1{suffix}" for n in "abc")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert ((tmp_path / "a" / "train.json").read_text() ==
            (tmp_path / "b" / "train.json").read_text())


def test_parallel_workers_write_the_same_files(tmp_path):
    make_video_dataset(tmp_path / "one", 4, 0, seed=1, workers=1, **TINY)
    make_video_dataset(tmp_path / "two", 4, 0, seed=1, workers=2, **TINY)
    for k in range(1, 5):
        assert ((tmp_path / "one" / "videos" / f"{k}.webm").read_bytes() ==
                (tmp_path / "two" / "videos" / f"{k}.webm").read_bytes())


# --- the classes need time: measure each class's change on the drawn frames -------------------


def object_tracks(spec):
    """Per frame: object pixel mask [T, H, W] and the frames, against the known background."""
    background = make_background(np.random.default_rng(spec.background_seed), spec.height,
                                 spec.width)
    frames = np.stack(list(render_clip(spec)))  # [T, H, W, 3]
    difference = np.abs(frames.astype(np.int32) - background).sum(-1)  # [T, H, W]
    return frames, difference


def centroid(weights):  # weights [H, W] -> (x, y)
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs].astype(np.float64)
    return (xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()


def measure(motion, spec):
    """The signed change that defines the class pair, from pixels only."""
    frames, difference = object_tracks(spec)
    first, last = difference[0], difference[-1]
    if motion == "horizontal":
        return (centroid(last)[0] - centroid(first)[0]) / spec.width
    if motion == "vertical":
        return (centroid(last)[1] - centroid(first)[1]) / spec.height
    if motion == "size":
        return math.log(max((last > 60).sum(), 1) / max((first > 60).sum(), 1))
    if motion == "visibility":
        return (last.sum() - first.sum()) / max(last.sum(), first.sum())
    if motion == "turn":
        # Angle of the marker dot around the object's centre, clockwise from up, summed over
        # frames (each step under pi, so unwrapping is safe).
        marker = spec.marker_color
        total, previous = 0.0, None
        for frame, diff in zip(frames, difference):
            near = (np.abs(frame.astype(np.int32) - marker).max(-1) < 40) & (diff > 60)
            cx, cy = centroid(diff > 60)
            mx, my = centroid(near)
            angle = math.atan2(mx - cx, -(my - cy))
            if previous is not None:
                total += (angle - previous + math.pi) % (2 * math.pi) - math.pi
            previous = angle
        return total
    raise AssertionError(motion)


PAIRS = [("horizontal", 0, 1, 0.3), ("vertical", 3, 2, 0.3), ("size", 4, 5, 1.0),
         ("visibility", 6, 7, 0.8), ("turn", 8, 9, 0.5 * math.pi)]


@pytest.mark.parametrize("motion,positive,negative,threshold", PAIRS)
def test_class_pairs_differ_only_over_time(motion, positive, negative, threshold):
    for seed in range(4):
        for class_index, sign in ((positive, 1), (negative, -1)):
            rng = np.random.default_rng(seed)
            spec = sample_clip_spec(rng, class_index, height=64, fps=12, min_s=2, max_s=3)
            change = measure(motion, spec)
            assert sign * change > threshold, (VIDEO_CLASSES[class_index].template, seed, change)


def test_motion_survives_compression(ssv2):
    """Decoded left-to-right videos move right: centroid of the difference to the median frame."""
    train = json.loads((ssv2 / "train.json").read_text())
    for record in train:
        if record["template"] not in (VIDEO_CLASSES[0].template, VIDEO_CLASSES[1].template):
            continue
        frames = np.stack(decode(ssv2 / "videos" / f"{record['id']}.webm")).astype(np.int32)
        background = np.median(frames, axis=0)  # the object is elsewhere most of the time
        moved = centroid(np.abs(frames[-1] - background).sum(-1) > 80)[0] - \
            centroid(np.abs(frames[0] - background).sum(-1) > 80)[0]
        expected = 1 if record["template"] == VIDEO_CLASSES[0].template else -1
        assert expected * moved > 0.3 * frames.shape[2], (record, moved)


# --- frame-index stamp -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_frame_index_stamp_reads_back_after_compression(tmp_path, codec):
    make_video_dataset(tmp_path, 2, 0, codec=codec, stamp_frame_index=True, **TINY)
    for path in sorted((tmp_path / "videos").iterdir()):
        frames = decode(path)
        assert [read_frame_index(f) for f in frames] == list(range(len(frames)))
        chw = frames[5].transpose(2, 0, 1)  # [3, H, W] works too
        assert read_frame_index(chw) == 5


def test_stamp_is_off_by_default_and_bounded(ssv2):
    frames = decode(ssv2 / "videos" / "1.webm")
    assert [read_frame_index(f) for f in frames] != list(range(len(frames)))
    with pytest.raises(ValueError, match="does not fit"):
        stamp_frame_index(np.zeros((48, 64, 3), np.uint8), 1024)


def test_stamp_reads_after_resize():
    frame = np.full((240, 320, 3), 128, np.uint8)
    stamp_frame_index(frame, 613)
    resized = np.asarray(Image.fromarray(frame).resize((427, 320), Image.BILINEAR))
    assert read_frame_index(resized, block=synthetic.stamp_block_size(240) * 320 / 240) == 613


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_video_dataset(tmp_path, 1, 0, height=47, progress=False)
    with pytest.raises(ValueError, match="codec 'av1'"):
        make_video_dataset(tmp_path, 1, 0, codec="av1", progress=False)
    with pytest.raises(ValueError, match="min_s"):
        make_video_dataset(tmp_path, 1, 0, min_s=3, max_s=2, progress=False)
    with pytest.raises(ValueError, match="shape 'blob'"):
        make_image_dataset(tmp_path, 1, 1, classes=("circle", "blob"), progress=False)


# --- images ------------------------------------------------------------------------------------


def test_image_folder_like_imagenet(tmp_path):
    result = make_image_dataset(tmp_path / "a", 3, 2, size=(32, 48), progress=False)
    assert result.counts == {"train": 3 * len(IMAGE_CLASSES), "val": 2 * len(IMAGE_CLASSES)}
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == sorted(IMAGE_CLASSES)
        for name in IMAGE_CLASSES:
            files = sorted((tmp_path / "a" / split / name).iterdir())
            assert len(files) == per_class and all(f.suffix == ".JPEG" for f in files)
            with Image.open(files[0]) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert all(32 <= side <= 48 for side in image.size)
    make_image_dataset(tmp_path / "b", 3, 2, size=(32, 48), progress=False)
    make_image_dataset(tmp_path / "c", 3, 2, size=(32, 48), seed=1, progress=False)
    first = "train/star/star_000010.JPEG"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_image_classes_draw_different_shapes():
    """On a flat background at a fixed pose, every pair of classes covers different pixels."""
    masks = {}
    for name in IMAGE_CLASSES:
        image = np.zeros((64, 64, 3), np.uint8)
        synthetic.draw_object(image, name, (255, 255, 255), 32, 32, 28, angle=0.3)
        masks[name] = image[..., 0] > 127
    names = list(masks)
    for i, a in enumerate(names):
        assert masks[a].sum() > 200, a
        for b in names[i + 1:]:
            assert (masks[a] != masks[b]).sum() > 60, (a, b)


# --- demo --------------------------------------------------------------------------------------


def test_demo_data_is_complete_and_idempotent(tmp_path):
    small = dict(num_train_videos=4, num_val_videos=2, images_per_class_train=1,
                 images_per_class_val=1, height=32, progress=False)
    first = make_demo_data(tmp_path, **small)
    assert not first.reused
    counts = {"video_train": 4, "video_val": 2, "image_train": 8, "image_val": 8}
    for name, path in first.manifests.items():
        manifest = read_manifest(path)
        assert len(manifest) == counts[name]
        assert manifest.num_classes == (10 if name.startswith("video") else 8)
    assert all(e.num_frames > 1 for e in read_manifest(first.manifests["video_train"]))
    assert all(e.is_image for e in read_manifest(first.manifests["image_val"]))
    stamp = first.manifests["video_train"].stat().st_mtime_ns
    again = make_demo_data(tmp_path, **small)
    assert again.reused and again.manifests == first.manifests
    assert first.manifests["video_train"].stat().st_mtime_ns == stamp
    changed = make_demo_data(tmp_path, **{**small, "num_train_videos": 2})
    assert not changed.reused
    assert len(read_manifest(changed.manifests["video_train"])) == 2
    assert len(list((tmp_path / "ssv2" / "videos").iterdir())) == 4  # 2 train + 2 val, no stale
    assert (tmp_path / "imagenet" / "manifest_train.jsonl").stat().st_mtime_ns == \
        first.manifests["image_train"].stat().st_mtime_ns  # the image set was not remade


def test_demo_data_separate_roots_and_foreign_folders(tmp_path):
    small = dict(num_train_videos=2, num_val_videos=1, images_per_class_train=1,
                 images_per_class_val=1, height=32, progress=False)
    only_images = make_demo_data(image_root=tmp_path / "images", **small)
    assert set(only_images.manifests) == {"image_train", "image_val"}
    assert not (tmp_path / "videos").exists()
    both = make_demo_data(video_root=tmp_path / "videos", image_root=tmp_path / "images", **small)
    assert not both.reused and both.counts == {"video_train": 2, "video_val": 1,
                                               "image_train": 8, "image_val": 8}
    assert make_demo_data(video_root=tmp_path / "videos", image_root=tmp_path / "images",
                          **small).reused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("user data")
    with pytest.raises(ValueError, match="holds no demo marker"):
        make_demo_data(video_root=tmp_path / "mine", **small)
    assert (tmp_path / "mine" / "precious.txt").exists()
    with pytest.raises(ValueError, match="needs root"):
        make_demo_data()
    # A run that died half way leaves an incomplete marker: the next call remakes the set.
    marker = tmp_path / "videos" / synthetic.DEMO_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    (tmp_path / "videos" / "videos" / "1.webm").unlink()
    assert not make_demo_data(video_root=tmp_path / "videos", **small).reused
    assert (tmp_path / "videos" / "videos" / "1.webm").exists()
