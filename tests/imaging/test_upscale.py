"""The offline upscaler: Lanczos to exactly scale x the size, alpha kept without dark fringes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kroma.imaging.upscale import upscale


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_size_is_scale_times_the_input(scale: int) -> None:
    out = opened(upscale(png(Image.new("RGB", (7, 5), (10, 20, 30))), scale))
    assert out.size == (7 * scale, 5 * scale)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_a_flat_image_stays_flat() -> None:
    out = np.asarray(opened(upscale(png(Image.new("RGB", (6, 4), (200, 100, 50))), 2)))
    assert (out == [200, 100, 50]).all()


def test_alpha_is_kept() -> None:
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[4:12, 4:12] = (255, 0, 0, 255)
    out = opened(upscale(png(Image.fromarray(pixels, "RGBA")), 2))
    assert out.mode == "RGBA" and out.size == (32, 32)
    alpha = np.asarray(out)[..., 3]
    assert alpha[0, 0] == 0 and alpha[31, 31] == 0
    assert alpha[16, 16] == 255


def test_no_dark_fringe_where_red_meets_transparent_black() -> None:
    """Transparent pixels hold black; resampled straight (not premultiplied) they would darken the
    red edge. Premultiplied, every visible pixel stays pure red."""
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :4] = (255, 0, 0, 255)
    out = np.asarray(opened(upscale(png(Image.fromarray(pixels, "RGBA")), 4)))
    visible = out[..., 3] >= 16
    assert visible.any() and (~visible).any()
    assert (out[visible][:, 0] >= 250).all()
    assert (out[visible][:, 1:3] <= 5).all()


def test_jpg_and_webp_outputs() -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 3] = 0
    jpg = opened(upscale(png(Image.fromarray(pixels, "RGBA")), 2, fmt="jpg"))
    assert jpg.format == "JPEG" and jpg.size == (8, 8)
    assert np.asarray(jpg).min() >= 250  # transparent -> white
    webp = opened(upscale(png(Image.fromarray(pixels, "RGBA")), 2, fmt="webp"))
    assert webp.format == "WEBP" and webp.mode == "RGBA" and webp.size == (8, 8)


def test_scale_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^upscale scale must be >= 1$"):
        upscale(png(Image.new("RGB", (2, 2))), 0)
    with pytest.raises(ValueError, match=r"^upscale scale must be >= 1$"):
        upscale(png(Image.new("RGB", (2, 2))), -3)


def test_scale_must_be_at_most_255_and_an_integer() -> None:
    with pytest.raises(ValueError, match="<= 255"):
        upscale(png(Image.new("RGB", (1, 1))), 256)
    with pytest.raises(ValueError, match="integer"):
        upscale(png(Image.new("RGB", (1, 1))), 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer"):
        upscale(png(Image.new("RGB", (1, 1))), True)
    assert opened(upscale(png(Image.new("RGB", (1, 1))), 255)).size == (255, 255)


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a"):
        upscale(b"nope", 2)
    with pytest.raises(ValueError, match="unsupported image format"):
        upscale(png(Image.new("RGB", (1, 1))), 2, fmt="tiff")
