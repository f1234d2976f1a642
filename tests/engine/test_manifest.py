"""The planning manifest (pipeline spec §3.1 rules and messages, §3.2 defaults)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kroma.engine.manifest import (
    DEFAULT_MANIFEST,
    DEFAULT_PROMPTS,
    Generation,
    Manifest,
    ManifestError,
    OutputGuard,
    Policy,
    load_manifest,
    parse_manifest,
)

SPEC_PROMPTS = {
    "style_base": (
        "Preserve geometry and perspective. Apply one coherent noir drawing hand. No text, no logos, no watermark."
    ),
    "time_day": "Daylight scene with clear readability and stable contrast family.",
    "time_night": "Night scene with controlled deep shadows, no topology changes.",
    "weather_clear": "Dry clear atmosphere. No rain streaks, no snow particles, no diagonal sky hatching.",
    "weather_rain": "Visible wet surfaces, puddles, and reflection cues; no style drift.",
}


def error_of(document: Any) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document)
    assert str(caught.value) == caught.value.message
    return caught.value.message


def field(name: str, must: str) -> str:
    return f"planning manifest field '{name}' must {must}"


# --- defaults (§3.2) ---------------------------------------------------------------------------


def test_built_in_default_manifest_matches_the_spec() -> None:
    assert DEFAULT_MANIFEST.scene_refs == () and DEFAULT_MANIFEST.style_refs == ()
    assert DEFAULT_MANIFEST.safe_batch_limit == 20
    assert DEFAULT_MANIFEST.generation == Generation(candidates=1, max_candidates=6)
    assert DEFAULT_MANIFEST.output_guard == OutputGuard(
        enforce_grayscale=False, max_chroma_delta=2.0, fail_on_chroma_exceed=False
    )
    assert DEFAULT_MANIFEST.policy == Policy(default_no_invention=True)
    assert DEFAULT_MANIFEST.prompts == SPEC_PROMPTS
    assert dict(DEFAULT_PROMPTS) == SPEC_PROMPTS


def test_empty_object_is_the_default_manifest() -> None:
    assert parse_manifest({}) == DEFAULT_MANIFEST == Manifest()


def test_unknown_top_level_keys_are_ignored() -> None:
    assert parse_manifest({"comment": "x", "jobs": [1]}) == DEFAULT_MANIFEST


# --- valid values ------------------------------------------------------------------------------


def test_every_key_is_read() -> None:
    manifest = parse_manifest(
        {
            "scene_refs": ["a.png", " b.png "],
            "style_refs": ["\tstyle.png"],
            "safe_batch_limit": 3,
            "generation": {"candidates": 2, "max_candidates": 4},
            "output_guard": {
                "enforce_grayscale": True,
                "max_chroma_delta": 0.5,
                "fail_on_chroma_exceed": True,
            },
            "policy": {"default_no_invention": False},
            "prompts": {"style_base": "  Custom base  ", "extra": "x"},
        }
    )
    assert manifest.scene_refs == ("a.png", "b.png")
    assert manifest.style_refs == ("style.png",)
    assert manifest.safe_batch_limit == 3
    assert manifest.generation == Generation(candidates=2, max_candidates=4)
    assert manifest.output_guard == OutputGuard(
        enforce_grayscale=True, max_chroma_delta=0.5, fail_on_chroma_exceed=True
    )
    assert manifest.policy == Policy(default_no_invention=False)
    assert manifest.prompts == {**SPEC_PROMPTS, "style_base": "Custom base", "extra": "x"}


def test_prompts_merge_over_defaults_and_keep_empty_trimmed_values() -> None:
    prompts = parse_manifest({"prompts": {"time_day": "   ", "weather_rain": " wet "}}).prompts
    assert prompts == {**SPEC_PROMPTS, "time_day": "", "weather_rain": "wet"}
    assert parse_manifest({"prompts": {}}).prompts == SPEC_PROMPTS


def test_parsing_never_mutates_the_default_prompts() -> None:
    parse_manifest({"prompts": {"style_base": "changed"}})
    assert DEFAULT_MANIFEST.prompts == SPEC_PROMPTS
    assert Manifest().prompts is not Manifest().prompts


def test_partial_sections_keep_the_other_defaults() -> None:
    manifest = parse_manifest(
        {"generation": {"max_candidates": 3}, "output_guard": {"enforce_grayscale": True}}
    )
    assert manifest.generation == Generation(candidates=1, max_candidates=3)
    assert manifest.output_guard == OutputGuard(enforce_grayscale=True)
    assert parse_manifest({"generation": {}, "output_guard": {}, "policy": {}}) == DEFAULT_MANIFEST


def test_empty_reference_arrays_are_allowed() -> None:
    assert parse_manifest({"scene_refs": [], "style_refs": []}).scene_refs == ()


@pytest.mark.parametrize("value", [1, 20, 2**64 - 1])
def test_integer_fields_accept_json_integers_from_one_to_u64_max(value: int) -> None:
    manifest = parse_manifest(
        {"safe_batch_limit": value, "generation": {"candidates": value, "max_candidates": value}}
    )
    assert manifest.safe_batch_limit == value
    assert manifest.generation == Generation(candidates=value, max_candidates=value)


@pytest.mark.parametrize(("value", "stored"), [(0, 0.0), (3, 3.0), (0.25, 0.25), (10**30, 1e30)])
def test_max_chroma_delta_accepts_any_finite_non_negative_number(value: float, stored: float) -> None:
    delta = parse_manifest({"output_guard": {"max_chroma_delta": value}}).output_guard.max_chroma_delta
    assert delta == stored
    assert isinstance(delta, float)


# --- errors (§3.1) -----------------------------------------------------------------------------


@pytest.mark.parametrize("document", [[], "manifest", 5, None, True])
def test_non_object_root_is_rejected(document: Any) -> None:
    assert error_of(document) == "planning manifest must be a JSON object"


@pytest.mark.parametrize("key", ["scene_refs", "style_refs"])
@pytest.mark.parametrize(
    ("value", "must"),
    [
        ("a.png", "be an array of strings"),
        ({"a": 1}, "be an array of strings"),
        (None, "be an array of strings"),
        (["a.png", 1], "be an array of strings"),
        (["a.png", None], "be an array of strings"),
        (["a.png", ""], "not contain empty strings"),
        (["a.png", " \n "], "not contain empty strings"),
        ([" ", 1], "not contain empty strings"),  # items are checked in order
        ([1, " "], "be an array of strings"),
    ],
)
def test_reference_arrays_report_type_and_empty_items(key: str, value: Any, must: str) -> None:
    assert error_of({key: value}) == field(key, must)


@pytest.mark.parametrize("name", ["safe_batch_limit", "generation.candidates", "generation.max_candidates"])
@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, True, False, "20", None, [], 2**64])
def test_integer_fields_reject_everything_but_a_positive_u64_integer(name: str, value: Any) -> None:
    if name.startswith("generation."):
        document: dict[str, Any] = {"generation": {name.split(".", 1)[1]: value}}
    else:
        document = {name: value}
    assert error_of(document) == field(name, "be an integer >= 1")


@pytest.mark.parametrize("section", ["generation", "output_guard", "policy", "prompts"])
@pytest.mark.parametrize("value", [[], "x", 1, None, True])
def test_sections_must_be_objects(section: str, value: Any) -> None:
    assert error_of({section: value}) == field(section, "be an object")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("output_guard", "enforce_grayscale"),
        ("output_guard", "fail_on_chroma_exceed"),
        ("policy", "default_no_invention"),
    ],
)
@pytest.mark.parametrize("value", ["false", 0, 1, None, []])
def test_boolean_fields_must_be_booleans(section: str, key: str, value: Any) -> None:
    assert error_of({section: {key: value}}) == field(f"{section}.{key}", "be a boolean")


@pytest.mark.parametrize("value", [-0.1, -1, "2", True, None, float("inf"), float("nan"), 10**400])
def test_max_chroma_delta_must_be_a_finite_non_negative_number(value: Any) -> None:
    message = error_of({"output_guard": {"max_chroma_delta": value}})
    assert message == field("output_guard.max_chroma_delta", "be a non-negative number")


@pytest.mark.parametrize("value", [5, None, True, ["x"], {"x": "y"}])
def test_prompt_values_must_be_strings(value: Any) -> None:
    assert error_of({"prompts": {"style_base": value}}) == field("prompts.style_base", "be a string")


def test_prompt_error_names_the_smallest_invalid_key() -> None:
    assert error_of({"prompts": {"zeta": 1, "alpha": "ok", "beta": 2}}) == field(
        "prompts.beta", "be a string"
    )


def test_errors_follow_the_checking_order() -> None:
    document: dict[str, Any] = {
        "prompts": {"x": 1},
        "policy": 1,
        "output_guard": 1,
        "generation": 1,
        "safe_batch_limit": 0,
        "style_refs": 1,
        "scene_refs": 1,
    }
    expected = [
        field("scene_refs", "be an array of strings"),
        field("style_refs", "be an array of strings"),
        field("safe_batch_limit", "be an integer >= 1"),
        field("generation", "be an object"),
        field("output_guard", "be an object"),
        field("policy", "be an object"),
        field("prompts.x", "be a string"),
    ]
    for key, message in zip(
        ["scene_refs", "style_refs", "safe_batch_limit", "generation", "output_guard", "policy", "prompts"],
        expected,
        strict=True,
    ):
        assert error_of(document) == message
        del document[key]
    assert parse_manifest(document) == DEFAULT_MANIFEST


def test_generation_and_output_guard_check_keys_in_order() -> None:
    assert error_of({"generation": {"max_candidates": 0, "candidates": 0}}) == field(
        "generation.candidates", "be an integer >= 1"
    )
    guard = {"fail_on_chroma_exceed": 1, "max_chroma_delta": -1, "enforce_grayscale": 1}
    assert error_of({"output_guard": guard}) == field("output_guard.enforce_grayscale", "be a boolean")
    del guard["enforce_grayscale"]
    assert error_of({"output_guard": guard}) == field(
        "output_guard.max_chroma_delta", "be a non-negative number"
    )


# --- files -------------------------------------------------------------------------------------


def test_load_manifest_reads_and_parses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"scene_refs": ["s.png"], "safe_batch_limit": 5}), encoding="utf-8")
    manifest = load_manifest(path)
    assert manifest.scene_refs == ("s.png",) and manifest.safe_batch_limit == 5
    assert load_manifest(str(path)) == manifest


def test_missing_manifest_file_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert (
        caught.value.message
        == f"failed to read planning manifest '{path}': No such file or directory (os error 2)"
    )


def test_directory_or_invalid_utf8_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path)
    assert (
        caught.value.message == f"failed to read planning manifest '{tmp_path}': Is a directory (os error 21)"
    )
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"scene_refs": ["\xe9.png"]}')
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert (
        caught.value.message
        == f"failed to read planning manifest '{path}': stream did not contain valid UTF-8"
    )


@pytest.mark.parametrize("text", ["{", "", "NaN", '{"output_guard": {"max_chroma_delta": 1e400}}', "{} {}"])
def test_json_syntax_errors_name_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    prefix = f"failed to parse planning manifest JSON '{path}': "
    assert caught.value.message.startswith(prefix)
    assert len(caught.value.message) > len(prefix)


def test_file_contents_are_validated_with_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{"safe_batch_limit": 2.0}', encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.message == field("safe_batch_limit", "be an integer >= 1")
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.message == "planning manifest must be a JSON object"
