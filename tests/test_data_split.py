"""Prepare: stratified, leak-free, deterministic split; square resizing on the background."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spritegen.data.dataset import SpriteRecord
from spritegen.data.imageio import Decoded
from spritegen.data.prepare import PrepareConfig, assign_splits, species_key, square_sprite
from spritegen.data.vocab import TYPES

FRACTIONS = (0.8, 0.15, 0.05)


def _records(n_species: int = 600, seed: int = 0) -> list[SpriteRecord]:
    """Species with skewed type frequencies; every 5th species also has a shiny and a form sprite."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(3, 1, len(TYPES))
    weights /= weights.sum()
    out = []
    for dex in range(1, n_species + 1):
        t = TYPES[rng.choice(len(TYPES), p=weights)]
        variants = ["regular", "shiny", "form"] if dex % 5 == 0 else ["regular"]
        for v in variants:
            out.append(
                SpriteRecord(
                    id=f"s-{dex:04d}-{v}",
                    name=f"mon{dex}",
                    types=(t,),
                    primary_colour="red",
                    secondary_colour="red",
                    size_class="small",
                    variant=v,
                    prompts=("p",) * 5,
                    dex=dex,
                )
            )
    return out


def test_split_fractions_and_no_species_leak():
    records = _records()
    split = assign_splits(records, FRACTIONS, seed=0)
    assert set(split) == {r.id for r in records}
    sizes = Counter(split.values())
    n = len(records)
    for name, frac in zip(("train", "val", "test"), FRACTIONS):
        assert abs(sizes[name] / n - frac) < 0.01, (name, sizes)
    by_species = {}
    for r in records:
        by_species.setdefault(species_key(r), set()).add(split[r.id])
    assert all(len(s) == 1 for s in by_species.values())  # regular, shiny and forms together


def test_split_is_stratified_by_primary_type():
    records = _records(1000)
    split = assign_splits(records, FRACTIONS, seed=0)
    per_type = {}
    for r in records:
        per_type.setdefault(r.types[0], Counter())[split[r.id]] += 1
    for t, c in per_type.items():
        total = sum(c.values())
        # every type within one species (<= 3 sprites) of its target share, in every split
        for name, frac in zip(("train", "val", "test"), FRACTIONS):
            assert abs(c[name] - frac * total) <= 3.5, (t, c)
        if total >= 40:
            assert c["val"] > 0 and c["test"] > 0, (t, c)


def test_split_is_deterministic_and_seeded():
    records = _records()
    a = assign_splits(records, FRACTIONS, seed=0)
    assert a == assign_splits(list(reversed(records)), FRACTIONS, seed=0)  # input order does not matter
    b = assign_splits(records, FRACTIONS, seed=1)
    assert a != b
    assert (
        Counter(a.values()) == Counter(b.values())
        or abs(Counter(a.values())["test"] - Counter(b.values())["test"]) <= 3
    )


def test_zero_fraction_split_stays_empty():
    split = assign_splits(_records(100), (0.9, 0.1, 0.0), seed=0)
    assert "test" not in set(split.values())


def test_species_without_dex_group_by_name():
    r = SpriteRecord(
        id="folder-a",
        name="Pika",
        types=("electric",),
        primary_colour="yellow",
        secondary_colour="yellow",
        size_class="small",
        variant="regular",
        prompts=("p",) * 5,
    )
    assert species_key(r) == "name:pika"


# --- square_sprite ------------------------------------------------------------------------------------


def _decoded(rgb, alpha=None):
    h, w = rgb.shape[:2]
    return Decoded(
        rgb=rgb, alpha=alpha, width=w, height=h, format="PNG", mode="RGBA" if alpha is not None else "RGB", frames=1
    )


def test_square_keeps_aspect_and_centres_on_background():
    rgb = np.full((40, 100, 3), 255, np.uint8)
    rgb[10:30, 10:90] = (200, 0, 0)  # an 80 x 20 red bar, off centre in a wide image
    out = square_sprite(_decoded(rgb), PrepareConfig(resolution=32, crop_to_content=True, margin=0.0))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    red = (out[..., 0] > 150) & (out[..., 1] < 80)
    ys, xs = np.nonzero(red)
    assert xs.min() <= 1 and xs.max() >= 30  # fills the width
    assert 6 <= ys.max() - ys.min() + 1 <= 10  # 80:20 kept -> about 8 rows
    assert abs((ys.min() + ys.max()) / 2 - 15.5) <= 1  # centred vertically
    assert (out[0, 0] == 255).all() and (out[-1, -1] == 255).all()


def test_alpha_sprite_composited_on_configured_background():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[:] = (0, 255, 0)  # colour under transparent pixels must never show
    alpha = np.zeros((20, 20), np.uint8)
    alpha[5:15, 5:15] = 255
    rgb[5:15, 5:15] = (0, 0, 200)
    out = square_sprite(_decoded(rgb, alpha), PrepareConfig(resolution=16, background=(10, 20, 30), margin=0.2))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert not ((out[..., 1] > 200).any())  # no green anywhere
    assert out[8, 8, 2] > 150


def test_without_crop_whole_image_is_padded():
    rgb = np.full((10, 20, 3), 0, np.uint8)  # all black, 2:1
    out = square_sprite(_decoded(rgb), PrepareConfig(resolution=20, crop_to_content=False))
    black_rows = np.nonzero((out < 50).all(axis=(1, 2)))[0]
    assert len(black_rows) == 10 and black_rows.min() == 5


def test_jpeg_background_becomes_exactly_the_configured_colour():
    rng = np.random.default_rng(0)
    rgb = np.clip(250 + rng.integers(-5, 6, (30, 30, 3)), 0, 255).astype(np.uint8)  # noisy near-white page
    rgb[10:20, 10:20] = (30, 30, 160)
    out = square_sprite(_decoded(rgb), PrepareConfig(resolution=30, margin=0.1, resample="nearest"))
    assert (out[0] == 255).all() and (out[:, 0] == 255).all()


@pytest.mark.parametrize("res", [8, 16, 64])
def test_resolutions(res):
    rgb = np.full((50, 30, 3), 255, np.uint8)
    rgb[10:40, 5:25] = (100, 100, 100)
    assert square_sprite(_decoded(rgb), PrepareConfig(resolution=res)).shape == (res, res, 3)
