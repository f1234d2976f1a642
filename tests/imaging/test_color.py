"""Colour correction (§5.5): HEAD's float32 formulas step by step, with the alpha carried through
(§10.7 defect 2 fixed), profile files and their messages."""

from __future__ import annotations

import io
import json
import math
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from kroma.imaging.color import (
    BUILTIN_PROFILES,
    BUILTIN_SOURCE,
    ColorError,
    apply_profile,
    apply_profile_array,
    find_profile,
    gaussian_blur,
    load_profiles,
)

F = np.float32


def row(*values: int) -> np.ndarray:
    """A 1 x N gray image: each value in all three channels."""
    return np.repeat(np.array(values, dtype=np.uint8)[None, :, None], 3, axis=2)


def pixels(*colours: tuple[int, int, int]) -> np.ndarray:
    return np.array([colours], dtype=np.uint8)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# The reference, written out per pixel with float32 scalars (HEAD's `color_ops.rs`) -------------


def clamp_u8(value: np.float32) -> int:
    if not math.isfinite(float(value)):
        return 0
    return math.floor(min(max(float(value), 0.0), 255.0) + 0.5)


def blur_reference(image: np.ndarray) -> np.ndarray:
    """`image::imageops::blur(_, 1.0)`: 5 taps, edges replicated, rows then columns, float32."""
    scale = F(1.0) / (F(math.sqrt(F(2.0) * F(math.pi))) * F(1.0))
    raw = [F(math.exp(F(-0.5) * F(F(x - 2) * F(x - 2)))) * scale for x in range(5)]
    total = F(0.0)
    for weight in raw:
        total = F(total + weight)
    k = [F(weight * (F(1.0) / total)) for weight in raw]
    height, width, _ = image.shape

    def at(values: np.ndarray, y: int, x: int, c: int) -> np.float32:
        return F(values[min(max(y, 0), height - 1), min(max(x, 0), width - 1), c])

    rows = np.zeros(image.shape, dtype=np.float32)
    out = np.zeros(image.shape, dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            for c in range(3):
                acc = F(at(image, y, x, c) * k[2])
                acc = F(acc + F(at(image, y, x - 2, c) + at(image, y, x + 2, c)) * k[0])
                acc = F(acc + F(at(image, y, x - 1, c) + at(image, y, x + 1, c)) * k[1])
                rows[y, x, c] = acc
    for y in range(height):
        for x in range(width):
            for c in range(3):
                acc = F(at(rows, y, x, c) * k[2])
                acc = F(acc + F(at(rows, y - 2, x, c) + at(rows, y + 2, x, c)) * k[0])
                acc = F(acc + F(at(rows, y - 1, x, c) + at(rows, y + 1, x, c)) * k[1])
                out[y, x, c] = clamp_u8(acc)
    return out


EPS = np.finfo(np.float32).eps


def point(image: np.ndarray, fn: Callable[..., int]) -> np.ndarray:
    """Each value through `fn` (a per-value float32 formula ending in clamp_u8)."""
    return np.vectorize(fn)(image).astype(np.int64)


def ref_autocontrast(out: np.ndarray) -> np.ndarray:
    out = out.copy()
    for c in range(3):
        low, high = F(out[..., c].min()), F(out[..., c].max())
        if abs(F(high - low)) >= EPS:
            stretch = F(high - low)
            out[..., c] = point(
                out[..., c], lambda v, lo=low, d=stretch: clamp_u8(F(F(F(v) - lo) / d) * F(255.0))
            )
    return out


def ref_saturation(out: np.ndarray, s: np.float32) -> np.ndarray:
    out = out.copy()
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            r, g, b = (F(v) for v in out[y, x])
            gray = F(F(F(0.299) * r + F(0.587) * g) + F(0.114) * b)
            out[y, x] = [clamp_u8(F(gray + F(F(v - gray) * s))) for v in (r, g, b)]
    return out


def ref_sharpen(out: np.ndarray, k: np.float32) -> np.ndarray:
    blurred = blur_reference(out.astype(np.uint8)).astype(np.int64)
    amount = F(k - F(1.0))
    sharp = np.vectorize(lambda v, bl: clamp_u8(F(F(v) + F(amount * F(F(v) - F(bl))))))
    return sharp(out, blurred).astype(np.int64)


def ref_gamma(out: np.ndarray, gamma: np.float32) -> np.ndarray:
    inv = F(F(1.0) / max(gamma, EPS))
    lut = [clamp_u8(F(F(float(F(F(i) / F(255.0))) ** float(inv)) * F(255.0))) for i in range(256)]
    return point(out, lambda v: lut[v])


def reference(image: np.ndarray, profile: dict[str, float]) -> np.ndarray:
    def get(key: str, default: float) -> np.float32:
        return F(profile.get(key, default))

    def differs(value: np.float32) -> bool:
        return bool(abs(F(value - F(1.0))) > EPS)

    out = image.astype(np.int64)
    if get("autocontrast_cutoff", 0.0) > 0:
        out = ref_autocontrast(out)
    if differs(b := get("brightness", 1.0)):
        out = point(out, lambda v: clamp_u8(F(F(v) * b)))
    if differs(c := get("contrast", 1.0)):
        out = point(out, lambda v: clamp_u8(F(F(F(v) - F(128.0)) * c) + F(128.0)))
    if differs(s := get("saturation", 1.0)):
        out = ref_saturation(out, s)
    if differs(k := get("sharpness", 1.0)) and k > F(1.0) + EPS:
        out = ref_sharpen(out, k)
    if (gamma := get("gamma", 1.0)) > 0 and differs(gamma):
        out = ref_gamma(out, gamma)
    muls = [get(key, 1.0) for key in ("red_multiplier", "green_multiplier", "blue_multiplier")]
    if any(differs(m) for m in muls):
        for ch in range(3):
            out[..., ch] = point(out[..., ch], lambda v, m=muls[ch]: clamp_u8(F(F(v) * m)))
    return out.astype(np.uint8)


# Profiles -----------------------------------------------------------------------------------


def test_builtin_profiles_are_the_spec_table() -> None:
    def profile(
        b: float, c: float, s: float, k: float, g: float, r: float, gm: float, bm: float
    ) -> dict[str, float]:
        return {
            "brightness": b,
            "contrast": c,
            "saturation": s,
            "sharpness": k,
            "gamma": g,
            "autocontrast_cutoff": 0.0,
            "red_multiplier": r,
            "green_multiplier": gm,
            "blue_multiplier": bm,
        }

    expected = {
        "neutral": profile(1.0, 1.02, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        "cinematic_warm": profile(0.98, 1.12, 1.08, 1.04, 1.03, 1.04, 1.0, 0.96),
        "cold_rain": profile(0.97, 1.1, 0.95, 1.03, 1.01, 0.97, 1.0, 1.05),
    }
    assert expected == BUILTIN_PROFILES


def test_find_profile_in_the_builtins() -> None:
    assert find_profile(BUILTIN_PROFILES, "cold_rain", BUILTIN_SOURCE)["blue_multiplier"] == 1.05
    with pytest.raises(ColorError) as caught:
        find_profile(BUILTIN_PROFILES, "sepia", "builtin")
    assert caught.value.message == "Profile 'sepia' not found in builtin"
    assert str(caught.value) == "Profile 'sepia' not found in builtin"


def test_load_profiles_fills_missing_keys_with_identity(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "color.json"
    body = {"profiles": {"punchy": {"contrast": 1.5, "gamma": "high", "red_mul": 1.2}, "plain": {}}}
    path.write_text(json.dumps(body))
    profiles = load_profiles(path)
    assert profiles["plain"] == {**BUILTIN_PROFILES["neutral"], "contrast": 1.0}
    assert profiles["punchy"]["contrast"] == 1.5
    assert profiles["punchy"]["gamma"] == 1.0  # not a number: identity
    assert profiles["punchy"]["red_multiplier"] == 1.2  # the table's short name is accepted
    assert profiles["punchy"]["autocontrast_cutoff"] == 0.0
    with pytest.raises(ColorError, match=f"^Profile 'neutral' not found in {path}$"):
        find_profile(profiles, "neutral", str(path))


def test_custom_profiles_from_a_file_are_applied_in_float32(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "color.json"
    path.write_text(json.dumps({"profiles": {"punch": {"contrast": 1.1}, "cool": {"blue_multiplier": 1.05}}}))
    profiles = load_profiles(path)
    image = pixels((13, 128, 30), (50, 50, 50))
    # float32 as HEAD: (13 - 128) * 1.1f rounds to -126.5 exactly, + 128 = 1.5 -> 2 (float64:
    # 1.4999999999999858 -> 1).
    punch = apply_profile_array(image, find_profile(profiles, "punch", str(path)))
    assert punch.tolist() == [[[2, 128, 20], [42, 42, 42]]]
    # 30 * 1.05f = 31.499998 -> 31 and 50 * 1.05f = 52.499996 -> 52 (float64: 32 and 53).
    cool = apply_profile_array(image, find_profile(profiles, "cool", str(path)))
    assert cool.tolist() == [[[13, 128, 31], [50, 50, 52]]]
    for name in ("punch", "cool"):
        profile = find_profile(profiles, name, str(path))
        assert np.array_equal(apply_profile_array(image, profile), reference(image, profile))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[]", "settings file '{path}' is missing object field 'profiles'"),
        ('{"profile": {}}', "settings file '{path}' is missing object field 'profiles'"),
        ('{"profiles": []}', "settings file '{path}' is missing object field 'profiles'"),
        ('{"profiles": {"warm": 3}}', "profile 'warm' in '{path}' must be an object"),
    ],
)
def test_settings_file_errors(tmp_path: pathlib.Path, body: str, message: str) -> None:
    path = tmp_path / "color.json"
    path.write_text(body)
    with pytest.raises(ColorError) as caught:
        load_profiles(path)
    assert caught.value.message == message.format(path=path)


def test_a_missing_or_unparsable_settings_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ColorError) as caught:
        load_profiles(missing)
    assert caught.value.message == f"missing color settings file: {missing}"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ColorError, match=f"^parse settings '{broken}': "):
        load_profiles(broken)


# Each step on tiny arrays -------------------------------------------------------------------


def test_neutral_is_contrast_1_02_around_128() -> None:
    out = apply_profile_array(row(0, 25, 103, 128, 153, 200, 255), BUILTIN_PROFILES["neutral"])
    assert out[0, :, 0].tolist() == [0, 23, 103, 128, 154, 201, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_identity_profile_changes_nothing() -> None:
    image = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(apply_profile_array(image, {}), image)
    assert np.array_equal(apply_profile_array(image, {"sharpness": 0.5, "gamma": -2.0}), image)


def test_brightness_rounds_half_away_from_zero_and_clamps() -> None:
    assert apply_profile_array(row(3, 5, 255), {"brightness": 0.5})[0, :, 0].tolist() == [2, 3, 128]
    assert apply_profile_array(row(100, 200), {"brightness": 2.0})[0, :, 0].tolist() == [200, 255]


def test_contrast_pivots_on_128() -> None:
    assert apply_profile_array(row(0, 100, 128, 200), {"contrast": 2.0})[0, :, 0].tolist() == [
        0,
        72,
        128,
        255,
    ]


def test_brightness_runs_before_contrast() -> None:
    out = apply_profile_array(row(200), {"brightness": 0.5, "contrast": 2.0})
    assert out[0, 0, 0] == 72  # (200 * 0.5 - 128) * 2 + 128; the other order would give 128


def test_saturation_blends_with_float_luma() -> None:
    gray = apply_profile_array(pixels((255, 0, 0), (0, 255, 0), (0, 0, 255)), {"saturation": 0.0})
    assert gray.tolist() == [[[76, 76, 76], [150, 150, 150], [29, 29, 29]]]
    vivid = apply_profile_array(pixels((100, 50, 0)), {"saturation": 2.0})
    assert vivid.tolist() == [[[141, 41, 0]]]  # gray 59.25: 140.75, 40.75, -59.25


def test_sharpness_is_an_unsharp_mask_with_a_sigma_1_gaussian() -> None:
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    image[2, 2] = 100
    # blur at the centre: 100 * 0.40262^2 = 16.2 -> 16, so 100 + (2 - 1) * (100 - 16) = 184;
    # beside it: 0 + (0 - 10) -> 0.
    out = apply_profile_array(image, {"sharpness": 2.0})
    expected = np.zeros((5, 5, 3), dtype=np.uint8)
    expected[2, 2] = 184
    assert np.array_equal(out, expected)
    assert np.array_equal(apply_profile_array(image, {"sharpness": 0.5}), image)  # k < 1: no-op


def test_gaussian_blur_matches_the_reference_on_noise() -> None:
    image = np.random.default_rng(7).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    assert np.array_equal(gaussian_blur(image), blur_reference(image))
    flat = np.full((3, 4, 3), 77, dtype=np.uint8)
    assert np.array_equal(gaussian_blur(flat), flat)


def test_gamma_is_a_lookup_table() -> None:
    out = apply_profile_array(row(0, 1, 64, 255), {"gamma": 2.0})
    assert out[0, :, 0].tolist() == [0, 16, 128, 255]  # 255 * (v / 255) ** 0.5


def test_channel_multipliers() -> None:
    profile = {"red_multiplier": 1.5, "green_multiplier": 0.5, "blue_multiplier": 2.0}
    assert apply_profile_array(pixels((100, 100, 100), (200, 3, 130)), profile).tolist() == [
        [[150, 50, 200], [255, 2, 255]]
    ]


def test_autocontrast_stretches_each_channel_when_the_cutoff_is_positive() -> None:
    image = pixels((50, 10, 7), (100, 20, 7), (150, 30, 7))
    out = apply_profile_array(image, {"autocontrast_cutoff": 1.0})
    assert out[0, :, 0].tolist() == [0, 128, 255]  # 127.5 rounds up
    assert out[0, :, 1].tolist() == [0, 128, 255]
    assert out[0, :, 2].tolist() == [7, 7, 7]  # a flat channel is untouched
    assert np.array_equal(apply_profile_array(image, {"autocontrast_cutoff": 0.0}), image)


def test_non_finite_results_become_zero() -> None:
    assert apply_profile_array(row(0, 9, 255), {"brightness": math.inf})[0, :, 0].tolist() == [0, 0, 0]
    assert np.array_equal(apply_profile_array(row(0, 9), {"brightness": math.nan}), row(0, 9))


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_builtin_profiles_match_the_per_pixel_reference(name: str) -> None:
    image = np.random.default_rng(len(name)).integers(0, 256, (7, 6, 3), dtype=np.uint8)
    assert np.array_equal(
        apply_profile_array(image, BUILTIN_PROFILES[name]), reference(image, BUILTIN_PROFILES[name])
    )


def test_every_step_at_once_matches_the_per_pixel_reference() -> None:
    profile = {
        "autocontrast_cutoff": 2.0,
        "brightness": 1.1,
        "contrast": 0.9,
        "saturation": 1.3,
        "sharpness": 1.7,
        "gamma": 0.8,
        "red_multiplier": 0.9,
        "green_multiplier": 1.1,
        "blue_multiplier": 1.0,
    }
    image = np.random.default_rng(11).integers(20, 230, (6, 8, 3), dtype=np.uint8)
    assert np.array_equal(apply_profile_array(image, profile), reference(image, profile))


def test_huge_parameters_overflow_quietly_to_zero() -> None:
    assert apply_profile_array(row(0, 9), {"contrast": 1e39})[0, :, 0].tolist() == [0, 0]  # inf -> 0


def test_array_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        apply_profile_array(np.zeros((2, 2), dtype=np.uint8), {})


# Whole images -------------------------------------------------------------------------------


def test_alpha_is_carried_through_unchanged() -> None:
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    out = Image.open(
        io.BytesIO(apply_profile(png(Image.fromarray(rgba, "RGBA")), BUILTIN_PROFILES["cinematic_warm"]))
    )
    assert out.mode == "RGBA"
    result = np.asarray(out)
    assert np.array_equal(result[..., 3], rgba[..., 3])
    assert np.array_equal(
        result[..., :3], apply_profile_array(rgba[..., :3], BUILTIN_PROFILES["cinematic_warm"])
    )


def test_rgb_stays_rgb_and_other_modes_are_read_as_rgb() -> None:
    out = Image.open(
        io.BytesIO(apply_profile(png(Image.new("RGB", (3, 3), (25, 25, 25))), BUILTIN_PROFILES["neutral"]))
    )
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (23, 23, 23)
    gray = Image.open(io.BytesIO(apply_profile(png(Image.new("L", (2, 2), 25)), BUILTIN_PROFILES["neutral"])))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (23, 23, 23)


def test_jpg_output_is_flattened_onto_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    data = apply_profile(png(transparent), BUILTIN_PROFILES["neutral"], fmt="jpg")
    assert data[:3] == b"\xff\xd8\xff"
    assert np.asarray(Image.open(io.BytesIO(data))).min() >= 250


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a"):
        apply_profile(b"nope", BUILTIN_PROFILES["neutral"])
    with pytest.raises(ValueError, match="unsupported image format"):
        apply_profile(png(Image.new("RGB", (1, 1))), BUILTIN_PROFILES["neutral"], fmt="gif")
