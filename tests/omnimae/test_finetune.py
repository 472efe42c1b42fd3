import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from omnimae.checkpoint import save_training_state
from omnimae.finetune import (Classifier, Mixup, ModelEMA, build_rand_augment, clip_start_times, drop_path,
                              extract_features, knn_classify, layer_decay_param_groups, layer_id,
                              linear_probe, multiview_logits, pool_tokens, rand_augment, random_erasing,
                              resize_short_side, smooth_one_hot, soft_target_cross_entropy,
                              spatial_crop_offsets, spatial_crops, topk_accuracy)
from omnimae.model import build_model
from omnimae.parallel import DistInfo
from omnimae.weights import save_model_weights
from tests.omnimae.test_weights import official_state_dict

# Tiny inputs: 32x32 pixels and 4 frames give a (2, 2, 2) video grid and a (1, 2, 2) image grid.
TINY = dict(img_size=32, num_frames=4)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model("debug", **TINY)


def encoder_state(module):
    """Encoder tensors by name (patch_embed, blocks) for comparing models and classifiers."""
    return {k: v for k, v in module.state_dict().items() if k.startswith(("patch_embed.", "blocks."))}


def assert_same_encoder(a, b):
    sa, sb = encoder_state(a), encoder_state(b)
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- classifier ------------------------------------------------------------------------------------

def test_classifier_shapes_image_and_video():
    clf = Classifier(tiny_model(), num_classes=7, drop_path=0.1).eval()
    assert clf(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert clf(torch.randn(2, 3, 4, 32, 32)).shape == (2, 7)
    assert clf.forward_features(torch.randn(2, 3, 4, 32, 32)).shape == (2, 64)
    with pytest.raises(ValueError, match="token grid"):
        clf(torch.randn(1, 3, 64, 64))
    # the decoder is gone; the parameter names are the encoder's
    names = {n for n, _ in clf.named_parameters()}
    assert not any("decoder" in n or "mask_token" in n for n in names)
    assert {"blocks.0.attn.qkv.weight", "norm.weight", "head.weight"} <= names


def test_drop_path_rates_and_behaviour():
    torch.manual_seed(0)
    model = build_model("small", **TINY)  # depth 6
    clf = Classifier(model, 3, drop_path=0.2)
    assert [round(b.drop_prob, 4) for b in clf.blocks] == [0.0, 0.04, 0.08, 0.12, 0.16, 0.2]
    x = torch.ones(1000, 4, 8)
    out = drop_path(x, 0.25, training=True)
    per_sample = out[:, 0, 0]
    assert ((per_sample == 0) | torch.isclose(per_sample, torch.tensor(1 / 0.75))).all()  # dropped or rescaled
    assert (out == out[:, :1, :1]).all()  # whole samples, not single values
    assert 0.2 < (per_sample == 0).float().mean() < 0.3
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    clf.eval()
    v = torch.randn(2, 3, 4, 32, 32)
    assert torch.equal(clf(v), clf(v))  # eval: no drop


# ---- layer-wise LR decay ----------------------------------------------------------------------------

def test_layer_ids():
    assert layer_id("patch_embed.weight", 12) == 0
    assert layer_id("blocks.0.norm1.weight", 12) == 1
    assert layer_id("_orig_mod.blocks.11.mlp.fc2.bias", 12) == 12  # compile / DDP prefixes ignored
    assert layer_id("module.norm.weight", 12) == 13
    assert layer_id("head.weight", 12) == 13


def test_layer_decay_groups_scales_and_membership():
    clf = Classifier(tiny_model(), 5)  # depth 2: layers 0..3
    groups = layer_decay_param_groups(clf, lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in clf.parameters())  # each parameter exactly once
    assert len(seen) == len(set(seen))
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(clf.named_parameters())
    expect = {"patch_embed.weight": (0, 0.65 ** 3, 0.05), "patch_embed.bias": (0, 0.65 ** 3, 0.0),
              "blocks.0.attn.qkv.weight": (1, 0.65 ** 2, 0.05), "blocks.0.norm1.weight": (1, 0.65 ** 2, 0.0),
              "blocks.1.mlp.fc1.weight": (2, 0.65, 0.05), "blocks.1.mlp.fc1.bias": (2, 0.65, 0.0),
              "norm.weight": (3, 1.0, 0.0), "head.weight": (3, 1.0, 0.05), "head.bias": (3, 1.0, 0.0)}
    for name, (layer, scale, wd) in expect.items():
        g = by_id[id(named[name])]
        assert g["layer"] == layer and g["weight_decay"] == wd, name
        assert math.isclose(g["lr_scale"], scale) and math.isclose(g["lr"], 1e-3 * scale), name
    torch.optim.AdamW(groups, lr=1e-3)  # the optimizer accepts them as they are


# ---- mixup / cutmix / label smoothing -----------------------------------------------------------------

def distinct_batch(shape, classes=10):
    """Sample i is constant i + 1, label i: who came from where is readable from the pixels."""
    b = shape[0]
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, *([1] * (len(shape) - 1))).expand(shape).clone()
    return x, torch.arange(b) % classes


def test_label_smoothing_values():
    t = smooth_one_hot(torch.tensor([2, 0]), 10, 0.1)
    assert torch.allclose(t[0, 2], torch.tensor(0.91)) and torch.allclose(t[0, 0], torch.tensor(0.01))
    assert torch.allclose(t.sum(1), torch.ones(2))
    x, y = distinct_batch((4, 3, 8, 8))
    out, targets = Mixup(10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)(x.clone(), y)
    assert torch.equal(out, x) and torch.allclose(targets, smooth_one_hot(y, 10, 0.1))


def test_soft_target_cross_entropy_matches_torch():
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    ours = soft_target_cross_entropy(logits, smooth_one_hot(labels, 10, 0.1))
    assert torch.allclose(ours, F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-6)


def test_mixup_blends_pixels_and_targets():
    x, y = distinct_batch((4, 3, 8, 8))
    out, targets = Mixup(10, cutmix_alpha=0.0, label_smoothing=0.0, seed=3)(x.clone(), y)
    lam = targets[0, y[0]].item()
    assert 0.0 < lam < 1.0
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(targets[0, y[3]], torch.tensor(1 - lam))  # sample 0 mixed with sample 3
    assert torch.allclose(targets.sum(1), torch.ones(4))


@pytest.mark.parametrize("shape", [(4, 3, 32, 48), (4, 3, 4, 32, 48)])
def test_cutmix_area_matches_lambda(shape):
    for seed in range(5):
        x, y = distinct_batch(shape)
        out, targets = Mixup(10, mixup_alpha=0.0, label_smoothing=0.1, seed=seed)(x.clone(), y)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        on, off = 0.9 + 0.01, 0.01
        lam = (targets[0, y[0]].item() - off) / (on - off)
        kept = (out[0] == 1.0).float().mean().item()  # pixels of sample 0 still its own
        assert math.isclose(kept, lam, abs_tol=1e-6)
        assert ((out[0] == 1.0) | (out[0] == 4.0)).all()  # the rest came from its partner
        if len(shape) == 5:  # one box for all frames
            assert (out[0] == out[0, :, :1]).all()


def test_mixup_switch_probability_and_state():
    mix = Mixup(10, seed=0)
    boxes = sum(mix.draw(32, 32)[1] is not None for _ in range(400))
    assert 160 < boxes < 240  # switch_prob 0.5
    state = mix.state_dict()
    first = [mix.draw(32, 32) for _ in range(5)]
    mix.load_state_dict(state)
    assert [mix.draw(32, 32) for _ in range(5)] == first


# ---- RandAugment / RandomErasing ------------------------------------------------------------------------

def test_rand_augment_per_sample_and_per_clip():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    clips = frame.expand(3, 4, 32, 32).unsqueeze(0).expand(6, -1, -1, -1, -1).contiguous()  # [6, 3, 4, 32, 32]
    out = rand_augment(clips, build_rand_augment(num_ops=2, magnitude=9))
    assert out.dtype == torch.uint8 and out.shape == clips.shape
    assert (out == out[:, :, :1]).all()  # one draw for all frames of a clip
    assert any(not torch.equal(out[0], out[i]) for i in range(1, 6))  # own draw per sample
    images = torch.rand(4, 3, 32, 32)
    assert rand_augment(images, build_rand_augment()).shape == images.shape


def test_rand_augment_magnitude_noise():
    # timm's mstd 0.5 around m9: bin 9 when |z| < 1 (68%), 8 or 10 when 1 < |z| < 3 (16% each).
    torch.manual_seed(0)
    noisy = build_rand_augment(num_ops=2, magnitude=9, magnitude_std=0.5)
    draws = torch.tensor([noisy.draw_bin() for _ in range(4000)])
    share = {m: (draws == m).float().mean().item() for m in (8, 9, 10)}
    assert set(draws.tolist()) <= {7, 8, 9, 10}
    assert 0.64 < share[9] < 0.73 and 0.13 < share[8] < 0.19 and 0.13 < share[10] < 0.19

    class Recorder(torch.nn.Module):  # stands in for a bin's op: records which bins run
        def __init__(self, m, calls):
            super().__init__()
            self.m, self.calls = m, calls

        def forward(self, x):
            self.calls.append(self.m)
            return x

    calls = []
    noisy.bins = torch.nn.ModuleList(Recorder(m, calls) for m in range(11))
    frame = torch.rand(3, 8, 8)
    assert noisy(frame) is frame and len(calls) == 2  # num_ops ops, each with its own bin
    with pytest.raises(ValueError, match="magnitude_std must be >= 0"):
        build_rand_augment(magnitude_std=-1)


def test_noisy_rand_augment_per_clip():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    clips = frame.expand(3, 4, 32, 32).unsqueeze(0).expand(6, -1, -1, -1, -1).contiguous()  # [6, 3, 4, 32, 32]
    out = rand_augment(clips, build_rand_augment(num_ops=2, magnitude=9, magnitude_std=0.5))
    assert (out == out[:, :, :1]).all()  # one draw (ops and magnitudes) for all frames of a clip
    assert any(not torch.equal(out[0], out[i]) for i in range(1, 6))


def test_rand_augment_normalized_round_trip():
    x = torch.randn(2, 3, 32, 32).clamp(-1.5, 1.5)  # inside the normalized range of [0, 1] pixels
    out = rand_augment(x, v2.Identity(), normalized=True)
    assert torch.allclose(out, x, atol=1e-5)


def test_random_erasing_one_box_per_clip():
    torch.manual_seed(0)
    x = torch.zeros(3, 3, 4, 32, 32)
    random_erasing(x, p=1.0)
    erased = x != 0
    assert erased.flatten(1).any(1).all()  # every sample got a box
    assert (erased == erased[:, :, :1]).all()  # the same box in every frame
    y = torch.zeros(3, 3, 32, 32)
    assert not random_erasing(y, p=0.0).any()


# ---- EMA --------------------------------------------------------------------------------------------

def test_ema_update_math_buffers_and_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(model, decay=0.9)
    p0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * p0 + 0.1 * (p0 + 1.0))
    assert torch.equal(ema.module[1].running_mean, torch.full((3,), 5.0))  # buffers copied
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.81 * p0 + 0.19 * (p0 + 1.0), atol=1e-6)
    assert not ema.module[0].weight.requires_grad and not ema.module.training

    other = ModelEMA(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.updates == 2
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


# ---- evaluation helpers ------------------------------------------------------------------------------

def test_spatial_crop_positions():
    assert spatial_crop_offsets(224, 300, 224) == [(0, 0), (0, 38), (0, 76)]  # left, centre, right
    assert spatial_crop_offsets(301, 224, 224) == [(0, 0), (39, 0), (77, 0)]  # top, centre, bottom
    assert spatial_crop_offsets(224, 300, 224, num_crops=1) == [(0, 38)]
    cols = torch.arange(300.0).expand(1, 3, 2, 224, 300)  # value = column index
    crops = spatial_crops(cols, 224)
    assert [c.shape for c in crops] == [(1, 3, 2, 224, 224)] * 3
    assert [c[0, 0, 0, 0, 0].item() for c in crops] == [0.0, 38.0, 76.0]
    assert resize_short_side(torch.zeros(2, 3, 256, 340), 224).shape == (2, 3, 224, 297)
    assert resize_short_side(torch.zeros(1, 3, 4, 340, 256), 224).shape == (1, 3, 4, 297, 224)


def test_clip_start_times():
    assert clip_start_times(10.0, 2.7, 5) == pytest.approx([0.0, 1.46, 2.92, 4.38, 5.84])
    assert clip_start_times(2.0, 2.7, 5) == [0.0] * 5


def test_multiview_averages_probabilities():
    torch.manual_seed(0)
    views = [torch.randn(4, 6) * 3 for _ in range(15)]  # nn.Identity: each view's "logits"
    probs = multiview_logits(nn.Identity(), views)
    expect = torch.stack([v.softmax(-1) for v in views]).mean(0)
    assert torch.allclose(probs, expect) and torch.allclose(probs.sum(1), torch.ones(4))
    assert not torch.allclose(probs, torch.stack(views).mean(0).softmax(-1))  # not averaged logits
    assert torch.allclose(multiview_logits(nn.Identity(), torch.stack(views)), expect)


def test_multiview_on_video_views():
    clf = Classifier(tiny_model(), 5).eval()
    clips = [torch.randn(2, 3, 4, 32, 44) for _ in range(5)]  # 5 clips of the same 2 videos
    views = [crop for clip in clips for crop in spatial_crops(clip, 32)]  # 15 views
    assert len(views) == 15
    probs = multiview_logits(clf, views)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(1), torch.ones(2))


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, ks=(1, 2, 5)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3),
                                                          5: 1.0}


# ---- loading checkpoints ------------------------------------------------------------------------------

def test_load_our_weight_file(tmp_path):
    source = tiny_model(0)
    save_model_weights(source, tmp_path / "w.pt")
    clf = Classifier.from_pretrained("debug", 5, tmp_path / "w.pt", drop_path=0.1, **TINY)
    assert clf.load_info["kind"] == "omnimae"
    assert_same_encoder(source, clf)
    assert torch.equal(clf.norm.weight, torch.ones(64))  # pooled norm starts fresh (official recipe)


def test_load_training_state_folder(tmp_path):
    source = tiny_model(0)
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3)
    folder = save_training_state(tmp_path, step=3, model=source, optimizer=optimizer, loader=None,
                                 config={"model": {"name": "debug"}}, dist_info=DistInfo(), keep_last=2)
    for checkpoint in (folder, folder / "state.pt"):
        clf = Classifier.from_pretrained(tiny_model(1), 5, checkpoint)
        assert clf.load_info["kind"] == "omnimae"
        assert_same_encoder(source, clf)
    with pytest.raises(FileNotFoundError, match="state.pt"):
        Classifier.from_pretrained(tiny_model(1), 5, tmp_path)


def test_load_official_pretraining_checkpoint():
    source = tiny_model(0)
    clf = Classifier.from_pretrained(tiny_model(1), 5, official_state_dict(source))
    assert clf.load_info["kind"] == "official pretrain"
    assert_same_encoder(source, clf)
    assert torch.equal(clf.norm.weight, torch.ones(64))


def test_load_official_finetuned_checkpoint_with_head():
    source = tiny_model(0)
    with torch.no_grad():
        source.norm.weight.normal_()  # the fine-tuned pooled norm: must be kept
    sd = official_state_dict(source, finetune_classes=5)
    clf = Classifier.from_pretrained(tiny_model(1), 5, sd)
    assert clf.load_info == {"kind": "official finetune", "notes": [], "head": "loaded"}
    assert_same_encoder(source, clf)
    assert torch.equal(clf.norm.weight, source.norm.weight)
    assert torch.equal(clf.head.weight, sd["head.weight"]) and torch.equal(clf.head.bias, sd["head.bias"])
    other = Classifier.from_pretrained(tiny_model(1), 7, sd)
    assert other.load_info["head"].startswith("new (checkpoint head has 5 classes")
    assert other.head.weight.shape == (7, 64) and other.head.weight.abs().max() < 1e-3


def test_classifier_state_round_trip_and_bad_checkpoint(tmp_path):
    clf = Classifier(tiny_model(0), 5).eval()
    with torch.no_grad():
        clf.head.weight.normal_()
    torch.save(clf.state_dict(), tmp_path / "clf.pt")
    again = Classifier.from_pretrained(tiny_model(1), 5, tmp_path / "clf.pt").eval()
    assert again.load_info["kind"] == "classifier"
    x = torch.randn(2, 3, 4, 32, 32)
    assert torch.equal(clf(x), again(x))
    state = tiny_model(0).state_dict()
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight"):
        Classifier.from_pretrained(tiny_model(1), 5, state)


# ---- frozen features ----------------------------------------------------------------------------------

def toy_features(per_class=30, classes=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(per_class)
    feats = centers[labels] + torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return feats[perm], labels[perm]


def test_knn_and_linear_probe_separate_toy_classes():
    train_x, train_y = toy_features(seed=0)
    val_x, val_y = toy_features(per_class=10, seed=0)  # same centres, new draws below
    val_x = val_x + torch.randn(val_x.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    scores = knn_classify(train_x, train_y, val_x, k=20, temperature=0.07)
    assert scores.shape == (30, 3) and torch.allclose(scores.sum(1), torch.ones(30))
    assert topk_accuracy(scores, val_y, ks=(1,))[1] == 1.0
    result = linear_probe(train_x, train_y, val_x, val_y, epochs=200, lr=1e-2)
    assert result["top1"] == 1.0 and result["train_top1"] == 1.0
    # labels scrambled: no structure left to find
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(2))]
    assert topk_accuracy(knn_classify(train_x, shuffled, val_x), val_y, ks=(1,))[1] < 0.8


def test_extract_features_from_omnimae_and_classifier():
    model = tiny_model(0)
    batches = [(torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 1])),
               (torch.randn(3, 3, 4, 32, 32), torch.tensor([2, 2, 1]))]
    feats, labels = extract_features(model, batches)
    assert feats.shape == (5, 64) and labels.tolist() == [0, 1, 2, 2, 1]
    assert torch.allclose(feats.norm(dim=1), torch.ones(5))
    assert model.training  # mode restored
    clf = Classifier(tiny_model(0), 3)
    feats2, none = extract_features(clf, [b[0] for b in batches])
    assert feats2.shape == (5, 64) and none is None
    # Per temporal slot: 4 frames / tubelet 2 = 2 slots of 64 features each.
    timed, _ = extract_features(model, batches, pool="time")
    assert timed.shape == (5, 128) and torch.allclose(timed.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match="OmniMAE"):
        extract_features(clf, [b[0] for b in batches], pool="time")


def test_time_pooling_tells_a_clip_from_the_clip_reversed():
    """A mean over all tokens cannot see the order of time; the per-slot pool keeps it."""
    tokens = torch.randn(1, 3 * 4, 8)  # [B, T' * H' * W', D], t-major, grid (3, 2, 2)
    reversed_in_time = tokens.view(1, 3, 4, 8).flip(1).reshape(1, 12, 8)
    assert torch.allclose(pool_tokens(tokens, (3, 2, 2)), pool_tokens(reversed_in_time, (3, 2, 2)))
    timed, back = pool_tokens(tokens, (3, 2, 2), "time"), pool_tokens(reversed_in_time, (3, 2, 2), "time")
    assert timed.shape == (1, 24) and not torch.allclose(timed, back)
    assert torch.allclose(timed.view(3, 8), tokens.view(3, 4, 8).mean(1))
    with pytest.raises(ValueError, match="pool"):
        pool_tokens(tokens, (3, 2, 2), "max")
