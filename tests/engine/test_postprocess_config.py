"""The postprocess config's planning parser (pipeline spec §5.1) and the planned record (§5.2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kroma.engine import settings_layer
from kroma.engine.postprocess_config import (
    BG_REMOVE_BACKENDS,
    UPSCALE_BACKENDS,
    PostprocessConfig,
    PostprocessConfigError,
    load_postprocess_config,
    load_postprocess_config_from,
    parse_postprocess_config,
    planned_record,
)

EXAMPLE = {
    "upscale": {
        "backend": "python",
        "python": {
            "python_bin": "tools/realesrgan-python/.venv/bin/python",
            "inference_script": "tools/realesrgan-python/src/Real-ESRGAN/inference_realesrgan.py",
            "model_name": "RealESRGAN_x4plus",
            "tile": 0,
            "tile_pad": 10,
            "pre_pad": 0,
            "fp32": False,
        },
    },
    "color": {"default_profile": "neutral"},
    "bg_remove": {"backends": ["rembg"], "openai": {"enabled": True, "required": True}},
}


def error_of(document: Any) -> str:
    with pytest.raises(PostprocessConfigError) as caught:
        parse_postprocess_config(document)
    assert str(caught.value) == caught.value.message
    return caught.value.message


def invalid(name: str) -> str:
    return f"postprocess config field '{name}' has invalid type"


def bad_upscale(value: str) -> str:
    return f"invalid upscale backend '{value}'. Expected ncnn|python|builtin."


def bad_bg(value: str) -> str:
    return f"invalid background-remove backend '{value}'. Expected rembg|photoroom|removebg|builtin."


# --- parsing -----------------------------------------------------------------------------------


def test_planning_defaults_match_the_spec() -> None:
    config = PostprocessConfig()
    assert config.upscale_backend is None  # resolved by installation when planning
    assert config.upscale_scale == 2
    assert config.upscale_format == "png"
    assert config.color_default_profile == "neutral"
    assert config.bg_remove_backends == ("rembg", "builtin")  # works with no key and no network
    assert config.bg_remove_format == "png"
    assert config.bg_refine_openai_enabled is True
    assert config.bg_refine_openai_required is True
    assert config.raw == {}
    assert parse_postprocess_config({}) == config


def test_allowed_backend_tuples() -> None:
    assert UPSCALE_BACKENDS == ("ncnn", "python", "builtin")
    assert UPSCALE_BACKENDS is settings_layer.UPSCALE_BACKENDS  # one tuple for every layer
    assert BG_REMOVE_BACKENDS == ("rembg", "photoroom", "removebg", "builtin")


def test_builtin_is_an_accepted_backend_name_for_both_passes() -> None:
    config = parse_postprocess_config({"upscale": {"backend": " BuiltIn "}, "bg_remove": {"backends": ["builtin"]}})
    assert config.upscale_backend == "builtin"
    assert config.bg_remove_backends == ("builtin",)


def test_example_config_parses_and_keeps_the_raw_document() -> None:
    config = parse_postprocess_config(EXAMPLE)
    # The example names its backends explicitly; everything else is the default.
    assert config == PostprocessConfig(raw=EXAMPLE, upscale_backend="python", bg_remove_backends=("rembg",))
    assert config.raw["upscale"]["python"]["tile_pad"] == 10


def test_every_planning_key_is_read_and_normalised() -> None:
    config = parse_postprocess_config(
        {
            "upscale": {"backend": " NCNN ", "scale": 4, "format": " JPEG "},
            "color": {"default_profile": "  cinematic-v2 "},
            "bg_remove": {
                "backends": ["PhotoRoom", " removebg "],
                "format": "WebP",
                "openai": {"enabled": False, "required": False},
            },
        }
    )
    assert config.upscale_backend == "ncnn"
    assert config.upscale_scale == 4
    assert config.upscale_format == "jpg"
    assert config.color_default_profile == "cinematic-v2"
    assert config.bg_remove_backends == ("photoroom", "removebg")
    assert config.bg_remove_format == "webp"
    assert config.bg_refine_openai_enabled is False
    assert config.bg_refine_openai_required is False


@pytest.mark.parametrize(
    ("given", "stored"), [("png", "png"), ("jpg", "jpg"), ("jpeg", "jpg"), ("WEBP", "webp")]
)
def test_formats_accept_png_jpg_jpeg_webp(given: str, stored: str) -> None:
    config = parse_postprocess_config({"upscale": {"format": given}, "bg_remove": {"format": given}})
    assert (config.upscale_format, config.bg_remove_format) == (stored, stored)


@pytest.mark.parametrize("scale", [1, 255])
def test_scale_accepts_integers_from_1_to_255(scale: int) -> None:
    assert parse_postprocess_config({"upscale": {"scale": scale}}).upscale_scale == scale


def test_color_profile_is_trimmed_but_not_checked() -> None:
    assert (
        parse_postprocess_config({"color": {"default_profile": " anything "}}).color_default_profile
        == "anything"
    )
    assert parse_postprocess_config({"color": {"default_profile": "  "}}).color_default_profile == ""


def test_empty_backend_list_is_accepted() -> None:
    assert parse_postprocess_config({"bg_remove": {"backends": []}}).bg_remove_backends == ()


def test_adapter_only_and_unknown_keys_are_ignored() -> None:
    document = {"upscale": {"tile": "x", "binary": 5}, "bg_remove": {"size": 1, "crop": "no"}, "other": None}
    assert parse_postprocess_config(document) == PostprocessConfig(raw=document)


@pytest.mark.parametrize("document", [[], "x", 1, None, True])
def test_non_object_root_is_rejected(document: Any) -> None:
    assert error_of(document) == "postprocess config root must be a JSON object"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"upscale": []}, invalid("upscale")),
        ({"upscale": None}, invalid("upscale")),
        ({"upscale": {"backend": 5}}, invalid("upscale.backend")),
        ({"upscale": {"backend": None}}, invalid("upscale.backend")),
        ({"upscale": {"backend": "vulkan"}}, bad_upscale("vulkan")),
        ({"upscale": {"backend": " Vulkan "}}, bad_upscale("vulkan")),  # the normalised value
        ({"upscale": {"backend": "ÉX"}}, bad_upscale("Éx")),  # ASCII-only lower-casing
        ({"upscale": {"backend": ""}}, bad_upscale("")),
        ({"upscale": {"scale": 0}}, invalid("upscale.scale")),
        ({"upscale": {"scale": 256}}, invalid("upscale.scale")),
        ({"upscale": {"scale": -2}}, invalid("upscale.scale")),
        ({"upscale": {"scale": 2.0}}, invalid("upscale.scale")),
        ({"upscale": {"scale": True}}, invalid("upscale.scale")),
        ({"upscale": {"scale": "2"}}, invalid("upscale.scale")),
        ({"upscale": {"format": "gif"}}, invalid("upscale.format")),
        ({"upscale": {"format": ""}}, invalid("upscale.format")),
        ({"upscale": {"format": 5}}, invalid("upscale.format")),
        ({"color": "neutral"}, invalid("color")),
        ({"color": {"default_profile": 5}}, invalid("color.default_profile")),
        ({"bg_remove": ["rembg"]}, invalid("bg_remove")),
        ({"bg_remove": {"backends": "rembg"}}, invalid("bg_remove.backends")),
        ({"bg_remove": {"backends": ["rembg", 5]}}, invalid("bg_remove.backends")),
        ({"bg_remove": {"backends": ["bria", 5]}}, invalid("bg_remove.backends")),  # all strings first
        ({"bg_remove": {"backends": ["rembg", " Bria "]}}, bad_bg("bria")),
        ({"bg_remove": {"backends": ["u2net", "bria"]}}, bad_bg("u2net")),  # the first unknown name
        ({"bg_remove": {"backends": [" "]}}, bad_bg("")),
        ({"bg_remove": {"format": "tiff"}}, invalid("bg_remove.format")),
        ({"bg_remove": {"format": None}}, invalid("bg_remove.format")),
        ({"bg_remove": {"openai": True}}, invalid("bg_remove.openai")),
        ({"bg_remove": {"openai": {"enabled": "yes"}}}, invalid("bg_remove.openai.enabled")),
        ({"bg_remove": {"openai": {"required": None}}}, invalid("bg_remove.openai.required")),
    ],
)
def test_every_planning_rule_reports_its_message(document: dict[str, Any], message: str) -> None:
    assert error_of(document) == message


def test_errors_follow_the_checking_order() -> None:
    document: dict[str, Any] = {
        "bg_remove": {"openai": {"required": 1, "enabled": 1}, "format": 1, "backends": 1},
        "color": {"default_profile": 1},
        "upscale": {"format": 1, "scale": 0, "backend": 1},
    }
    order = [
        ("upscale", "backend", invalid("upscale.backend")),
        ("upscale", "scale", invalid("upscale.scale")),
        ("upscale", "format", invalid("upscale.format")),
        ("color", "default_profile", invalid("color.default_profile")),
        ("bg_remove", "backends", invalid("bg_remove.backends")),
        ("bg_remove", "format", invalid("bg_remove.format")),
    ]
    for section, key, message in order:
        assert error_of(document) == message
        del document[section][key]
    assert error_of(document) == invalid("bg_remove.openai.enabled")
    del document["bg_remove"]["openai"]["enabled"]
    assert error_of(document) == invalid("bg_remove.openai.required")


# --- files -------------------------------------------------------------------------------------


def test_no_path_means_built_in_defaults(tmp_path: Path) -> None:
    assert load_postprocess_config(None) == PostprocessConfig()
    assert load_postprocess_config_from(tmp_path, None) == PostprocessConfig()
    assert load_postprocess_config_from(tmp_path, "   ") == PostprocessConfig()


def test_file_is_read_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / "config" / "postprocess.json"
    path.parent.mkdir()
    path.write_text(json.dumps(EXAMPLE | {"upscale": {"backend": "ncnn"}}), encoding="utf-8")
    assert load_postprocess_config(path).upscale_backend == "ncnn"
    assert load_postprocess_config(str(path)).upscale_backend == "ncnn"
    assert load_postprocess_config_from(tmp_path, " config/postprocess.json ").upscale_backend == "ncnn"
    assert load_postprocess_config_from(tmp_path / "elsewhere", str(path)).upscale_backend == "ncnn"


def test_missing_file_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(PostprocessConfigError) as caught:
        load_postprocess_config(path)
    assert (
        caught.value.message
        == f"failed to read postprocess config '{path}': No such file or directory (os error 2)"
    )
    with pytest.raises(PostprocessConfigError) as caught:
        load_postprocess_config_from(tmp_path, "./absent.json")
    assert caught.value.message == (
        f"failed to read postprocess config '{tmp_path}/./absent.json': No such file or directory (os error 2)"
    )


def test_json_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "post.json"
    path.write_text('{"upscale": }', encoding="utf-8")
    with pytest.raises(PostprocessConfigError) as caught:
        load_postprocess_config(path)
    prefix = f"failed to parse postprocess config JSON '{path}': "
    assert caught.value.message.startswith(prefix)
    assert len(caught.value.message) > len(prefix)


def test_file_contents_are_validated_by_the_planning_parser(tmp_path: Path) -> None:
    path = tmp_path / "post.json"
    path.write_text('{"upscale": {"backend": "vulkan"}}', encoding="utf-8")
    with pytest.raises(PostprocessConfigError) as caught:
        load_postprocess_config(path)
    assert caught.value.message == bad_upscale("vulkan")


# --- planned record (§5.2) ---------------------------------------------------------------------

KEYS = [
    "upscale",
    "upscale_backend",
    "color",
    "color_profile",
    "bg_remove",
    "bg_remove_backends",
    "bg_refine_openai",
    "bg_refine_openai_required",
    "pipeline_order",
]


def test_all_passes_off_gives_the_empty_plan_and_ignores_overrides() -> None:
    record = planned_record(
        upscale=False,
        color=False,
        bg_remove=False,
        config=PostprocessConfig(),
        upscale_backend="bogus",
        color_profile="x",
        bg_remove_backends=["bogus"],
        bg_refine_openai=True,
        bg_refine_openai_required=True,
    )
    assert record == {
        "upscale": False,
        "upscale_backend": None,
        "color": False,
        "color_profile": None,
        "bg_remove": False,
        "bg_remove_backends": [],
        "bg_refine_openai": False,
        "bg_refine_openai_required": False,
        "pipeline_order": ["generate"],
    }
    assert list(record) == KEYS


def test_all_passes_on_use_the_config_and_the_fixed_order() -> None:
    record = planned_record(upscale=True, color=True, bg_remove=True, config=PostprocessConfig())
    assert record == {
        "upscale": True,
        "upscale_backend": "builtin",  # no app root: nothing installed
        "color": True,
        "color_profile": "neutral",
        "bg_remove": True,
        "bg_remove_backends": ["rembg", "builtin"],
        "bg_refine_openai": True,
        "bg_refine_openai_required": True,
        "pipeline_order": ["generate", "bg_remove", "bg_refine_openai", "upscale", "color"],
    }
    assert list(record) == KEYS


def test_overrides_win_over_the_config() -> None:
    record = planned_record(
        upscale=True,
        color=True,
        bg_remove=True,
        config=PostprocessConfig(),
        upscale_backend=" NCNN ",
        color_profile="  cinematic-v2 ",
        bg_remove_backends=[" RemoveBG "],
        bg_refine_openai=False,
        bg_refine_openai_required=False,
    )
    assert record["upscale_backend"] == "ncnn"
    assert record["color_profile"] == "cinematic-v2"
    assert record["bg_remove_backends"] == ["removebg"]
    assert (record["bg_refine_openai"], record["bg_refine_openai_required"]) == (False, False)
    assert record["pipeline_order"] == ["generate", "bg_remove", "upscale", "color"]


def test_config_values_are_used_without_overrides() -> None:
    config = parse_postprocess_config(
        {
            "upscale": {"backend": "ncnn"},
            "color": {"default_profile": "warm"},
            "bg_remove": {
                "backends": ["photoroom", "rembg"],
                "openai": {"enabled": False, "required": False},
            },
        }
    )
    record = planned_record(upscale=True, color=True, bg_remove=True, config=config)
    assert record["upscale_backend"] == "ncnn"
    assert record["color_profile"] == "warm"
    assert record["bg_remove_backends"] == ["photoroom", "rembg"]
    assert (record["bg_refine_openai"], record["bg_refine_openai_required"]) == (False, False)
    assert record["pipeline_order"] == ["generate", "bg_remove", "upscale", "color"]


def test_empty_backend_override_falls_back_to_the_config() -> None:
    config = PostprocessConfig(bg_remove_backends=("removebg",))
    overrides: list[list[str] | None] = [[], None]
    for override in overrides:
        record = planned_record(
            upscale=False, color=False, bg_remove=True, config=config, bg_remove_backends=override
        )
        assert record["bg_remove_backends"] == ["removebg"]


def test_refine_required_without_refine_still_reported_but_not_ordered() -> None:
    record = planned_record(
        upscale=False, color=False, bg_remove=True, config=PostprocessConfig(), bg_refine_openai=False
    )
    assert (record["bg_refine_openai"], record["bg_refine_openai_required"]) == (False, True)
    assert record["pipeline_order"] == ["generate", "bg_remove"]


@pytest.mark.parametrize(
    ("flags", "order"),
    [
        ((True, False, False), ["generate", "upscale"]),
        ((False, True, False), ["generate", "color"]),
        ((False, False, True), ["generate", "bg_remove", "bg_refine_openai"]),
        ((True, True, False), ["generate", "upscale", "color"]),
        ((True, False, True), ["generate", "bg_remove", "bg_refine_openai", "upscale"]),
    ],
)
def test_pipeline_order_is_fixed(flags: tuple[bool, bool, bool], order: list[str]) -> None:
    upscale, color, bg_remove = flags
    record = planned_record(upscale=upscale, color=color, bg_remove=bg_remove, config=PostprocessConfig())
    assert record["pipeline_order"] == order


def test_invalid_override_backends_fail_like_the_config_parser() -> None:
    with pytest.raises(PostprocessConfigError) as caught:
        planned_record(
            upscale=True, color=False, bg_remove=False, config=PostprocessConfig(), upscale_backend="Vulkan"
        )
    assert caught.value.message == bad_upscale("vulkan")
    with pytest.raises(PostprocessConfigError) as caught:
        planned_record(
            upscale=False,
            color=False,
            bg_remove=True,
            config=PostprocessConfig(),
            bg_remove_backends=["rembg", "bria"],
        )
    assert caught.value.message == bad_bg("bria")


def test_config_upscale_backend_is_revalidated() -> None:
    config = PostprocessConfig(upscale_backend="vulkan")  # only possible when built by hand
    with pytest.raises(PostprocessConfigError) as caught:
        planned_record(upscale=True, color=False, bg_remove=False, config=config)
    assert caught.value.message == bad_upscale("vulkan")


PYTHON_SCRIPT = "tools/realesrgan-python/src/Real-ESRGAN/inference_realesrgan.py"
NCNN_BINARY = "tools/realesrgan/realesrgan-ncnn-vulkan"


def install(app_root: Path, *relative: str) -> None:
    for item in relative:
        (app_root / item).parent.mkdir(parents=True, exist_ok=True)
        (app_root / item).write_text("", encoding="utf-8")


@pytest.mark.parametrize(
    ("installed", "backend"),
    [((), "builtin"), ((NCNN_BINARY,), "ncnn"), ((PYTHON_SCRIPT,), "python"), ((NCNN_BINARY, PYTHON_SCRIPT), "python")],
)
def test_unset_upscale_backend_resolves_by_installation_under_the_app_root(
    tmp_path: Path, installed: tuple[str, ...], backend: str
) -> None:
    install(tmp_path, *installed)
    record = planned_record(upscale=True, color=False, bg_remove=False, config=PostprocessConfig(), app_root=tmp_path)
    assert record["upscale_backend"] == backend


def test_configured_or_overridden_upscale_backend_wins_over_installation(tmp_path: Path) -> None:
    install(tmp_path, PYTHON_SCRIPT)
    config = PostprocessConfig(upscale_backend="ncnn")
    assert planned_record(upscale=True, color=False, bg_remove=False, config=config, app_root=tmp_path)[
        "upscale_backend"
    ] == "ncnn"
    assert planned_record(
        upscale=True, color=False, bg_remove=False, config=config, app_root=tmp_path, upscale_backend="builtin"
    )["upscale_backend"] == "builtin"
    assert planned_record(upscale=False, color=False, bg_remove=False, config=PostprocessConfig(), app_root=tmp_path)[
        "upscale_backend"
    ] is None
