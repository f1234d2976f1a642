"""The output guard's optional extra checks: wrong size, near blank, geometry drift from the scene;
soft by default, hard when named; off (and the reference's report unchanged) unless set."""

from __future__ import annotations

import io

import msgspec
import numpy as np
import pytest
from PIL import Image, ImageDraw

from kroma.imaging import qa
from kroma.imaging.ink import render_ink
from kroma.imaging.qa import GuardSettings, guard_settings
from kroma.imaging.sketch import street_scene


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def halves(size: tuple[int, int] = (8, 4)) -> Image.Image:
    """Left half black, right half white: luma standard deviation exactly 127.5."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def shapes(boxes: list[tuple[int, int, int, int]], size: tuple[int, int] = (160, 120)) -> bytes:
    image = Image.new("RGB", size, (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle(box, fill=(30, 30, 30))
    return png(image)


# Defaults: the reference's behaviour, byte for byte -------------------------------------------


def test_default_settings_have_no_extras() -> None:
    settings = GuardSettings()
    assert settings.expected_size is None
    assert settings.min_contrast is None
    assert settings.max_geometry_drift is None
    assert settings.hard_checks == ()


def test_a_default_report_is_byte_identical_to_the_reference_shape() -> None:
    settings = GuardSettings()
    files = [
        qa.check_file(png(Image.new("RGB", (4, 4), (90, 90, 90))), "a.png", settings, scene=png(halves())),
        qa.check_file(png(Image.new("RGB", (4, 4), (255, 0, 0))), "b.png", settings),
        qa.check_file(None, "c.png", settings),
    ]
    assert msgspec.json.encode(qa.report(files, "outputs", settings)) == (
        b'{"input":"outputs","settings":{"max_chroma_delta":2.0,"enforce_grayscale":false,'
        b'"fail_on_chroma_exceed":false},"summary":{"total_files":2,"hard_failures":1,"soft_warnings":1},'
        b'"files":[{"file":"a.png","chroma_delta":0.0,"grayscale_like":true,"hard_fail_reasons":[],'
        b'"soft_warnings":[]},{"file":"b.png","chroma_delta":170.0,"grayscale_like":false,'
        b'"hard_fail_reasons":[],"soft_warnings":["chroma_exceeds_threshold"]},{"file":"c.png",'
        b'"error":"input_not_found","hard_fail_reasons":["input_not_found"],"soft_warnings":[]}]}'
    )


def test_a_scene_changes_nothing_without_the_drift_setting() -> None:
    data = png(halves())
    settings = GuardSettings(enforce_grayscale=True)
    assert qa.check_file(data, "x.png", settings, scene=png(Image.new("RGB", (3, 3)))) == qa.check_file(
        data, "x.png", settings
    )


# wrong_size ---------------------------------------------------------------------------------


def test_wrong_size_is_a_soft_warning_with_the_size_recorded() -> None:
    entry = qa.check_file(png(halves((8, 4))), "a.png", GuardSettings(expected_size=(4, 8)))
    assert entry["size"] == [8, 4]
    assert entry["soft_warnings"] == ["wrong_size"]
    assert entry["hard_fail_reasons"] == []


def test_the_right_size_passes_and_is_still_recorded() -> None:
    entry = qa.check_file(png(halves((8, 4))), "a.png", GuardSettings(expected_size=(8, 4)))
    assert entry["size"] == [8, 4]
    assert entry["soft_warnings"] == [] and entry["hard_fail_reasons"] == []


def test_wrong_size_can_be_a_hard_failure() -> None:
    settings = GuardSettings(expected_size=(4, 8), hard_checks=("wrong_size",))
    entry = qa.check_file(png(halves((8, 4))), "a.png", settings)
    assert entry["hard_fail_reasons"] == ["wrong_size"]
    assert entry["soft_warnings"] == []


# near_blank ---------------------------------------------------------------------------------


def test_contrast_is_the_standard_deviation_of_the_luma() -> None:
    assert qa.luma_contrast(halves()) == pytest.approx(127.5, abs=1e-9)
    assert qa.luma_contrast(Image.new("RGB", (5, 5), (10, 200, 30))) == pytest.approx(0.0, abs=1e-9)
    assert qa.luma_contrast(Image.new("RGB", (0, 0))) == 0.0
    # luma of pure red is 76.245, of black 0: std = 38.1225 for half and half
    red = Image.new("RGB", (2, 1), (0, 0, 0))
    red.putpixel((1, 0), (255, 0, 0))
    assert qa.luma_contrast(red) == pytest.approx(38.1225, abs=1e-9)


def test_a_near_blank_image_gets_a_soft_warning() -> None:
    flat = Image.new("RGB", (10, 10), (128, 128, 128))
    flat.putpixel((0, 0), (138, 138, 138))  # std 0.995
    entry = qa.check_file(png(flat), "a.png", GuardSettings(min_contrast=4.0))
    assert entry["contrast"] == 0.995
    assert entry["soft_warnings"] == ["near_blank"]
    assert entry["hard_fail_reasons"] == []


def test_enough_contrast_passes_and_equal_is_not_blank() -> None:
    entry = qa.check_file(png(halves()), "a.png", GuardSettings(min_contrast=127.0))
    assert entry["contrast"] == 127.5
    assert entry["soft_warnings"] == [] and entry["hard_fail_reasons"] == []
    flat = qa.check_file(png(Image.new("RGB", (3, 3), (9, 9, 9))), "b.png", GuardSettings(min_contrast=0.0))
    assert flat["contrast"] == 0.0
    assert flat["soft_warnings"] == []  # 0 is not below 0


def test_near_blank_can_be_a_hard_failure() -> None:
    settings = GuardSettings(min_contrast=1.0, hard_checks=("near_blank",))
    entry = qa.check_file(png(Image.new("RGB", (6, 6), (250, 250, 250))), "a.png", settings)
    assert entry["contrast"] == 0.0
    assert entry["hard_fail_reasons"] == ["near_blank"]


# geometry_drift -----------------------------------------------------------------------------


def test_the_same_drawing_has_no_drift_and_a_different_one_drifts() -> None:
    scene = Image.open(io.BytesIO(shapes([(20, 20, 60, 100), (90, 40, 140, 80)])))
    assert qa.geometry_drift(scene, scene) == 0.0
    other = Image.open(io.BytesIO(shapes([(100, 10, 150, 30)])))
    assert qa.geometry_drift(other, scene) > 0.6
    blank = Image.new("RGB", (160, 120), (235, 235, 235))
    assert qa.geometry_drift(blank, scene) == 1.0
    assert qa.geometry_drift(blank, blank) == 0.0


def test_a_shifted_or_rescaled_copy_stays_close() -> None:
    scene = Image.open(io.BytesIO(shapes([(20, 20, 60, 100), (90, 40, 140, 80)])))
    shifted = Image.open(io.BytesIO(shapes([(21, 20, 61, 100), (91, 40, 141, 80)])))
    assert qa.geometry_drift(shifted, scene) < 0.1
    assert qa.geometry_drift(scene.resize((320, 240)), scene) < 0.1


def test_an_ink_render_stays_close_to_its_scene_and_far_from_another() -> None:
    scene = street_scene((192, 288), 1)
    ink = Image.open(io.BytesIO(render_ink(scene, [], "a street at dusk", 4)))
    own = qa.geometry_drift(ink, Image.open(io.BytesIO(scene)))
    other = qa.geometry_drift(ink, Image.open(io.BytesIO(street_scene((192, 288), 3))))
    assert own < 0.15
    assert other > own + 0.2


def test_geometry_drift_is_a_soft_warning_then_hard_when_named() -> None:
    scene = shapes([(20, 20, 60, 100)])
    candidate = shapes([(100, 10, 150, 30)])
    soft = qa.check_file(candidate, "a.png", GuardSettings(max_geometry_drift=0.3), scene=scene)
    assert soft["soft_warnings"] == ["geometry_drift"]
    assert 0.3 < soft["geometry_drift"] <= 1.0
    hard_settings = GuardSettings(max_geometry_drift=0.3, hard_checks=("geometry_drift",))
    hard = qa.check_file(candidate, "a.png", hard_settings, scene=scene)
    assert hard["hard_fail_reasons"] == ["geometry_drift"]
    same = qa.check_file(scene, "a.png", hard_settings, scene=scene)
    assert same["geometry_drift"] == 0.0 and same["hard_fail_reasons"] == []


def test_no_scene_or_an_unreadable_one_gives_no_drift_verdict() -> None:
    settings = GuardSettings(max_geometry_drift=0.0, hard_checks=("geometry_drift",))
    for scene in (None, b"not an image"):
        entry = qa.check_file(shapes([(20, 20, 60, 100)]), "a.png", settings, scene=scene)
        assert entry["geometry_drift"] is None
        assert entry["hard_fail_reasons"] == [] and entry["soft_warnings"] == []


# All together -------------------------------------------------------------------------------


def test_extra_reasons_follow_the_reference_ones_and_feed_the_summary_and_rank() -> None:
    settings = GuardSettings(
        fail_on_chroma_exceed=True,
        expected_size=(9, 9),
        min_contrast=5.0,
        max_geometry_drift=0.5,
        hard_checks=("near_blank",),
    )
    red = png(Image.new("RGB", (6, 6), (255, 0, 0)))
    entry = qa.check_file(red, "a.png", settings, scene=shapes([(20, 20, 60, 100)]))
    assert entry["hard_fail_reasons"] == ["chroma_exceeds_threshold", "near_blank"]
    assert entry["soft_warnings"] == ["wrong_size", "geometry_drift"]
    assert (entry["size"], entry["contrast"], entry["geometry_drift"]) == ([6, 6], 0.0, 1.0)
    soft_only = qa.check_file(png(halves((9, 9))), "b.png", GuardSettings(expected_size=(8, 8)))
    document = qa.report([entry, soft_only], "out", settings)
    assert document["summary"] == {"total_files": 2, "hard_failures": 1, "soft_warnings": 2}
    assert document["settings"] == {
        "max_chroma_delta": 2.0,
        "enforce_grayscale": False,
        "fail_on_chroma_exceed": True,
        "expected_size": [9, 9],
        "min_contrast": 5.0,
        "max_geometry_drift": 0.5,
        "hard_checks": ["near_blank"],
    }
    assert qa.rank(qa.report([soft_only], "out", settings), 2.0) == {
        "hard_failures": 0,
        "soft_warnings": 1,
        "avg_chroma_exceed": 0.0,
    }


def test_an_undecodable_file_is_unchanged_by_the_extras() -> None:
    settings = GuardSettings(expected_size=(1, 1), min_contrast=1.0, max_geometry_drift=0.1)
    assert qa.check_file(b"junk", "c.png", settings) == qa.check_file(b"junk", "c.png", GuardSettings())


def test_all_extras_on_a_full_size_render() -> None:
    scene = street_scene((1024, 1536), 2)
    ink = render_ink(scene, [], "a street at night", 2)
    settings = guard_settings(
        {
            "expected_size": "1024x1536",
            "min_contrast": 10,
            "max_geometry_drift": 0.25,
            "hard_checks": ["geometry_drift"],
        }
    )
    entry = qa.check_file(ink, "ink.png", settings, scene=scene)
    assert entry["size"] == [1024, 1536]
    assert entry["contrast"] > 10
    assert entry["geometry_drift"] < 0.25
    assert entry["hard_fail_reasons"] == [] and entry["soft_warnings"] == []


# guard_settings -----------------------------------------------------------------------------


def test_guard_settings_of_an_empty_block_are_the_defaults() -> None:
    assert guard_settings({}) == GuardSettings()
    assert guard_settings({"max_chroma_delta": None, "enforce_grayscale": None}) == GuardSettings()


def test_guard_settings_reads_every_key_and_ignores_unknown_ones() -> None:
    block = {
        "max_chroma_delta": 3,
        "enforce_grayscale": True,
        "fail_on_chroma_exceed": True,
        "expected_size": "1024X1536",
        "min_contrast": 6.5,
        "max_geometry_drift": 0.4,
        "hard_checks": ["wrong_size", "geometry_drift", "wrong_size"],
        "enabled": True,
        "something_else": [1, 2],
    }
    assert guard_settings(block) == GuardSettings(
        max_chroma_delta=3.0,
        enforce_grayscale=True,
        fail_on_chroma_exceed=True,
        expected_size=(1024, 1536),
        min_contrast=6.5,
        max_geometry_drift=0.4,
        hard_checks=("wrong_size", "geometry_drift"),
    )
    assert guard_settings({"expected_size": [640, 480]}).expected_size == (640, 480)
    assert guard_settings({"expected_size": " 64 x 48 "}).expected_size == (64, 48)
    assert guard_settings({"hard_checks": "near_blank"}).hard_checks == ("near_blank",)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"max_chroma_delta": -1}, "invalid max_chroma_delta '-1'"),
        ({"max_chroma_delta": float("nan")}, "invalid max_chroma_delta 'nan'"),
        ({"max_chroma_delta": "2"}, "invalid max_chroma_delta '2'"),
        ({"enforce_grayscale": "yes"}, "invalid enforce_grayscale 'yes'"),
        ({"expected_size": "1024"}, "invalid expected_size '1024'"),
        ({"expected_size": [0, 10]}, "invalid expected_size '[0, 10]'"),
        ({"expected_size": [10, 10, 10]}, "invalid expected_size '[10, 10, 10]'"),
        ({"expected_size": 1024}, "invalid expected_size '1024'"),
        ({"min_contrast": True}, "invalid min_contrast 'True'"),
        ({"max_geometry_drift": float("inf")}, "invalid max_geometry_drift 'inf'"),
        ({"hard_checks": ["chroma"]}, "invalid hard_checks '['chroma']'"),
    ],
)
def test_guard_settings_rejects_bad_values(block: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        guard_settings(block)
    assert str(caught.value) == message


def test_a_manifest_block_round_trips_through_the_settings() -> None:
    raw = np.zeros((4, 4, 3), dtype=np.uint8)
    settings = guard_settings({"expected_size": [4, 4], "hard_checks": []})
    entry = qa.check_file(png(Image.fromarray(raw)), "z.png", settings)
    assert entry["size"] == [4, 4] and entry["soft_warnings"] == []
