"""The output guard (contract §6.2-§6.4): one metric, the chroma delta, its per-file verdict, the
report, a candidate's rank and the job's winner. Pure: bytes and dicts in, dicts out.

Beyond the reference's single metric, three optional checks (off unless their setting is given,
so the default report is the reference's): `wrong_size` (the decoded size is not
`expected_size`), `near_blank` (the standard deviation of the luma is below `min_contrast`) and
`geometry_drift` (1 - the similarity of the edge maps of the candidate and its scene is above
`max_geometry_drift`). Each is a soft warning unless named in `hard_checks`."""

from __future__ import annotations

import io
import math
import struct
from typing import Any

import msgspec
import numpy as np
from PIL import Image

INPUT_NOT_FOUND = "input_not_found"
IMAGE_READ_FAILED = "image_read_failed"
NO_IMAGES_FOUND = "no_images_found"
NOT_GRAYSCALE_LIKE = "not_grayscale_like"
CHROMA_EXCEEDS_THRESHOLD = "chroma_exceeds_threshold"
WRONG_SIZE = "wrong_size"
NEAR_BLANK = "near_blank"
GEOMETRY_DRIFT = "geometry_drift"
EXTRA_CHECKS = (WRONG_SIZE, NEAR_BLANK, GEOMETRY_DRIFT)

EDGE_WIDTH = 128  # the edge maps of the geometry check are compared at this width
EDGE_PERCENTILE = 85.0  # a pixel is an edge when its gradient is in the top 15% of the image ...
EDGE_FLOOR = 24.0  # ... and its Sobel magnitude (0..~1440 for 8-bit luma) is above this


class GuardSettings(msgspec.Struct, frozen=True):
    """The manifest's `output_guard` block (§6.1) with the contract's defaults."""

    max_chroma_delta: float = 2.0
    enforce_grayscale: bool = False
    fail_on_chroma_exceed: bool = False
    # Optional extra checks (None / empty: off, the reference's behaviour).
    expected_size: tuple[int, int] | None = None  # (width, height) -> `wrong_size`
    min_contrast: float | None = None  # luma standard deviation below it -> `near_blank`
    max_geometry_drift: float | None = None  # edge drift from the scene above it -> `geometry_drift`
    hard_checks: tuple[str, ...] = ()  # extra checks that fail hard instead of warning


def round4(value: float) -> float:
    """Round to 4 decimals half away from zero, as the reference does (`(v * 1e4).round() / 1e4`),
    not Python's round-half-to-even."""
    scaled = abs(value) * 10_000.0
    whole = math.floor(scaled)
    if scaled - whole >= 0.5:
        whole += 1
    return math.copysign(whole / 10_000.0, value)


def chroma_delta(image: Image.Image) -> float:
    """`(mean|R-G| + mean|R-B| + mean|G-B|) / 3` of the image as 8-bit RGB (alpha ignored);
    0.0 for an image without pixels. 0 is a perfectly neutral gray."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    count = width * height
    if count == 0:
        return 0.0
    pixels = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3).astype(np.int16)
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    # Sums of integers are exact in int64, so each mean is the exact quotient, as in the reference.
    rg = int(np.abs(r - g).sum(dtype=np.int64))
    rb = int(np.abs(r - b).sum(dtype=np.int64))
    gb = int(np.abs(g - b).sum(dtype=np.int64))
    return (rg / count + rb / count + gb / count) / 3.0


def missing_entry(file: str, reason: str, error: str | None = None) -> dict[str, Any]:
    """The entry for an input that yields no image to examine (§6.3): `input_not_found`,
    `no_images_found`, or `image_read_failed` for a folder that cannot be listed (then `error`
    is the listing error's text). Such an entry does not count in `total_files`."""
    return {"file": file, "error": error or reason, "hard_fail_reasons": [reason], "soft_warnings": []}


def check_file(
    data: bytes | None, file: str, settings: GuardSettings, scene: bytes | None = None
) -> dict[str, Any]:
    """One file's verdict (§6.3). `data` None means the input does not exist (`input_not_found`);
    bytes that do not decode give `chroma_delta: null` and the hard reason `image_read_failed`.
    The unrounded delta is compared with the threshold; the recorded one is rounded to 4 places.

    The extra checks run only when their setting is given, after the reference's reasons, and
    record their measure: `size: [w, h]`, `contrast` and `geometry_drift` (4 places; null, and no
    verdict, when no `scene` is given or it does not decode)."""
    if data is None:
        return missing_entry(file, INPUT_NOT_FOUND)
    try:
        with Image.open(io.BytesIO(data)) as image:
            delta = chroma_delta(image)
            measures = _measure_extras(image, settings, scene)
    except Exception as exc:  # any decode failure is the file's verdict, not the caller's error
        return {
            "file": file,
            "chroma_delta": None,
            "grayscale_like": None,
            "error": str(exc),
            "hard_fail_reasons": [IMAGE_READ_FAILED],
            "soft_warnings": [],
        }
    limit = settings.max_chroma_delta
    grayscale_like = delta <= limit
    hard: list[str] = []
    soft: list[str] = []
    if settings.enforce_grayscale and not grayscale_like:
        hard.append(NOT_GRAYSCALE_LIKE)
    if delta > limit:
        (hard if settings.fail_on_chroma_exceed else soft).append(CHROMA_EXCEEDS_THRESHOLD)
    entry: dict[str, Any] = {
        "file": file,
        "chroma_delta": round4(delta),
        "grayscale_like": grayscale_like,
        "hard_fail_reasons": hard,
        "soft_warnings": soft,
    }
    for reason, field, value, failed in measures:
        entry[field] = value
        if failed:
            (hard if reason in settings.hard_checks else soft).append(reason)
    return entry


def luma_contrast(image: Image.Image) -> float:
    """The population standard deviation of the luma `0.299 R + 0.587 G + 0.114 B` of the image as
    8-bit RGB (alpha ignored), in 8-bit levels; 0.0 for an image without pixels."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    if pixels.shape[0] == 0:
        return 0.0
    luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float64)
    return float(luma.std())


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as luma, scaled to cover `size` and cropped to it around the centre (as the local
    renderer fills another aspect ratio), with box filtering."""
    gray = image.convert("L")
    width, height = size
    source_w, source_h = gray.size
    if source_w * height > source_h * width:
        crop_w, crop_h = source_h * width / height, float(source_h)
    else:
        crop_w, crop_h = float(source_w), source_w * height / width
    left, top = (source_w - crop_w) / 2.0, (source_h - crop_h) / 2.0
    return gray.resize(size, Image.Resampling.BOX, box=(left, top, left + crop_w, top + crop_h))


def edge_map(gray: np.ndarray) -> np.ndarray:
    """Edges of a small luma image: Sobel gradient magnitude (edges replicated) at or above its
    `EDGE_PERCENTILE` and above `EDGE_FLOOR` (so a flat picture has no edges)."""
    padded = np.pad(gray.astype(np.float32), 1, mode="edge")
    h, w = gray.shape
    tl, tc, tr = padded[:h, :w], padded[:h, 1 : w + 1], padded[:h, 2:]
    ml, mr = padded[1 : h + 1, :w], padded[1 : h + 1, 2:]
    bl, bc, br = padded[2:, :w], padded[2:, 1 : w + 1], padded[2:, 2:]
    gx = (tr + 2.0 * mr + br) - (tl + 2.0 * ml + bl)
    gy = (bl + 2.0 * bc + br) - (tl + 2.0 * tc + tr)
    magnitude = np.hypot(gx, gy)
    if magnitude.size == 0:
        return np.zeros(gray.shape, dtype=bool)
    threshold = max(float(np.percentile(magnitude, EDGE_PERCENTILE)), EDGE_FLOOR)
    edges: np.ndarray = magnitude >= threshold
    return edges & (magnitude > EDGE_FLOOR)


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def geometry_drift(candidate: Image.Image, scene: Image.Image) -> float:
    """1 - the similarity of the edge maps of `candidate` and `scene`, both as luma at
    `EDGE_WIDTH` pixels wide (the candidate's aspect ratio; the scene cover-cropped to it).
    Similarity is the F1 score of edge matches within 1 px: precision = share of the candidate's
    edges near a scene edge, recall = share of the scene's edges near a candidate edge. 0 = the
    same drawing; 1 = nothing in common (or edges on one side only). Two edgeless images: 0."""
    width, height = candidate.size
    small_w = max(1, min(EDGE_WIDTH, width))
    small_h = max(1, round(small_w * height / width)) if width else 1
    size = (small_w, small_h)
    ours = edge_map(np.asarray(_cover(candidate, size)))
    theirs = edge_map(np.asarray(_cover(scene, size)))
    ours_n, theirs_n = int(ours.sum()), int(theirs.sum())
    if ours_n == 0 and theirs_n == 0:
        return 0.0
    if ours_n == 0 or theirs_n == 0:
        return 1.0
    precision = float((ours & _dilate(theirs)).sum()) / ours_n
    recall = float((theirs & _dilate(ours)).sum()) / theirs_n
    if precision + recall == 0.0:
        return 1.0
    return 1.0 - 2.0 * precision * recall / (precision + recall)


def _scene_drift(image: Image.Image, scene: bytes | None) -> float | None:
    if scene is None:
        return None
    try:
        with Image.open(io.BytesIO(scene)) as opened:
            opened.load()
            return geometry_drift(image, opened)
    except Exception:  # an unreadable scene leaves the check without a verdict
        return None


def _measure_extras(
    image: Image.Image, settings: GuardSettings, scene: bytes | None
) -> list[tuple[str, str, Any, bool]]:
    """(reason, entry field, recorded value, failed) for each extra check that is set."""
    out: list[tuple[str, str, Any, bool]] = []
    if settings.expected_size is not None:
        expected = (int(settings.expected_size[0]), int(settings.expected_size[1]))
        out.append((WRONG_SIZE, "size", list(image.size), tuple(image.size) != expected))
    if settings.min_contrast is not None:
        contrast = luma_contrast(image)
        out.append((NEAR_BLANK, "contrast", round4(contrast), contrast < settings.min_contrast))
    if settings.max_geometry_drift is not None:
        drift = _scene_drift(image, scene)
        recorded = None if drift is None else round4(drift)
        drifted = drift is not None and drift > settings.max_geometry_drift
        out.append((GEOMETRY_DRIFT, "geometry_drift", recorded, drifted))
    return out


def report(files: list[dict[str, Any]], input: str, settings: GuardSettings) -> dict[str, Any]:
    """The report document (§6.3) over `check_file`/`missing_entry` entries. `total_files` counts
    the images examined (entries carrying `chroma_delta`), so a missing input or an empty folder
    reports 0 files and 1 hard failure, as the reference does."""
    shown: dict[str, Any] = {
        "max_chroma_delta": max(0.0, float(settings.max_chroma_delta)),
        "enforce_grayscale": settings.enforce_grayscale,
        "fail_on_chroma_exceed": settings.fail_on_chroma_exceed,
    }
    if settings.expected_size is not None:  # the extra checks' settings only when set
        shown["expected_size"] = [int(settings.expected_size[0]), int(settings.expected_size[1])]
    if settings.min_contrast is not None:
        shown["min_contrast"] = float(settings.min_contrast)
    if settings.max_geometry_drift is not None:
        shown["max_geometry_drift"] = float(settings.max_geometry_drift)
    if settings.hard_checks:
        shown["hard_checks"] = list(settings.hard_checks)
    return {
        "input": input,
        "settings": shown,
        "summary": {
            "total_files": sum(1 for entry in files if "chroma_delta" in entry),
            "hard_failures": sum(1 for entry in files if entry.get("hard_fail_reasons")),
            "soft_warnings": sum(1 for entry in files if entry.get("soft_warnings")),
        },
        "files": files,
    }


def _invalid(key: str, value: Any) -> ValueError:
    return ValueError(f"invalid {key} '{value}'")


def _flag(block: dict[str, Any], key: str, default: bool) -> bool:
    value = block.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(key, value)
    return value


def _limit(block: dict[str, Any], key: str) -> float | None:
    """An optional finite number >= 0."""
    value = block.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _invalid(key, value)
    return float(value)


def _size(value: Any) -> tuple[int, int] | None:
    """`"WxH"` (any case, spaces allowed) or `[w, h]`, both positive integers."""
    if value is None:
        return None
    parts: list[Any]
    if isinstance(value, str):
        parts = [part.strip() for part in value.lower().split("x")]
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise _invalid("expected_size", value)
        parts = [int(part) for part in parts]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise _invalid("expected_size", value)
    if len(parts) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in parts):
        raise _invalid("expected_size", value)
    return (parts[0], parts[1])


def guard_settings(output_guard: dict[str, Any]) -> GuardSettings:
    """`GuardSettings` from a manifest `output_guard` block; absent or null keys take the defaults,
    unknown keys are ignored. ValueError `invalid {key} '{value}'` for a value of the wrong kind:
    `max_chroma_delta`, `min_contrast` and `max_geometry_drift` must be finite numbers >= 0, the
    flags booleans, `expected_size` "WxH" or [w, h] and `hard_checks` a list of extra check names
    (wrong_size, near_blank, geometry_drift)."""
    chroma = _limit(output_guard, "max_chroma_delta")
    names = output_guard.get("hard_checks")
    if names is None:
        names = []
    elif isinstance(names, str):
        names = [names]
    if not isinstance(names, list | tuple) or any(name not in EXTRA_CHECKS for name in names):
        raise _invalid("hard_checks", names)
    return GuardSettings(
        max_chroma_delta=2.0 if chroma is None else chroma,
        enforce_grayscale=_flag(output_guard, "enforce_grayscale", False),
        fail_on_chroma_exceed=_flag(output_guard, "fail_on_chroma_exceed", False),
        expected_size=_size(output_guard.get("expected_size")),
        min_contrast=_limit(output_guard, "min_contrast"),
        max_geometry_drift=_limit(output_guard, "max_geometry_drift"),
        hard_checks=tuple(dict.fromkeys(names)),
    )


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def rank(report: dict[str, Any], max_chroma_delta: float) -> dict[str, Any]:
    """A candidate's rank from its report (§6.4): the summary's counts (0 when absent) and the mean,
    over files with a finite recorded `chroma_delta`, of `max(0, delta - max_chroma_delta)`,
    rounded to 4 places (0.0 when there is no such file)."""
    summary = report.get("summary") or {}
    exceeds: list[float] = []
    for entry in report.get("files") or []:
        delta = entry.get("chroma_delta") if isinstance(entry, dict) else None
        if isinstance(delta, int | float) and not isinstance(delta, bool) and math.isfinite(delta):
            exceeds.append(max(0.0, float(delta) - max_chroma_delta))
    average = round4(sum(exceeds) / len(exceeds)) if exceeds else 0.0
    return {
        "hard_failures": _count(summary.get("hard_failures")),
        "soft_warnings": _count(summary.get("soft_warnings")),
        "avg_chroma_exceed": average,
    }


def _total_order(value: float) -> int:
    """An integer that sorts like IEEE 754 totalOrder (Rust's `f64::total_cmp`): NaN after +inf."""
    bits: int = struct.unpack("<q", struct.pack("<d", value))[0]
    return bits ^ 0x7FFF_FFFF_FFFF_FFFF if bits < 0 else bits


def _winner_key(candidate: dict[str, Any]) -> tuple[int, int, int, int]:
    rank_ = candidate.get("rank") or {}
    exceed = rank_.get("avg_chroma_exceed")
    exceed_value = float(exceed) if isinstance(exceed, int | float) else 0.0
    return (
        _count(rank_.get("hard_failures")),
        _count(rank_.get("soft_warnings")),
        _total_order(exceed_value),
        _count(candidate.get("candidate_index")),
    )


def pick_winner(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job's winner (§6.4): among `done` candidates, the least hard failures, then the least
    soft warnings, then the smallest average chroma excess, then the lowest `candidate_index`.
    None when no candidate is `done`."""
    done = [candidate for candidate in candidates if candidate.get("status") == "done"]
    return min(done, key=_winner_key) if done else None
