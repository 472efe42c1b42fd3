"""benchmarks/transfer_evidence.py: its command line, its table and plot, and end-to-end runs on a
tiny generated set (probes only, and 3-step fine-tunes; the real fine-tunes take an hour)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import transfer_evidence as bench  # noqa: E402
from omnimae.checkpoint import save_training_state  # noqa: E402
from omnimae.model import build_model  # noqa: E402
from omnimae.parallel import DistInfo  # noqa: E402


def test_overrides_may_follow_the_seeds():
    # The README's command: `--seeds` takes one argument, so the overrides after it stay overrides.
    args = bench.build_parser().parse_intermixed_args(
        ["runs/demo/step_00000256", "--seeds", "0,1,2", "train.epochs=5", "optim.lr=3e-4"])
    assert args.seeds == [0, 1, 2]
    assert args.overrides == ["train.epochs=5", "optim.lr=3e-4"]


@pytest.mark.parametrize("seeds", ["0,x", ","])
def test_a_bad_seed_list_is_a_one_line_error(seeds, capsys):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_intermixed_args(["ckpt", "--seeds", seeds])
    assert f"expected comma-separated integers, got '{seeds}'" in capsys.readouterr().err


def test_table_gives_accuracies_in_percent_and_the_loss_as_logged():
    rows = [{"init": "pretrained", "linear_top1": 0.25, "ft_top1": 0.5, "ft_train_loss_last": 1.25},
            {"init": "pretrained", "linear_top1": 0.35, "ft_top1": 0.7, "ft_train_loss_last": 1.75},
            {"init": "random init", "linear_top1": 0.2, "ft_top1": 0.1, "ft_train_loss_last": 2.3}]
    lines = bench.table(rows).splitlines()
    assert lines[0] == "| init | linear probe top-1 | fine-tune top-1 (5x3 views) | fine-tune train loss |"
    assert lines[2] == "| pretrained | 30.0 ± 7.1 | 60.0 ± 14.1 | 1.50 ± 0.35 |"
    assert lines[3] == "| random init | 20.0 | 10.0 | 2.30 |"


def test_a_folder_without_state_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path)])
    assert "not a checkpoint folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A debug-size "pretrained" checkpoint and where the tiny labelled set goes (made by the first run)."""
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(0)
    model = build_model("debug", img_size=64, num_frames=4)
    config = {"model": {"name": "debug", "img_size": 64, "num_frames": 4, "norm_pix_loss": True},
              "data": {"image": {"mask_ratio": 0.9}, "video": {"mask_ratio": 0.95}}}
    optimizer = torch.optim.AdamW(model.parameters())
    folder = save_training_state(root / "pretrain", step=7, model=model, optimizer=optimizer, loader=None,
                                 config=config, dist_info=DistInfo(), keep_last=1)
    return {"checkpoint": str(folder), "data": ["--data", str(root / "data"), "--train-videos", "20",
                                                "--val-videos", "10"]}


SMALL_RUN = ["data.short_side=64", "data.decode_threads=1", "data.decode_backend=pyav", "train.device=cpu",
             "eval.batch_size=5"]


@pytest.mark.timeout(300)
def test_probe_only_compares_a_checkpoint_with_random_init(tiny, tmp_path):
    out = tmp_path / "transfer.json"
    assert bench.main([tiny["checkpoint"], "--probe-only", "--seeds", "0,1", *tiny["data"], "--out", str(out),
                       "--out-dir", str(tmp_path / "runs"), *SMALL_RUN]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["init"], r["seed"]) for r in rows] == [("pretrained", 0), ("random init", 0),
                                                       ("pretrained", 1), ("random init", 1)]
    assert all(r["test_items"] == 10 and 0 <= r["linear_top1"] <= 1 and "ft_top1" not in r for r in rows)
    assert result["pretraining"]["step"] == 7 and "eval.probe_pool=time" in result["overrides"]
    # Two seeds per arm: the table reports mean ± std; no fine-tune columns without a fine-tune.
    assert "| pretrained | " in result["table"] and " ± " in result["table"]
    assert "fine-tune" not in result["table"]
    assert not out.with_suffix(".png").exists()  # no loss curves without fine-tunes


@pytest.mark.timeout(300)
def test_fine_tunes_report_accuracy_loss_and_draw_the_curves(tiny, tmp_path):
    out = tmp_path / "transfer.json"
    assert bench.main([tiny["checkpoint"], "--seeds", "0", *tiny["data"], "--out", str(out),
                       "--out-dir", str(tmp_path / "runs"), *SMALL_RUN, "train.batch_size=4", "train.max_steps=3",
                       "train.log_every=1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["init"] for r in rows] == ["pretrained", "random init"]
    for r in rows:
        assert r["ft_steps"] == 3 and r["ft_batch"] == 4 and r["views"] == 15 and 0 <= r["ft_top1"] <= 1
        assert 1.0 < r["ft_train_loss_last"] < 4.0  # ~ln 10 after 3 steps
    assert "fine-tune train loss" in json.loads(out.read_text())["table"]
    picture = out.with_suffix(".png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skips_runs_without_losses(tmp_path):
    logged = tmp_path / "a.jsonl"
    logged.write_text("\n".join(json.dumps({"step": s, "loss": 2.3 - 0.1 * s}) for s in range(1, 5)))
    bench.plot_losses([("a", "pretrained", logged), ("b", "random init", tmp_path / "missing.jsonl")],
                      tmp_path / "curves.png", "title")
    assert (tmp_path / "curves.png").stat().st_size > 1000
