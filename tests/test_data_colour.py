"""Colour measurement: background by flood fill, CIELAB naming, primary/secondary shares."""

from __future__ import annotations

import numpy as np
import pytest

from spritegen.data.colour import border_colour, colour_name, foreground_mask, measure_colours, srgb_to_lab
from spritegen.data.vocab import COLOUR_NAMES, COLOURS

WHITE = (255, 255, 255)


def _disc(colour, size=64, radius=0.35, background=WHITE, outline=None):
    yy, xx = np.mgrid[:size, :size] + 0.5
    r = np.hypot(yy - size / 2, xx - size / 2) / size
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    img[r <= radius] = colour
    if outline is not None:
        img[(r > radius) & (r <= radius + 0.03)] = outline
    return img


def test_lab_of_known_colours():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)  # textbook sRGB red


def test_lab_large_image_path_equals_small_path():
    img = np.random.default_rng(0).integers(0, 256, (80, 80, 3)).astype(np.uint8)
    big = srgb_to_lab(img)  # > 4096 pixels: the distinct-colour path
    small = np.concatenate([srgb_to_lab(img[i : i + 1]) for i in range(len(img))])
    np.testing.assert_allclose(big, small)


@pytest.mark.parametrize("name", COLOUR_NAMES)
def test_reference_colours_name_themselves(name):
    assert colour_name(COLOURS[name]) == name


@pytest.mark.parametrize("name", [n for n in COLOUR_NAMES if n != "white"])
def test_single_coloured_disc(name):
    assert measure_colours(_disc(COLOURS[name])) == (name, name)


def test_primary_and_secondary():
    img = _disc(COLOURS["red"])
    img[20:44, 32:44] = COLOURS["blue"]  # a blue patch, smaller than the red body
    assert measure_colours(img) == ("red", "blue")


def test_tiny_second_colour_is_not_a_secondary():
    img = _disc(COLOURS["green"])
    img[31:33, 31:33] = COLOURS["red"]  # 4 pixels
    assert measure_colours(img) == ("green", "green")


def test_white_creature_with_outline_is_white_not_background():
    # A white body inside a dark outline: a near-white threshold would erase it; flood fill keeps it.
    img = _disc((245, 245, 245), outline=(30, 30, 30))
    mask = foreground_mask(img)
    assert mask[32, 32] and not mask[0, 0]
    assert measure_colours(img)[0] == "white"


def test_outline_does_not_become_the_primary_colour():
    img = _disc(COLOURS["yellow"], radius=0.3, outline=(20, 20, 20))
    assert measure_colours(img)[0] == "yellow"


def test_other_background_colour():
    img = _disc(COLOURS["yellow"], background=(0, 0, 0))
    assert measure_colours(img, background=(0, 0, 0)) == ("yellow", "yellow")
    assert border_colour(img) == (0, 0, 0)


def test_jpeg_like_noise_in_the_background_is_ignored():
    rng = np.random.default_rng(0)
    img = _disc(COLOURS["blue"]).astype(int) + rng.integers(-4, 5, (64, 64, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    assert measure_colours(img)[0] == "blue"
    assert not foreground_mask(img)[:5].any()


def test_explicit_mask_replaces_flood_fill():
    img = _disc(COLOURS["red"])
    mask = np.zeros((64, 64), bool)
    mask[:8, :8] = True  # only a white corner
    assert measure_colours(img, mask=mask)[0] == "white"


def test_blank_image_returns_the_background_name():
    assert measure_colours(np.full((16, 16, 3), 255, np.uint8)) == ("white", "white")


def test_shading_keeps_one_name():
    # A red ball shaded from light to dark is still red (hue-based naming in CIELAB).
    img = _disc(COLOURS["red"])
    shade = np.linspace(0.75, 1.15, 64)[None, :, None]
    body = foreground_mask(img)
    img = np.where(body[..., None], np.clip(img * shade, 0, 255), img).astype(np.uint8)
    assert measure_colours(img)[0] == "red"


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        measure_colours(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        measure_colours(_disc(COLOURS["red"]), mask=np.ones((4, 4), bool))


def test_deterministic():
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert measure_colours(img) == measure_colours(img.copy())
