"""Loss terms of the latent diffusion family other than the denoising loss (in diffusion.py) and the
VAE's KL / perceptual terms (in vae.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) between unit vectors (B, D) and (B, D); pair i is the positive."""
    logits = logit_scale.clamp(max=4.6052).exp() * image_emb @ text_emb.T  # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def hinge_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()
