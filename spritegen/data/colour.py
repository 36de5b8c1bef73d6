"""Primary and secondary colour of a sprite, measured from its pixels and named with the ten Pokédex colours.

Used by ``spritegen metadata`` (to write colour attributes and prompts) and by evaluation (to check that a
"red" prompt gives a red sprite), so both sides name colours with the same function::

    from spritegen.data.colour import measure_colours
    primary, secondary = measure_colours(image)           # image: (H, W, 3) uint8 on a white background

How it works, and why:

1. **Background removal by flood fill from the border**, not by a near-white threshold: white and very
   light Pokémon exist, and a threshold would erase them. Background is the set of near-background pixels
   (CIELAB distance below ``tolerance``) *connected to the image border*; a white belly enclosed by an
   outline stays foreground. A caller that knows the true alpha mask can pass it instead (``mask=``).
2. **The silhouette outline is ignored** (the ring of foreground pixels touching the background) when the
   interior is large enough: official art and pixel sprites draw a dark outline that would otherwise make
   half of all Pokémon "black".
3. **Naming in CIELAB** (perceptually uniform) by hue angle, chroma and lightness: shading changes a body
   colour's lightness but hardly its hue, so hue rules name a shaded surface consistently where a
   nearest-RGB lookup would split it into several names. Low-chroma pixels are black/gray/white.
4. **Achromatic pixels vote at half weight**: shading, highlights and inner lines are gray in most art and
   should not outvote the body colour.
5. The primary colour is the most voted name; the secondary is the next one if it has at least
   ``min_secondary`` of the votes, otherwise the primary again (a one-coloured sprite).

Pure functions of their inputs: no I/O, no randomness.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spritegen.data.vocab import COLOUR_NAMES

# Naming rules in CIELAB's cylindrical form (lightness L*, chroma C*, hue angle h in degrees). Measured on
# the default artworks: 42 of 64 hand-labelled species get their official Pokédex colour as primary with
# these rules, 31 with nearest-reference naming (the Pokédex itself is partly arbitrary: Charizard is
# "red" although it is orange, Gengar "purple" although its art is blue-gray).
ACHROMATIC_CHROMA = 12.0  # below this chroma a pixel is black / gray / white, named by lightness alone
DARK_L = 25.0  # any pixel darker than this reads as black, whatever its hue
# (hue_from, hue_to, name) for chromatic pixels; red and yellow hues split further by lightness/chroma below.
_HUES = (
    (45.0, 75.0, "orange"),
    (75.0, 105.0, "yellow"),
    (105.0, 195.0, "green"),
    (195.0, 295.0, "blue"),
    (295.0, 330.0, "purple"),
    (330.0, 350.0, "pink"),
)


# sRGB -> linear light for the 256 possible uint8 values: a lookup instead of a power per pixel.
_LINEAR = np.where(
    np.arange(256) / 255.0 <= 0.04045, np.arange(256) / 255.0 / 12.92, ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4
)
# linear sRGB -> XYZ, each row divided by the D65 white point so that white maps to (1, 1, 1)
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
) / np.array([[0.95047], [1.0], [1.08883]])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float CIELAB (D65)."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.size > 3 * 4096:
        # Images repeat colours heavily (flat sprite colours, a white page): convert each distinct colour
        # once. Exact, and several times faster on a 360x400 artwork.
        flat = rgb.reshape(-1, 3)
        codes = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
        unique, inverse = np.unique(codes, return_inverse=True)
        colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1).astype(np.uint8)
        return _srgb_to_lab(colours)[inverse.reshape(-1)].reshape(rgb.shape)
    return _srgb_to_lab(rgb)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    lin = _LINEAR[rgb]  # (..., 3)
    xyz = lin @ _RGB_TO_XYZ.T
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


_CODE = {n: i for i, n in enumerate(COLOUR_NAMES)}
_ORANGE = -1  # an intermediate hue, folded into red or brown below


def name_colours(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 sRGB -> (N,) indices into ``COLOUR_NAMES``.

    Achromatic pixels are named by lightness; chromatic ones by hue, with orange folded into red (bright)
    or brown (dark or dull), yellow into brown when dark or dull, and red into pink when light.
    """
    lab = srgb_to_lab(np.asarray(rgb, dtype=np.uint8).reshape(-1, 3))  # (N, 3)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    names = np.full(len(lab), _CODE["red"], dtype=np.int64)  # hue in [350, 45): red unless light (below)
    for lo, hi, name in _HUES:
        names[(hue >= lo) & (hue < hi)] = _ORANGE if name == "orange" else _CODE[name]
    names[(names == _CODE["red"]) & (L >= 62) & (chroma < 55)] = _CODE["pink"]
    orange = names == _ORANGE
    names[orange] = np.where((L[orange] < 55) | (chroma[orange] < 30), _CODE["brown"], _CODE["red"])
    names[(names == _CODE["yellow"]) & ((L < 55) | (chroma < 25))] = _CODE["brown"]
    achromatic = chroma < ACHROMATIC_CHROMA
    lightness = L[achromatic]
    names[achromatic] = np.where(
        lightness < 30, _CODE["black"], np.where(lightness < 80, _CODE["gray"], _CODE["white"])
    )
    names[(L < DARK_L) & ~achromatic] = _CODE["black"]
    return names


_ACHROMATIC = np.array([COLOUR_NAMES.index(n) for n in ("black", "gray", "white")])


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The Pokédex colour name of one sRGB colour."""
    return COLOUR_NAMES[int(name_colours(np.array([rgb], dtype=np.uint8))[0])]


def foreground_mask(
    image: np.ndarray,
    background: tuple[int, int, int] | list[tuple[int, int, int]] = (255, 255, 255),
    tolerance: float = 12.0,
) -> np.ndarray:
    """(H, W) bool: True where a pixel is *not* background.

    Background = pixels within ``tolerance`` (CIELAB ΔE76) of ``background`` that are connected
    (4-neighbourhood) to the image border. JPEG ringing around the creature stays within tolerance on a
    white page; enclosed light regions (a white belly) are kept as foreground. ``background`` may be a
    list of colours (e.g. a file's own page colour and the padding colour around it).
    """
    image = _check_image(image)
    colours = [background] if isinstance(background[0], (int, np.integer)) else list(background)
    lab = srgb_to_lab(image)  # (H, W, 3)
    near = np.zeros(image.shape[:2], dtype=bool)
    for colour in colours:
        bg_lab = srgb_to_lab(np.array(colour, dtype=np.uint8))
        near |= ((lab - bg_lab) ** 2).sum(-1) < tolerance**2
    labels, n = ndimage.label(near)
    is_background = np.zeros(n + 1, dtype=bool)
    is_background[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    is_background[0] = False  # label 0 = pixels that are not near the background colour
    return ~is_background[labels]


def colour_shares(
    image: np.ndarray,
    background: tuple[int, int, int] = (255, 255, 255),
    mask: np.ndarray | None = None,
    achromatic_weight: float = 0.5,
) -> dict[str, float]:
    """Weighted fraction of the foreground taken by each Pokédex colour name (sums to 1; empty if no
    foreground). Black, gray and white pixels count ``achromatic_weight`` each: shading, highlights and
    inner lines are achromatic in most art, so they should not outvote the body colour."""
    image = _check_image(image)
    fg = foreground_mask(image, background) if mask is None else np.asarray(mask, dtype=bool)
    if fg.shape != image.shape[:2]:
        raise ValueError(f"mask shape {fg.shape} does not match image {image.shape[:2]}")
    # Drop the silhouette outline when enough interior is left to name the body colour.
    interior = ndimage.binary_erosion(fg, border_value=0)
    if interior.sum() >= 0.3 * fg.sum() and interior.sum() >= 16:
        fg = interior
    pixels = image[fg]  # (N, 3)
    if len(pixels) == 0:
        return {}
    names = name_colours(pixels)
    weights = np.where(np.isin(names, _ACHROMATIC), achromatic_weight, 1.0)
    counts = np.bincount(names, weights=weights, minlength=len(COLOUR_NAMES))
    total = counts.sum()
    return {name: float(c) / total for name, c in zip(COLOUR_NAMES, counts) if c > 0}


def measure_colours(
    image: np.ndarray,
    background: tuple[int, int, int] = (255, 255, 255),
    mask: np.ndarray | None = None,
    min_secondary: float = 0.08,
) -> tuple[str, str]:
    """Primary and secondary Pokédex colour names of a sprite.

    Args:
        image: (H, W, 3) uint8 RGB, the creature composited on ``background``.
        background: the background colour; background pixels (flood-filled from the border) are excluded.
        mask: optional (H, W) bool foreground mask (e.g. ``alpha > 0``); replaces the flood fill.
        min_secondary: the second colour must cover this fraction of the foreground to count; otherwise
            the secondary equals the primary.

    Returns:
        ``(primary, secondary)``, each one of ``vocab.COLOUR_NAMES``. An image with no foreground at all
        (blank) returns the background's own name twice.
    """
    return pick_colours(colour_shares(image, background, mask), background, min_secondary)


def pick_colours(
    shares: dict[str, float], background: tuple[int, int, int] = (255, 255, 255), min_secondary: float = 0.08
) -> tuple[str, str]:
    """(primary, secondary) from :func:`colour_shares` output (see :func:`measure_colours`)."""
    if not shares:
        bg = colour_name(tuple(int(v) for v in background))
        return bg, bg
    # Ties broken by vocabulary order, so the result never depends on dict ordering.
    ranked = sorted(shares, key=lambda n: (-shares[n], COLOUR_NAMES.index(n)))
    primary = ranked[0]
    secondary = ranked[1] if len(ranked) > 1 and shares[ranked[1]] >= min_secondary else primary
    return primary, secondary


def border_colour(image: np.ndarray) -> tuple[int, int, int]:
    """The most common colour of the 1-pixel border, quantised to steps of 8: the background of an image
    that has no alpha channel (white for the default artworks, anything for a user's own folder)."""
    image = _check_image(image)
    edge = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (E, 3)
    q = (edge // 8).astype(np.int64)
    codes = q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    best = values[counts.argmax()]
    members = edge[codes == best]
    return tuple(int(v) for v in np.median(members, axis=0).round())


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image
