"""Seed 001's stability guards, decided on the device, and early stopping.

* a NaN/Inf loss or gradient norm: the step is skipped and counted;
* a gradient norm above ``explode_factor`` x the median of the last good norms: skipped, counted as an
  explosion (ordinary steps are still clipped);
* ``max_bad`` skipped steps in a row: :class:`TrainingDiverged` - raised before anything is saved, so the
  last good state on disk is kept.

:meth:`StepGuard.judge` returns the step's verdict as a device tensor and never waits for the device: the
optimiser skips a bad step on the device too (spritegen/train/optim.py). The host looks at the counts
only in :meth:`StepGuard.check`, once per log interval, so a divergence is reported at most
``train.log_every`` steps late - and those steps were skipped, not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spritegen.errors import UserError

KINDS = ("nan_loss", "nan_grad", "exploded", "skipped")


class TrainingDiverged(UserError):
    """Too many consecutive bad steps: training stopped, the last good checkpoint is kept."""


class StepGuard:
    def __init__(self, max_bad: int, explode_factor: float, device: torch.device, warmup: int = 20, window: int = 100):
        self.max_bad, self.explode_factor, self.warmup = max_bad, explode_factor, warmup
        self.norms = torch.full((window,), float("nan"), device=device)  # ring buffer of good steps' norms
        self.n_good = torch.zeros((), dtype=torch.long, device=device)
        self.counts = torch.zeros(len(KINDS), device=device)
        self.consecutive = torch.zeros((), device=device)
        self.worst = torch.zeros((), device=device)  # longest run of bad steps since the last check

    @torch.no_grad()
    def judge(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """The step's verdict, a 0-dim bool tensor (True = skip); ``grad_norm`` is the total norm before clipping."""
        nan_loss = ~torch.isfinite(loss)
        nan_grad = ~nan_loss & ~torch.isfinite(grad_norm)
        median = torch.nanmedian(self.norms).nan_to_num(0.0).clamp(min=1e-8)
        warm = self.n_good >= self.warmup
        exploded = ~nan_loss & ~nan_grad & warm & (grad_norm > self.explode_factor * median)
        bad = nan_loss | nan_grad | exploded
        self.counts += torch.stack([nan_loss, nan_grad, exploded, bad]).float()
        slot = self.n_good % len(self.norms)
        self.norms[slot] = torch.where(bad, self.norms[slot], grad_norm.float())
        self.n_good += (~bad).long()
        self.consecutive = torch.where(bad, self.consecutive + 1, torch.zeros_like(self.consecutive))
        self.worst = torch.maximum(self.worst, self.consecutive)
        return bad

    def check(self) -> dict[str, int]:
        """Host side, once per log interval: the counts so far; raises when the guard tripped."""
        counts = dict(zip(KINDS, (int(c) for c in self.counts.tolist())))
        if float(self.worst) >= self.max_bad:
            raise TrainingDiverged(
                f"{int(self.worst)} consecutive bad steps (totals {counts}); training stopped. The last good "
                "checkpoint is intact: lower the learning rate or check the data, then run again.")
        self.worst.zero_()
        return counts

    def state(self) -> dict:
        norms = [v if v == v else None for v in self.norms.tolist()]  # JSON has no NaN: an empty slot is null
        return {"norms": norms, "n_good": int(self.n_good), "counts": self.counts.tolist(),
                "consecutive": float(self.consecutive)}

    def load(self, state: dict) -> None:
        dev = self.norms.device
        self.norms = torch.tensor([float("nan") if v is None else v for v in state["norms"]], device=dev)
        self.n_good = torch.tensor(state["n_good"], device=dev)
        self.counts = torch.tensor(state["counts"], device=dev)
        self.consecutive = torch.tensor(state["consecutive"], device=dev)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a validation loss below ``best - min_delta`` (0: never)."""

    patience: int
    min_delta: float = 0.0
    best: float = float("inf")
    since_best: int = 0

    def update(self, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if val_loss < self.best - self.min_delta:
            self.best, self.since_best = val_loss, 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict:
        return {"best": self.best if self.best != float("inf") else None, "since_best": self.since_best}

    def load(self, state: dict) -> None:
        self.best = float("inf") if state["best"] is None else state["best"]
        self.since_best = state["since_best"]
