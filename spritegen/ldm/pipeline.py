"""Sampling from a latent diffusion bundle: prompts + seeds -> uint8 images.

    gen = LDMGenerator.load("models/ldm/finetune", sampler="dpm++sde", steps=25, guidance=3.0)
    images = gen.generate(["a red fire type pokemon"], seeds=[0])   # (1, 3, R, R) uint8

Image i depends only on (weights, prompts[i], seeds[i], sampler settings): its initial noise and every
stochastic sampler step are drawn from its own ``torch.Generator(seed)``, prompts are padded to a fixed
length, and the U-Net runs on chunks of ``batch_size`` (the chunking only changes floating-point
summation order in the last bits, below the uint8 rounding in all our checks).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from spritegen.io import to_uint8
from spritegen.ldm.diffusion import guided, sample
from spritegen.ldm.models import LDM, load_bundle
from spritegen.ldm.vae import decode
from spritegen.runtime import pick_device

Preview = Callable[[int, int, "torch.Tensor | None"], None]  # (step, steps, uint8 images or None)

FIXED_PROMPTS = (
    "a red fire type pokemon", "a blue water type pokemon", "a green grass type pokemon",
    "a yellow electric type pokemon", "a purple poison type pokemon", "a pink fairy type pokemon",
    "a brown ground type pokemon", "a white ice type pokemon",
)


def ema_unet(ldm: LDM) -> torch.nn.Module:
    """A copy of the U-Net carrying the EMA weights (the training copy is left untouched)."""
    unet = copy.deepcopy(ldm.unet)
    if ldm.unet_ema is not None:
        target = unet.state_dict()
        unet.load_state_dict({k: v.to(device=target[k].device, dtype=target[k].dtype) for k, v in ldm.unet_ema.items() if k in target})
    return unet.eval()


@torch.no_grad()
def generate_images(ldm: LDM, unet: torch.nn.Module, prompts: list[str], seeds: list[int], sampler: str = "ddim",
                    steps: int = 20, guidance: float = 3.0, batch_size: int = 32, on_preview: Preview | None = None,
                    preview_every: int = 5) -> torch.Tensor:
    """(N, 3, R, R) uint8 for prompts[i] with seeds[i].

    ``on_preview(step, steps, images)`` is called after every denoising step of every chunk; every
    ``preview_every`` steps ``images`` is the chunk's current x_0 prediction decoded (uint8), else None.
    It may raise to stop the work (the server's cancelled requests); it never changes the result."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = next(unet.parameters()).device
    text = ldm.text.eval()
    clip = ldm.vae_cfg.latent_clamp
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        cond, cond_mask = text(p)  # (B, L, D), (B, L)
        uncond, uncond_mask = text([""] * len(p))
        generators = [torch.Generator().manual_seed(int(seed)) for seed in s]

        def on_step(i: int, n: int, x0: torch.Tensor, cond=cond, cond_mask=cond_mask) -> None:
            due = (i + 1) % preview_every == 0 and i + 1 < n  # the last step's x_0 is the result itself
            on_preview(i + 1, n, to_uint8(decode(ldm.vae, x0 / ldm.latent_scale, cond, cond_mask).float().cpu()) if due else None)

        z = sample(guided(unet, cond, cond_mask, uncond, uncond_mask, guidance), ldm.latent_shape, generators,
                   sampler, steps, ldm.unet_cfg, clip, device,
                   on_step if on_preview else None)  # (B, C, h, w), unit-variance latents
        # a text-conditioned decoder reads the prompt's own states (not the empty prompt's)
        x = decode(ldm.vae, z / ldm.latent_scale, cond, cond_mask)  # (B, 3, R, R) in ~[-1, 1]
        out.append(to_uint8(x.float().cpu()))
    return torch.cat(out)


class LDMGenerator:
    """The ``ldm`` family behind spritegen.generators' interface."""

    family = "ldm"
    preview_every = 5  # on_preview gets decoded images every this many steps (the server's stream)

    def __init__(self, ldm: LDM, device: torch.device, sampler: str = "dpm++sde", steps: int = 25, guidance: float = 3.0,
                 batch_size: int = 32):
        self.ldm = ldm.to(device)
        self.unet = ema_unet(ldm)
        self.ldm.vae.eval()
        self.resolution = ldm.resolution
        self.sampler, self.steps, self.guidance, self.batch_size = sampler, steps, guidance, batch_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", **sampling) -> "LDMGenerator":
        model_dir = Path(model_dir)
        if (model_dir / "finetune" / "model.safetensors").exists():  # models/ldm -> models/ldm/finetune
            model_dir = model_dir / "finetune"
        ldm = load_bundle(model_dir)
        if ldm.unet is None or ldm.vae is None:
            from spritegen.errors import UserError

            raise UserError(f"{model_dir} has no U-Net/VAE: point at the unet or finetune stage output")
        return cls(ldm, pick_device(device), **sampling)

    def generate(self, prompts: list[str], seeds: list[int], on_preview: Preview | None = None) -> torch.Tensor:
        return generate_images(self.ldm, self.unet, prompts, seeds, self.sampler, self.steps, self.guidance, self.batch_size,
                               on_preview, self.preview_every)
