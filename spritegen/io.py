"""Small file helpers shared by stages: atomic JSON, image grids, PNG folders."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def write_json(data: Any, path: str | Path) -> None:
    """Write JSON atomically (a crash never leaves a half-written metrics file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(B, 3, H, W) uint8 -> (H', W', 3) uint8 grid, row-major."""
    b, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(b):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None, scale: int = 1) -> None:
    """Save (B, 3, H, W) uint8 images as one PNG grid (``scale`` enlarges with nearest neighbour)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(make_grid(images, ncol))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def save_pngs(images: torch.Tensor, folder: str | Path, names: list[str]) -> None:
    """One PNG per image: (B, 3, H, W) uint8."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images.permute(0, 2, 3, 1).cpu().numpy(), names):
        Image.fromarray(img).save(folder / name)
