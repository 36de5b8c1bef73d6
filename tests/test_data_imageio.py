"""Defensive decoding: every kind of bad or unusual file, generated here with PIL (nothing shipped)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from spritegen.data.imageio import SKIP_REASONS, Decoded, Skip, composite, decode_image

RED = (220, 30, 30)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds no pixel data (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _noise(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_reasons_are_a_fixed_documented_set():
    assert set(SKIP_REASONS) == {
        "missing",
        "empty",
        "not_an_image",
        "too_many_pixels",
        "truncated",
        "corrupt",
        "unsupported_mode",
        "blank",
    }


def test_plain_rgb_png_and_jpeg(tmp_path):
    Image.new("RGB", (20, 10), RED).save(tmp_path / "a.png")
    Image.new("RGB", (20, 10), RED).save(tmp_path / "a.jpg", quality=95)
    for name in ("a.png", "a.jpg"):
        d = decode_image(tmp_path / name)
        assert isinstance(d, Decoded) and d.rgb.shape == (10, 20, 3) and d.alpha is None
        assert np.abs(d.rgb.astype(int) - RED).max() <= 3


def test_palette_with_transparency_becomes_alpha(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 255, 0] + list(RED) + [0] * (256 * 3 - 6))
    im.paste(1, (2, 2, 6, 6))  # red square on index 0, which is transparent
    im.save(tmp_path / "p.png", transparency=0)
    d = decode_image(tmp_path / "p.png")
    assert isinstance(d, Decoded) and d.mode == "P" and d.alpha is not None
    assert d.alpha[0, 0] == 0 and d.alpha[3, 3] == 255
    out = composite(d, (255, 255, 255))
    assert tuple(out[0, 0]) == (255, 255, 255)  # the green of index 0 never shows
    assert tuple(out[3, 3]) == RED


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_modes_composite_on_the_background(tmp_path, mode):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = (*RED, 255)
    im = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    path = tmp_path / f"{mode}.png"
    im.save(path)
    d = decode_image(path)
    assert isinstance(d, Decoded) and d.alpha is not None
    out = composite(d, (0, 0, 255))
    assert tuple(out[0, 0]) == (0, 0, 255)  # a configurable background, not always white
    assert out[4, 4].tolist() != [0, 0, 255]


def test_semi_transparent_pixels_blend(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (0, 0, 0, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    out = composite(decode_image(tmp_path / "half.png"), (255, 255, 255))
    assert 120 <= out[0, 0, 0] <= 135


def test_cmyk_jpeg_and_tiff(tmp_path):
    im = Image.new("RGB", (16, 16), RED).convert("CMYK")
    im.save(tmp_path / "c.jpg", quality=95)
    im.save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        d = decode_image(tmp_path / name)
        assert isinstance(d, Decoded) and d.mode == "CMYK"
        assert d.rgb[8, 8, 0] > 150 and d.rgb[8, 8, 1] < 90  # still reddish, not inverted


def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 40000, np.uint16)
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "g16.png")
    d = decode_image(tmp_path / "g16.png")
    assert isinstance(d, Decoded) and d.mode.startswith("I")
    assert d.rgb[1, 1].tolist() == [156, 156, 156]  # 40000 / 65535 * 255, not clipped to 255
    assert d.rgb[0, 0].tolist() == [255, 255, 255]


def test_16bit_rgb_png(tmp_path):
    # Pillow has no 16-bit RGB mode; write one by hand: IHDR bit depth 16, colour type 2.
    h = w = 4
    raw = b"".join(b"\x00" + struct.pack(">" + "HHH" * w, *([50000, 1000, 1000] * w)) for _ in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "rgb16.png").write_bytes(png)
    d = decode_image(tmp_path / "rgb16.png")
    assert isinstance(d, Decoded)
    assert d.rgb[0, 0, 0] > 180 and d.rgb[0, 0, 1] < 20


@pytest.mark.parametrize("mode", ["L", "1", "I"])
def test_grayscale_and_bilevel(tmp_path, mode):
    im = Image.new("L", (8, 8), 200)
    im = im.convert(mode)
    path = tmp_path / (f"{mode}.tif" if mode == "I" else f"{mode}.png")  # PNG cannot hold 32-bit integers
    im.save(path)
    d = decode_image(path)
    assert isinstance(d, Decoded) and d.rgb.shape == (8, 8, 3)
    assert d.rgb[0, 0, 0] == d.rgb[0, 0, 1] == d.rgb[0, 0, 2]


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    d = decode_image(tmp_path / "anim.gif")
    assert isinstance(d, Decoded) and d.frames == 3
    assert d.rgb[5, 5, 0] > 150 and d.rgb[5, 5, 2] < 80  # red, the first frame


def test_gif_with_transparency(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0] + list(RED) + [0] * (256 * 3 - 6))
    im.paste(1, (2, 2, 6, 6))
    im.save(tmp_path / "t.gif", transparency=0)
    d = decode_image(tmp_path / "t.gif")
    assert isinstance(d, Decoded) and d.alpha is not None and d.alpha[0, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 tall; left half red
    arr[:, :10] = RED
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    d = decode_image(tmp_path / "rot.jpg")
    assert isinstance(d, Decoded)
    assert d.rgb.shape == (20, 10, 3)  # displayed upright: 10 wide, 20 tall
    assert (d.width, d.height) == (20, 10)  # as stored in the file
    assert d.rgb[2, 5, 0] > 150  # the red half is now on top


def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch):
    # 6000 x 6000 claimed, no data: if the pixels were decoded, load() would be called.
    _png_header_only(tmp_path / "bomb.png", 6000, 6000)
    calls = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1) or real_load(self))
    r = decode_image(tmp_path / "bomb.png", max_pixels=25_000_000)
    assert isinstance(r, Skip) and r.reason == "too_many_pixels"
    assert calls == []  # refused before decoding anything


def test_huge_bomb_beyond_pillows_own_limit(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    r = decode_image(tmp_path / "bomb.png")
    assert isinstance(r, Skip) and r.reason == "too_many_pixels"


def test_pixel_limit_is_configurable(tmp_path):
    Image.new("RGB", (100, 100), RED).save(tmp_path / "a.png")
    assert isinstance(decode_image(tmp_path / "a.png", max_pixels=10_000), Decoded)
    assert decode_image(tmp_path / "a.png", max_pixels=9_999).reason == "too_many_pixels"


@pytest.mark.parametrize("ext", ["png", "jpg", "gif"])
def test_truncated_files(tmp_path, ext):
    Image.fromarray(_noise(64, 64)).save(tmp_path / f"full.{ext}")
    data = (tmp_path / f"full.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    r = decode_image(tmp_path / f"cut.{ext}")
    assert isinstance(r, Skip) and r.reason in ("truncated", "corrupt")
    if ext in ("png", "jpg"):
        assert r.reason == "truncated"


def test_zero_byte_missing_and_non_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a picture\n")
    (tmp_path / "html.jpg").write_text("<html><body>404 not found</body></html>")
    (tmp_path / "pdf.gif").write_bytes(b"%PDF-1.4\n" + bytes(200))
    assert decode_image(tmp_path / "empty.png").reason == "empty"
    assert decode_image(tmp_path / "nope.png").reason == "missing"
    for name in ("text.png", "html.jpg", "pdf.gif"):
        assert decode_image(tmp_path / name).reason == "not_an_image", name


def test_garbage_after_a_png_signature_never_raises(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):
        (tmp_path / f"g{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        r = decode_image(tmp_path / f"g{i}.png")
        assert isinstance(r, Skip) and r.reason in SKIP_REASONS


def test_fully_transparent_is_blank(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    r = decode_image(tmp_path / "clear.png")
    assert isinstance(r, Skip) and r.reason == "blank"


def test_details_hold_no_paths(tmp_path):
    (tmp_path / "text.png").write_text("nope")
    Image.fromarray(_noise()).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:100])
    for name in ("text.png", "cut.png"):
        assert str(tmp_path) not in decode_image(tmp_path / name).detail
