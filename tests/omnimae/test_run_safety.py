"""Production-run safety, end to end through `omnimae-train` on the debug model (CPU).

No secret in any output; a torn newest checkpoint set aside; config changes on resume refused or
accepted by what they change; metrics.jsonl with each step once; a full disk, an unsafe checkpoint
and each bad input as one line with exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from loaders.devtools.objserver import ObjectServer
from omnimae import checkpoint as ckpt
from omnimae.cli import train_main
from omnimae.metrics import read_jsonl
from omnimae.weights import safe_load

from tests.omnimae.conftest import tiny_overrides

PASSWORD = "s3cr3t-Pa55word"
API_KEY = "api-key-0123456789abcdef"


def run_cli(tiny_data, tmp_path, capsys, argv_head=(), **extra) -> tuple[int, str, str]:
    argv = [*argv_head, *tiny_overrides(tiny_data, tmp_path / "runs", **extra)]
    code = train_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prog: str = "omnimae-train") -> str:
    """The run's single error line; fails on a traceback or on several error lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}:")]
    assert len(lines) == 1, err
    return lines[0]


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r.get("loss/image", r.get("loss/video")) for r in read_jsonl(run_dir / "metrics.jsonl")}


# ---- secrets ---------------------------------------------------------------------------------------

def test_no_secret_in_any_file_or_line_a_run_writes(tiny_data, tmp_path, capsys):
    """Data roots with `user:password@` and storage options with an API key header, read from a real
    HTTP server on loopback: neither secret appears on stdout/stderr, in --print-config, or in any
    byte of any file of the run folder (config.json, metrics, TensorBoard, summary, checkpoints)."""
    with ObjectServer(tiny_data) as server:
        base = server.url.replace("http://", f"http://reader:{PASSWORD}@")
        secrets = dict(**{"data.image.root": f"{base}images", "data.video.root": f"{base}videos",
                          "data.storage_options": json.dumps(
                              {"http": {"client_kwargs": {"headers": {"X-Api-Key": API_KEY}}}}),
                          "train.max_steps": 4, "train.ckpt_every": 2})
        code, out, err = run_cli(tiny_data, tmp_path, capsys, **secrets)
        assert code == 0, err
        assert server.request_count() > 0  # the data really came over HTTP
        code_print, printed, _ = run_cli(tiny_data, tmp_path, capsys, ["--print-config"], **secrets)
    assert code_print == 0
    assert "<hidden>" in printed and "reader:" not in printed
    run_dir = tmp_path / "runs" / "run"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "state.pt" for p in files) and any(p.name == "config.json" for p in files)
    for text in (out, err, printed):
        assert PASSWORD not in text and API_KEY not in text
    for path in files:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and API_KEY.encode() not in data, path
    saved = safe_load(run_dir / "step_00000004" / "state.pt")["config"]
    assert saved["data"]["storage_options"] == {"http": "<hidden>"}
    assert saved["data"]["video"]["root"].startswith("http://***@127.0.0.1")


def test_finetune_and_pretrain_configs_share_one_redaction_rule():
    from omnimae.config import Config, to_dict
    from omnimae.finetune.config import FinetuneConfig

    pre, ft = Config(), FinetuneConfig()
    pre.data.video.root = ft.data.root = f"s3://key:{PASSWORD}@bucket/x?X-Amz-Signature=abc"
    pre.data.storage_options = ft.data.storage_options = {"key": "AKIA", "secret": PASSWORD}
    for tree in (to_dict(pre), to_dict(ft)):
        text = json.dumps(tree)
        assert PASSWORD not in text and "AKIA" not in text and "abc" not in text
        assert tree["data"]["storage_options"] == {"key": "<hidden>", "secret": "<hidden>"}


# ---- checkpoints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("torn", ["state.pt", "rank_00000.pt"])
def test_torn_newest_checkpoint_is_set_aside_and_the_previous_one_used(tiny_data, tmp_path, capsys,
                                                                       caplog, torn):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 4, "train.ckpt_every": 2})
    assert code == 0, err
    run_dir = tmp_path / "runs" / "run"
    reference = losses(run_dir)
    newest = run_dir / "step_00000004" / torn
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short
    with caplog.at_level(logging.WARNING, logger="omnimae.checkpoint"):
        code, out, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 4, "train.ckpt_every": 2})
    assert code == 0, err
    assert "resumed from" in out and "step_00000002 at step 2" in out
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1 and "step_00000004" in warnings[0] and "torn" in warnings[0]
    assert (run_dir / "step_00000004.unusable" / torn).is_file()  # set aside, not deleted
    assert (run_dir / "step_00000004" / "checkpoint.json").is_file()  # written again by the resumed run
    assert steps(run_dir) == [1, 2, 3, 4]
    assert losses(run_dir) == pytest.approx(reference)  # exact resume from the older checkpoint


def test_no_usable_checkpoint_is_one_line(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2})
    assert code == 0, err
    (tmp_path / "runs" / "run" / "step_00000002" / "state.pt").write_bytes(b"torn")
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2})
    assert code == 2
    assert "no usable checkpoint" in one_error_line(err)


def test_unsafe_checkpoint_is_refused_in_one_line(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    torch.save({"step": 1, "payload": argparse.Namespace(run="x")}, bad / "state.pt")  # an object, not tensors
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.resume": str(bad), "train.max_steps": 2})
    assert code == 2
    line = one_error_line(err)
    assert "is not a checkpoint this project wrote (unsafe pickle refused" in line


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2})
    assert code == 0, err
    real_save = torch.save

    def save_until_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(100)  # what a full disk leaves behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", save_until_full)
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 4})
    assert code == 2
    line = one_error_line(err)
    assert "no space left on device" in line and "GiB free" in line and "runs/run" in line
    run_dir = tmp_path / "runs" / "run"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith((".tmp", "step_"))] == ["step_00000002"]
    assert ckpt.verify_checkpoint(run_dir / "step_00000002") is None


# ---- config changes on resume ----------------------------------------------------------------------

def test_a_change_that_alters_the_run_is_refused_then_forced(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2})
    assert code == 0, err
    config_json = tmp_path / "runs" / "run" / "config.json"
    before = config_json.read_text()
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2, "optim.lr": 0.002,
                                                           "train.seed": 3})
    assert code == 2
    line = one_error_line(err)
    assert "optim.lr: 0.001 -> 0.002" in line and "train.seed: 0 -> 3" in line
    assert "train.run_name" in line and "train.resume=force" in line
    assert config_json.read_text() == before  # written only after the decision

    code, out, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 3, "optim.lr": 0.002,
                                                             "train.resume": "force"})
    assert code == 0, err
    assert "resuming with a changed config (train.resume=force): optim.lr: 0.001 -> 0.002" in out
    assert "now ends at step 3" in out
    resumes = json.loads(config_json.read_text())["resumes"]
    assert resumes[-1]["forced"] and {"key": "optim.lr", "old": 0.001, "new": 0.002} in resumes[-1]["changes"]


def test_changes_that_do_not_alter_the_run_resume(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 2})
    assert code == 0, err
    code, out, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 4, "train.log_every": 2,
                                                             "data.decode_threads": 2, "data.prefetch": 3})
    assert code == 0, err
    assert "resumed from" in out and "the schedule" not in out
    assert "resuming with a new schedule: it now ends at step 4" in out


def test_metrics_hold_each_step_once_after_a_resume(tiny_data, tmp_path, capsys):
    """The interrupted run logged steps 3-6 after its step-2 checkpoint; the resumed run logs them again:
    metrics.jsonl must hold each step once, with the resumed run's values (equal to the first ones)."""
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 6, "train.ckpt_every": 2})
    assert code == 0, err
    run_dir = tmp_path / "runs" / "run"
    reference = losses(run_dir)
    for step in ("step_00000004", "step_00000006"):  # as if killed after step 6's log, before its save
        shutil.rmtree(run_dir / step)
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.max_steps": 6, "train.ckpt_every": 2})
    assert code == 0, err
    assert steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert losses(run_dir) == pytest.approx(reference)


# ---- bad inputs: one line, exit 2 ------------------------------------------------------------------

def test_yaml_syntax_error_names_file_line_and_column(tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: debug\n train: [1, 2\n")
    code, _, err = run_cli(tiny_data, tmp_path, capsys, [str(bad)])
    assert code == 2
    assert f"{bad}:3:" in one_error_line(err)


@pytest.mark.parametrize("override, message", [
    ({"optim.lr": "[1,"}, "override optim.lr: the value '[1,' does not parse"),
    ({"train.device": "cuda:7"}, "train.device: cuda:7 asked for"),
    ({"train.device": "tpu"}, "train.device: expected auto, cpu, cuda or cuda:N"),
    ({"train.max_steps": -5}, "train.max_steps: must be >= 0"),
    ({"train.ckpt_every": -1}, "train.ckpt_every: must be >= 0"),
])
def test_bad_values_are_one_line(tiny_data, tmp_path, capsys, override, message):
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **override)
    assert code == 2
    assert message in one_error_line(err)


def test_unwritable_out_dir_is_one_line(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should go")
    code, _, err = run_cli(tiny_data, tmp_path, capsys, **{"train.out_dir": str(blocker)})
    assert code == 2
    assert "train.out_dir: cannot write the run folder" in one_error_line(err)


def test_a_bug_keeps_its_traceback_without_credentials(capsys):
    from omnimae.cli import run_guarded

    def body():
        raise KeyError(f"https://user:{PASSWORD}@example.com/x")

    assert run_guarded("omnimae-train", body) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and PASSWORD not in err


def test_tensorboard_drops_the_steps_past_the_resume_point(tmp_path):
    """The same rule as metrics.jsonl, for TensorBoard: a writer reopened at step 2 purges steps 3-4 of
    the interrupted run (SummaryWriter's purge_step), so a reader sees each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from omnimae.metrics import MetricsWriter

    first = MetricsWriter(tmp_path)
    for step in (1, 2, 3, 4):
        first.write(step, {"loss": float(step)})
    first.close()
    resumed = MetricsWriter(tmp_path, start_step=2)
    for step in (3, 4):
        resumed.write(step, {"loss": 10.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    assert steps(tmp_path) == [1, 2, 3, 4]
