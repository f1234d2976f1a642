"""The output guard (contract §6.2-§6.4): one metric, the chroma delta, its per-file verdict, the
report, a candidate's rank and the job's winner. Pure: bytes and dicts in, dicts out."""

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


class GuardSettings(msgspec.Struct, frozen=True):
    """The manifest's `output_guard` block (§6.1) with the contract's defaults."""

    max_chroma_delta: float = 2.0
    enforce_grayscale: bool = False
    fail_on_chroma_exceed: bool = False


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


def check_file(data: bytes | None, file: str, settings: GuardSettings) -> dict[str, Any]:
    """One file's verdict (§6.3). `data` None means the input does not exist (`input_not_found`);
    bytes that do not decode give `chroma_delta: null` and the hard reason `image_read_failed`.
    The unrounded delta is compared with the threshold; the recorded one is rounded to 4 places."""
    if data is None:
        return missing_entry(file, INPUT_NOT_FOUND)
    try:
        with Image.open(io.BytesIO(data)) as image:
            delta = chroma_delta(image)
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
    return {
        "file": file,
        "chroma_delta": round4(delta),
        "grayscale_like": grayscale_like,
        "hard_fail_reasons": hard,
        "soft_warnings": soft,
    }


def report(files: list[dict[str, Any]], input: str, settings: GuardSettings) -> dict[str, Any]:
    """The report document (§6.3) over `check_file`/`missing_entry` entries. `total_files` counts
    the images examined (entries carrying `chroma_delta`), so a missing input or an empty folder
    reports 0 files and 1 hard failure, as the reference does."""
    return {
        "input": input,
        "settings": {
            "max_chroma_delta": max(0.0, float(settings.max_chroma_delta)),
            "enforce_grayscale": settings.enforce_grayscale,
            "fail_on_chroma_exceed": settings.fail_on_chroma_exceed,
        },
        "summary": {
            "total_files": sum(1 for entry in files if "chroma_delta" in entry),
            "hard_failures": sum(1 for entry in files if entry.get("hard_fail_reasons")),
            "soft_warnings": sum(1 for entry in files if entry.get("soft_warnings")),
        },
        "files": files,
    }


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
