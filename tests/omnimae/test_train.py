"""The trainer end to end on the debug model and a tiny generated data set (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omnimae import checkpoint as ckpt
from omnimae.config import ConfigError
from omnimae.errors import CheckpointError
from omnimae.metrics import read_jsonl
from omnimae.engine import lr_at
from omnimae.train import param_groups, train

REPO = Path(__file__).resolve().parents[2]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> the loss logged at that step (either modality)."""
    out = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        value = record.get("loss/image", record.get("loss/video"))
        out[record["step"]] = value
    return out


def test_lr_schedule_is_a_pure_function_of_the_step():
    peak, total, warmup = 1e-3, 100, 10
    values = [lr_at(s, peak=peak, floor=1e-5, warmup=warmup, total=total) for s in range(total)]
    assert values[0] == pytest.approx(peak / warmup)
    assert values[warmup - 1] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1:]))  # cosine decays
    assert values[-1] == pytest.approx(1e-5, abs=2e-6)


def test_no_weight_decay_on_biases_norms_and_mask_token():
    from omnimae.model import build_model

    model = build_model("debug")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert "mask_token" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(names[id(p)].endswith(("bias", "weight", "mask_token")) for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_short_run_writes_metrics_checkpoint_and_pictures(tiny_config):
    cfg = tiny_config(**{"train.max_steps": 8})
    run_dir = train(cfg)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    modalities = {k for r in records for k in r if k.startswith("loss/")}
    assert modalities == {"loss/image", "loss/video"}  # one modality per step, both present
    for key in ("lr", "grad_norm", "step_time_s", "data_wait_share", "samples_per_s", "tflops_per_device"):
        assert key in records[-1]
    assert "mfu" not in records[-1]  # no peak on the CPU
    # The FLOPs logged are those of the forward as it runs (visible-only embedding, hidden-only head),
    # per forward of the 8-sample micro batch.
    from omnimae.model import build_model

    model = build_model("debug", img_size=64, num_frames=4)
    for r in records:
        modality = next(k for k in r if k.startswith("loss/")).split("/")[1]
        ratio = {"image": cfg.data.image.mask_ratio, "video": cfg.data.video.mask_ratio}[modality]
        logged = r["tflops_per_device"] * 1e12 / r["samples_per_s"]
        assert logged == pytest.approx(model.flops_per_sample(modality, ratio, 8), rel=1e-3)
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["derived"]["global_batch"] == 8 and resolved["derived"]["total_steps"] == 8
    assert ckpt.checkpoint_dirs(run_dir)[-1].name == "step_00000008"
    pictures = sorted((run_dir / "reconstructions").glob("*.png"))
    assert {p.name.split("_")[0] for p in pictures} == {"image", "video"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bottleneck"] in ("step", "read_wait", "decode", "assembly", "data_wait")
    assert (run_dir / "tensorboard").is_dir()


def test_loss_falls(tiny_config):
    """40 video steps with raw-pixel targets: the last 5 losses average well below the first 5."""
    cfg = tiny_config(**{"train.max_steps": 40, "optim.lr": 2e-3, "data.image.root": "",
                         "model.norm_pix_loss": False, "train.run_name": "falls"})
    run_dir = train(cfg)
    values = [v for _, v in sorted(losses(run_dir).items())]
    assert sum(values[-5:]) / 5 < 0.7 * sum(values[:5]) / 5


def test_resume_reproduces_the_uninterrupted_losses_exactly(tiny_config):
    full = train(tiny_config(**{"train.max_steps": 8, "train.run_name": "full"}))
    # Interrupted: stop after 4 steps (a checkpoint at 4), then run again to 8 from it.
    part = train(tiny_config(**{"train.max_steps": 4, "train.run_name": "part"}))
    assert ckpt.checkpoint_dirs(part)[-1].name == "step_00000004"
    resumed = train(tiny_config(**{"train.max_steps": 8, "train.run_name": "part"}))
    assert resumed == part
    a, b = losses(full), losses(part)
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bitwise equal on the CPU


def test_bad_resume_path_is_one_clear_error(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="train.resume"):
        train(tiny_config(**{"train.resume": str(tmp_path / "nowhere")}))


def test_missing_data_root_points_to_omnimae_data(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="omnimae-data synth video"):
        train(tiny_config(**{"data.video.root": str(tmp_path / "no_such_set")}))


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny_config, monkeypatch):
    import omnimae.train as train_module

    real = train_module.build_train_loader

    class Poisoned:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for batch in self.loader:
                batch.pixels = torch.full_like(batch.pixels, float("nan"))
                yield batch

        def __getattr__(self, name):
            return getattr(self.loader, name)

    monkeypatch.setattr(train_module, "build_train_loader", lambda *a, **k: Poisoned(real(*a, **k)))
    cfg = tiny_config(**{"train.max_steps": 50, "train.max_nonfinite": 3, "train.log_every": 1,
                         "train.run_name": "nan"})
    with pytest.raises(SystemExit, match="non-finite"):
        train(cfg)
    records = read_jsonl(Path(cfg.train.out_dir) / "nan" / "metrics.jsonl")
    assert records[-1]["nonfinite_steps"] == 3 and records[-1]["step"] == 3
    assert not ckpt.checkpoint_dirs(Path(cfg.train.out_dir) / "nan")  # nothing poisoned was saved


def _run_cli(args, env_extra=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "omnimae.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_sigterm_checkpoints_at_a_step_boundary_and_exits_0(tiny_data, tmp_path):
    from tests.omnimae.conftest import tiny_overrides

    run_dir = tmp_path / "runs" / "run"
    proc = _run_cli(tiny_overrides(tiny_data, tmp_path / "runs", **{"train.max_steps": 10_000}))
    deadline = time.time() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    assert metrics.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preemption" in out
    saved = ckpt.checkpoint_dirs(run_dir)
    assert saved and 0 < int(saved[-1].name.split("_")[1]) < 10_000


def test_cli_reports_a_bad_key_in_one_line(tmp_path):
    proc = _run_cli(["configs/demo.yaml", "train.batch_sise=4"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1].startswith("omnimae-train: config: train.batch_sise: unknown key")


def test_profile_steps_write_a_trace_and_a_bottleneck_report(tiny_config):
    cfg = tiny_config(**{"train.max_steps": 8, "train.profile_steps": 3, "train.run_name": "prof"})
    run_dir = train(cfg)
    report = json.loads((run_dir / "profile" / "summary.json").read_text())
    assert report["steps"] == 3
    assert {"step_s", "data_wait", "decode", "queue/batches_ready"} <= set(report["mean"])
    assert report["bottleneck"] in ("step", "read_wait", "decode", "assembly", "data_wait") and report["suggestion"]
    assert "bottleneck:" in (run_dir / "profile" / "summary.txt").read_text()
    traces = list((run_dir / "profile").glob("*.pt.trace.json"))
    names = {e.get("name") for e in json.loads(traces[0].read_text())["traceEvents"]}
    assert {"data_wait", "decode", "assembly"} <= names  # the step's thread and the loader's thread


def test_trains_from_an_http_object_store(tiny_config, tiny_data):
    """Data roots may be any fsspec URL: the manifests and media come from a loopback HTTP server."""
    from loaders.devtools.objserver import ObjectServer

    with ObjectServer(tiny_data, latency_s=0.01) as server:
        cfg = tiny_config(**{"data.image.root": f"{server.url}/images", "data.video.root": f"{server.url}/videos",
                             "train.max_steps": 4, "train.run_name": "http"})
        run_dir = train(cfg)
        assert server.request_count() > 0
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records[-1]["step"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["loader"]["video"]["reader"]["requests"] > 0
    assert summary["loader"]["video"]["failures"] == 0


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                          if not p.name.startswith("ft_")))
def test_every_pretraining_config_runs_two_steps_on_the_debug_model(config, tiny_data, tmp_path):
    """Each shipped config's shape (data sets, replication, FSDP/AC flags) runs end to end."""
    from omnimae.config import load_config
    from tests.omnimae.conftest import tiny_overrides

    overrides = tiny_overrides(tiny_data, tmp_path / "runs", **{"train.max_steps": 2})
    cfg = load_config(REPO / "configs" / config, overrides)
    run_dir = train(cfg)
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["derived"]["tokens_per_sample"]["video"] == 32
    assert read_jsonl(run_dir / "metrics.jsonl")[-1]["step"] == 2


def test_gradient_accumulation_keeps_one_modality_per_step(tiny_config):
    cfg = tiny_config(**{"train.micro_batch": 4, "train.max_steps": 6, "optim.clip_grad": 1.0,
                         "train.run_name": "accum"})
    run_dir = train(cfg)
    derived = json.loads((run_dir / "config.json").read_text())["derived"]
    assert derived["accumulation_steps"] == 2 and derived["micro_batch"] == 4
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        assert len([k for k in record if k.startswith("loss/")]) == 1  # log_every=1: one modality a step
        assert record["grad_norm"] > 0
