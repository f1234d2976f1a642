"""Synthetic scenes drawn with Pillow: the demo project's inputs and the benchmarks' (no download)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def street_scene(size: tuple[int, int], seed: int) -> bytes:
    """A street at dusk as PNG bytes: sky gradient, buildings with lit windows, a moon; the
    buildings' widths and shades vary with `seed` (same seed, same picture)."""
    w, h = size
    image = Image.new("RGB", size, (210, 215, 225))
    draw = ImageDraw.Draw(image)
    for y in range(h // 2):
        shade = 150 + y * 90 // max(1, h // 2)
        draw.line([(0, y), (w, y)], fill=(shade, shade, min(255, shade + 15)))
    draw.ellipse([w // 2 - w // 12, h // 8, w // 2 + w // 12, h // 8 + w // 6], fill=(250, 240, 200))
    x, n = 0, seed + 1
    while x < w:
        n = (n * 1103515245 + 12345) % 2**31
        bw = w // 8 + n % max(1, w // 6)
        bh = h // 3 + n % max(1, h // 3)
        draw.rectangle([x, h - bh, x + bw, h], fill=(60 + n % 80, 60 + n % 70, 70 + n % 60))
        for wy in range(h - bh + h // 40, h - h // 40, max(8, h // 20)):
            for wx in range(x + w // 80 + 2, x + bw - w // 80 - 2, max(8, w // 26)):
                if (wx * 7 + wy * 13 + n) % 5:
                    draw.rectangle([wx, wy, wx + max(2, w // 64), wy + max(3, h // 60)], fill=(230, 210, 140))
        x += bw + max(2, w // 100)
    draw.rectangle([0, h - h // 12, w, h], fill=(45, 45, 50))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
