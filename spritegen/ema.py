"""Exponential moving average of a module's weights (used for sampling)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, with the usual warm-up
    decay_t = min(decay, (1 + step) / (10 + step)) so early averages are not dominated by the init."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.step = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def to(self, device) -> "EMA":
        """Keep the shadow beside the module (update() adds the module's weights into it in place)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def copy_to(self, module: nn.Module) -> None:
        target = module.state_dict()
        module.load_state_dict({k: v.to(device=target[k].device, dtype=target[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{k: v.cpu() for k, v in self.shadow.items()}, "__step__": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.step = int(state.pop("__step__"))
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        self.shadow = {k: state[k].clone().float() for k in self.shadow}
