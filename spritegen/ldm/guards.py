"""Seed 001's stability guards as one small object the training loop asks before each optimiser step.

* a NaN/Inf loss or gradient -> the batch is skipped and counted;
* a gradient norm above ``explode_factor`` x the running median of recent good norms -> skipped and
  counted as an explosion (the norm is still clipped on ordinary steps);
* ``max_bad`` skipped steps in a row -> :class:`TrainingDiverged`, raised *before* anything is saved, so
  the last good checkpoint on disk stays intact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from spritegen.errors import UserError


class TrainingDiverged(UserError):
    """Too many consecutive bad steps: training stopped, the last good checkpoint is kept."""


@dataclass
class StepGuard:
    max_bad: int = 20
    explode_factor: float = 50.0
    warmup: int = 20  # good steps seen before explosion detection starts
    counts: dict[str, int] = field(default_factory=lambda: {"nan_loss": 0, "nan_grad": 0, "exploded": 0, "skipped": 0})
    consecutive: int = 0
    norms: deque = field(default_factory=lambda: deque(maxlen=100))

    def loss_ok(self, loss: torch.Tensor) -> bool:
        if torch.isfinite(loss).all():
            return True
        self._bad("nan_loss")
        return False

    def grads_ok(self, grad_norm: float) -> bool:
        """``grad_norm``: the total norm before clipping."""
        if not (grad_norm == grad_norm and abs(grad_norm) != float("inf")):
            self._bad("nan_grad")
            return False
        if len(self.norms) >= self.warmup:
            median = sorted(self.norms)[len(self.norms) // 2]
            if grad_norm > self.explode_factor * max(median, 1e-8):
                self._bad("exploded")
                return False
        self.norms.append(grad_norm)
        self.consecutive = 0
        return True

    def _bad(self, kind: str) -> None:
        self.counts[kind] += 1
        self.counts["skipped"] += 1
        self.consecutive += 1
        if self.consecutive >= self.max_bad:
            raise TrainingDiverged(
                f"{self.consecutive} consecutive bad steps (last: {kind}; totals {self.counts}); training stopped. "
                "The last good checkpoint is intact; lower the learning rate or check the data, then --resume."
            )

    def state(self) -> dict:
        return {"counts": dict(self.counts), "norms": list(self.norms)}

    def load(self, state: dict) -> None:
        self.counts.update(state.get("counts", {}))
        self.norms.extend(state.get("norms", []))
