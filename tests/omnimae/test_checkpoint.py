"""omnimae.checkpoint: the training state (exact resume), its manifest, and choosing what to resume.

The trainers' end-to-end resume tests are in test_train.py, test_run_safety.py and
test_finetune_train.py; these call the functions directly."""

import json
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from omnimae import checkpoint as ckpt
from omnimae.errors import CheckpointError
from omnimae.parallel import DistInfo
from omnimae.weights import safe_load


class FakeLoader:
    """The loader protocol's state half: a position that state_dict() reports and load_state_dict() sets."""

    def __init__(self, position=0):
        self.position = position
        self.loaded = []

    def state_dict(self):
        return {"position": self.position, "bad": ["s3://bucket/broken.mp4"]}

    def load_state_dict(self, state):
        self.loaded.append(state)
        self.position = state["position"]

    def stats(self):
        return {}

    def close(self):
        pass


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # the optimizer has state (exp_avg) to save
    return model, optimizer


def save(run_dir, step, model, optimizer, loader, keep_last=3, **kwargs):
    return ckpt.save_training_state(run_dir, step=step, model=model, optimizer=optimizer, loader=loader,
                                    config={"train": {"seed": 0}}, dist_info=DistInfo(), keep_last=keep_last,
                                    **kwargs)


def test_round_trip_restores_model_optimizer_loader_step_and_rng(tmp_path):
    model, optimizer = model_and_optimizer(0)
    loader = FakeLoader(position=96)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    folder = save(tmp_path, 12, model, optimizer, loader)
    expected = (torch.rand(3), random.random(), np.random.rand())  # what follows the save

    assert folder == tmp_path / "step_00000012"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "rank_00000.pt", "state.pt"]
    assert ckpt.verify_checkpoint(folder) is None
    assert ckpt.saved_config(folder) == {"train": {"seed": 0}}

    fresh_model, fresh_optimizer = model_and_optimizer(1)
    fresh_loader = FakeLoader()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    step = ckpt.load_training_state(folder, model=fresh_model, optimizer=fresh_optimizer, loader=fresh_loader)

    assert step == 12
    assert fresh_loader.loaded == [loader.state_dict()] and fresh_loader.position == 96
    for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_no_loader_means_no_loader_state(tmp_path):
    model, optimizer = model_and_optimizer()
    folder = save(tmp_path, 3, model, optimizer, loader=None)
    assert safe_load(folder / "rank_00000.pt")["loader"] is None
    loader = FakeLoader(position=7)
    assert ckpt.load_training_state(folder, model=model, optimizer=optimizer, loader=loader) == 3
    assert loader.loaded == [] and loader.position == 7  # nothing saved: the loader is left as it is
    with_state = save(tmp_path / "b", 4, model, optimizer, FakeLoader(position=5))
    assert ckpt.load_training_state(with_state, model=model, optimizer=optimizer, loader=None) == 4


def test_files_hold_unwrapped_names(tmp_path):
    model, optimizer = model_and_optimizer()
    wrapper = nn.Module()
    wrapper.module = model  # DDP's attribute name: `module.` prefixes
    folder = save(tmp_path, 1, wrapper, optimizer, None)
    assert sorted(safe_load(folder / "state.pt")["model"]) == sorted(model.state_dict())


def test_keep_last_and_latest_usable_checkpoint(tmp_path):
    model, optimizer = model_and_optimizer()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, optimizer, FakeLoader(step), keep_last=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step_00000003", "step_00000004"]
    assert ckpt.find_resume("auto", tmp_path) == tmp_path / "step_00000004"
    assert ckpt.find_resume("never", tmp_path) is None
    assert ckpt.find_resume("auto", tmp_path / "empty") is None


def test_a_damaged_newest_checkpoint_is_set_aside(tmp_path, caplog):
    model, optimizer = model_and_optimizer()
    save(tmp_path, 1, model, optimizer, None)
    newest = save(tmp_path, 2, model, optimizer, None)
    with open(newest / "state.pt", "r+b") as f:  # same size, different bytes
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    assert "checksum" in ckpt.verify_checkpoint(newest)
    assert ckpt.find_resume("auto", tmp_path) == tmp_path / "step_00000001"
    assert (tmp_path / "step_00000002.unusable").is_dir()
    with pytest.raises(CheckpointError, match="unusable"):
        ckpt.find_resume(str(tmp_path / "step_00000002.unusable"), tmp_path)


def test_a_torn_file_and_a_missing_manifest(tmp_path):
    model, optimizer = model_and_optimizer()
    folder = save(tmp_path, 1, model, optimizer, None)
    (folder / "rank_00000.pt").write_bytes((folder / "rank_00000.pt").read_bytes()[:10])
    assert "torn" in ckpt.verify_checkpoint(folder)
    older = save(tmp_path / "old", 1, model, optimizer, None)
    (older / ckpt.MANIFEST).unlink()  # written before manifests existed: it must load instead
    assert ckpt.verify_checkpoint(older) is None
    assert ckpt.saved_config(older) is None


def test_another_world_size_is_refused(tmp_path):
    model, optimizer = model_and_optimizer()
    folder = save(tmp_path, 1, model, optimizer, None)
    with pytest.raises(CheckpointError, match="different world size"):
        ckpt.load_training_state(folder, model=model, optimizer=optimizer, loader=None, rank=1)


def test_extra_state_must_have_been_saved(tmp_path):
    model, optimizer = model_and_optimizer()
    ema = nn.Linear(2, 2)
    folder = save(tmp_path, 1, model, optimizer, None, extra={"ema": ema})
    restored = nn.Linear(2, 2)
    ckpt.load_training_state(folder, model=model, optimizer=optimizer, loader=None, extra={"ema": restored})
    assert torch.equal(restored.weight, ema.weight)
    with pytest.raises(KeyError, match="other"):
        ckpt.load_training_state(folder, model=model, optimizer=optimizer, loader=None,
                                 extra={"other": restored})


def test_the_manifest_lists_every_file(tmp_path):
    model, optimizer = model_and_optimizer()
    folder = save(tmp_path, 6, model, optimizer, None)
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    assert manifest["step"] == 6 and manifest["world_size"] == 1
    assert sorted(manifest["files"]) == ["rank_00000.pt", "state.pt"]
    assert all(set(v) == {"bytes", "sha256"} for v in manifest["files"].values())


def test_a_failed_write_removes_the_partial_one_and_keeps_the_previous(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer()
    save(tmp_path, 1, model, optimizer, None)

    def full_disk(obj, path, *args, **kwargs):
        raise OSError(28, "No space left on device")  # errno.ENOSPC

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="no space left on device"):
        save(tmp_path, 2, model, optimizer, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]
    assert ckpt.verify_checkpoint(tmp_path / "step_00000001") is None
