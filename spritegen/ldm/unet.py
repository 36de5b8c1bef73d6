"""The denoiser of the latent diffusion family: diffusers' ``UNet2DConditionModel`` (sinusoidal time
embedding, cross-attention to the text tokens at every resolution but the lowest), plus the diffusion
process settings it is trained with (``params.yaml`` section ``unet``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from spritegen.config import ConfigError
from spritegen.text.encoder import TextEncoder


@dataclass
class UNetConfig:
    """params.yaml ``unet``: the U-Net, the diffusion process and loss, EMA and the optimiser. Fields
    marked ``arch`` define what the weights mean (the network, and the process it denoises)."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128], metadata={"arch": True, "ge": 8, "doc": "channels per resolution level"})
    layers_per_block: int = field(default=1, metadata={"arch": True, "ge": 1})
    cross_attention_levels: int = field(default=2, metadata={"arch": True, "ge": 1, "doc": "how many of the highest-resolution levels have cross-attention"})
    attention_head_dim: int = field(default=32, metadata={"arch": True, "ge": 1, "doc": "channels per attention head"})
    norm_num_groups: int = field(default=32, metadata={"arch": True, "ge": 1})
    # --- diffusion process
    num_train_timesteps: int = field(default=1000, metadata={"arch": True, "ge": 2, "doc": "diffusion steps T (seed: 1000)"})
    beta_schedule: Literal["cosine", "linear", "scaled_linear"] = field(default="cosine", metadata={"arch": True, "doc": "noise schedule (seed: cosine)"})
    prediction_type: Literal["epsilon", "v_prediction"] = field(default="epsilon", metadata={"arch": True, "doc": "what the U-Net predicts"})
    loss: Literal["huber", "mse"] = field(default="huber", metadata={"doc": "denoising loss (seed: Huber / SmoothL1)"})
    huber_delta: float = field(default=1.0, metadata={"gt": 0, "doc": "Huber transition point (SmoothL1 beta)"})
    min_snr_gamma: float = field(default=5.0, metadata={"ge": 0, "doc": "min-SNR-gamma loss weighting (0 = off)"})
    cond_dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1, "doc": "probability a prompt is replaced by the empty prompt (classifier-free guidance)"})
    pooled_text: bool = field(default=True, metadata={"arch": True, "doc": "also add the pooled text (masked mean of the token states) to the time embedding, as Imagen and SDXL do: a global path for colour and type that a small U-Net learns in far fewer steps than cross-attention alone"})
    # --- optimisation
    batch_size: int = field(default=16, metadata={"ge": 1, "doc": "images per step (global over data-parallel ranks). Small: more updates per image seen (32 at lr 1.5e-3 ran 1.3x more images per second on 2 cores; docs/ldm.md, Recipe)"})
    lr: float = field(default=1e-3, metadata={"gt": 0, "doc": "AdamW peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0, "doc": "AdamW weight decay (seed: 1e-4)"})
    grad_clip: float = field(default=1.0, metadata={"gt": 0, "doc": "max gradient norm of the U-Net (seed: 0.7)"})
    ema_decay: float = field(default=0.995, metadata={"ge": 0, "lt": 1, "doc": "EMA decay of the U-Net weights used for sampling"})

    def validate(self) -> None:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"block_out_channels: {c} is not divisible by norm_num_groups {self.norm_num_groups}")
            if c % self.attention_head_dim:
                raise ConfigError(f"block_out_channels: {c} is not divisible by attention_head_dim {self.attention_head_dim}")
        if self.cross_attention_levels > len(self.block_out_channels):
            raise ConfigError(f"cross_attention_levels: {self.cross_attention_levels} > {len(self.block_out_channels)} levels")


def build_unet(cfg: UNetConfig, latent_channels: int, latent_size: int, text_dim: int) -> nn.Module:
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    if latent_size % 2 ** (n - 1):
        raise ConfigError(f"unet.block_out_channels: latent size {latent_size} is not divisible by 2^{n - 1}")
    attn = [i < cfg.cross_attention_levels for i in range(n)]  # highest resolutions first
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=text_dim,
        attention_head_dim=[c // cfg.attention_head_dim for c in cfg.block_out_channels],
        norm_num_groups=cfg.norm_num_groups, flip_sin_to_cos=True, freq_shift=0,
        # pooled text -> MLP -> added to the time embedding (diffusers' "projection" class embedding)
        class_embed_type="projection" if cfg.pooled_text else None,
        projection_class_embeddings_input_dim=text_dim if cfg.pooled_text else None,
    )


def denoise(unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The U-Net's prediction for noisy latents x_t (B, C, h, w) at steps t (B,) given the text token
    states (B, L, D) and mask (B, L): every caller goes through here, so training, validation and the
    samplers condition the same way (cross-attention on the tokens, plus their pooled mean when the
    U-Net was built with ``pooled_text``)."""
    pooled = TextEncoder.pool(states, mask) if unet.config.class_embed_type == "projection" else None
    return unet(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, class_labels=pooled).sample
