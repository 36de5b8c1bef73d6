"""Defensive image decoding: any file in, an RGB image + alpha mask out, or a named reason to skip it.

Real sprite folders hold palette PNGs with a transparent index, LA/RGBA/CMYK/16-bit/grayscale files,
animated GIFs, phone photos with EXIF rotation, zero-byte or truncated downloads, text files renamed
``.png`` and, now and then, a decompression bomb. ``decode_image`` never raises on such data: it returns a
``Decoded`` or a ``Skip`` whose ``reason`` is one of ``SKIP_REASONS``, so a stage can count and report
every file it did not use (``data/ingest_report.json``) instead of crashing or dropping it silently.

    from spritegen.data.imageio import decode_image, composite
    result = decode_image(path, max_pixels=25_000_000)
    if isinstance(result, Skip): print(result.reason, result.detail)
    else: rgb = composite(result, background=(255, 255, 255))   # (H, W, 3) uint8
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Every reason a file can be skipped for, with the sentence written into reports. Fixed codes so that
# reports from two runs compare, and tests can check each kind.
SKIP_REASONS: dict[str, str] = {
    "missing": "file does not exist",
    "empty": "zero-byte file",
    "not_an_image": "content is not an image format Pillow can read (wrong extension?)",
    "too_many_pixels": "pixel count over the limit (decompression bomb guard), refused from the header",
    "truncated": "image data ends early (truncated download?)",
    "corrupt": "image data could not be decoded",
    "unsupported_mode": "pixel format that cannot be converted to RGB",
    "blank": "nothing but background after compositing (fully transparent or empty)",
}

DEFAULT_MAX_PIXELS = 25_000_000  # 5000 x 5000: far above any sprite, far below a bomb


@dataclass(frozen=True)
class Decoded:
    """A usable image: colours and coverage, kept apart so the caller chooses the background."""

    rgb: np.ndarray  # (H, W, 3) uint8, colours *not* composited (undefined where alpha is 0)
    alpha: np.ndarray | None  # (H, W) uint8, None when the file has no transparency
    width: int  # of the stored file, before EXIF rotation
    height: int
    format: str  # PNG, JPEG, GIF...
    mode: str  # Pillow mode of the file (P, LA, RGBA, CMYK, I;16...)
    frames: int  # > 1 for animations; the first frame is used


@dataclass(frozen=True)
class Skip:
    reason: str  # one of SKIP_REASONS
    detail: str  # short, path-free explanation (reports must be identical across machines)


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded | Skip:
    """Read one image file defensively. Never raises for bad data; returns ``Skip`` with its reason."""
    path = Path(path)
    if not path.is_file():
        return Skip("missing", SKIP_REASONS["missing"])
    if path.stat().st_size == 0:
        return Skip("empty", SKIP_REASONS["empty"])
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns above its global limit; ours (below) is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _decode_open(im, max_pixels)
    except Image.DecompressionBombError:
        return Skip("too_many_pixels", SKIP_REASONS["too_many_pixels"])
    except UnidentifiedImageError:
        return Skip("not_an_image", SKIP_REASONS["not_an_image"])
    except (EOFError, OSError, SyntaxError, ValueError, IndexError, MemoryError) as e:
        # Pillow reports truncation as OSError("image file is truncated ...") or EOFError, other
        # damage as OSError/SyntaxError/ValueError (broken PNG chunk, bad Huffman table...).
        message = str(e).lower()
        if isinstance(e, EOFError) or "truncated" in message or "end of file" in message:
            return Skip("truncated", f"{SKIP_REASONS['truncated']}: {type(e).__name__}")
        return Skip("corrupt", f"{SKIP_REASONS['corrupt']}: {type(e).__name__}")


def _decode_open(im: Image.Image, max_pixels: int) -> Decoded | Skip:
    # The header is parsed by Image.open; nothing has been decoded yet, so a bomb costs nothing here.
    width, height = im.size
    if width * height > max_pixels:
        return Skip("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    if width == 0 or height == 0:
        return Skip("corrupt", f"{SKIP_REASONS['corrupt']}: zero-sized image")
    fmt, mode = im.format or "unknown", im.mode
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1:
        im.seek(0)  # animated GIF/PNG/WebP: the first frame is the sprite's rest pose
    im.load()  # full decode: truncation and corruption surface here
    im = ImageOps.exif_transpose(im)  # phone photos: apply the EXIF orientation, then forget it
    rgb, alpha = _to_rgb_alpha(im)
    if rgb is None:
        return Skip("unsupported_mode", f"{SKIP_REASONS['unsupported_mode']}: {mode}")
    if alpha is not None and not alpha.any():
        return Skip("blank", SKIP_REASONS["blank"])
    return Decoded(rgb=rgb, alpha=alpha, width=width, height=height, format=fmt, mode=mode, frames=frames)


def _to_rgb_alpha(im: Image.Image) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Any Pillow mode -> ((H, W, 3) uint8, (H, W) uint8 alpha or None)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / 32-bit grayscale: Pillow's convert("L") clips at 255 instead of rescaling, which
        # turns a 16-bit image white. Rescale from the type's range instead.
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else 255.0
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    try:
        if has_alpha:
            rgba = np.asarray(im.convert("RGBA"))  # palette transparency and LA both become RGBA
            return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
        return np.asarray(im.convert("RGB")), None  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX...
    except (ValueError, OSError):
        return None, None


def composite(decoded: Decoded, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8: the image over ``background`` (alpha blending; opaque images unchanged)."""
    return composite_array(decoded.rgb, decoded.alpha, background)


def composite_array(
    rgb: np.ndarray, alpha: np.ndarray | None, background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """(H, W, 3) uint8 ``rgb`` with (H, W) uint8 ``alpha`` blended over ``background``."""
    if alpha is None:
        return rgb
    a = alpha.astype(np.float32)[..., None] / 255.0  # (H, W, 1)
    bg = np.array(background, dtype=np.float32)
    out = rgb.astype(np.float32) * a + bg * (1 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def foreground(decoded: Decoded, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """(H, W) bool mask of the creature: from alpha when the file has it, else by flood fill from the
    border (see :func:`spritegen.data.colour.foreground_mask`)."""
    from spritegen.data.colour import foreground_mask

    if decoded.alpha is not None:
        return decoded.alpha >= 128
    return foreground_mask(decoded.rgb, background)
