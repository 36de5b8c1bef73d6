"""The training split kept on the device, drawn into batches with no per-step host work.

    data = SpriteBatches(train_split, device)
    pool = data.pool(max_complexity=1.0)                 # which prompts each sprite may be shown with
    for batch in data.epoch(g, batch_size=64, pool=pool, hflip=0.5):
        x = data.images(batch, augment_cfg, g)          # (B, 3, R, R) float in [-1, 1], on the device

The images are a few MB of uint8, so they live on the device for the whole stage. An epoch's order, flips
and prompt choices are drawn at its start, in a few kernels, from a generator on the device; each step
only indexes. Prompts are referred to by id (``data.prompts[i]``), so frozen text features can be
computed once per prompt and gathered by id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from spritegen.data.dataset import SpriteSplit
from spritegen.train.config import AugmentConfig


@dataclass
class Batch:
    idx: torch.Tensor  # (B,) sprite rows
    flip: torch.Tensor  # (B,) bool: mirrored
    prompt: torch.Tensor  # (B,) prompt ids into SpriteBatches.prompts

    def __len__(self) -> int:
        return len(self.idx)

    def share(self, part: slice) -> "Batch":
        """This rank's share of a global batch (data parallel); the whole batch for one process."""
        return Batch(self.idx[part], self.flip[part], self.prompt[part])


@dataclass
class PromptPool:
    """For each sprite, the ids of the prompts it may be shown with: ``ids[i, :count[i]]``."""

    ids: torch.Tensor  # (N, K) long, padded
    count: torch.Tensor  # (N,) long, >= 1


class SpriteBatches:
    def __init__(self, split: SpriteSplit, device: torch.device):
        self.device = device
        self.images_u8 = split.images.to(device)  # (N, 3, R, R) uint8
        self.prompts = [p for r in split.records for p in r.prompts]
        self._per_sprite = [list(r.prompts) for r in split.records]
        self._words = torch.tensor([float(len(p.split())) for p in self.prompts])

    def __len__(self) -> int:
        return len(self.images_u8)

    def pool(self, max_complexity: float = 1.0) -> PromptPool:
        """Curriculum by description complexity (word count): each sprite's prompts up to the
        ``max_complexity`` quantile of all training prompts; a sprite with none keeps its simplest one."""
        limit = float(torch.quantile(self._words, max_complexity)) if max_complexity < 1 else math.inf
        rows, start = [], 0
        for prompts in self._per_sprite:
            ids = [start + j for j, p in enumerate(prompts) if len(p.split()) <= limit]
            rows.append(ids or [start + min(range(len(prompts)), key=lambda j: len(prompts[j].split()))])
            start += len(prompts)
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows])
        return PromptPool(ids.to(self.device), torch.tensor([len(r) for r in rows], device=self.device))

    def epoch(self, g: torch.Generator, batch_size: int, pool: PromptPool, hflip: float) -> Iterator[Batch]:
        """One pass over the sprites in a random order, in batches of ``batch_size`` (the last may be smaller)."""
        n = len(self)
        perm = torch.randperm(n, generator=g, device=self.device)
        flip = torch.rand(n, generator=g, device=self.device) < hflip
        pick = (torch.rand(n, generator=g, device=self.device) * pool.count[perm]).long()
        prompt = pool.ids[perm, pick]
        for b in range(0, n, batch_size):
            yield Batch(perm[b : b + batch_size], flip[b : b + batch_size], prompt[b : b + batch_size])

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def images(self, batch: Batch, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
        """The batch's images as float in [-1, 1], mirrored where ``batch.flip`` and augmented by ``cfg``."""
        x = self.images_u8[batch.idx].float() / 127.5 - 1  # (B, 3, R, R)
        x = torch.where(batch.flip[:, None, None, None], x.flip(-1), x)
        return augment(x, cfg, g) if not cfg.only_flip else x


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Rotation, brightness, contrast and hue jitter of a batch (B, 3, R, R) in [-1, 1] on a white (+1)
    background; each image gets its own draw. (The flip is drawn with the batch: see ``epoch``.)"""
    B = len(x)
    u = torch.rand(4, B, generator=g, device=x.device) * 2 - 1  # (4, B) in [-1, 1)
    if cfg.rotation_deg > 0:
        angle = u[0] * math.radians(cfg.rotation_deg)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # rotate (x - 1) with zero padding, so the corners fill with the white background
        x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    if cfg.brightness > 0:
        x = (x + 1) * (1 + u[1] * cfg.brightness)[:, None, None, None] - 1
    if cfg.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + u[2] * cfg.contrast)[:, None, None, None] + mean
    if cfg.hue > 0:
        x = rotate_hue(x, u[3] * cfg.hue * 2 * math.pi)
    return x.clamp(-1, 1)


def rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma by ``angle`` (B,) radians around the grey axis (YIQ), keeping luma."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)
