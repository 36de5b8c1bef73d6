"""Optimiser, learning-rate schedules, the guarded step and the EMA, with no host synchronisation.

    opt = adamw({"unet": unet.parameters()}, lr={"unet": 1e-3}, clip={"unet": 1.0}, weight_decay=1e-4)
    norms = guarded_step(opt, loss, guard)        # backward, clip per group, skip bad steps on the device
    ema.update(unet, skip=guard_verdict)

A bad step (NaN/Inf or exploded) is skipped *on the device*: the fused AdamW kernel takes a ``found_inf``
flag (the mechanism torch's GradScaler uses) and then leaves weights, moments and its step count as they
were. So the host never has to read the loss to decide, and a step costs no synchronisation.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from spritegen.train.guards import StepGuard


def lr_at(schedule: str, peak: float, step: int, total: int, warm_restart: bool = False) -> float:
    """The learning rate at ``step`` of ``total`` (a pure function: resume needs no scheduler state).
    onecycle: cosine warm-up over 10% (none after a warm restart) then cosine decay to peak/1e4 (torch's
    OneCycleLR shape); cosine: decay from the peak to peak/100; constant."""
    if schedule == "constant":
        return peak
    frac = min(1.0, step / max(1, total))
    if schedule == "cosine" or warm_restart:
        return peak * (1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * frac)))
    warm = 0.1
    if frac < warm:
        lo = peak / 25
        return lo + (peak - lo) * 0.5 * (1 - math.cos(math.pi * frac / warm))
    lo = peak / 1e4
    return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))


def adamw(params: dict[str, Iterable[torch.nn.Parameter]], lr: dict[str, float], clip: dict[str, float],
          weight_decay: float) -> torch.optim.AdamW:
    """One AdamW with a parameter group per component (its own peak LR and gradient-norm limit). Fused:
    one kernel for all parameters, and it can skip a step on the device (see the module docstring)."""
    groups = [{"params": list(ps), "name": name, "peak_lr": lr[name], "clip": clip[name]} for name, ps in params.items()]
    return torch.optim.AdamW(groups, lr=groups[0]["peak_lr"], weight_decay=weight_decay, fused=True)


def set_lr(opt: torch.optim.Optimizer, schedule: str, step: int, total: int, warm_restart: bool) -> None:
    for group in opt.param_groups:
        group["lr"] = lr_at(schedule, group["peak_lr"], step, total, warm_restart)


def clip_groups(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Clip each group's gradient to its own norm limit; returns the norms before clipping (on the device)."""
    norms = {}
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        norms[group["name"]] = (torch.nn.utils.clip_grad_norm_(params, group["clip"], foreach=True) if params
                                else torch.zeros((), device=group["params"][0].device))
    return norms


def skip_step(opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """``opt.step()`` that leaves everything untouched where ``bad`` (0-dim bool, on the device) is set."""
    opt.found_inf = bad.float()
    opt.grad_scale = None
    try:
        opt.step()
    finally:
        del opt.found_inf, opt.grad_scale


def guarded_step(opt: torch.optim.Optimizer, loss: torch.Tensor, guard: StepGuard, reduce=None,
                 judged: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """backward, (data parallel: ``reduce`` makes each group's gradient the global batch's), clip per
    group, judge, step or skip. ``judged``: the loss the guard sees (data parallel: the global batch's,
    so every rank decides alike; default ``loss``). Returns (bad, norms): the verdict and each group's
    norm before clipping, all on the device."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if reduce is not None:
        for group in opt.param_groups:
            reduce(group["params"])
    norms = clip_groups(opt)
    total = torch.stack(list(norms.values())).pow(2).sum().sqrt()
    bad = guard.judge(loss.detach() if judged is None else judged, total)
    skip_step(opt, bad)
    return bad, norms


# --- optimiser state by parameter *name* (resume and warm restarts find it whatever the phase) --------


def opt_state(opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> dict[str, torch.Tensor]:
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"{names[p]}.{k}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_opt_state(opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str], flat: dict[str, torch.Tensor]) -> int:
    """Restore the moments of every parameter of ``opt`` found in ``flat``; returns how many were found."""
    loaded = 0
    for group in opt.param_groups:
        for p in group["params"]:
            prefix = f"{names[p]}."
            st = {k[len(prefix):]: v.to(p.device) for k, v in flat.items() if k.startswith(prefix)}
            if st:
                st["step"] = st["step"].float()  # fused AdamW keeps its step as a float tensor
                opt.state[p] = st
                loaded += 1
    return loaded


# --- EMA -----------------------------------------------------------------------------------------------


class EMA:
    """shadow <- decay_t * shadow + (1 - decay_t) * param, decay_t = min(decay, (1 + t) / (10 + t)) so early
    averages are not dominated by the init. One fused update for all tensors (a per-tensor loop cost
    hundreds of small kernels a step); a skipped optimiser step leaves the shadow as it was."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.step = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, skip: torch.Tensor | None = None) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        state = module.state_dict()
        keys = [k for k, v in state.items() if v.dtype.is_floating_point]
        shadow, current = [self.shadow[k] for k in keys], [state[k].detach().float() for k in keys]
        w = torch.full((), 1 - d, device=shadow[0].device)
        if skip is not None:
            w = w * (~skip).float()
        delta = torch._foreach_sub(current, shadow)
        torch._foreach_mul_(delta, w)
        torch._foreach_add_(shadow, delta)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def to(self, device) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def copy_to(self, module: torch.nn.Module) -> None:
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
        device = next(iter(self.shadow.values())).device
        self.shadow = {k: state[k].clone().float().to(device) for k in self.shadow}
