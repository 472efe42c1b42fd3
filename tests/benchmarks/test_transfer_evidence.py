"""benchmarks/transfer_evidence.py: its command line (the runs themselves take minutes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import transfer_evidence as bench  # noqa: E402


def test_overrides_may_follow_the_seeds():
    # The README's command: `--seeds` takes one argument, so the overrides after it stay overrides.
    args = bench.build_parser().parse_intermixed_args(
        ["runs/demo/step_00000256", "--seeds", "0,1,2", "train.epochs=5", "optim.lr=3e-4"])
    assert args.seeds == [0, 1, 2]
    assert args.overrides == ["train.epochs=5", "optim.lr=3e-4"]


def test_a_bad_seed_list_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_intermixed_args(["ckpt", "--seeds", "0,x"])
    assert "expected comma-separated integers, got '0,x'" in capsys.readouterr().err


def test_a_folder_without_state_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path)])
    assert "not a checkpoint folder" in capsys.readouterr().err
