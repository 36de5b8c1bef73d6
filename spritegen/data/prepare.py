"""Prepare stage: square, background-composited uint8 tensors per split, the manifest and a preview grid.

    spritegen prepare [--raw data/raw] [--metadata data/metadata.jsonl] [--out data/prepared] [--preset tiny]

Params read: the ``prepare`` section (``resolution``, ``background``, ``splits``, ``seed``,
``crop_to_content``, ``margin``, ``resample``, ``preview``) and ``metadata.max_pixels`` (the same
decompression-bomb limit the metadata stage applied).

Every sprite is composited on ``background``, optionally cropped to its content, padded to a square
(aspect ratio kept) and resized to ``resolution``. The train/val/test split is stratified by primary type
and keeps all sprites of one species (regular, shiny, forms) in one split, so no species leaks from
training into evaluation. Output format: :mod:`spritegen.data.dataset` (``save_split``, safetensors).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from spritegen.data.colour import border_colour, foreground_mask
from spritegen.data.dataset import SPLITS, SpriteRecord, save_split
from spritegen.data.imageio import Decoded, Skip, composite, decode_image
from spritegen.errors import UserError
from spritegen.io import save_grid


@dataclass
class PrepareConfig:
    """``prepare`` section of params.yaml."""

    resolution: int = field(default=32, metadata={"ge": 8, "le": 1024, "doc": "side of the square sprites, pixels"})
    background: tuple[int, int, int] = field(
        default=(255, 255, 255), metadata={"ge": 0, "le": 255, "doc": "RGB the sprites are composited and padded on"}
    )
    splits: tuple[float, float, float] = field(
        default=(0.8, 0.15, 0.05), metadata={"ge": 0, "le": 1, "doc": "train, val, test fractions (sum to 1)"}
    )
    seed: int = field(default=0, metadata={"ge": 0, "doc": "seed of the split"})
    crop_to_content: bool = field(
        default=True,
        metadata={
            "doc": "crop to the creature's bounding box before padding (box sprites and artworks have wide margins)"
        },
    )
    margin: float = field(
        default=0.06,
        metadata={
            "ge": 0,
            "le": 0.45,
            "doc": "with crop_to_content: empty border left on each side, fraction of the side",
        },
    )
    resample: Literal["auto", "lanczos", "bicubic", "nearest"] = field(
        default="auto", metadata={"doc": "auto: lanczos when shrinking, nearest when enlarging (keeps pixel art crisp)"}
    )
    preview: int = field(default=64, metadata={"ge": 1, "le": 1024, "doc": "training sprites shown in preview.png"})

    def validate(self) -> None:
        from spritegen.config import ConfigError

        if not math.isclose(sum(self.splits), 1.0, abs_tol=1e-6):
            raise ConfigError(f"splits: {list(self.splits)} must sum to 1 (train, val, test)")
        if self.splits[0] <= 0:
            raise ConfigError(f"splits: the train fraction must be > 0, got {self.splits[0]}")


# --- one image --------------------------------------------------------------------------------------

_RESAMPLE = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def square_sprite(decoded: Decoded, cfg: PrepareConfig) -> np.ndarray:
    """(R, R, 3) uint8: composited on the background, cropped, padded to a square, resized."""
    bg = tuple(cfg.background)
    rgb = composite(decoded, bg)  # (H, W, 3)
    h, w = rgb.shape[:2]
    file_bg = None
    if decoded.alpha is not None:
        bbox = _bbox(decoded.alpha > 0)
    else:
        # No alpha: the file's own page colour (white for the artworks) is found by flood fill from the
        # border. The bounding box is measured on a small copy (a few pixels of slack cost nothing next to
        # the margin); the page colour is replaced after resizing, where it is cheap.
        file_bg = border_colour(rgb)
        small_side = 128
        scale = min(1.0, small_side / max(h, w))
        small = (
            rgb
            if scale == 1.0
            else np.asarray(
                Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
            )
        )
        box = _bbox(foreground_mask(small, file_bg))
        if box is not None and scale < 1.0:
            y0, y1, x0, x1 = box
            sy, sx = h / small.shape[0], w / small.shape[1]
            box = (
                max(0, int(y0 * sy) - 2),
                min(h, int(np.ceil(y1 * sy)) + 2),
                max(0, int(x0 * sx) - 2),
                min(w, int(np.ceil(x1 * sx)) + 2),
            )
        bbox = box
    if not cfg.crop_to_content or bbox is None:
        bbox = (0, h, 0, w)
    y0, y1, x0, x1 = bbox
    content = rgb[y0:y1, x0:x1]
    ch, cw = content.shape[:2]
    side = max(ch, cw)
    if cfg.crop_to_content:
        side = max(side + 1, round(side / (1 - 2 * cfg.margin)))
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.array(bg, dtype=np.uint8)
    top, left = (side - ch) // 2, (side - cw) // 2  # centred; aspect ratio kept
    canvas[top : top + ch, left : left + cw] = content
    r = cfg.resolution
    out = canvas
    if side != r:
        mode = cfg.resample
        if mode == "auto":
            mode = "lanczos" if side > r else "nearest"
        out = np.asarray(Image.fromarray(canvas).resize((r, r), _RESAMPLE[mode]))
    if file_bg is not None:
        # Every sprite ends on exactly the configured colour: the file's page colour (and resampling
        # ringing in it) connected to the border becomes the background.
        mask = foreground_mask(out, [file_bg, bg])
        if mask.any():  # an image of one flat colour has no page to replace
            out = np.where(mask[..., None], out, np.array(bg, dtype=np.uint8))
    return np.ascontiguousarray(out)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the True pixels, None when there are none."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# --- split ------------------------------------------------------------------------------------------


def species_key(record: SpriteRecord) -> str:
    """What ties sprites of one species together: the national number, else the name."""
    if record.dex is not None:
        return f"dex:{record.dex}"
    return f"name:{record.name.lower()}" if record.name else f"id:{record.id}"


def assign_splits(records: list[SpriteRecord], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """{record id: split}, stratified by primary type, species kept whole, deterministic in ``seed``.

    Species are grouped into strata by the primary type of their regular sprite, shuffled within each
    stratum (seeded), and the strata are walked in order; each species goes to the split furthest below
    its target share *so far* (in sprites). Every prefix of the walk, hence every stratum, is split in the
    target proportions up to one species, and the totals match the fractions as closely as whole species
    allow.
    """
    groups: dict[str, list[SpriteRecord]] = {}
    for r in sorted(records, key=lambda r: r.id):
        groups.setdefault(species_key(r), []).append(r)
    strata: dict[str, list[str]] = {}
    for key, members in groups.items():
        lead = min(members, key=lambda r: (r.variant != "regular", r.id))
        strata.setdefault(lead.types[0], []).append(key)
    assignment: dict[str, str] = {}
    counts = [0, 0, 0]
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        random.Random(f"{seed}:{stratum}").shuffle(keys)
        for key in keys:
            size = len(groups[key])
            total = sum(counts) + size
            deficits = [fractions[i] * total - counts[i] for i in range(3)]
            best = max(range(3), key=lambda i: (deficits[i], -i))
            counts[best] += size
            for r in groups[key]:
                assignment[r.id] = SPLITS[best]
    return assignment


# --- the stage --------------------------------------------------------------------------------------


def run(cfg: PrepareConfig, records: list[SpriteRecord], raw: Path, out: Path, max_pixels: int) -> dict:
    """Write the prepared folder; returns the manifest."""
    images: dict[str, np.ndarray] = {}
    skipped = []
    for r in sorted(records, key=lambda r: r.id):
        decoded = decode_image(raw / r.file, max_pixels)
        if isinstance(decoded, Skip):
            # The metadata stage accepted this file, so raw/ changed since: report it, don't crash.
            skipped.append({"id": r.id, "file": r.file, "reason": decoded.reason})
            continue
        images[r.id] = square_sprite(decoded, cfg)
    kept = [r for r in sorted(records, key=lambda r: r.id) if r.id in images]
    if not kept:
        raise UserError(f"no sprite of the metadata could be read from {raw}: {skipped[:5]}")
    assignment = assign_splits(kept, cfg.splits, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    r_ = cfg.resolution
    manifest_splits, types, colours, species = {}, {}, {}, {}
    for split in SPLITS:
        recs = [r for r in kept if assignment[r.id] == split]
        arr = np.stack([images[r.id] for r in recs]) if recs else np.zeros((0, r_, r_, 3), np.uint8)
        tensor = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R) uint8
        save_split(out, split, tensor, recs)
        manifest_splits[split] = len(recs)
        types[split] = dict(sorted(Counter(r.types[0] for r in recs).items()))
        colours[split] = dict(sorted(Counter(r.primary_colour for r in recs).items()))
        species[split] = len({species_key(r) for r in recs})
        if split == "train":
            _write_preview(tensor, out / "preview.png", cfg.preview)
    source = json.loads((raw / "SOURCE.json").read_text()) if (raw / "SOURCE.json").exists() else {}
    manifest = {
        "resolution": r_,
        "background": list(cfg.background),
        "seed": cfg.seed,
        "source": source.get("source", "unknown"),
        "splits": manifest_splits,
        "fractions": dict(zip(SPLITS, cfg.splits)),
        "species": species,
        "primary_types": types,
        "primary_colours": colours,
        "skipped": skipped,
        "config": {"crop_to_content": cfg.crop_to_content, "margin": cfg.margin, "resample": cfg.resample},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _write_preview(train: torch.Tensor, path: Path, n: int) -> None:
    """An evenly spaced sample of the training sprites (sorted by id, so across the whole Pokédex)."""
    if len(train) == 0:
        return
    k = min(n, len(train))
    idx = np.unique(np.linspace(0, len(train) - 1, k).round().astype(int))
    scale = max(1, 128 // train.shape[-1])  # small sprites enlarged so the grid is legible
    save_grid(train[torch.from_numpy(idx)], path, ncol=math.ceil(math.sqrt(len(idx))), scale=scale)


def main(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from spritegen.data.metadata import read_metadata
    from spritegen.params import load_sections

    sections = load_sections(("prepare", "metadata"), args.params, args.preset)
    cfg: PrepareConfig = sections["prepare"]
    records = read_metadata(Path(args.metadata))
    if not records:
        raise UserError(f"{args.metadata} holds no sprite: check data/ingest_report.json")
    manifest = run(cfg, records, Path(args.raw), Path(args.out), sections["metadata"].max_pixels)
    console = Console()
    table = Table(title=f"prepared {cfg.resolution}x{cfg.resolution} sprites -> {args.out}")
    for col in ("split", "sprites", "species", "types"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in SPLITS:
        table.add_row(
            split,
            str(manifest["splits"][split]),
            str(manifest["species"][split]),
            str(len(manifest["primary_types"][split])),
        )
    console.print(table)
    for s in manifest["skipped"]:
        console.print(f"  skipped {s['file']}: {s['reason']} (raw data changed since `spritegen metadata`?)")
    for split in SPLITS:
        if manifest["splits"][split] == 0 and cfg.splits[SPLITS.index(split)] > 0:
            console.print(f"  [yellow]warning[/yellow]: split {split} is empty (too few sprites for its fraction)")
    return 0
