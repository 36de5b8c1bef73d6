"""The components of the latent diffusion family held together, and their checkpoint folders.

A stage's output folder (``models/ldm/<stage>/``) is a *bundle*: every component that exists after that
stage, in one ``model.safetensors`` (prefixes ``text.``, ``vae.``, ``unet.``, ``unet_ema.``, ``align.``,
``disc.``), the config that built them, the params the stage ran with and the measured latent scale in
``config.yaml``, and the tokenizer in ``tokenizer/``. The next stage starts from the previous stage's
bundle; the finetune bundle is the complete generator.

Generation reads a bundle's own config. Training lets params.yaml win (``LDM.adopt``): learning rates,
EMA decay and every other knob come from the params, and a bundle whose architecture differs from the
params is refused, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from spritegen.checkpoint import load_config, load_into, load_tensors, save_checkpoint, unflatten_state
from spritegen.config import from_dict, to_dict
from spritegen.errors import UserError
from spritegen.ldm.unet import UNetConfig, build_unet
from spritegen.ldm.vae import VAEConfig, build_vae
from spritegen.text.encoder import TextEncoder, build_text_encoder, load_text_encoder, save_tokenizer


class AlignHead(nn.Module):
    """A small image-latent encoder inside the generator for the alignment loss (never the evaluator):
    latent (B, C, h, w) -> unit vector (B, D) in the text encoder's pooled space."""

    def __init__(self, latent_channels: int, text_dim: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
        )
        self.proj = nn.Linear(width, text_dim)
        self.text_proj = nn.Linear(text_dim, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's init

    def image(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.net(z).mean(dim=(2, 3))), dim=-1)  # (B, D)

    def text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)  # (B, D)


class LatentDiscriminator(nn.Module):
    """Projection discriminator on latents for adversarial co-training: judges quality (an unconditional
    score) and text alignment (inner product with the pooled text)."""

    def __init__(self, latent_channels: int, text_dim: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear(width, 1)
        self.embed = nn.Linear(text_dim, width)

    def forward(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        h = self.net(z).mean(dim=(2, 3))  # (B, W)
        return self.out(h).squeeze(-1) + (self.embed(pooled) * h).sum(-1)  # (B,)


@dataclass
class LDM:
    """Everything a stage trains or samples with. Components absent so far are None."""

    text: TextEncoder
    text_meta: dict
    vae_cfg: VAEConfig
    unet_cfg: UNetConfig
    resolution: int
    vae: nn.Module | None = None
    unet: nn.Module | None = None
    unet_ema: dict[str, torch.Tensor] | None = None  # the U-Net's EMA weights (spritegen.train.optim.EMA's state)
    align: AlignHead | None = None
    disc: LatentDiscriminator | None = None
    latent_scale: float = 1.0
    meta: dict = field(default_factory=dict)  # provenance: text source, stages done

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_cfg.downsample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.vae_cfg.latent_channels, self.latent_size, self.latent_size)

    def ensure(self, components: set[str]) -> None:
        """Build (freshly initialised) the components a stage needs that do not exist yet."""
        if "vae" in components and self.vae is None:
            self.vae = build_vae(self.vae_cfg, self.resolution, self.text.dim)
        if "unet" in components and self.unet is None:
            self.unet = build_unet(self.unet_cfg, self.vae_cfg.latent_channels, self.latent_size, self.text.dim)
        if "align" in components and self.align is None:
            self.align = AlignHead(self.vae_cfg.latent_channels, self.text.dim)
        if "disc" in components and self.disc is None:
            self.disc = LatentDiscriminator(self.vae_cfg.latent_channels, self.text.dim)

    def modules(self) -> dict[str, nn.Module]:
        out = {"text": self.text.model, "vae": self.vae, "unet": self.unet, "align": self.align, "disc": self.disc}
        return {k: v for k, v in out.items() if v is not None}

    def to(self, device) -> "LDM":
        for m in self.modules().values():
            m.to(device)
        return self

    def state(self) -> dict:
        state = dict(self.modules())
        if self.unet_ema is not None:
            state["unet_ema"] = self.unet_ema
        return state

    def config(self) -> dict:
        return {
            "family": "ldm", "resolution": self.resolution, "latent_scale": self.latent_scale,
            "components": sorted(self.state()), "text_model": self.text_meta, **self.meta,
            # only the sections of components that exist: a stage's output never depends on later params
            **({"vae": to_dict(self.vae_cfg)} if self.vae is not None else {}),
            **({"unet": to_dict(self.unet_cfg)} if self.unet is not None else {}),
        }

    def adopt(self, vae_cfg: VAEConfig, unet_cfg: UNetConfig, source: Path) -> None:
        """Train under params.yaml's sections, not the bundle's: every knob (learning rates, EMA decay,
        clamp...) comes from the params. The architecture of a component the bundle holds cannot change
        under its weights, so a differing ``arch`` field is an error naming the key."""
        for name, saved, new in (("vae", self.vae_cfg, vae_cfg), ("unet", self.unet_cfg, unet_cfg)):
            if getattr(self, name) is None:
                continue
            for f in fields(new):
                if f.metadata.get("arch") and getattr(saved, f.name) != getattr(new, f.name):
                    raise UserError(f"{name}.{f.name} is {getattr(new, f.name)!r} in the params but {source} was trained with "
                                    f"{getattr(saved, f.name)!r}; set it back or re-run the stage that trains the {name} (dvc repro)")
        self.vae_cfg, self.unet_cfg = vae_cfg, unet_cfg


def save_bundle(folder: str | Path, ldm: LDM, extra_config: dict | None = None) -> Path:
    folder = Path(folder)
    save_checkpoint(folder, ldm.state(), {**ldm.config(), **(extra_config or {})})
    save_tokenizer(ldm.text, folder)
    return folder


def load_bundle(folder: str | Path, vae_cfg: VAEConfig | None = None, unet_cfg: UNetConfig | None = None) -> LDM:
    """Load a stage bundle under its own saved config (what generation uses). ``vae_cfg``/``unet_cfg``
    stand in for sections the bundle does not hold yet (no U-Net after the vae stage); a training stage
    then calls ``LDM.adopt`` so that params.yaml wins."""
    folder = Path(folder)
    if not (folder / "model.safetensors").exists():
        raise UserError(f"{folder} holds no checkpoint (model.safetensors); run the previous stage first")
    meta = load_config(folder)
    if meta.get("family", "ldm") != "ldm":
        raise UserError(f"{folder} holds a {meta['family']!r} model, not an ldm bundle")
    if "text_model" not in meta:
        raise UserError(f"{folder}/config.yaml has no text_model section: not an ldm bundle")
    flat = load_tensors(folder / "model.safetensors")
    present = {k.split(".")[0] for k in flat}
    text = build_text_encoder(meta["text_model"], folder)
    load_into(text.model, flat, "text", folder)
    saved_vae = from_dict(VAEConfig, meta["vae"], "vae") if "vae" in meta and "vae" in present else vae_cfg or VAEConfig()
    saved_unet = from_dict(UNetConfig, meta["unet"], "unet") if "unet" in meta and "unet" in present else unet_cfg or UNetConfig()
    if "vae" in present and saved_vae.text_conditioned_decoder != any(k.startswith("vae.text_attn.") for k in flat):
        raise UserError(f"{folder}: vae.text_conditioned_decoder is {str(saved_vae.text_conditioned_decoder).lower()} in config.yaml "
                        f"but the weights {'lack' if saved_vae.text_conditioned_decoder else 'hold'} the decoder's text attention")
    ldm = LDM(text=text, text_meta=meta["text_model"], vae_cfg=saved_vae, unet_cfg=saved_unet,
              resolution=int(meta.get("resolution", 0)), latent_scale=float(meta.get("latent_scale", 1.0)),
              meta={k: meta[k] for k in ("text_source", "stages") if k in meta})
    ldm.ensure(present & {"vae", "unet", "align", "disc"})
    for name, module in ldm.modules().items():
        if name != "text":
            load_into(module, flat, name, folder)
    if "unet_ema" in present:
        ldm.unet_ema = unflatten_state(flat, "unet_ema")
    return ldm


def ldm_from_text_stage(text_dir: Path, vae_cfg: VAEConfig, unet_cfg: UNetConfig, resolution: int) -> LDM:
    meta = load_config(text_dir)
    text = load_text_encoder(text_dir)
    return LDM(text=text, text_meta=meta["text_model"], vae_cfg=vae_cfg, unet_cfg=unet_cfg, resolution=resolution,
               meta={"text_source": meta.get("text_source", "unknown"), "stages": ["text"]})
