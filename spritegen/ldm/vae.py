"""The VAE of the latent diffusion family: diffusers' ``AutoencoderKL`` (group norm, residual blocks)
and its loss (L1 reconstruction + perceptual term + annealed KL with free bits).

Compression is ``2 ** (len(block_out_channels) - 1)`` per side: four blocks give the seeds' 8x
(32x32x3 -> 4x4x8 at the CPU default, 64x64x3 -> 8x8x8). The latent scale factor is measured from the training data after the VAE stage
(1 / std of the latents), never Stable Diffusion's 0.18215.

``vae.text_conditioned_decoder`` (a seed option) wraps it in ``TextConditionedVAE``: the decoder
cross-attends to the prompt's token states. Everything decodes through ``decode(vae, z, text, mask)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from spritegen.config import ConfigError
from spritegen.image_losses import chroma_l1


@dataclass
class VAEConfig:
    """params.yaml ``vae``: the autoencoder and its loss. Fields marked ``arch`` define the weights: a
    later stage refuses a bundle whose saved values differ from params.yaml's (spritegen/ldm/models.py)."""

    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64], metadata={"arch": True, "ge": 1, "doc": "channels per level; len-1 = number of 2x downsamplings (4 levels = 8x)"})
    layers_per_block: int = field(default=1, metadata={"arch": True, "ge": 1, "doc": "residual blocks per level"})
    latent_channels: int = field(default=8, metadata={"arch": True, "ge": 1, "doc": "latent channels (the seed's 8)"})
    norm_num_groups: int = field(default=8, metadata={"arch": True, "ge": 1, "doc": "group-norm groups (must divide every channel count)"})
    batch_size: int = field(default=8, metadata={"ge": 1, "doc": "images per step (global over data-parallel ranks). Small: more updates per image seen. 16 at lr 4e-3 ran 1.35x more images per second on 2 cores but its VAE reconstructed worse (docs/ldm.md, Recipe)"})
    lr: float = field(default=3e-3, metadata={"gt": 0, "doc": "AdamW peak learning rate (high: a few hundred steps must escape the blank-image plateau)"})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0})
    grad_clip: float = field(default=1.0, metadata={"gt": 0, "doc": "max gradient norm of the VAE (seed: 1.0)"})
    kl_max_weight: float = field(default=1e-4, metadata={"ge": 0, "doc": "final KL weight after annealing (seed: 0.1 at 215px, with a summed L1; ours is per-position against a mean L1, and 1e-2 left the latents too little information for colour)"})
    kl_anneal_epochs: float = field(default=2.0, metadata={"ge": 0, "doc": "epochs of linear KL annealing from 0 (seed: 20 of 80)"})
    free_bits: float = field(default=0.5, metadata={"ge": 0, "doc": "free bits: nats per latent channel (per position) not penalised (seed: 0.5)"})
    perceptual: Literal["auto", "lpips", "gradient", "none"] = field(default="auto", metadata={"doc": "perceptual term: lpips (needs local AlexNet weights), gradient (offline fallback: L1 on image gradients at 2 scales), auto = lpips when present"})
    perceptual_weight: float = field(default=0.5, metadata={"ge": 0})
    chroma_weight: float = field(default=8.0, metadata={"ge": 0, "doc": "the L1 is taken in an opponent colour space (luminance + two colour differences) with the colour differences scaled by this (1 = unweighted; the basis is orthonormal). Hue is a small part of a sprite's pixel variance, and with plain L1 a VAE learns silhouette and lightness for thousands of steps before any hue (docs/ldm.md)"})
    latent_clamp: float = field(default=4.0, metadata={"gt": 0, "doc": "scaled latents are clamped to +-this (seed: 3.0); clamped values are counted"})
    text_conditioned_decoder: bool = field(default=False, metadata={"arch": True, "doc": "seed option: the decoder cross-attends to the prompt's token states (one residual attention layer after its mid block, zero-initialised so it starts as the unconditional decoder); the encoder stays unconditional"})

    def validate(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"block_out_channels: {c} is not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def build_vae(cfg: VAEConfig, resolution: int, text_dim: int | None = None):
    """diffusers' ``AutoencoderKL``; with ``cfg.text_conditioned_decoder`` wrapped in ``TextConditionedVAE``
    (``text_dim``: the text encoder's width). Without the option the module - and so the checkpoint keys -
    are exactly the plain ``AutoencoderKL``'s."""
    from diffusers import AutoencoderKL

    if resolution % cfg.downsample:
        raise ConfigError(f"vae.block_out_channels: resolution {resolution} is not divisible by the VAE's {cfg.downsample}x compression")
    n = len(cfg.block_out_channels)
    autoencoder = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=resolution,
        scaling_factor=1.0,  # ours is measured (see measure_scale) and stored beside the weights
    )
    if not cfg.text_conditioned_decoder:
        return autoencoder
    if text_dim is None:
        raise ValueError("vae.text_conditioned_decoder: building the VAE needs the text encoder's width (text_dim)")
    return TextConditionedVAE(autoencoder, text_dim, cfg.block_out_channels[-1], cfg.norm_num_groups)


class TextConditionedVAE(nn.Module):
    """The seeds' text-conditioned decoder: an ``AutoencoderKL`` whose decoder cross-attends to the prompt's
    token states once, right after its mid block - at the latent resolution (4x4 = 16 queries at 32 px, 8x8 at 64 px),
    so it costs little next to the convolutions at full resolution.

    The layer is diffusers' ``Attention`` in the style of the VAE's own mid-block attention (group norm on
    the image features, residual connection), with keys/values from the text. Its output projection is
    zero-initialised: a fresh layer is the identity, so switching the option on starts from the
    unconditional decoder and the text's influence is learnt from there. The encoder stays unconditional:
    the latents (the U-Net's targets) and the measured latent scale do not depend on the prompt."""

    def __init__(self, autoencoder: nn.Module, text_dim: int, channels: int, norm_num_groups: int):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.autoencoder = autoencoder
        heads = max(1, channels // 32)
        self.text_attn = Attention(query_dim=channels, cross_attention_dim=text_dim, heads=heads, dim_head=channels // heads,
                                   norm_num_groups=norm_num_groups, residual_connection=True, bias=True, upcast_softmax=True)
        nn.init.zeros_(self.text_attn.to_out[0].weight)
        nn.init.zeros_(self.text_attn.to_out[0].bias)

    def encode(self, x: torch.Tensor):
        return self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor, text_states: torch.Tensor | None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, C, h, w) -> (B, 3, R, R); text_states (B, L, D), text_mask (B, L) 1 = token, 0 = padding.
        Mirrors diffusers' ``Decoder.forward`` (no tiling, no latent_embeds) with the attention inserted."""
        if text_states is None:
            raise ValueError("this VAE's decoder is text-conditioned (vae.text_conditioned_decoder): decode needs the prompt's text states")
        if text_states.shape[0] != z.shape[0]:
            raise ValueError(f"decode: {z.shape[0]} latents but {text_states.shape[0]} text states")
        ae, dec = self.autoencoder, self.autoencoder.decoder
        h = ae.post_quant_conv(z) if ae.post_quant_conv is not None else z
        h = dec.mid_block(dec.conv_in(h))
        # padding tokens are masked out as in the U-Net's cross-attention: an additive bias (B, 1, L)
        bias = None if text_mask is None else (1.0 - text_mask.to(h.dtype))[:, None, :] * -10000.0
        h = self.text_attn(h, encoder_hidden_states=text_states.to(h.dtype), attention_mask=bias)
        for up in dec.up_blocks:
            h = up(h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))


def called_parts(vae: nn.Module) -> list[nn.Module]:
    """The submodules that encode and decode call through ``__call__`` (what ``torch.compile`` sees):
    diffusers' encode/decode never call the autoencoder's own forward."""
    if isinstance(vae, TextConditionedVAE):
        dec = vae.autoencoder.decoder
        return [vae.autoencoder.encoder, dec.mid_block, vae.text_attn, *dec.up_blocks]
    return [vae.encoder, vae.decoder]


def decode(vae: nn.Module, z: torch.Tensor, text_states: torch.Tensor | None = None,
           text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The one way latents become images (training, validation, sample grids, the generator): unscaled
    latents z (B, C, h, w) -> (B, 3, R, R) in ~[-1, 1]. ``text_states``/``text_mask`` are the prompt's
    token states and mask from ``TextEncoder`` (the conditional prompt's, never the empty prompt's):
    required by a text-conditioned decoder (an error without them), ignored by the unconditional one."""
    if isinstance(vae, TextConditionedVAE):
        return vae.decode(z, text_states, text_mask)
    return vae.decode(z).sample


# --- loss -------------------------------------------------------------------------------------------


def recon_loss(x_hat: torch.Tensor, x: torch.Tensor, cfg: VAEConfig) -> torch.Tensor:
    """The reconstruction term: L1 in the opponent colour space, the colour differences weighted by
    ``chroma_weight`` (a lightness error costs the same at any weight). x_hat, x: (B, 3, R, R) in [-1, 1]."""
    return chroma_l1(x_hat, x, cfg.chroma_weight)


def kl_weight(cfg: VAEConfig, epoch_progress: float) -> float:
    """Linear annealing 0 -> kl_max_weight over the first ``kl_anneal_epochs`` (fractional epochs)."""
    if cfg.kl_anneal_epochs <= 0:
        return cfg.kl_max_weight
    return cfg.kl_max_weight * min(1.0, epoch_progress / cfg.kl_anneal_epochs)


def kl_free_bits(mean: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(q(z|x) || N(0, I)) with free bits. mean/logvar: (B, C, h, w).

    Per latent channel, the KL averaged over batch and positions is floored at ``free_bits`` nats so the
    encoder is not pushed below that information budget (no posterior collapse). Returns (penalised
    KL summed over channels, raw KL per position summed over channels) - both scalars."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, C, h, w)
    kl_per_channel = kl.mean(dim=(0, 2, 3))  # (C,)
    return kl_per_channel.clamp(min=free_bits).sum(), kl_per_channel.sum()


@torch.no_grad()
def measure_scale(vae, images: torch.Tensor, batch_size: int = 64) -> float:
    """1 / std of posterior samples over ``images`` (uint8 (N, 3, R, R)), computed exactly as
    Var[z] = Var[mean] + E[exp(logvar)]: latents * scale have unit std."""
    means, variances = [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float() / 127.5 - 1
        post = vae.encode(x.to(next(vae.parameters()).device)).latent_dist
        means.append(post.mean.float().cpu())
        variances.append(post.var.float().cpu())
    mean, var = torch.cat(means), torch.cat(variances)
    return float(1.0 / (mean.var() + var.mean()).sqrt().clamp(min=1e-6))
