"""The fine-tuning model: OmniMAE's encoder on all tokens, average pool, LayerNorm, Linear.

Official layout (omnivore `VisionTransformer(classifier_feature="global_pool")` + a Linear head):
blocks -> mean over tokens -> `norm` -> `head`. The encoder's `norm` moves from every token (in
pretraining) to the pooled feature, so the official recipe does not load the pretrained norm
(its fine-tuning configs exclude `trunk.norm.*`): `from_pretrained` resets it for pretraining
checkpoints and loads it from fine-tuned ones, whose `trunk.norm` is the pooled feature's norm.

Parameter names are OmniMAE's encoder names (`patch_embed.*`, `blocks.<i>.norm1.*`, ...) plus
`norm.*` and `head.*`, so one name table serves our weight files and the official checkpoints.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from omnimae.model import OmniMAE, block_flops, build_model
from omnimae.weights import clean_name, load_official, read_state_dict


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random p of the samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # [B, 1, 1]
    return x * mask / keep


class DropPathBlock(nn.Module):
    """An OmniMAE `Block` with stochastic depth on both residual branches.

    Holds the original block's norm1/attn/norm2/mlp under the same names, so parameter names (and
    checkpoints) are those of the plain block; model.py stays untouched.
    """

    def __init__(self, block: nn.Module, drop_prob: float):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Classifier(nn.Module):
    """Classifies images [B, 3, H, W] and videos [B, 3, T, H, W] (ImageNet-normalized) -> logits [B, C].

    Built from an OmniMAE (its patch_embed, pos_embed, blocks and norm are reused; the decoder is
    dropped). drop_path: the last block's rate; block i gets drop_path * i / (depth - 1) (official
    "progressive" rule).
    """

    # Same shape rules as the pretraining model (they read only self.config and self.grid).
    token_grid = OmniMAE.token_grid
    _as_video = OmniMAE._as_video
    patch_size = OmniMAE.patch_size
    num_tokens = OmniMAE.num_tokens

    def __init__(self, encoder: OmniMAE, num_classes: int, drop_path: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.config = encoder.config
        self.grid = encoder.grid
        self.num_classes = num_classes
        self.patch_embed = encoder.patch_embed
        self.register_buffer("pos_embed", encoder.pos_embed, persistent=False)  # [1, N_max, D]
        depth = len(encoder.blocks)
        rates = torch.linspace(0.0, drop_path, depth).tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList(DropPathBlock(b, r) for b, r in zip(encoder.blocks, rates))
        self.norm = encoder.norm  # applied to the pooled feature
        self.head = nn.Linear(self.config.dim, num_classes)
        self.init_head()
        self.load_info: dict = {"kind": "random init"}

    @torch.no_grad()
    def init_head(self) -> None:
        """Official/MAE head init: tiny weights (std 2e-5), zero bias, so training starts near uniform."""
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def reset_norm(self) -> None:
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens through the encoder blocks, no masking: [B, N, D] (before any norm)."""
        self.token_grid(x.shape)  # raises on a size the position table does not fit
        tokens = self.patch_embed(self._as_video(x)).flatten(2).transpose(1, 2)  # [B, N, D]
        x = tokens + self.pos_embed[:, :tokens.shape[1]]  # an image takes slot 0's rows
        for block in self.blocks:
            x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalized feature [B, D]: mean over all tokens, then LayerNorm."""
        return self.norm(self.forward_tokens(x).mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # [B, C]

    def flops_per_sample(self, modality: str) -> int:
        """Training matmul FLOPs per sample (forward + backward = 3 x forward), every token kept."""
        c = self.config
        n = self.num_tokens(modality)
        patch_dim = 3 * c.patch[0] * c.patch[1] * c.patch[2]
        forward = 2 * n * patch_dim * c.dim + c.depth * block_flops(n, c.dim, c.mlp_ratio) \
            + 2 * c.dim * self.num_classes
        return 3 * forward

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_or_size: OmniMAE | str, num_classes: int, checkpoint=None, *,
                        drop_path: float = 0.0, **overrides) -> "Classifier":
        """A classifier from an OmniMAE (or a size name, built with `overrides`) and a checkpoint.

        checkpoint (path or state dict; None keeps the model's current weights):
        - our weight file (omnimae.weights.save_model_weights),
        - a training-state folder `step_XXXXXXXX/` or its `state.pt` (its "model" entry),
        - an official omnivore pretraining checkpoint (encoder + decoder; decoder dropped),
        - an official fine-tuned checkpoint: its pooled norm, and its head when its class count is
          `num_classes` (otherwise a fresh head),
        - a Classifier state dict (ours, fine-tuned): loaded as is; class counts must match.
        `load_info` on the result says what was loaded.
        """
        if isinstance(model_or_size, str):
            model = build_model(model_or_size, **overrides)
        elif overrides:
            raise ValueError(f"options {sorted(overrides)} apply only when building from a size name")
        else:
            model = model_or_size
        if checkpoint is None:
            classifier = cls(model, num_classes, drop_path)
            classifier.reset_norm()
            classifier.load_info = {"kind": "random init" if isinstance(model_or_size, str) else "model as given",
                                    "head": "new"}
            return classifier

        state = read_state_dict(_state_file(checkpoint))  # unwraps {"model": ...} (training state)
        state = {clean_name(k): v for k, v in state.items()}
        if any(k.startswith("trunk.") for k in state):
            summary = load_official(model, state)
            classifier = cls(model, num_classes, drop_path)
            info = {"kind": f"official {summary['kind']}", "notes": summary["notes"], "head": "new"}
            if summary["kind"] == "pretrain":
                classifier.reset_norm()
            else:
                info["head"] = _load_official_head(classifier, summary["head"])
        elif "head.weight" in state and not any(k.startswith("decoder") for k in state):
            classifier = cls(model, num_classes, drop_path)
            _load_exact(classifier, state, "classifier checkpoint")
            info = {"kind": "classifier", "head": "loaded"}
        else:
            _load_exact(model, state, "OmniMAE checkpoint")
            classifier = cls(model, num_classes, drop_path)
            classifier.reset_norm()
            info = {"kind": "omnimae", "head": "new"}
        classifier.load_info = info
        return classifier


def load_encoder_weights(model: OmniMAE, checkpoint) -> str:
    """Pretrained weights into an OmniMAE (for frozen-feature checks); returns what was loaded.

    checkpoint: our weight file, a pretraining step_XXXXXXXX/ folder or its state.pt, or an official
    checkpoint (pretraining: the whole model; fine-tuned: the encoder). Not a fine-tuned Classifier.
    """
    state = {clean_name(k): v for k, v in read_state_dict(_state_file(checkpoint)).items()}
    if any(k.startswith("trunk.") for k in state):
        return f"official {load_official(model, state)['kind']}"
    if "head.weight" in state and not any(k.startswith("decoder") for k in state):
        raise ValueError(f"{checkpoint}: a fine-tuned classifier, not a pretrained OmniMAE")
    _load_exact(model, state, "OmniMAE checkpoint")
    return "omnimae"


def _state_file(checkpoint):
    """A training-state folder means its state.pt; anything else passes through."""
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
        path = Path(checkpoint) / "state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint folder {checkpoint} has no state.pt")
        return path
    return checkpoint


def _load_official_head(classifier: Classifier, head: dict[str, torch.Tensor]) -> str:
    """Copies an official classification head when its class count fits; says what happened."""
    weight_key = next(k for k, v in head.items() if v.ndim == 2)  # load_official checked it exists
    bias = head.get(weight_key[: -len("weight")] + "bias")
    classes = head[weight_key].shape[0]
    if classes != classifier.num_classes:
        return f"new (checkpoint head has {classes} classes, asked for {classifier.num_classes})"
    with torch.no_grad():
        classifier.head.weight.copy_(head[weight_key])
        if bias is not None:
            classifier.head.bias.copy_(bias)
    return "loaded"


def _load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with every key and shape checked, one error listing all problems."""
    ours = {clean_name(k): v for k, v in module.state_dict().items()}
    unknown = sorted(set(state) - set(ours))
    missing = sorted(set(ours) - set(state))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
                  for k in sorted(set(state) & set(ours)) if state[k].shape != ours[k].shape]
    problems = [f"{label} ({len(items)}): {items[:10]}" for label, items in
                (("unknown keys", unknown), ("missing keys", missing), ("shape mismatches", mismatched))
                if items]
    if problems:
        raise ValueError(f"{what} does not fit the model: " + "; ".join(problems))
    actual = {clean_name(k): k for k in module.state_dict()}
    module.load_state_dict({actual[k]: v for k, v in state.items()})


# ---- layer-wise learning-rate decay ----------------------------------------------------------------

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """BEiT/MAE layer of a parameter: patch embedding 0, block i -> i + 1, norm and head depth + 1."""
    name = clean_name(name)
    if name.startswith("patch_embed.") or name in ("pos_embed", "cls_token"):
        return 0
    match = _BLOCK_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    return depth + 1


def layer_decay_param_groups(classifier: nn.Module, lr: float, weight_decay: float,
                             layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise LR decay (BEiT, MAE; paper: 0.65 ViT-B, 0.75 L/H).

    A parameter of layer l (see `layer_id`) gets lr * layer_decay ** (depth + 1 - l): the head at
    full rate, the patch embedding at decay ** (depth + 1). Biases, norms and other 1-D tensors get
    no weight decay. One group per (layer, decay or not), each with "lr_scale" and "layer": a loop
    sets group["lr"] = schedule(step) * group["lr_scale"].
    """
    depth = len(classifier.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in classifier.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, depth)
        no_decay = p.ndim <= 1
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "lr": lr * scale, "lr_scale": scale, "layer": layer,
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]
