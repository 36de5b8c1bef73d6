"""Image losses every family may use: the chroma-weighted L1 and the perceptual term.

    loss = chroma_l1(x_hat, x, chroma_weight=8.0)      # L1 in an opponent colour space, hue errors weighted
    perceptual = Perceptual("auto")                    # LPIPS(AlexNet) when its weights are on disk, else offline
    loss = perceptual(x_hat, x); perceptual.backend    # "lpips" | "gradient" | "none": recorded with results
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from spritegen.config import ConfigError


def opponent(x: torch.Tensor, chroma_weight: float) -> torch.Tensor:
    """RGB (B, 3, H, W) -> luminance and two colour differences (an orthonormal opponent basis, so
    ``chroma_weight`` 1 gives the same L2 geometry as RGB), the differences scaled by ``chroma_weight``."""
    r, g, b = x.unbind(1)
    y = (r + g + b) / 3**0.5
    return torch.stack([y, chroma_weight * (r - g) / 2**0.5, chroma_weight * (r + g - 2 * b) / 6**0.5], 1)


def chroma_l1(x_hat: torch.Tensor, x: torch.Tensor, chroma_weight: float) -> torch.Tensor:
    """L1 in the opponent colour space, the colour differences weighted by ``chroma_weight`` (a lightness
    error costs the same at any weight). x_hat, x: (B, 3, R, R) in [-1, 1]."""
    return (opponent(x_hat, chroma_weight) - opponent(x, chroma_weight)).abs().mean()


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


class Perceptual(nn.Module):
    """The perceptual term. LPIPS(AlexNet) when its backbone weights are on disk; otherwise an offline
    fallback - L1 on image gradients at full and half resolution (edges and flat regions of pixel art)
    - whose name is logged (``perceptual_backend``) so results from the two are never mixed up."""

    def __init__(self, kind: str, key: str = "vae.perceptual"):
        super().__init__()
        self.backend = kind
        self.lpips = None
        if kind in ("auto", "lpips"):
            if _lpips_weights_present():
                import lpips

                self.lpips = lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False)
                self.backend = "lpips"
            elif kind == "lpips":
                raise ConfigError(f"{key}: lpips needs AlexNet weights in $TORCH_HOME/hub/checkpoints; use auto or gradient")
            else:
                self.backend = "gradient"

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "none":
            return x.new_zeros(())
        if self.lpips is not None:
            size = max(32, x.shape[-1])
            xa = F.interpolate(x_hat, size=size, mode="bilinear", align_corners=False) if x.shape[-1] < 32 else x_hat
            xb = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if x.shape[-1] < 32 else x
            return self.lpips(xa, xb).mean()
        loss = x.new_zeros(())
        for a, b in ((x_hat, x), (F.avg_pool2d(x_hat, 2), F.avg_pool2d(x, 2))):
            (ay, ax), (by, bx) = _image_gradients(a), _image_gradients(b)
            loss = loss + (ay - by).abs().mean() + (ax - bx).abs().mean()
        return loss


def _lpips_weights_present() -> bool:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return any(hub.glob("alexnet-*.pth"))
