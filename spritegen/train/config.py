"""params.yaml ``train``: the run settings every family shares (each family's own knobs live in its section).

    train:
      seed: 0            # data order, noise, dropout, new components' init
      device: auto       # auto | cpu | cuda
      threads: 2         # CPU threads, pinned: another count changes the last bits of every number
      ...

Every field here can change a stage's output, so every training stage lists the whole ``train``
section as a DVC param. Precision, TF32, channels_last and torch.compile are switches measured on and off
(docs/ldm.md, "Speed"); each is on only where that measurement said it helps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spritegen.config import ConfigError


@dataclass
class AugmentConfig:
    """Seed 001's training augmentations, applied to each batch on the device (spritegen/train/batches.py).
    Hue jitter exists but stays off by default: prompts name colours, and a hue shift would teach the
    model that "red" may be drawn blue."""

    hflip: float = field(default=0.5, metadata={"ge": 0, "le": 1, "doc": "probability of a horizontal flip"})
    rotation_deg: float = field(default=0.0, metadata={"ge": 0, "le": 45, "doc": "max absolute rotation in degrees (background-filled)"})
    brightness: float = field(default=0.0, metadata={"ge": 0, "le": 0.5, "doc": "max relative brightness change"})
    contrast: float = field(default=0.0, metadata={"ge": 0, "le": 0.5, "doc": "max relative contrast change"})
    hue: float = field(default=0.0, metadata={"ge": 0, "le": 0.5, "doc": "max hue rotation as a fraction of the colour wheel; keep 0 when prompts name colours"})

    @property
    def only_flip(self) -> bool:
        """True when the flip is the only augmentation: an image then has two versions, so a frozen
        encoder's outputs can be computed once for both (the LDM caches its latents this way)."""
        return self.rotation_deg == 0 and self.brightness == 0 and self.contrast == 0 and self.hue == 0


@dataclass
class RunConfig:
    """params.yaml ``train``: device, seed, threads and the shared loop settings of every family."""

    seed: int = field(default=0, metadata={"ge": 0, "doc": "seed of data order, noise, dropout and new components' init (every family)"})
    device: str = field(default="auto", metadata={"doc": "auto (cuda when available, else cpu) | cpu | cuda | cuda:N; mps is refused (float64 noise tables)"})
    threads: int = field(default=2, metadata={"ge": 1, "doc": "CPU threads, pinned (the README's numbers were made with 2 on a 2-core machine; another count changes the last bits)"})
    deterministic: bool = field(default=True, metadata={"doc": "torch deterministic algorithms (and a fixed cuBLAS workspace on CUDA): same commit, same bits"})
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"doc": "bf16: autocast of the forward passes (losses and optimiser stay fp32)"})
    tf32: bool = field(default=False, metadata={"doc": "CUDA: TF32 matmuls and convolutions (faster, fewer mantissa bits)"})
    channels_last: bool = field(default=False, metadata={"doc": "convolutional models in channels-last memory layout"})
    compile: bool = field(default=False, metadata={"doc": "torch.compile the denoiser / autoencoder (pays a compile time at start)"})
    log_every: int = field(default=50, metadata={"ge": 1, "doc": "steps between host synchronisations: running losses logged, guards checked, progress updated"})
    checkpoint_every: int = field(default=0, metadata={"ge": 0, "doc": "also keep epoch_XXXX/ every N epochs (0: only best/ and the final bundle); last/ is written every epoch"})
    sample_every: int = field(default=0, metadata={"ge": 0, "doc": "validation sample grid every N epochs (0: at the end of a stage only)"})
    max_bad_steps: int = field(default=20, metadata={"ge": 1, "doc": "stop after this many consecutive skipped (NaN/Inf/exploded) steps, keeping the last good state"})
    explode_factor: float = field(default=50.0, metadata={"gt": 1, "doc": "a gradient norm above this many times the running median of good steps is an explosion: step skipped"})
    patience: int = field(default=0, metadata={"ge": 0, "doc": "early stopping: end a stage after this many epochs without a better validation loss (0: off)"})
    min_delta: float = field(default=0.0, metadata={"ge": 0, "doc": "early stopping: the improvement that counts"})
    tensorboard: bool = field(default=False, metadata={"doc": "also write TensorBoard logs (needs the tensorboard extra)"})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"doc": "training augmentations"})

    def validate(self) -> None:
        d = self.device
        if d.startswith("mps"):
            raise ConfigError("device: mps is not supported (the noise schedule and sampler use float64, which MPS lacks); use cpu or cuda")
        if d not in ("auto", "cpu", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ConfigError(f"device: {d!r} is not one of auto, cpu, cuda, cuda:N")
