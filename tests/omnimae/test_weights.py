"""omnimae.weights: our weight files and the official omnivore checkpoints."""

import pytest
import torch
import torch.nn as nn

from omnimae.masking import make_mask
from omnimae.model import build_model, get_sinusoid_encoding_table
from omnimae.weights import load_model_weights, load_official, save_model_weights

TINY = dict(img_size=32, num_frames=4)


def tiny_model(seed, **overrides):
    torch.manual_seed(seed)
    return build_model("debug", **{**TINY, **overrides})


def official_state_dict(model, finetune_classes=None):
    """Our weights under the official omnivore names, written out name by name."""
    c = model.config
    sd = {}
    if finetune_classes is None:
        sd["trunk.mask_token"] = model.mask_token.detach().reshape(1, c.dim).clone()
    table = get_sinusoid_encoding_table(model.pos_embed.shape[1], c.dim)
    sd["trunk.pos_embed"] = table
    sd["trunk.patch_embed.proj.1.weight"] = model.patch_embed.weight.detach().clone()
    sd["trunk.patch_embed.proj.1.bias"] = model.patch_embed.bias.detach().clone()

    def block(prefix, blk):
        for part in ("norm1", "norm2"):
            sd[f"{prefix}.{part}.weight"] = getattr(blk, part).weight.detach().clone()
            sd[f"{prefix}.{part}.bias"] = getattr(blk, part).bias.detach().clone()
        sd[f"{prefix}.attn.qkv.weight"] = blk.attn.qkv.weight.detach().clone()
        if blk.attn.qkv.bias is not None:
            sd[f"{prefix}.attn.qkv.bias"] = blk.attn.qkv.bias.detach().clone()
        for part in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            layer = blk.get_submodule(part)
            sd[f"{prefix}.{part}.weight"] = layer.weight.detach().clone()
            sd[f"{prefix}.{part}.bias"] = layer.bias.detach().clone()

    for i, blk in enumerate(model.blocks):
        block(f"trunk.blocks.{i}", blk)
    sd["trunk.norm.weight"] = model.norm.weight.detach().clone()
    sd["trunk.norm.bias"] = model.norm.bias.detach().clone()
    if finetune_classes is not None:
        sd["head.weight"] = torch.randn(finetune_classes, c.dim)
        sd["head.bias"] = torch.randn(finetune_classes)
        return sd
    sd["trunk.decoder.pos_embed"] = table.clone()
    sd["trunk.decoder.decoder_embed.weight"] = model.decoder_embed.weight.detach().clone()
    sd["trunk.decoder.decoder_embed.bias"] = model.decoder_embed.bias.detach().clone()
    for i, blk in enumerate(model.decoder_blocks):
        block(f"trunk.decoder.decoder_blocks.{i}", blk)
    sd["trunk.decoder.norm.weight"] = model.decoder_norm.weight.detach().clone()
    sd["trunk.decoder.norm.bias"] = model.decoder_norm.bias.detach().clone()
    sd["head.weight"] = model.decoder_pred.weight.detach().clone()
    sd["head.bias"] = model.decoder_pred.bias.detach().clone()
    return sd


def run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 32, 32, generator=g)
    mask = make_mask("random", 2, model.token_grid(x.shape), 0.5, generator=g)
    with torch.no_grad():
        return model(x, mask, 4)


def test_vit_b_official_layout_has_201_entries():
    with torch.device("meta"):
        model = build_model("base")
    sd = official_state_dict(model)
    assert len(sd) == 201
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["trunk.mask_token"] == (1, 768)
    assert shapes["trunk.pos_embed"] == (1, 1568, 768)
    assert shapes["trunk.decoder.pos_embed"] == (1, 1568, 768)
    assert shapes["trunk.patch_embed.proj.1.weight"] == (768, 3, 2, 16, 16)
    assert shapes["trunk.blocks.11.attn.qkv.weight"] == (2304, 768)
    assert shapes["trunk.blocks.0.mlp.fc1.weight"] == (3072, 768)
    assert shapes["trunk.decoder.decoder_embed.weight"] == (384, 768)
    assert shapes["trunk.decoder.decoder_blocks.3.attn.qkv.weight"] == (1152, 384)
    assert "trunk.decoder.decoder_blocks.0.attn.qkv.bias" not in shapes
    assert shapes["head.weight"] == (1536, 384)


def test_vit_b_official_layout_loads():
    with torch.device("meta"):
        source = build_model("base")
    sd = {k: torch.zeros(v.shape) for k, v in official_state_dict(source).items()}
    for k in ("trunk.pos_embed", "trunk.decoder.pos_embed"):
        sd[k] = get_sinusoid_encoding_table(1568, 768)
    target = build_model("base")
    summary = load_official(target, sd)
    assert summary["kind"] == "pretrain" and summary["loaded"] == 199  # 201 minus the two tables
    assert (target.blocks[5].attn.qkv.weight == 0).all()


def test_pretrain_round_trip(tmp_path):
    source, target = tiny_model(0), tiny_model(1)
    assert not torch.equal(run(source)[1], run(target)[1])
    path = tmp_path / "omnimae_pretrain.pth"
    torch.save({"model": official_state_dict(source)}, path)  # wrapped, as training states are
    summary = load_official(target, str(path))
    assert summary["kind"] == "pretrain" and summary["head"] is None and summary["notes"] == []
    loss_a, pred_a = run(source)
    loss_b, pred_b = run(target)
    assert torch.equal(pred_a, pred_b) and torch.equal(loss_a, loss_b)


def test_trunk_and_head_wrapping():
    source, target = tiny_model(0), tiny_model(1)
    sd = official_state_dict(source)
    nested = {"trunk": {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")},
              "head": {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}}
    load_official(target, {"state_dict": nested})
    assert torch.equal(run(source)[1], run(target)[1])


def test_finetune_checkpoint_loads_encoder_and_returns_head():
    source, target = tiny_model(0), tiny_model(1)
    decoder_before = target.decoder_embed.weight.clone()
    sd = official_state_dict(source, finetune_classes=10)
    summary = load_official(target, sd)
    assert summary["kind"] == "finetune"
    assert set(summary["head"]) == {"weight", "bias"}
    assert torch.equal(summary["head"]["weight"], sd["head.weight"])
    x = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(source.forward_encoder(x, mask, 8)[0], target.forward_encoder(x, mask, 8)[0])
    assert torch.equal(target.decoder_embed.weight, decoder_before)  # no decoder in the file


def test_finetune_head_must_fit_encoder_width():
    sd = official_state_dict(tiny_model(0), finetune_classes=10)
    sd["head.weight"] = torch.randn(10, 7)
    with pytest.raises(ValueError, match="classification weight"):
        load_official(tiny_model(1), sd)


def test_errors_list_every_problem():
    sd = official_state_dict(tiny_model(0))
    sd["trunk.extra.weight"] = torch.zeros(3)
    del sd["trunk.blocks.1.mlp.fc2.bias"]
    sd["trunk.decoder.decoder_embed.weight"] = torch.zeros(5, 5)
    target = tiny_model(1)
    before = target.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(ValueError) as err:
        load_official(target, sd)
    message = str(err.value)
    assert "trunk.extra.weight" in message
    assert "trunk.blocks.1.mlp.fc2.bias" in message
    assert "trunk.decoder.decoder_embed.weight: checkpoint (5, 5) vs model (32, 64)" in message
    assert torch.equal(target.blocks[0].attn.qkv.weight, before)  # nothing loaded


def test_position_tables_are_checked_not_copied():
    sd = official_state_dict(tiny_model(0))
    sd["trunk.pos_embed"] = sd["trunk.pos_embed"] + 0.5
    with pytest.raises(ValueError, match="trunk.pos_embed: values differ"):
        load_official(tiny_model(1), sd)
    # a 16-frame checkpoint into a 4-frame model: the shared rows agree
    sd = official_state_dict(tiny_model(0))
    for k in ("trunk.pos_embed", "trunk.decoder.pos_embed"):
        sd[k] = get_sinusoid_encoding_table(32, 64)
    summary = load_official(tiny_model(1), sd)
    assert len(summary["notes"]) == 2


def test_model_weights_round_trip_strips_wrappers(tmp_path):
    source = tiny_model(0)
    wrapped = nn.Module()
    wrapped.module = torch.compile(source)  # DDP-like "module." around compile's "_orig_mod."
    path = tmp_path / "weights.pt"
    save_model_weights(wrapped, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == set(source.state_dict())
    target = tiny_model(1)
    target.blocks[0] = torch.compile(target.blocks[0])  # per-block compile wrapper while loading
    load_model_weights(target, path)
    assert torch.equal(target.blocks[0]._orig_mod.attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(target.decoder_pred.weight, source.decoder_pred.weight)


def test_model_weights_mismatch_is_one_error(tmp_path):
    path = tmp_path / "weights.pt"
    save_model_weights(tiny_model(0), path)
    with pytest.raises(ValueError, match=r"shape mismatches .*blocks\.0\.attn\.qkv\.weight"):
        load_model_weights(build_model("small", **TINY), path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model_weights(tiny_model(0), tmp_path / "missing.pt")


def test_safe_load_refuses_objects_and_torn_files(tmp_path):
    import argparse

    from omnimae.errors import CheckpointError
    from omnimae.weights import safe_load

    torch.save({"payload": argparse.Namespace(x=1)}, tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="unsafe pickle refused"):
        safe_load(tmp_path / "object.pt")
    (tmp_path / "torn.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="unreadable"):
        safe_load(tmp_path / "torn.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    assert torch.equal(safe_load(tmp_path / "plain.pt")["w"], torch.ones(2))
