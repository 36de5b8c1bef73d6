"""The folder format the conditional families (cvae, gan) share: their model, the frozen shared text
encoder, its tokenizer, and a config.yaml that names the family, its params, the resolution, the text
model and the attribute vocabularies (spritegen/attributes.py).

    save_bundle(folder, "gan", {"generator": G}, G.cfg, G.resolution, text, extra)
    cfg, flat, text, meta = open_bundle(folder, "gan", GANConfig)   # then load_into(G, flat, "generator", folder)

Opening refuses, naming what is wrong and before any weights are read: a folder with no checkpoint, a
folder of another family (naming both), one made with other attribute vocabularies (its ids would mean
other attributes), and a config its family's dataclass rejects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spritegen.attributes import check_vocabularies, vocabularies
from spritegen.checkpoint import load_config, load_into, load_tensors, save_checkpoint
from spritegen.config import ConfigError, from_dict, to_dict
from spritegen.errors import UserError
from spritegen.text.encoder import TextEncoder, build_text_encoder, save_tokenizer, text_config_dict


def save_bundle(folder: str | Path, family: str, modules: dict[str, torch.nn.Module], cfg: Any, resolution: int,
                text: TextEncoder, extra: dict) -> Path:
    config = {"family": family, family: to_dict(cfg), "resolution": resolution,
              "text_model": text_config_dict(text), "attributes": vocabularies(), **extra}
    save_checkpoint(folder, {**modules, "text": text.model}, config)
    save_tokenizer(text, folder)
    return Path(folder)


def open_bundle(folder: str | Path, family: str, config_class: type) -> tuple[Any, dict[str, torch.Tensor], TextEncoder, dict]:
    """The family's config (a ``config_class``), the checkpoint's tensors, the text encoder (loaded, in
    evaluation mode) and the whole config.yaml."""
    folder = Path(folder)
    if not (folder / "model.safetensors").exists():
        raise UserError(f"{folder} holds no checkpoint (model.safetensors): train the {family} family first (dvc repro {family})")
    meta = load_config(folder)
    found = meta.get("family", "ldm" if "vae" in meta or "unet" in meta else "unknown")
    if found != family:
        raise UserError(f"{folder} holds a {found!r} model, not a {family!r} one: load it as the {found} family")
    check_vocabularies(meta, folder)
    try:
        cfg = from_dict(config_class, meta[family], family)
    except ConfigError as e:
        raise UserError(f"{folder}/config.yaml: {e}") from None
    flat = load_tensors(folder / "model.safetensors")
    text = build_text_encoder(meta["text_model"], folder)
    load_into(text.model, flat, "text", folder)
    return cfg, flat, text.eval(), meta
