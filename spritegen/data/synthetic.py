"""A synthetic prepared data set for tests: coloured blobs on white whose prompts name their colour
and type. Colour and shape follow the attributes, so "does conditioning work" is checkable at tiny
scale without the real sprites.

    write_prepared(tmp_path / "prepared", n_per_split=(32, 8, 8), resolution=16, seed=0)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spritegen.data.dataset import SPLITS, SpriteRecord, save_split
from spritegen.data.vocab import COLOURS, COLOUR_NAMES, SIZE_CLASSES, TYPES
from spritegen.io import save_grid

# Shapes differ by type so a type prompt has a visual signature too.
_SHAPES = ("disc", "square", "diamond")


def _draw(colour: tuple[int, int, int], shape: str, radius: float, resolution: int, g: torch.Generator) -> torch.Tensor:
    r = resolution
    yy, xx = torch.meshgrid(torch.arange(r) + 0.5, torch.arange(r) + 0.5, indexing="ij")
    cy, cx = r / 2 + (torch.rand(2, generator=g) - 0.5) * r * 0.15
    dy, dx = (yy - cy) / (radius * r), (xx - cx) / (radius * r)
    if shape == "disc":
        mask = dy**2 + dx**2 <= 1
    elif shape == "square":
        mask = (dy.abs() <= 0.85) & (dx.abs() <= 0.85)
    else:
        mask = dy.abs() + dx.abs() <= 1.1
    img = torch.full((3, r, r), 255, dtype=torch.uint8)
    c = torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, r, r)
    img = torch.where(mask[None], c, img)
    return img


def make_sprites(n: int, resolution: int, seed: int, start: int = 0) -> tuple[torch.Tensor, list[SpriteRecord]]:
    g = torch.Generator().manual_seed(seed)
    images, records = [], []
    for i in range(n):
        colour = COLOUR_NAMES[int(torch.randint(len(COLOUR_NAMES), (1,), generator=g))]
        type1 = TYPES[int(torch.randint(len(_SHAPES) * 2, (1,), generator=g))]  # a few types only
        shape = _SHAPES[TYPES.index(type1) % len(_SHAPES)]
        size = SIZE_CLASSES[int(torch.randint(len(SIZE_CLASSES), (1,), generator=g))]
        radius = 0.2 + 0.05 * SIZE_CLASSES.index(size)
        images.append(_draw(COLOURS[colour], shape, radius, resolution, g))
        name = f"synth{start + i:04d}"
        prompts = (
            f"a {colour} {type1} type pokemon",
            f"{colour}, {type1}",
            f"a {size} {colour} creature of the {type1} type",
            f"{name}, a {type1} type pokemon. it is mostly {colour}.",
            f"draw a {colour} {type1} pokemon sprite",
        )
        records.append(
            SpriteRecord(
                id=f"synthetic-{start + i:04d}", name=name, types=(type1,), primary_colour=colour,
                secondary_colour="white", size_class=size, variant="regular", prompts=prompts,
                dex=start + i + 1, generation=1,
            )
        )
    return torch.stack(images), records


def write_prepared(folder: str | Path, n_per_split: tuple[int, int, int] = (32, 8, 8), resolution: int = 16, seed: int = 0) -> Path:
    """Write a complete prepared folder (all splits, manifest, preview) like ``spritegen prepare`` does."""
    folder = Path(folder)
    start = 0
    for split, n in zip(SPLITS, n_per_split):
        images, records = make_sprites(n, resolution, seed + start, start)
        save_split(folder, split, images, records)
        if split == "train":
            save_grid(images[:16], folder / "preview.png")
        start += n
    manifest = {"resolution": resolution, "background": [255, 255, 255], "seed": seed, "source": "synthetic",
                "splits": dict(zip(SPLITS, n_per_split))}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder
