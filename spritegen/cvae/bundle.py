"""A trained CVAE's folder, and generation from prompts alone.

    models/cvae/
      model.safetensors   cvae.* (the CVAE) and text.* (the frozen shared text encoder it reads)
      tokenizer/          the text stage's tokenizer
      config.yaml         family: cvae, the cvae params, resolution, the attribute vocabularies, text model

    gen = CVAEGenerator.load("models/cvae", device="cpu", temperature=1.0)
    images = gen.generate(["a small red fire type pokemon"], seeds=[0])    # (1, 3, R, R) uint8

Generation parses the attributes from the prompt (spritegen/attributes.py; what it does not name is
"unknown", as training showed the model), encodes the prompt, and decodes z ~ N(0, temperature² I)
drawn from the image's own seed: the same prompt, seed and checkpoint give the same bytes, whatever the
batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spritegen import conditional
from spritegen.attributes import cardinalities, prompt_attributes
from spritegen.checkpoint import load_into
from spritegen.cvae.config import CVAEConfig
from spritegen.cvae.model import CVAE
from spritegen.io import to_uint8
from spritegen.runtime import pick_device
from spritegen.text.encoder import TextEncoder


def save_bundle(folder: Path, model: CVAE, text: TextEncoder, extra: dict) -> Path:
    return conditional.save_bundle(folder, "cvae", {"cvae": model}, model.cfg, model.resolution, text, extra)


def load_bundle(folder: str | Path) -> tuple[CVAE, TextEncoder, dict]:
    """The CVAE and its text encoder under the bundle's own config; what is refused: spritegen/conditional.py."""
    cfg, flat, text, meta = conditional.open_bundle(folder, "cvae", CVAEConfig)
    model = CVAE(cfg, int(meta["resolution"]), text.dim, cardinalities())
    load_into(model, flat, "cvae", folder)
    return model.eval(), text, meta


@torch.no_grad()
def generate_images(model: CVAE, text: TextEncoder, prompts: list[str], seeds: list[int], temperature: float = 1.0,
                    batch_size: int = 64, on_preview=None) -> torch.Tensor:
    """(N, 3, R, R) uint8: prompts[i] decoded from z drawn with seeds[i] (a CPU generator per image, so a
    sprite never depends on its batch). ``on_preview(1, 2, images)`` first sees each chunk's prior-mean
    decode (z = 0: the conditional average sprite), which the sample then refines; it changes nothing."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        attrs = prompt_attributes(p, device)
        states, mask = text(p)
        c = model.condition(TextEncoder.pool(states, mask), attrs)
        z = torch.stack([torch.randn(model.cfg.latent_dim, generator=torch.Generator().manual_seed(int(seed))) for seed in s])
        if on_preview is not None:
            on_preview(1, 2, to_uint8(model.decode(torch.zeros_like(z).to(device), c).float().cpu()))
        out.append(to_uint8(model.decode(temperature * z.to(device), c).float().cpu()))
    model.train(was)
    return torch.cat(out)


class CVAEGenerator:
    """The ``cvae`` family behind spritegen.generators' interface."""

    family = "cvae"

    def __init__(self, model: CVAE, text: TextEncoder, device: torch.device, temperature: float = 1.0, batch_size: int = 64):
        self.model, self.text = model.to(device), text.to(device)
        self.resolution = model.resolution
        self.temperature, self.batch_size = temperature, batch_size

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", temperature: float = 1.0, batch_size: int = 64, **_ldm_sampling) -> "CVAEGenerator":
        """``_ldm_sampling`` (sampler, steps, guidance) belong to the diffusion family and are ignored here."""
        model, text, _ = load_bundle(model_dir)
        return cls(model, text, pick_device(device), temperature, batch_size)

    def generate(self, prompts: list[str], seeds: list[int], on_preview=None) -> torch.Tensor:
        return generate_images(self.model, self.text, prompts, seeds, self.temperature, self.batch_size, on_preview)
