"""The offline upscaler (§5.4's Real-ESRGAN backends need a binary or a model; this one needs
neither): Pillow's Lanczos resampling to exactly `scale` times the size.

A transparent image is resampled premultiplied by its alpha (Pillow's `RGBa` mode), so the colour
hidden under fully transparent pixels cannot bleed into the edges as a dark (or any) fringe.
"""

from __future__ import annotations

from PIL import Image

from kroma.imaging.encode import canonical_format, decode, encode, normalize

MAX_SCALE = 255


def upscale(data: bytes, scale: int, fmt: str = "png") -> bytes:
    """The image in `data` resized with Lanczos to (width * scale, height * scale), encoded as
    `fmt` (png and webp keep the alpha; jpg flattens onto white). ValueError when `scale` is not an
    integer in 1..=255, `fmt` is not png|jpg|jpeg|webp, or `data` is not an image."""
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise ValueError(f"upscale scale must be an integer, got {scale!r}")
    if scale < 1:
        raise ValueError("upscale scale must be >= 1")
    if scale > MAX_SCALE:
        raise ValueError(f"upscale scale must be <= {MAX_SCALE}")
    canonical_format(fmt)  # reject an unknown format before the work
    image = normalize(decode(data))
    return encode(upscale_image(image, scale), fmt)


def upscale_image(image: Image.Image, scale: int) -> Image.Image:
    """`image` (RGB or RGBA) resized with Lanczos by an integer factor, RGBA premultiplied."""
    width, height = image.size
    size = (width * scale, height * scale)
    if scale == 1:
        return image.copy()
    if image.mode == "RGBA":
        premultiplied = image.convert("RGBa")
        return premultiplied.resize(size, Image.Resampling.LANCZOS).convert("RGBA")
    return image.resize(size, Image.Resampling.LANCZOS)
