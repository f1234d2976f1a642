"""The offline "local" provider's renderer: an ink drawing of the scene (outlines, solid blacks,
hatching and cross-hatching on paper), shaped by the prompt's words and varied by the seed.

Deterministic: the same scene, style references, prompt, seed and size give the same PNG bytes.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

_WORDS = re.compile(r"[a-z]+")
_ORIENTATION = 0x0112  # the EXIF tag of the camera's orientation
NIGHT = frozenset({"night", "midnight", "nighttime", "dark", "moonlit", "moonlight"})
DUSK = frozenset({"dusk", "evening", "twilight", "sunset", "dawn"})
BRIGHT = frozenset({"day", "daylight", "sunny", "bright", "noon", "morning", "midday"})
NOIR = frozenset({"noir", "contrast", "dramatic", "stark", "shadows", "chiaroscuro"})
FOG = frozenset({"fog", "foggy", "mist", "misty", "haze", "hazy", "smoke"})
RAIN = frozenset({"rain", "rainy", "raining", "storm", "stormy", "downpour", "drizzle"})
SNOW = frozenset({"snow", "snowy", "snowing", "blizzard", "snowfall"})
WARM = frozenset({"warm", "sepia", "golden", "amber"})
COLOUR = frozenset(
    {"colour", "color", "coloured", "colored", "colourful", "colorful", "watercolour", "watercolor"}
)


@dataclass(frozen=True)
class Look:
    """Everything that shapes one render, resolved from the prompt, the seed and the size."""

    gamma: float  # > 1 darkens the mid-tones
    contrast: float
    hatch_level: float  # darkness above which single hatching starts
    cross_level: float  # ... cross-hatching
    black_level: float  # ... solid black
    line_sigma: float  # outline scale in pixels (thicker lines with larger values)
    line_threshold: float  # outline sensitivity (lower draws more lines)
    hatch_angle: float  # radians
    hatch_period: float  # pixels between hatch lines
    hatch_width: float  # pixels, the width of a hatch line at mid darkness
    grain: float  # specks per thousand pixels
    rain: bool
    snow: bool
    warmth: float  # target chroma delta of the sepia tint (0: none)
    wash: float  # share of the scene's own colour laid over the drawing (0: none)


def words_of(prompt: str) -> set[str]:
    return set(_WORDS.findall(prompt.lower()))


def look_for(prompt: str, seed: int, size: tuple[int, int]) -> Look:
    """The render parameters: the prompt picks the mood, the seed varies line weight, thresholds,
    hatch angle and grain within a small range, the size scales lines to the picture."""
    words = words_of(prompt)
    text = prompt.lower()
    rng = np.random.default_rng(seed & 0xFFFF_FFFF_FFFF_FFFF)
    jitter: list[float] = rng.uniform(-1.0, 1.0, size=8).tolist()
    scale = max(0.35, min(size) / 1024.0)
    gamma, contrast = 1.0, 1.0
    hatch_level, cross_level, black_level = 0.30, 0.50, 0.72
    if words & NIGHT:
        gamma *= 1.5
    elif words & DUSK:
        gamma *= 1.3
    if words & BRIGHT:
        gamma *= 0.8
    if words & NOIR or "heavy black" in text or "high contrast" in text:
        contrast *= 1.45
        black_level -= 0.10
        cross_level -= 0.05
    if words & FOG:
        contrast *= 0.7
        gamma *= 0.85
        black_level += 0.08
    warmth = 0.0
    if words & WARM:
        warmth = 1.2 + 1.0 * (jitter[6] + 1.0)  # 1.2 .. 3.2 around the guard's default 2.0
    return Look(
        gamma=gamma,
        contrast=contrast,
        hatch_level=hatch_level + 0.04 * jitter[0],
        cross_level=cross_level + 0.04 * jitter[1],
        black_level=black_level + 0.04 * jitter[2],
        line_sigma=(2.0 + 0.4 * jitter[3]) * scale,
        line_threshold=4.0 + 1.0 * jitter[4],
        hatch_angle=math.radians(45.0 + 15.0 * jitter[5]),
        hatch_period=max(3.0, 7.0 * scale),
        hatch_width=max(1.0, 2.0 * scale),
        grain=3.0 + 1.5 * jitter[7],
        rain=bool(words & RAIN),
        snow=bool(words & SNOW),
        warmth=warmth,
        wash=0.45 if words & COLOUR else 0.0,
    )


def _decode_rgb(data: bytes) -> Image.Image:
    """The image as RGB; transparent parts lie on white paper."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            upright = opened.getexif().get(_ORIENTATION, 1) in (None, 1)
            image = opened if upright else ImageOps.exif_transpose(opened)
    except Exception as exc:
        raise ValueError(f"scene image does not decode: {exc}") from exc
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit or float gray
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.size and values.max() > 255.0 else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0.0, 255.0).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image scaled to cover `size` and cropped to it around the centre (no distortion)."""
    width, height = size
    source_w, source_h = image.size
    if source_w * height > source_h * width:  # wider than the target: crop the sides
        crop_w, crop_h = source_h * width / height, float(source_h)
    else:
        crop_w, crop_h = float(source_w), source_w * height / width
    left, top = (source_w - crop_w) / 2.0, (source_h - crop_h) / 2.0
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def _style_tone(style_refs: list[bytes]) -> tuple[float, float] | None:
    """Mean and spread of the style references' luminance (0..1), or None without usable refs."""
    means, spreads = [], []
    for data in style_refs:
        try:
            with Image.open(io.BytesIO(data)) as ref:
                ref.draft("L", (128, 128))
                small = ref.convert("L")
                small.thumbnail((128, 128))
        except Exception:
            continue  # a reference that cannot be read simply does not influence the tone
        values = np.asarray(small, dtype=np.float32) / 255.0
        if values.size:
            means.append(float(values.mean()))
            spreads.append(float(values.std()))
    if not means:
        return None
    return float(np.mean(means)), float(np.mean(spreads))


def _darkness(
    blurred: Image.Image, look: Look, style: tuple[float, float] | None, size: tuple[int, int]
) -> np.ndarray:
    """Darkness 0..1 (1 is black) at `size`, from the softened half-size luminance: levels
    stretched, then contrast, the style references' tone and gamma, enlarged bilinearly so region
    borders are smooth curves."""
    tone = np.asarray(blurred, dtype=np.float32) / 255.0
    low, high = np.percentile(tone[::2, ::2], (1.0, 99.0))
    if high - low > 0.05:
        tone = (tone - low) / (high - low)
    contrast = look.contrast
    if style is not None:
        ref_mean, ref_spread = style
        tone = tone + 0.3 * (ref_mean - float(tone.mean()))
        spread = float(tone.std())
        if spread > 0.01:
            contrast *= float(np.clip(ref_spread / spread, 0.8, 1.25))
    tone = np.clip((tone - 0.5) * contrast + 0.5, 0.0, 1.0) ** look.gamma
    return _enlarge(1.0 - tone, size)


def _enlarge(field: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float field resized bilinearly to `size` (width, height); the usual case, a field at half
    size, is doubled in numpy (several times faster than a round trip through Pillow)."""
    width, height = size
    if field.shape == (height, width):
        return field.astype(np.float32, copy=False)
    if field.shape == ((height + 1) // 2, (width + 1) // 2):
        return _double(field.astype(np.float32, copy=False))[:height, :width]
    image = Image.fromarray(field.astype(np.float32, copy=False))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _double(field: np.ndarray) -> np.ndarray:
    """Bilinear 2x enlargement with pixel centres aligned (as Pillow's BILINEAR): each new pixel is
    3/4 of its source pixel and 1/4 of the neighbour on its side, the edges clamped."""
    height, width = field.shape
    wide = np.empty((height, 2 * width), dtype=np.float32)
    np.multiply(field, 0.75, out=wide[:, 0::2])
    wide[:, 1::2] = wide[:, 0::2]
    wide[:, 2::2] += 0.25 * field[:, :-1]
    wide[:, 0] += 0.25 * field[:, 0]
    wide[:, 1:-1:2] += 0.25 * field[:, 1:]
    wide[:, -1] += 0.25 * field[:, -1]
    out = np.empty((2 * height, 2 * width), dtype=np.float32)
    np.multiply(wide, 0.75, out=out[0::2])
    out[1::2] = out[0::2]
    out[2::2] += 0.25 * wide[:-1]
    out[0] += 0.25 * wide[0]
    out[1:-1:2] += 0.25 * wide[1:]
    out[-1] += 0.25 * wide[-1]
    return out


def _outlines(narrow: Image.Image, wide: Image.Image, look: Look, size: tuple[int, int]) -> np.ndarray:
    """Ink coverage 0..1 of the outlines: the dark side of a difference of Gaussians, found at half
    size and thresholded after enlarging, so lines stay crisp."""
    dog = np.asarray(wide, dtype=np.float32) - np.asarray(narrow, dtype=np.float32)
    lines = (_enlarge(dog, size) - look.line_threshold) * 0.3
    return np.clip(lines, 0.0, 1.0, out=lines)


def _hatch(
    shape: tuple[int, int], angle: float, look: Look, darkness: np.ndarray, phase: float
) -> np.ndarray:
    """Anti-aliased parallel lines at `angle`, thicker where the tone is darker, with a slight
    hand-drawn wobble."""
    height, width = shape
    xs = np.arange(width, dtype=np.float32) * math.cos(angle)
    ys = np.arange(height, dtype=np.float32)
    wobble = 0.6 * np.sin(ys * (2.0 * math.pi / (37.0 * look.hatch_period)) + phase)
    ys = ys * math.sin(angle) + wobble.astype(np.float32)
    u = xs[None, :] + ys[:, None]
    u *= 1.0 / look.hatch_period
    u -= np.floor(u)
    u -= 0.5
    np.abs(u, out=u)
    u *= look.hatch_period  # distance in pixels to the nearest line's centre
    half = (0.35 + darkness) * (0.5 * look.hatch_width)
    return np.clip(half + 0.5 - u, 0.0, 1.0)


def _step(values: np.ndarray, edge: float) -> np.ndarray:
    """A soft threshold: 0 below `edge`, 1 above, over a narrow ramp (smooth region borders)."""
    ramp = values * 25.0
    ramp += 0.5 - 25.0 * edge
    return np.clip(ramp, 0.0, 1.0, out=ramp)


def _weather(ink: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Rain as slanted streaks (dark on paper, light across blacks) and snow as white flakes."""
    height, width = ink.shape
    scale = max(0.35, min(width, height) / 1024.0)
    if look.rain:
        streaks = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(streaks)
        count = int(width * height / 1800)
        xs = rng.uniform(-0.3 * width, width, count)
        ys = rng.uniform(-0.1 * height, height, count)
        lengths = rng.uniform(18.0, 46.0, count) * scale
        slant = math.radians(72.0)
        stroke = max(1, round(1.3 * scale))
        for x, y, length in zip(xs.tolist(), ys.tolist(), lengths.tolist(), strict=True):
            draw.line(
                [(x, y), (x + length * math.cos(slant), y + length * math.sin(slant))], fill=255, width=stroke
            )
        mask = np.asarray(streaks, dtype=np.float32) / 255.0
        ink = ink + mask * (np.where(ink > 0.5, 0.25, 0.7) - ink)
    if look.snow:
        flakes = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(flakes)
        count = int(width * height / 3000)
        xs, ys = rng.uniform(0, width, count), rng.uniform(0, height, count)
        radii = rng.uniform(1.5, 4.5, count) * scale
        for x, y, r in zip(xs.tolist(), ys.tolist(), radii.tolist(), strict=True):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        ink = ink * (1.0 - np.asarray(flakes, dtype=np.float32) / 255.0)
    return ink


def _grain(ink: np.ndarray, amount: float, rng: np.random.Generator) -> None:
    """Scattered specks, in place: faint dots of ink on the paper and dry-brush gaps in the blacks
    (sparse, so the drawing stays crisp and compresses well)."""
    flat = ink.reshape(-1)
    count = int(flat.size * amount / 1000.0)
    spots = rng.integers(0, flat.size, size=count)
    weights = rng.uniform(0.15, 0.45, size=count).astype(np.float32)
    flat[spots] = np.where(flat[spots] > 0.5, flat[spots] - 2.0 * weights, flat[spots] + weights)


def _palette(look: Look, levels: np.ndarray) -> list[int]:
    """A 256-entry palette for the drawing's gray levels: a neutral ramp, or a sepia ramp whose
    mean chroma delta over these levels is the look's warmth (G scaled by 1 - s and B by 1 - 2s
    give a pixel of level v a chroma delta of 4*s*v/3)."""
    ramp = np.arange(256, dtype=np.float64)
    strength = 0.0
    if look.warmth > 0.0:
        strength = min(0.2, 3.0 * look.warmth / (4.0 * max(1.0, float(levels.mean()))))
    channels = (ramp, ramp * (1.0 - strength), ramp * (1.0 - 2.0 * strength))
    rgb = np.stack(channels, axis=1)
    return [int(v) for v in np.floor(rgb + 0.5).astype(np.uint8).reshape(-1)]


def _wash(drawing: Image.Image, look: Look, scene: Image.Image) -> Image.Image:
    """The drawing in RGB with the scene's own colour laid over it: each pixel multiplied by
    1 + wash * (scene colour - scene gray) / 160, so blacks stay black and paper takes the hue."""
    colour = np.asarray(scene.reduce(2) if min(scene.size) >= 64 else scene, dtype=np.float32)
    chroma = colour - colour.mean(axis=2, keepdims=True)
    tint = np.clip(255.0 + (look.wash * 1.6) * chroma + 0.5, 0.0, 255.0).astype(np.uint8)
    filter_ = Image.fromarray(tint).resize(drawing.size, Image.Resampling.BILINEAR)
    return ImageChops.multiply(Image.merge("RGB", [drawing] * 3), filter_)


def render_ink(
    scene: bytes,
    style_refs: list[bytes],
    prompt: str,
    seed: int,
    size: tuple[int, int] | None = None,
) -> bytes:
    """PNG bytes of an ink drawing of `scene` at `size` (default: the scene's size; another aspect
    ratio is filled by cropping the centre). The PNG is a palette image of a neutral gray ramp
    (chroma delta 0), or of a sepia ramp for "warm"/"sepia" prompts, or RGB with a colour wash for
    "colour"/"color" prompts. ValueError if the scene does not decode or `size` is not positive."""
    image = _decode_rgb(scene)
    width, height = size if size is not None else image.size
    if width < 1 or height < 1:
        raise ValueError(f"output size must be positive, got {width}x{height}")
    if image.size != (width, height):
        image = _fit(image, (width, height))
    look = look_for(prompt, seed, (width, height))
    rng = np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, 0x1DC])
    gray = image.convert("L")
    half = gray.reduce(2) if min(width, height) >= 64 else gray
    sigma = look.line_sigma * half.size[0] / width
    narrow = half.filter(ImageFilter.GaussianBlur(sigma))
    wide = half.filter(ImageFilter.GaussianBlur(sigma * 2.0))

    darkness = _darkness(narrow, look, _style_tone(style_refs), (width, height))
    shape = (height, width)
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    single = _hatch(shape, look.hatch_angle, look, darkness, phase)
    cross = _hatch(shape, look.hatch_angle - math.radians(70.0), look, darkness, phase + 1.0)
    ink = np.maximum(single * _step(darkness, look.hatch_level), cross * _step(darkness, look.cross_level))
    np.maximum(ink, _step(darkness, look.black_level), out=ink)
    np.maximum(ink, _outlines(narrow, wide, look, (width, height)), out=ink)
    if look.rain or look.snow:
        ink = _weather(ink, look, rng)
    _grain(ink, look.grain, rng)

    # Paper a touch off-white (254), ink a touch off-black (4).
    ink *= -250.0
    ink += 254.5
    levels = np.clip(ink, 0.0, 255.0, out=ink).astype(np.uint8)
    out = Image.fromarray(levels)
    if look.wash > 0.0:
        out = _wash(out, look, image)
    else:
        out.putpalette(_palette(look, levels))  # an L image given a palette becomes a P image
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
