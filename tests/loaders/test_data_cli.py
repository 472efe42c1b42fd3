"""`omnimae-data` end to end through main([...])."""

import json

import pytest

from loaders.cli import main
from loaders.manifest import read_manifest


def run_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimae-data: error: ") and err.count("\n") == 1, err
    return err


def test_synth_video_then_index(tmp_path, capsys):
    root = tmp_path / "ssv2"
    assert main(["synth", "video", str(root), "--train", "4", "--val", "2", "--height", "32",
                 "--min-s", "2", "--max-s", "2", "--seed", "5", "--no-progress"]) == 0
    assert "wrote 6 videos (train 4, validation 2)" in capsys.readouterr().out
    assert len(json.loads((root / "validation.json").read_text())) == 2

    assert main(["index", str(root), "--split", "validation", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"2 entries, 10 classes, 0 skipped (ssv2 layout; vp9 2) -> "
                           f"{root / 'manifest_val.jsonl'}")
    manifest = read_manifest(root / "manifest_val.jsonl")
    assert [e.num_frames for e in manifest] == [24, 24]


def test_synth_h264_with_stamp_and_base_url(tmp_path, capsys):
    root = tmp_path / "v"
    main(["synth", "video", str(root), "--train", "2", "--val", "0", "--codec", "h264",
          "--height", "32", "--width", "48", "--fps", "10", "--min-s", "2", "--max-s", "2",
          "--stamp-frame-index", "--no-progress"])
    out_path = tmp_path / "lists" / "train.jsonl"
    main(["index", str(root), "--layout", "ssv2", "--out", str(out_path),
          "--base-url", "s3://bucket/v", "--no-progress"])
    manifest = read_manifest(out_path)
    assert [e.uri for e in manifest] == ["s3://bucket/v/videos/1.mp4", "s3://bucket/v/videos/2.mp4"]
    assert all(e.num_frames == 20 and e.fps == 10 for e in manifest)


def test_synth_image_then_index_val(tmp_path, capsys):
    root = tmp_path / "in"
    main(["synth", "image", str(root), "--train", "1", "--val", "2", "--min-size", "24",
          "--max-size", "32", "--workers", "2", "--no-progress"])
    capsys.readouterr()
    main(["index", str(root), "--split", "val", "--relative", "--no-progress"])
    assert "16 entries, 8 classes, 0 skipped (imagenet layout; jpeg 16)" in capsys.readouterr().out
    assert json.loads((root / "manifest_val.jsonl").read_text().splitlines()[1])["uri"] \
        .startswith("val/")


def test_index_reports_skipped_files(tmp_path, capsys):
    root = tmp_path / "in"
    main(["synth", "image", str(root), "--train", "1", "--val", "0", "--min-size", "16",
          "--max-size", "16", "--no-progress"])
    (root / "train" / "star" / "bad.JPEG").write_bytes(b"nope")
    capsys.readouterr()
    main(["index", str(root), "--no-progress"])
    captured = capsys.readouterr()
    assert "8 entries, 8 classes, 1 skipped" in captured.out
    assert f"skipped {root / 'train' / 'star' / 'bad.JPEG'}: " in captured.err


def test_synth_demo_twice(tmp_path, capsys, monkeypatch):
    # The demo's full size takes a while; the CLI path is the same at any size.
    import loaders.devtools.synthetic as synthetic
    real = synthetic.make_demo_data
    monkeypatch.setattr(synthetic, "make_demo_data", lambda root, **kw: real(
        root, num_train_videos=2, num_val_videos=1, images_per_class_train=1,
        images_per_class_val=1, height=32, **kw))
    main(["synth", "demo", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert "manifest video_train" in out and (tmp_path / "ssv2" / "manifest_train.jsonl").exists()
    main(["synth", "demo", str(tmp_path), "--no-progress"])
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["index", "/nonexistent/data"], "not a directory"),
    (["synth", "video", "x", "--height", "33"], "argument --height: must be even"),
    (["synth", "video", "x", "--train", "many"], "expected an integer, got 'many'"),
    (["synth", "video", "x", "--codec", "av1"], "invalid choice: 'av1'"),
    (["synth", "image", "x", "--min-size", "64", "--max-size", "32"], "--min-size 64 > --max-size"),
    (["index", "x", "--base-url", "s3://b", "--relative"], "not allowed with argument"),
    (["synth"], "required"),
    ([], "required"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert message in run_error(capsys, argv)


def test_index_flat_folder_and_all_bad_folder(tmp_path, capsys):
    src = tmp_path / "src"
    main(["synth", "video", str(src), "--train", "2", "--val", "0", "--height", "32",
          "--min-s", "2", "--max-s", "2", "--no-progress"])
    flat = tmp_path / "flat"
    flat.mkdir()
    for video in (src / "videos").iterdir():
        (flat / video.name).write_bytes(video.read_bytes())
    capsys.readouterr()
    assert main(["index", str(flat), "--no-progress"]) == 0
    assert "2 entries, unlabelled, 0 skipped (flat layout; vp9 2)" in capsys.readouterr().out

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.webm").write_bytes(b"\x00" * 100)
    err = run_error(capsys, ["index", str(bad), "--no-progress"])
    assert "nothing to index for split 'train' (flat layout): 1 file skipped" in err
    assert not (bad / "manifest_train.jsonl").exists()
