"""The contact sheet: one row per job, winner in green, rejects crossed out, placeholders."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from kroma.imaging import contact_sheet as cs


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def portrait(shade: int = 200, size: tuple[int, int] = (200, 300)) -> bytes:
    return encode(Image.new("RGB", size, (shade, shade, shade)))


def candidate(k: int, image: bytes | None, status: str = "done", winner: bool = False) -> dict[str, Any]:
    return {
        "label": f"c{k}",
        "image": image,
        "status": status,
        "winner": winner,
        "rank": {"hard_failures": 0 if status == "done" else 1, "soft_warnings": 0, "avg_chroma_exceed": 0.0},
    }


def sheet(jobs: list[dict[str, Any]]) -> np.ndarray:
    image = Image.open(io.BytesIO(cs.contact_sheet(jobs)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# The first cell's box: rows start below a title band; a thumbnail sits inside the border.
CELL_X, CELL_Y = cs.MARGIN, cs.MARGIN + 34
THUMB_X, THUMB_Y = CELL_X + cs.BORDER, CELL_Y + cs.BORDER


def is_colour(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixel - np.array(colour)).max() <= 12)


def test_winner_is_framed_in_green() -> None:
    pixels = sheet([{"job_key": "j1", "candidates": [candidate(1, portrait(), winner=True)]}])
    assert is_colour(pixels[THUMB_Y + 150, CELL_X + 2], cs.GREEN)  # left edge of the frame
    assert is_colour(pixels[THUMB_Y + 150, THUMB_X + 100], (200, 200, 200))  # the picture itself


def test_plain_done_candidate_has_no_green_frame() -> None:
    pixels = sheet([{"job_key": "j1", "candidates": [candidate(1, portrait())]}])
    assert not is_colour(pixels[THUMB_Y + 150, CELL_X + 2], cs.GREEN)


def test_rejected_candidate_is_crossed_out_in_red() -> None:
    pixels = sheet(
        [{"job_key": "j1", "candidates": [candidate(1, portrait(), status="failed_output_guard")]}]
    )
    centre = pixels[THUMB_Y + 150, THUMB_X + 100]  # where the two strokes of the X cross
    assert is_colour(centre, cs.RED)


def test_missing_image_is_a_grey_placeholder() -> None:
    pixels = sheet([{"job_key": "j1", "candidates": [candidate(1, None)]}])
    assert is_colour(pixels[THUMB_Y + 20, THUMB_X + 60], cs.PLACEHOLDER)


def test_unreadable_image_is_a_grey_placeholder_too() -> None:
    pixels = sheet([{"job_key": "j1", "candidates": [candidate(1, b"junk")]}])
    assert is_colour(pixels[THUMB_Y + 20, THUMB_X + 60], cs.PLACEHOLDER)


def test_thumbnails_are_at_most_256_tall_whatever_the_source() -> None:
    small = sheet([{"job_key": "j", "candidates": [candidate(1, portrait(size=(100, 150)))]}])
    huge = sheet([{"job_key": "j", "candidates": [candidate(1, portrait(size=(1000, 1500)))]}])
    assert small.shape == huge.shape
    column = huge[:, THUMB_X + 50]
    picture_rows = np.flatnonzero(np.all(np.abs(column - 200) <= 2, axis=1))
    assert len(picture_rows) == cs.THUMB_HEIGHT  # 1000x1500 shown at 171x256


def test_each_job_is_a_row_and_each_candidate_a_column() -> None:
    one = sheet([{"job_key": "a", "candidates": [candidate(1, portrait())]}])
    two_rows = sheet([{"job_key": "a", "candidates": [candidate(1, portrait())]}] * 2)
    three_columns = sheet([{"job_key": "a", "candidates": [candidate(k, portrait()) for k in (1, 2, 3)]}])
    assert two_rows.shape[0] > one.shape[0] + cs.THUMB_HEIGHT
    assert three_columns.shape[1] > one.shape[1] + 2 * 200 * cs.THUMB_HEIGHT // 300
    assert three_columns.shape[0] == one.shape[0]


def test_sheet_is_deterministic() -> None:
    jobs = [
        {
            "job_key": "scene_01",
            "candidates": [candidate(1, portrait(), winner=True), candidate(2, None, "failed_output_guard")],
        }
    ]
    assert cs.contact_sheet(jobs) == cs.contact_sheet(jobs)


def test_no_jobs_and_no_candidates_still_make_a_sheet() -> None:
    assert sheet([]).shape[0] > 0
    assert sheet([{"job_key": "empty", "candidates": []}]).shape[0] > 0
