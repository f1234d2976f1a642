"""Colour correction (§5.5), numerically as HEAD's `color_ops.rs` does it, with §10.7 defect 2
fixed: the alpha channel is carried through unchanged (HEAD converted to RGB and lost it).

HEAD works in `f32`: the profile values are `f32`, every step computes in `f32` and each result is
clamped to 0..255 and rounded half away from zero (non-finite: 0). This port does the same
arithmetic in numpy `float32`, in the same order of operations, so it gives HEAD's bytes:

1. autocontrast (if `autocontrast_cutoff > 0`; the percentage itself is ignored): per channel
   `(v - min) / (max - min) * 255`, a channel with max = min is left alone;
2. brightness b: `v * b`;   3. contrast c: `(v - 128) * c + 128`;
4. saturation s: `gray = 0.299 R + 0.587 G + 0.114 B`, `v' = gray + (v - gray) * s`;
5. sharpness k (only k > 1): `v + (k - 1) * (v - blur(v))`, where blur is the `image` crate's
   Gaussian (0.25: sigma = 1.0, a normalised 5-tap kernel, edges replicated, separable in f32 rows then
   columns, rounded to 8 bits) -- reproduced here by `gaussian_blur` with the same kernel, edge
   handling and order of additions (equal to HEAD's up to the last bit of a float, which can only
   matter for a blurred value within 1e-5 of a .5 tie);
6. gamma g (g > 0): a table `255 * (i / 255) ^ (1 / g)`;   7. channel multipliers.

Each step runs only when its parameter differs from identity by more than `f32::EPSILON`.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from kroma.imaging.encode import decode, encode, normalize

KEYS = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "gamma",
    "autocontrast_cutoff",
    "red_multiplier",
    "green_multiplier",
    "blue_multiplier",
)
IDENTITY: dict[str, float] = {key: (0.0 if key == "autocontrast_cutoff" else 1.0) for key in KEYS}
# The §5.5 table abbreviates the multipliers; a profile dict may use either spelling.
ALIASES = {"red_multiplier": "red_mul", "green_multiplier": "green_mul", "blue_multiplier": "blue_mul"}


def _profile(**values: float) -> dict[str, float]:
    return {**IDENTITY, **values}


BUILTIN_PROFILES: dict[str, dict[str, float]] = {
    "neutral": _profile(contrast=1.02),
    "cinematic_warm": _profile(
        brightness=0.98,
        contrast=1.12,
        saturation=1.08,
        sharpness=1.04,
        gamma=1.03,
        red_multiplier=1.04,
        blue_multiplier=0.96,
    ),
    "cold_rain": _profile(
        brightness=0.97,
        contrast=1.1,
        saturation=0.95,
        sharpness=1.03,
        gamma=1.01,
        red_multiplier=0.97,
        blue_multiplier=1.05,
    ),
}
BUILTIN_SOURCE = "builtin"

_F32 = np.float32
_EPSILON = np.finfo(np.float32).eps  # Rust's f32::EPSILON


class ColorError(Exception):
    """A colour-settings or profile error; `message` is the contract's text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _number(value: Any) -> float | None:
    """A JSON number as a float (serde's `as_f64`: booleans and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_profile(obj: dict[str, Any]) -> dict[str, float]:
    """A full profile from a JSON object: each known numeric key, identity when missing or not a
    number. The table's short multiplier names (`red_mul`, ...) are accepted too."""
    profile = dict(IDENTITY)
    for key in KEYS:
        value = _number(obj.get(key))
        if value is None and key in ALIASES:
            value = _number(obj.get(ALIASES[key]))
        if value is not None:
            profile[key] = value
    return profile


def load_profiles(path: pathlib.Path) -> dict[str, dict[str, float]]:
    """The profiles of a colour settings file `{"profiles": {"<name>": {...}}}` (§5.5). ColorError:
    `missing color settings file: {path}`, `read settings '{path}': ...`, `parse settings
    '{path}': ...`, `settings file '{path}' is missing object field 'profiles'`, `profile '{name}'
    in '{path}' must be an object`."""
    if not path.is_file():
        raise ColorError(f"missing color settings file: {path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ColorError(f"read settings '{path}': {exc}") from exc
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ColorError(f"parse settings '{path}': {exc}") from exc
    profiles = parsed.get("profiles") if isinstance(parsed, dict) else None
    if not isinstance(profiles, dict):
        raise ColorError(f"settings file '{path}' is missing object field 'profiles'")
    out: dict[str, dict[str, float]] = {}
    for name, value in profiles.items():
        if not isinstance(value, dict):
            raise ColorError(f"profile '{name}' in '{path}' must be an object")
        out[name] = parse_profile(value)
    return out


def find_profile(profiles: dict[str, dict[str, float]], name: str, source: str) -> dict[str, float]:
    """The named profile, completed with identity values. `source` is the settings path or
    `builtin` (for the message `Profile '{name}' not found in {source}`)."""
    profile = profiles.get(name)
    if profile is None:
        raise ColorError(f"Profile '{name}' not found in {source}")
    return parse_profile(profile)


def _param(profile: dict[str, float], key: str) -> np.float32:
    value = _number(profile.get(key))
    if value is None and key in ALIASES:
        value = _number(profile.get(ALIASES[key]))
    return _F32(IDENTITY[key] if value is None else value)


def _differs(value: np.float32) -> bool:
    return bool(abs(value - _F32(1.0)) > _EPSILON)


def to_u8(values: np.ndarray) -> np.ndarray:
    """HEAD's `clamp_u8` on float32 values: clamp to 0..255, round half away from zero (exactly:
    floor, plus one when the fraction is >= 0.5), non-finite -> 0."""
    clamped = np.clip(values, 0.0, 255.0).astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        clamped = np.where(np.isfinite(values), clamped, np.float32(0.0)).astype(np.float32)
    whole = np.floor(clamped)
    clamped -= whole  # the fraction, exact in float32
    whole += clamped >= 0.5
    return whole.astype(np.uint8)


def _kernel(size: int, sigma: float) -> np.ndarray:
    """`image` 0.25's `get_gaussian_kernel_1d` in f32: exp(-((x - mean) / sigma)^2 / 2) * scale, then
    each weight times 1/sum."""
    sigma32 = _F32(sigma)
    scale = _F32(1.0) / (_F32(math.sqrt(_F32(2.0) * _F32(math.pi))) * sigma32)
    mean = _F32(size // 2)
    weights = np.empty(size, dtype=np.float32)
    total = _F32(0.0)
    for x in range(size):
        z = (_F32(x) - mean) / sigma32
        weight = _F32(math.exp(_F32(-0.5) * (z * z))) * scale
        weights[x] = weight
        total = _F32(total + weight)
    return (weights * (_F32(1.0) / total)).astype(np.float32)


def _convolve_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """A symmetric f32 convolution along `axis` with replicated edges, summed as `image` does:
    centre * k[c], then + (left + right) * k[i] from the outermost pair inwards."""
    half = kernel.size // 2
    pad = [(0, 0)] * values.ndim
    pad[axis] = (half, half)
    padded = np.pad(values, pad, mode="edge")
    length = values.shape[axis]

    def window(offset: int) -> np.ndarray:
        index = [slice(None)] * values.ndim
        index[axis] = slice(offset, offset + length)
        return padded[tuple(index)]

    out = window(half) * kernel[half]
    for i in range(half):
        pair = window(i) + window(kernel.size - 1 - i)
        pair *= kernel[i]
        out += pair
    return out


def gaussian_blur(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """HEAD's `image::imageops::blur(rgb, sigma)` (image 0.25): kernel size from sigma (5 for sigma = 1),
    rows then columns in f32, edges replicated, rounded to uint8."""
    size = max(3, int((((sigma - 0.8) / 0.3) + 1.0) * 2.0 + 1.0))
    size += 1 - size % 2
    kernel = _kernel(size, sigma)
    values = rgb.astype(np.float32)
    blurred = _convolve_axis(_convolve_axis(values, kernel, axis=1), kernel, axis=0)
    return to_u8(blurred)


_LEVELS = np.arange(256, dtype=np.uint8)


def _autocontrast_tables(rgb: np.ndarray) -> np.ndarray:
    """Per channel (3 x 256): `(v - min) / (max - min) * 255`, identity for a flat channel."""
    tables = np.tile(_LEVELS, (3, 1))
    if rgb.size == 0:
        return tables
    levels = _LEVELS.astype(np.float32)
    for channel in range(3):
        low, high = _F32(rgb[..., channel].min()), _F32(rgb[..., channel].max())
        if abs(high - low) < _EPSILON:
            continue
        tables[channel] = to_u8((levels - low) / (high - low) * _F32(255.0))
    return tables


def _saturation(rgb: np.ndarray, factor: np.float32) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    gray = _F32(0.299) * r + _F32(0.587) * g + _F32(0.114) * b
    out = np.empty_like(rgb)
    for i, channel in enumerate((r, g, b)):
        channel -= gray
        channel *= factor
        channel += gray
        out[..., i] = to_u8(channel)
    return out


def _sharpen(rgb: np.ndarray, factor: np.float32) -> np.ndarray:
    values = rgb.astype(np.float32)
    detail = values - gaussian_blur(rgb).astype(np.float32)
    detail *= factor - _F32(1.0)
    values += detail
    return to_u8(values)


def _gamma_table(gamma: np.float32) -> np.ndarray:
    inv = _F32(1.0) / max(gamma, _EPSILON)
    levels = (np.arange(256, dtype=np.float32) / _F32(255.0)).astype(np.float64)
    powered = np.power(levels, float(inv)).astype(np.float32)  # a correctly rounded powf
    return to_u8(powered * _F32(255.0))


def _apply_tables(rgb: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """`rgb` through per-channel lookup tables (3 x 256); the array itself if they are identity."""
    if np.array_equal(tables, np.tile(_LEVELS, (3, 1))):
        return rgb
    mapped = Image.fromarray(rgb, "RGB").point(tables.ravel().tolist())  # Pillow's per-band tables
    return np.asarray(mapped, dtype=np.uint8)


def apply_profile_array(rgb: np.ndarray, profile: dict[str, float]) -> np.ndarray:
    """The profile applied to an H x W x 3 uint8 array (§5.5, HEAD's arithmetic); a new array.

    The steps that map each 8-bit value on its own (autocontrast, brightness, contrast, and after
    the sharpening, gamma and the multipliers) run as per-channel lookup tables, each table built
    with the step's float32 formula and rounding, which gives the same bytes as applying the
    formula to every pixel. Overflows and NaNs (a huge or infinite parameter) follow IEEE 754
    quietly and end as 0, as in HEAD."""
    out = np.ascontiguousarray(rgb, dtype=np.uint8)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 array, got shape {rgb.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        return _apply_steps(out, profile)


def _apply_steps(out: np.ndarray, profile: dict[str, float]) -> np.ndarray:
    tables = (
        _autocontrast_tables(out) if _param(profile, "autocontrast_cutoff") > 0 else np.tile(_LEVELS, (3, 1))
    )
    brightness = _param(profile, "brightness")
    if _differs(brightness):
        tables = to_u8(tables.astype(np.float32) * brightness)
    contrast = _param(profile, "contrast")
    if _differs(contrast):
        tables = to_u8((tables.astype(np.float32) - _F32(128.0)) * contrast + _F32(128.0))
    out = _apply_tables(out, tables).copy()
    saturation = _param(profile, "saturation")
    if _differs(saturation):
        out = _saturation(out, saturation)
    sharpness = _param(profile, "sharpness")
    if _differs(sharpness) and sharpness > _F32(1.0) + _EPSILON:
        out = _sharpen(out, sharpness)
    tables = np.tile(_LEVELS, (3, 1))
    gamma = _param(profile, "gamma")
    if gamma > 0 and _differs(gamma):
        tables = np.tile(_gamma_table(gamma), (3, 1))
    multipliers = [_param(profile, key) for key in ("red_multiplier", "green_multiplier", "blue_multiplier")]
    if any(_differs(value) for value in multipliers):
        tables = to_u8(tables.astype(np.float32) * np.array(multipliers, dtype=np.float32)[:, None])
    return _apply_tables(out, tables)


def apply_profile(data: bytes, profile: dict[str, float], fmt: str = "png") -> bytes:
    """The image in `data` colour-corrected with `profile`, encoded as `fmt`. The RGB channels are
    corrected; an alpha channel is kept as it was (jpg still flattens onto white). ValueError when
    `data` is not an image or `fmt` is not png|jpg|jpeg|webp."""
    image = normalize(decode(data))
    pixels = np.asarray(image, dtype=np.uint8)
    corrected = apply_profile_array(pixels[..., :3], profile)
    if image.mode == "RGBA":
        out = Image.fromarray(np.dstack([corrected, pixels[..., 3]]), "RGBA")
    else:
        out = Image.fromarray(corrected, "RGB")
    return encode(out, fmt)
