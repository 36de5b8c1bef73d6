"""The prepared data set: what every generator and the evaluator read.

On disk (written by ``spritegen prepare``, read by everything downstream)::

    data/prepared/
      train.safetensors   {"images": uint8 (N, 3, R, R)}  background-composited, square, RGB
      train.jsonl         one SpriteRecord per line, same order as the image rows
      val.* test.*        the same for the other splits
      manifest.json       resolution, background, split sizes, seed, source
      preview.png         a grid of training sprites (a DVC plot)

Images stay uint8 on disk and in memory; ``SpriteDataset`` turns them into float in [-1, 1] and applies
the training-time augmentations (flip, small rotation, brightness/contrast jitter).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from spritegen.checkpoint import load_tensors
from spritegen.data.vocab import COLOUR_NAMES, MAX_GENERATION, SIZE_CLASSES, TYPES, VARIANTS
from spritegen.errors import UserError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SpriteRecord:
    """One sprite's metadata (a line of ``data/metadata.jsonl`` and of ``<split>.jsonl``)."""

    id: str  # unique sprite key, e.g. "pokemon-0006" or "pokesprite-charizard-shiny"
    name: str
    types: tuple[str, ...]  # 1 or 2 of TYPES
    primary_colour: str  # one of COLOUR_NAMES, measured from the pixels
    secondary_colour: str
    size_class: str  # one of SIZE_CLASSES (from height/weight)
    variant: str  # one of VARIANTS
    prompts: tuple[str, ...]  # >= 5 varied natural-language descriptions
    dex: int | None = None  # national Pokédex number when known
    generation: int | None = None
    abilities: tuple[str, ...] = ()
    height_m: float | None = None
    weight_kg: float | None = None
    file: str = ""  # path of the raw image, relative to data/raw
    extra: dict = field(default_factory=dict)  # source-specific fields (captioner output, base stats...)

    @classmethod
    def from_json(cls, d: dict) -> "SpriteRecord":
        d = dict(d)
        for k in ("types", "prompts", "abilities"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("types", "prompts", "abilities"):
            d[k] = list(d[k])
        return d

    def attribute_ids(self) -> dict[str, int]:
        """Categorical conditioning ids (see ``vocab.ATTRIBUTE_CARDINALITY``)."""
        return {
            "type1": TYPES.index(self.types[0]),
            "type2": TYPES.index(self.types[1]) + 1 if len(self.types) > 1 else 0,
            "primary_colour": COLOUR_NAMES.index(self.primary_colour),
            "secondary_colour": COLOUR_NAMES.index(self.secondary_colour),
            "size_class": SIZE_CLASSES.index(self.size_class),
            "generation": self.generation if self.generation and self.generation <= MAX_GENERATION else 0,
            "variant": VARIANTS.index(self.variant),
        }


@dataclass
class SpriteSplit:
    images: torch.Tensor  # (N, 3, R, R) uint8
    records: list[SpriteRecord]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


def save_split(folder: str | Path, split: Split, images: torch.Tensor, records: list[SpriteRecord]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, R, R), got {images.dtype} {tuple(images.shape)}")
    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} records")
    save_file({"images": images.contiguous()}, str(folder / f"{split}.safetensors"))
    with open(folder / f"{split}.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), sort_keys=True) + "\n")


def load_split(folder: str | Path, split: Split) -> SpriteSplit:
    """Load one split; a missing or inconsistent prepared folder is a clear error."""
    folder = Path(folder)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; splits are {SPLITS}")
    tensors = load_tensors(folder / f"{split}.safetensors")
    if "images" not in tensors:
        raise UserError(f"{folder / f'{split}.safetensors'} has no 'images' tensor")
    images = tensors["images"]
    jsonl = folder / f"{split}.jsonl"
    if not jsonl.exists():
        raise UserError(f"{jsonl} missing: run `spritegen prepare` (or `dvc repro prepare`) first")
    records = [SpriteRecord.from_json(json.loads(line)) for line in jsonl.read_text().splitlines() if line.strip()]
    if len(records) != len(images):
        raise UserError(f"{folder}: {split} has {len(images)} images but {len(records)} records")
    return SpriteSplit(images=images, records=records)


# --- training-time augmentation ---------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """The seeds' augmentations, applied on the fly. No hue jitter: prompts name colours."""

    hflip: float = field(default=0.5, metadata={"ge": 0, "le": 1, "doc": "probability of a horizontal flip"})
    rotation_deg: float = field(default=0.0, metadata={"ge": 0, "le": 45, "doc": "max absolute rotation"})
    brightness: float = field(default=0.0, metadata={"ge": 0, "le": 0.5, "doc": "max relative brightness change"})
    contrast: float = field(default=0.0, metadata={"ge": 0, "le": 0.5, "doc": "max relative contrast change"})


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """x: (3, R, R) float in [-1, 1], background white (= +1). Returns the same shape."""
    u = torch.rand(4, generator=generator)
    if u[0] < cfg.hflip:
        x = x.flip(-1)
    if cfg.rotation_deg > 0:
        angle = math.radians((2 * u[1].item() - 1) * cfg.rotation_deg)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        # pad with the background: rotate (x - 1) with zero padding, then shift back
        x = F.grid_sample((x - 1)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + 1
    if cfg.brightness > 0:
        x = (x + 1) * (1 + (2 * u[2].item() - 1) * cfg.brightness) - 1
    if cfg.contrast > 0:
        mean = x.mean()
        x = (x - mean) * (1 + (2 * u[3].item() - 1) * cfg.contrast) + mean
    return x.clamp(-1, 1)


class SpriteDataset(torch.utils.data.Dataset):
    """(image, prompt, attributes) triples from a split.

    Each item picks one of the sprite's prompts; the choice and the augmentation are drawn from a
    generator seeded by (seed, epoch, index), so a run is reproducible and a resumed run sees the same
    data as an uninterrupted one. Call ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, split: SpriteSplit, augment_cfg: AugmentConfig | None = None, seed: int = 0):
        self.split = split
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) % 2**63)
        record = self.split.records[i]
        x = self.split.images[i].float() / 127.5 - 1  # (3, R, R) in [-1, 1]
        if self.augment_cfg is not None:
            x = augment(x, self.augment_cfg, g)
        prompt = record.prompts[int(torch.randint(len(record.prompts), (1,), generator=g))]
        attrs = torch.tensor(list(record.attribute_ids().values()), dtype=torch.long)
        return {"image": x, "prompt": prompt, "attributes": attrs, "index": i}
