"""params.yaml ``cvae``: the conditional VAE of seed 004 (model, loss, β schedule, training, generation).

    cvae:
      channels: [32, 64, 128]   # encoder convolutions (stride 2 each); the decoder mirrors them
      latent_dim: 64
      kl_schedule: cyclical     # β: cyclical | monotonic | constant
      ...

Fields marked ``arch`` define the weights: loading a checkpoint whose saved values differ is refused.
Seed 004's own sizes (64 px, channels 32/64/128, hidden 512, latent 256, KL base weight 8, perceptual 0.15,
cycles of 50 epochs, 300 epochs, batch 128, lr 1e-4) are the ``cvae_seed`` preset (spritegen/presets/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spritegen.config import ConfigError


@dataclass
class CVAEConfig:
    # --- model -------------------------------------------------------------------------------------
    channels: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"arch": True, "ge": 1, "doc": "encoder convolution widths, one stride-2 convolution each (the seed's 32/64/128); the decoder's transposed convolutions mirror them"})
    hidden_dim: int = field(default=256, metadata={"arch": True, "ge": 1, "doc": "width of the fully connected layer on each side (seed: 512)"})
    latent_dim: int = field(default=64, metadata={"arch": True, "ge": 1, "doc": "latent size (seed: 256)"})
    text_dim: int = field(default=64, metadata={"arch": True, "ge": 1, "doc": "width the pooled text embedding is projected to"})
    attr_dim: int = field(default=8, metadata={"arch": True, "ge": 1, "doc": "embedding width of each categorical attribute (the condition is text_dim + attr_dim x attributes wide)"})
    dropout: float = field(default=0.2, metadata={"ge": 0, "lt": 1, "doc": "dropout after the fully connected layers (seed: 0.2)"})
    # --- loss ----------------------------------------------------------------------------------------
    l1_weight: float = field(default=1.0, metadata={"ge": 0, "doc": "weight of the pixel L1 (mean over pixels)"})
    chroma_weight: float = field(default=8.0, metadata={"ge": 0, "doc": "1: the L1 on RGB (seed 004). Otherwise the L1 is taken in an opponent colour space (lightness + two colour differences) with the colour differences scaled by this, as the LDM's VAE does (spritegen/image_losses.py): hue is a small part of a sprite's pixel variance. 8 halved fd against 1 (docs/cvae.md)"})
    mse_weight: float = field(default=1.0, metadata={"ge": 0, "doc": "weight of the pixel MSE. With the L1 alone the decoder stalls on the blank-sprite plateau (L1 is median-seeking and most pixels are background; docs/cvae.md), so the default adds it (seed 003's mse_l1 loss preset)"})
    perceptual: Literal["auto", "lpips", "gradient", "none"] = field(default="auto", metadata={"doc": "perceptual term: lpips (needs local AlexNet weights), gradient (offline fallback), auto = lpips when present; the backend used is recorded"})
    perceptual_weight: float = field(default=0.15, metadata={"ge": 0, "doc": "seed: 0.15"})
    kl_weight: float = field(default=16.0, metadata={"ge": 0, "doc": "KL base weight: loss = recon + β x kl_weight x KL, with KL summed over latent dims and divided by the values per image (3 R R), so it is on the mean L1's scale (seed: 8 with a summed L1). Low (1-4): z carries the colour and the decoder ignores the condition; 128: the posterior collapses; 16 followed the prompt best (docs/cvae.md)"})
    kl_schedule: Literal["cyclical", "monotonic", "constant"] = field(default="cyclical", metadata={"doc": "β annealing: cyclical (β rises 0->1 over the first half of each cycle, then holds), monotonic (0->1 over kl_warmup_epochs), constant (β = 1)"})
    kl_cycle_epochs: float = field(default=20.0, metadata={"gt": 0, "doc": "cyclical: epochs per cycle (seed: 50)"})
    kl_warmup_epochs: float = field(default=10.0, metadata={"gt": 0, "doc": "monotonic: epochs for β to reach 1"})
    # --- conditioning ---------------------------------------------------------------------------------
    attribute_dropout: float = field(default=0.1, metadata={"ge": 0, "le": 1, "doc": "each attribute is replaced by 'unknown' with this probability in training, so a prompt that names few attributes is in distribution"})
    balanced: bool = field(default=False, metadata={"doc": "balanced sampling: each epoch draws sprites with weights inverse to their Type x Colour (x Shape) group's size (the seed's data set), rare groups oversampled"})
    # --- training -------------------------------------------------------------------------------------
    epochs: int = field(default=120, metadata={"ge": 1})
    batch_size: int = field(default=16, metadata={"ge": 1})
    lr: float = field(default=1e-3, metadata={"gt": 0, "doc": "AdamW peak learning rate (cosine decay)"})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0})
    grad_clip: float = field(default=1.0, metadata={"gt": 0})
    init_from: str | None = field(default=None, metadata={"doc": "a CVAE model folder whose weights start this run (seed 003's resume_fix: continue a collapsed model under new loss settings); null: fresh"})

    def validate(self) -> None:
        if not self.channels:
            raise ConfigError("channels: at least one convolution")

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)
