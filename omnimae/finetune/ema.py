"""Exponential moving average of a model's weights (paper: EMA 1e-4, i.e. decay 0.9999)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from omnimae.weights import clean_name


class ModelEMA:
    """ema = decay * ema + (1 - decay) * weights after every `update`; buffers are copied.

    Keeps its own copy of the model (`module`, eval mode, no gradients) on `device` (default:
    the model's). Build it from the plain model, before compile/DDP wrappers; `update` accepts the
    wrapped one and matches parameters by their unwrapped names. FSDP2-sharded models are not
    supported (the copy would hold shards).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, device: torch.device | str | None = None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        if device is not None:
            self.module.to(device)
        self._params = dict(_named(self.module.named_parameters()))
        self._buffers = dict(_named(self.module.named_buffers()))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(_named(model.named_parameters()))
        if params.keys() != self._params.keys():
            missing = sorted(set(self._params) ^ set(params))
            raise ValueError(f"model does not match the EMA copy; differing parameters: {missing[:10]}")
        ema = [self._params[k] for k in params]
        current = [params[k].detach().to(self._params[k].device) for k in params]
        torch._foreach_lerp_(ema, current, 1.0 - self.decay)  # ema += (1 - decay) * (p - ema)
        for name, buffer in _named(model.named_buffers()):
            if name in self._buffers:
                self._buffers[name].copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "module": {clean_name(k): v for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


def _named(items):
    return ((clean_name(name), tensor) for name, tensor in items)
