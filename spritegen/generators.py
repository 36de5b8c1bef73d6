"""Every generator family behind one small interface (see docs/architecture.md, "Generators").

    gen = load_generator("ldm", Path("models/ldm"), sampler="dpm++sde", steps=25, guidance=3.0)
    images = gen.generate(["a red fire type pokemon"], seeds=[0])   # (1, 3, R, R) uint8

Image i depends only on (weights, prompts[i], seeds[i], sampling settings), whatever the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from spritegen.errors import UserError


class Generator(Protocol):
    family: str
    resolution: int

    # (N, 3, R, R) uint8; on_preview(step, steps, images or None): intermediate images (the server's stream)
    def generate(self, prompts: list[str], seeds: list[int], on_preview=None) -> torch.Tensor: ...


def _load_ldm(model_dir: Path, device: str = "auto", temperature: float = 1.0, **sampling) -> Generator:
    from spritegen.ldm.pipeline import LDMGenerator

    return LDMGenerator.load(model_dir, device=device, **sampling)  # the temperature is the latent families'


def _load_cvae(model_dir: Path, device: str = "auto", **sampling) -> Generator:
    from spritegen.cvae.bundle import CVAEGenerator

    return CVAEGenerator.load(model_dir, device=device, **sampling)  # ignores the diffusion sampler's settings


def _load_gan(model_dir: Path, device: str = "auto", **sampling) -> Generator:
    from spritegen.gan.bundle import GANGenerator

    return GANGenerator.load(model_dir, device=device, **sampling)  # z scaled by the temperature; no sampler


# family -> loader(model_dir, device, **sampling); sampling = the ``sample`` section's settings, each
# family taking those it uses.
REGISTRY: dict[str, Callable[..., Generator]] = {
    "ldm": _load_ldm,
    "cvae": _load_cvae,
    "gan": _load_gan,
}


def load_generator(family: str, model_dir: Path, device: str = "auto", **sampling) -> Generator:
    if family not in REGISTRY:
        raise UserError(f"unknown generator family {family!r}; known: {sorted(REGISTRY)}")
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError(f"{model_dir} does not exist: train the {family} family first (dvc repro)")
    return REGISTRY[family](model_dir, device=device, **sampling)
