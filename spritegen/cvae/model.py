"""The conditional VAE of seed 004: a condition (text + attributes, gated), a convolutional encoder to
q(z | x, c) and a decoder p(x | z, c); the loss terms of its ELBO.

    model = CVAE(cfg, resolution=32, text_width=256, cardinalities=[19, 20, ...])
    c = model.condition(pooled_text, attribute_ids)        # (B, C): gated [text projection, attribute embeddings]
    mu, logvar = model.encode(x, c)                        # q(z | x, c)
    x_hat = model.decode(z, c)                             # (B, 3, R, R) in [-1, 1]

Why the pieces look as they do (seed 004):
* no BatchNorm: a batch statistic couples the samples the reparameterisation treats as independent;
  the fully connected layers use LayerNorm, GELU and dropout instead;
* the condition enters both the encoder (so z need not carry what c already says) and the decoder;
* the gate ``c * sigmoid(W c + b)`` lets the model learn how much of each condition feature to use.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spritegen.cvae.config import CVAEConfig
from spritegen.image_losses import chroma_l1


class CVAE(nn.Module):
    def __init__(self, cfg: CVAEConfig, resolution: int, text_width: int, cardinalities: list[int]):
        super().__init__()
        if resolution % cfg.downsample:
            from spritegen.config import ConfigError

            raise ConfigError(f"cvae.channels: resolution {resolution} is not divisible by the encoder's {cfg.downsample}x downsampling")
        self.cfg, self.resolution = cfg, resolution
        # --- the condition
        self.text_proj = nn.Linear(text_width, cfg.text_dim)
        self.attributes = nn.ModuleList(nn.Embedding(n, cfg.attr_dim) for n in cardinalities)
        cond = cfg.text_dim + cfg.attr_dim * len(cardinalities)
        self.gate = nn.Sequential(nn.Linear(cond, cond), nn.Sigmoid())
        # --- encoder: stride-2 convolutions, then FC on [features, c]
        convs, width = [], 3
        for c in cfg.channels:
            convs += [nn.Conv2d(width, c, 3, stride=2, padding=1), nn.GELU()]
            width = c
        self.enc_conv = nn.Sequential(*convs)
        self.side = resolution // cfg.downsample
        flat = width * self.side * self.side
        self.enc_fc = nn.Sequential(nn.Linear(flat + cond, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout))
        self.fc_mu = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        self.fc_logvar = nn.Linear(cfg.hidden_dim, cfg.latent_dim)
        # --- decoder: FC on [z, c], then transposed convolutions mirroring the encoder, tanh
        self.dec_fc = nn.Sequential(nn.Linear(cfg.latent_dim + cond, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                    nn.Linear(cfg.hidden_dim, flat), nn.GELU())
        deconvs, outs = [], [*reversed(cfg.channels[:-1]), 3]
        for c in outs:
            deconvs += [nn.ConvTranspose2d(width, c, 4, stride=2, padding=1), nn.GELU()]
            width = c
        self.dec_conv = nn.Sequential(*deconvs[:-1])  # no activation after the last: tanh follows

    def condition(self, text: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """(B, text_width) pooled prompt states and (B, A) attribute ids -> the gated condition (B, C)."""
        c = torch.cat([self.text_proj(text), *(emb(attrs[:, i]) for i, emb in enumerate(self.attributes))], 1)
        return c * self.gate(c)

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc_fc(torch.cat([self.enc_conv(x).flatten(1), c], 1))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.dec_fc(torch.cat([z, c], 1)).view(len(z), -1, self.side, self.side)
        return torch.tanh(self.dec_conv(h))


# --- the loss terms ------------------------------------------------------------------------------------


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x,c) || N(0, I)) per sample and latent dimension, (B, D), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def elbo_terms(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, perceptual,
               chroma_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The unweighted terms: mean L1 (chroma-weighted unless ``chroma_weight`` is 1) and MSE over pixels,
    the perceptual term, and the KL summed over latent dimensions, averaged over the batch and divided by
    the values per image (3 R R), which puts it on the mean L1's scale (seed 004's "dimension
    normalisation")."""
    return {
        "l1": F.l1_loss(x_hat, x) if chroma_weight == 1 else chroma_l1(x_hat, x, chroma_weight),
        "mse": F.mse_loss(x_hat, x),
        "perceptual": perceptual(x_hat, x),
        "kl": kl_per_dim(mu, logvar).sum(1).mean() / x[0].numel(),
    }


def total_loss(terms: dict[str, torch.Tensor], cfg: CVAEConfig, beta: float) -> torch.Tensor:
    """loss = l1_weight L1 + mse_weight MSE + perceptual_weight P + beta kl_weight KL."""
    return (cfg.l1_weight * terms["l1"] + cfg.mse_weight * terms["mse"] + cfg.perceptual_weight * terms["perceptual"]
            + beta * cfg.kl_weight * terms["kl"])


def beta_at(cfg: CVAEConfig, epoch: float) -> float:
    """β at (fractional, 0-based) ``epoch``. cyclical: within each cycle of ``kl_cycle_epochs``, β rises
    linearly from 0 over the first half and holds at 1 over the second (seed 004's cycles of 50 epochs);
    each return to 0 lets the decoder learn to use z again. monotonic: 0 -> 1 over ``kl_warmup_epochs``."""
    if cfg.kl_schedule == "constant":
        return 1.0
    if cfg.kl_schedule == "monotonic":
        return min(1.0, epoch / cfg.kl_warmup_epochs)
    return min(1.0, (epoch % cfg.kl_cycle_epochs) / (0.5 * cfg.kl_cycle_epochs))
