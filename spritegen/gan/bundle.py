"""A trained GAN's folder, and generation from prompts alone.

    models/gan/
      model.safetensors   generator.* (mapping, synthesis, NCA) and text.* (the frozen shared text encoder)
      tokenizer/          the text stage's tokenizer
      config.yaml         family: gan, the gan params, resolution, the attribute vocabularies, text model

    gen = GANGenerator.load("models/gan", device="cpu", temperature=1.0)
    images = gen.generate(["a small red fire type pokemon"], seeds=[0])    # (1, 3, R, R) uint8

The discriminator and the critic are training-only: they live in the run state, not in the bundle.
Generation draws z ~ N(0, temperature^2 I) from the image's own seed (a CPU generator per image) and runs
the generator in chunks padded to one size, so the same prompt, seed and checkpoint give the same bytes
whatever the batch (a convolution's last bits can depend on the batch size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from spritegen import conditional
from spritegen.attributes import cardinalities, prompt_attributes
from spritegen.checkpoint import load_into
from spritegen.errors import UserError
from spritegen.gan.config import GANConfig
from spritegen.gan.model import Generator
from spritegen.io import to_uint8
from spritegen.runtime import pick_device
from spritegen.text.encoder import TextEncoder


def save_bundle(folder: Path, generator: Generator, text: TextEncoder, extra: dict) -> Path:
    return conditional.save_bundle(folder, "gan", {"generator": generator}, generator.cfg, generator.resolution, text, extra)


def load_bundle(folder: str | Path) -> tuple[Generator, TextEncoder, dict]:
    """The generator and its text encoder under the bundle's own config; what is refused: spritegen/conditional.py."""
    cfg, flat, text, meta = conditional.open_bundle(folder, "gan", GANConfig)
    generator = Generator(cfg, int(meta["resolution"]), text.dim, cardinalities())
    load_into(generator, flat, "generator", folder)
    return generator.eval(), text, meta


def seeded_noise(seeds: list[int], z_dim: int) -> torch.Tensor:
    """(N, z_dim): row i drawn from a CPU generator seeded with seeds[i] alone."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate_images(generator: Generator, text: TextEncoder, prompts: list[str], seeds: list[int], temperature: float = 1.0,
                    batch_size: int = 64) -> torch.Tensor:
    """(N, 3, R, R) uint8: prompts[i] (its pooled text and the attributes it names, spritegen/attributes.py)
    drawn from z = temperature x noise(seeds[i]). Every chunk is padded to
    ``batch_size`` rows (copies of its first), so a sprite never depends on its batch."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    empty = [p for p in prompts if not p.strip()]
    if empty:
        raise UserError(f"empty prompt ({len(empty)} of {len(prompts)}): describe the sprite")
    device = next(generator.parameters()).device
    was = generator.training
    generator.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
        n = len(p)
        p, s = p + [p[0]] * (batch_size - n), s + [s[0]] * (batch_size - n)
        states, mask = text(p)
        z = temperature * seeded_noise(s, generator.cfg.z_dim).to(device)
        out.append(to_uint8(generator(z, TextEncoder.pool(states, mask), prompt_attributes(p, device)).float().cpu())[:n])
    generator.train(was)
    return torch.cat(out)


class GANGenerator:
    """The ``gan`` family behind spritegen.generators' interface."""

    family = "gan"

    def __init__(self, generator: Generator, text: TextEncoder, device: torch.device, temperature: float = 1.0, batch_size: int = 64):
        self.generator, self.text = generator.to(device), text.to(device)
        self.resolution = generator.resolution
        self.temperature, self.batch_size = temperature, batch_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", temperature: float = 1.0, batch_size: int = 64,
             **_ldm_sampling) -> "GANGenerator":
        """``_ldm_sampling`` (sampler, steps, guidance) belong to the diffusion family and are ignored here."""
        generator, text, _ = load_bundle(model_dir)
        return cls(generator, text, pick_device(device), temperature, batch_size)

    def generate(self, prompts: list[str], seeds: list[int], on_preview=None) -> torch.Tensor:
        """``on_preview(1, 1, images)``: the GAN's one step is its output (the stream's single preview)."""
        images = generate_images(self.generator, self.text, prompts, seeds, self.temperature, self.batch_size)
        if on_preview is not None:
            on_preview(1, 1, images)
        return images
