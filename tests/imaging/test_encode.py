"""Decoding and encoding for the post-process passes: png keeps alpha, jpg flattens onto white."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kroma.imaging.encode import canonical_format, decode, encode, flatten, normalize


def save(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgba_sample() -> Image.Image:
    """2 x 1: an opaque red pixel and a fully transparent blue one."""
    pixels = np.array([[[255, 0, 0, 255], [0, 0, 255, 0]]], dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA")


def test_decode_returns_a_loaded_image() -> None:
    image = decode(save(Image.new("RGB", (3, 2), (10, 20, 30))))
    assert image.size == (3, 2)
    assert image.getpixel((2, 1)) == (10, 20, 30)


@pytest.mark.parametrize("data", [b"", b"not an image at all", save(Image.new("RGB", (8, 8)))[:40]])
def test_decode_rejects_what_is_not_an_image(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a"):
        decode(data)


def test_decode_turns_an_exif_rotated_jpeg_upright() -> None:
    image = Image.new("RGB", (4, 2), (200, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    assert decode(save(image, "JPEG", exif=exif)).size == (2, 4)


def test_png_keeps_rgba_and_rgb_modes() -> None:
    rgba = Image.open(io.BytesIO(encode(rgba_sample(), "png")))
    assert rgba.mode == "RGBA"
    assert np.array_equal(np.asarray(rgba), np.asarray(rgba_sample()))
    rgb = Image.open(io.BytesIO(encode(Image.new("RGB", (2, 2), (1, 2, 3)), "PNG")))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (1, 2, 3)


def test_png_of_a_palette_with_transparency_becomes_rgba() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    out = Image.open(io.BytesIO(encode(palette, "png")))
    assert out.mode == "RGBA"
    assert np.asarray(out)[0, 0, 3] == 0
    assert out.getpixel((1, 0)) == (255, 255, 255, 255)


def test_gray_and_16_bit_images_become_8_bit_rgb() -> None:
    assert normalize(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(normalize(wide))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "JPG"])
def test_jpg_flattens_transparency_onto_white(fmt: str) -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (0, 0, 8, 16))
    data = encode(image, fmt)
    assert data[:3] == b"\xff\xd8\xff"
    out = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    assert np.abs(out[8, 12] - [255, 255, 255]).max() <= 2  # transparent -> white, not blue
    assert np.abs(out[8, 3] - [255, 0, 0]).max() <= 3


def test_flatten_blends_partial_alpha_with_white() -> None:
    half = Image.fromarray(np.array([[[0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    assert flatten(half).getpixel((0, 0)) == (127, 127, 127)


def test_webp_keeps_alpha() -> None:
    data = encode(rgba_sample().resize((16, 16), Image.Resampling.NEAREST), "webp")
    out = Image.open(io.BytesIO(data))
    assert out.format == "WEBP"
    assert out.mode == "RGBA"
    assert np.asarray(out)[8, 12, 3] == 0
    assert np.asarray(out)[8, 2, 3] == 255


def test_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unsupported image format 'gif'\. Expected png\|jpg\|jpeg\|webp\."):
        encode(Image.new("RGB", (1, 1)), "gif")
    assert canonical_format(" JPEG ") == "jpg"
