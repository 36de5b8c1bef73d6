"""The prepared data set: what every generator and the evaluator read.

On disk (written by ``spritegen prepare``, read by everything downstream)::

    data/prepared/
      train.safetensors   {"images": uint8 (N, 3, R, R)}  background-composited, square, RGB
      train.jsonl         one SpriteRecord per line, same order as the image rows
      val.* test.*        the same for the other splits
      manifest.json       resolution, background, split sizes, seed, source
      preview.png         a grid of training sprites (a DVC plot)

Images stay uint8 on disk and in memory; training moves a split to the device and draws its batches
there (spritegen/train/batches.py, which also holds the seeds' augmentations).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
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
