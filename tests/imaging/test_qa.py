"""The output guard (§6.2-§6.4): the chroma metric, per-file verdicts, the report, rank, winner."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
from PIL import Image, ImageChops, ImageStat

from kroma.imaging import qa
from kroma.imaging.qa import GuardSettings


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def image_with_delta_just_above_two() -> Image.Image:
    """100,000 pixels of chroma 2 and one of chroma 8/3: delta 2.0000067, which rounds to 2.0."""
    pixels = np.zeros((1, 100_001, 3), dtype=np.uint8)
    pixels[0, :, 0] = 3
    pixels[0, 0, 0] = 4
    return Image.fromarray(pixels)


def reference_delta(image: Image.Image) -> float:
    """The script's formula: ImageChops.difference + ImageStat.mean per channel pair."""
    r, g, b = image.convert("RGB").split()

    def mean(a: Image.Image, c: Image.Image) -> float:
        return float(ImageStat.Stat(ImageChops.difference(a, c)).mean[0])

    return (mean(r, g) + mean(r, b) + mean(g, b)) / 3.0


# chroma_delta ---------------------------------------------------------------------------------


def test_neutral_gray_has_zero_chroma_delta() -> None:
    assert qa.chroma_delta(Image.new("RGB", (16, 9), (120, 120, 120))) == 0.0
    assert qa.chroma_delta(Image.new("L", (16, 9), 77)) == 0.0


def test_pure_red_has_chroma_delta_170() -> None:
    # |R-G| = 255, |R-B| = 255, |G-B| = 0 -> 510 / 3
    assert qa.chroma_delta(Image.new("RGB", (4, 4), (255, 0, 0))) == 170.0


def test_chroma_delta_averages_over_all_pixels() -> None:
    image = Image.new("RGB", (2, 1), (128, 128, 128))
    image.putpixel((0, 0), (255, 0, 0))
    assert qa.chroma_delta(image) == 85.0


def test_alpha_is_ignored_not_composited() -> None:
    transparent_red = Image.new("RGBA", (3, 3), (255, 0, 0, 0))
    assert qa.chroma_delta(transparent_red) == 170.0


def test_empty_image_has_zero_chroma_delta() -> None:
    assert qa.chroma_delta(Image.new("RGB", (0, 0))) == 0.0


def test_chroma_delta_matches_the_reference_formula_on_noise() -> None:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8))
    assert qa.chroma_delta(image) == pytest.approx(reference_delta(image), abs=1e-9)
    palette = image.convert("P")
    assert qa.chroma_delta(palette) == pytest.approx(reference_delta(palette), abs=1e-9)


def test_chroma_delta_of_1024x1536_takes_under_50_ms() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (1536, 1024, 3), dtype=np.uint8))
    qa.chroma_delta(image)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        qa.chroma_delta(image)
        best = min(best, time.perf_counter() - started)
    assert best < 0.050, f"chroma_delta took {best * 1000:.1f} ms"


def test_round4_rounds_half_away_from_zero_like_the_reference() -> None:
    assert qa.round4(0.03125) == 0.0313  # Python's round() would give 0.0312
    assert qa.round4(0.66666666) == 0.6667
    assert qa.round4(-0.03125) == -0.0313
    assert qa.round4(2.0) == 2.0


# check_file -----------------------------------------------------------------------------------


def test_gray_file_is_grayscale_like_without_reasons() -> None:
    entry = qa.check_file(png_bytes(Image.new("RGB", (8, 8), (90, 90, 90))), "out/a.png", GuardSettings())
    assert entry == {
        "file": "out/a.png",
        "chroma_delta": 0.0,
        "grayscale_like": True,
        "hard_fail_reasons": [],
        "soft_warnings": [],
    }


def test_colour_file_gets_a_soft_warning_by_default() -> None:
    entry = qa.check_file(png_bytes(Image.new("RGB", (8, 8), (255, 0, 0))), "a.png", GuardSettings())
    assert entry["chroma_delta"] == 170.0
    assert entry["grayscale_like"] is False
    assert entry["hard_fail_reasons"] == []
    assert entry["soft_warnings"] == ["chroma_exceeds_threshold"]


def test_fail_on_chroma_exceed_makes_the_excess_a_hard_failure() -> None:
    settings = GuardSettings(fail_on_chroma_exceed=True)
    entry = qa.check_file(png_bytes(Image.new("RGB", (8, 8), (255, 0, 0))), "a.png", settings)
    assert entry["hard_fail_reasons"] == ["chroma_exceeds_threshold"]
    assert entry["soft_warnings"] == []


def test_enforce_grayscale_fails_hard_and_still_warns_softly() -> None:
    settings = GuardSettings(enforce_grayscale=True)
    entry = qa.check_file(png_bytes(Image.new("RGB", (8, 8), (255, 0, 0))), "a.png", settings)
    assert entry["hard_fail_reasons"] == ["not_grayscale_like"]
    assert entry["soft_warnings"] == ["chroma_exceeds_threshold"]


def test_both_flags_give_both_hard_reasons_in_order() -> None:
    settings = GuardSettings(enforce_grayscale=True, fail_on_chroma_exceed=True)
    entry = qa.check_file(png_bytes(Image.new("RGB", (8, 8), (0, 0, 255))), "a.png", settings)
    assert entry["hard_fail_reasons"] == ["not_grayscale_like", "chroma_exceeds_threshold"]
    assert entry["soft_warnings"] == []


def test_threshold_compares_the_unrounded_delta() -> None:
    data = png_bytes(image_with_delta_just_above_two())
    entry = qa.check_file(data, "a.png", GuardSettings(max_chroma_delta=2.0))
    assert entry["chroma_delta"] == 2.0  # recorded rounded ...
    assert entry["grayscale_like"] is False  # ... but 2.0000067 > 2.0
    assert entry["soft_warnings"] == ["chroma_exceeds_threshold"]


def test_delta_equal_to_threshold_is_grayscale_like() -> None:
    entry = qa.check_file(png_bytes(Image.new("RGB", (5, 5), (3, 0, 0))), "a.png", GuardSettings())
    assert entry["chroma_delta"] == 2.0
    assert entry["grayscale_like"] is True
    assert entry["soft_warnings"] == []


def test_recorded_delta_is_rounded_to_four_places() -> None:
    image = Image.new("RGB", (3, 1), (0, 0, 0))
    image.putpixel((0, 0), (1, 0, 0))  # chroma 2/3 over 3 pixels -> 0.2222...
    entry = qa.check_file(png_bytes(image), "a.png", GuardSettings())
    assert entry["chroma_delta"] == 0.2222


def test_missing_input_is_input_not_found() -> None:
    assert qa.check_file(None, "outputs/x.png", GuardSettings()) == {
        "file": "outputs/x.png",
        "error": "input_not_found",
        "hard_fail_reasons": ["input_not_found"],
        "soft_warnings": [],
    }


def test_undecodable_bytes_are_image_read_failed_with_the_error_text() -> None:
    entry = qa.check_file(b"not an image at all", "bad.png", GuardSettings())
    assert entry["chroma_delta"] is None
    assert entry["grayscale_like"] is None
    assert entry["hard_fail_reasons"] == ["image_read_failed"]
    assert entry["soft_warnings"] == []
    assert isinstance(entry["error"], str) and entry["error"]


def test_truncated_png_is_image_read_failed() -> None:
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))
    entry = qa.check_file(data[: len(data) // 2], "cut.png", GuardSettings())
    assert entry["hard_fail_reasons"] == ["image_read_failed"]


# report ---------------------------------------------------------------------------------------


def test_report_counts_files_with_hard_failures_and_soft_warnings() -> None:
    settings = GuardSettings()
    files = [
        qa.check_file(png_bytes(Image.new("RGB", (4, 4), (50, 50, 50))), "a.png", settings),
        qa.check_file(png_bytes(Image.new("RGB", (4, 4), (250, 0, 0))), "b.png", settings),
        qa.check_file(b"garbage", "c.png", settings),
    ]
    document = qa.report(files, "outputs", settings)
    assert document == {
        "input": "outputs",
        "settings": {"max_chroma_delta": 2.0, "enforce_grayscale": False, "fail_on_chroma_exceed": False},
        "summary": {"total_files": 3, "hard_failures": 1, "soft_warnings": 1},
        "files": files,
    }


def test_report_of_a_missing_input_has_one_hard_failure_and_no_files_examined() -> None:
    settings = GuardSettings()
    document = qa.report([qa.check_file(None, "x.png", settings)], "x.png", settings)
    assert document["summary"] == {"total_files": 0, "hard_failures": 1, "soft_warnings": 0}


def test_report_of_a_folder_without_images_is_no_images_found() -> None:
    settings = GuardSettings()
    document = qa.report([qa.missing_entry("dir", qa.NO_IMAGES_FOUND)], "dir", settings)
    assert document["files"][0]["error"] == "no_images_found"
    assert document["summary"] == {"total_files": 0, "hard_failures": 1, "soft_warnings": 0}


def test_report_settings_clamp_a_negative_threshold_to_zero() -> None:
    document = qa.report([], "x", GuardSettings(max_chroma_delta=-1.0, enforce_grayscale=True))
    assert document["settings"] == {
        "max_chroma_delta": 0.0,
        "enforce_grayscale": True,
        "fail_on_chroma_exceed": False,
    }


# rank -----------------------------------------------------------------------------------------


def test_rank_follows_the_spec_example() -> None:
    document = {
        "summary": {"total_files": 2, "hard_failures": 0, "soft_warnings": 1},
        "files": [{"chroma_delta": 1.5}, {"chroma_delta": 2.75}],
    }
    assert qa.rank(document, 2.0) == {"hard_failures": 0, "soft_warnings": 1, "avg_chroma_exceed": 0.375}


def test_rank_ignores_files_without_a_finite_delta() -> None:
    document = {
        "summary": {"hard_failures": 1, "soft_warnings": 1},
        "files": [{"chroma_delta": None}, {"chroma_delta": 3.0}, {"error": "x"}, {"chroma_delta": math.nan}],
    }
    assert qa.rank(document, 2.0) == {"hard_failures": 1, "soft_warnings": 1, "avg_chroma_exceed": 1.0}


def test_rank_of_a_report_without_summary_or_files_is_all_zero() -> None:
    assert qa.rank({}, 2.0) == {"hard_failures": 0, "soft_warnings": 0, "avg_chroma_exceed": 0.0}


def test_rank_average_is_rounded_to_four_places() -> None:
    document = {"summary": {}, "files": [{"chroma_delta": 2.1}, {"chroma_delta": 2.0}, {"chroma_delta": 2.0}]}
    assert qa.rank(document, 2.0)["avg_chroma_exceed"] == 0.0333


def test_rank_of_a_checked_file_uses_the_rounded_delta() -> None:
    settings = GuardSettings()
    entry = qa.check_file(png_bytes(image_with_delta_just_above_two()), "a.png", settings)
    ranked = qa.rank(qa.report([entry], "a.png", settings), settings.max_chroma_delta)
    assert ranked == {"hard_failures": 0, "soft_warnings": 1, "avg_chroma_exceed": 0.0}


# pick_winner ----------------------------------------------------------------------------------


def candidate(index: int, status: str = "done", hard: int = 0, soft: int = 0, exceed: float = 0.0) -> dict:
    return {
        "candidate_index": index,
        "status": status,
        "rank": {"hard_failures": hard, "soft_warnings": soft, "avg_chroma_exceed": exceed},
    }


def test_winner_is_the_earliest_among_equals() -> None:
    winner = qa.pick_winner([candidate(3), candidate(1), candidate(2)])
    assert winner is not None and winner["candidate_index"] == 1


def test_winner_prefers_no_soft_warning_over_a_lower_index() -> None:
    winner = qa.pick_winner([candidate(1, soft=1, exceed=0.1), candidate(2)])
    assert winner is not None and winner["candidate_index"] == 2


def test_winner_prefers_the_smaller_chroma_excess() -> None:
    winner = qa.pick_winner([candidate(1, soft=1, exceed=0.9), candidate(2, soft=1, exceed=0.2)])
    assert winner is not None and winner["candidate_index"] == 2


def test_winner_orders_hard_failures_before_soft_warnings() -> None:
    winner = qa.pick_winner([candidate(1, hard=1), candidate(2, soft=3, exceed=5.0)])
    assert winner is not None and winner["candidate_index"] == 2


def test_only_done_candidates_can_win() -> None:
    winner = qa.pick_winner([candidate(1, status="failed_output_guard"), candidate(2, soft=1, exceed=4.0)])
    assert winner is not None and winner["candidate_index"] == 2


def test_no_done_candidate_means_no_winner() -> None:
    assert (
        qa.pick_winner([candidate(1, status="failed_output_guard"), candidate(2, status="generated")]) is None
    )
    assert qa.pick_winner([]) is None


def test_nan_excess_sorts_after_every_number() -> None:
    winner = qa.pick_winner([candidate(1, exceed=math.nan), candidate(2, exceed=math.inf)])
    assert winner is not None and winner["candidate_index"] == 2
