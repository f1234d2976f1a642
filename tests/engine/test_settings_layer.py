"""Layered pipeline settings (pipeline spec §1): parsing, file lookup, precedence, request overlay."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from kroma.engine.settings_layer import (
    Overlay,
    SettingsError,
    ascii_lower,
    join_path,
    load_app_layer,
    load_layer_file,
    load_project_layer,
    merge,
    parse_overlay,
    request_overlay,
    resolve_path,
    toml_to_json,
    trim,
)

ROOT_MESSAGE = "pipeline settings root must be a JSON object"


def invalid(field: str) -> str:
    return f"pipeline settings field '{field}' has invalid type"


def parse_error(document: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        parse_overlay(document)
    assert str(caught.value) == caught.value.message
    return caught.value.message


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


FULL_PIPELINE = {
    "manifest_path": "config/manifest.json",
    "postprocess_config_path": "config/post.json",
    "postprocess": {
        "upscale": True,
        "upscale_backend": "ncnn",
        "color": True,
        "color_profile": "studio",
        "bg_remove": True,
        "bg_remove_backends": ["rembg", "photoroom"],
        "bg_refine_openai": False,
        "bg_refine_openai_required": False,
    },
}
FULL_OVERLAY = Overlay(
    manifest_path="config/manifest.json",
    postprocess_config_path="config/post.json",
    post_upscale=True,
    upscale_backend="ncnn",
    post_color=True,
    color_profile="studio",
    post_bg_remove=True,
    bg_remove_backends=("rembg", "photoroom"),
    bg_refine_openai=False,
    bg_refine_openai_required=False,
)


# --- parsing one layer (§1.2, §1.3) ------------------------------------------------------------


def test_pipeline_object_sets_every_overlay_field() -> None:
    assert parse_overlay({"pipeline": FULL_PIPELINE}) == FULL_OVERLAY


def test_root_without_pipeline_key_is_the_pipeline_object() -> None:
    assert parse_overlay(FULL_PIPELINE) == FULL_OVERLAY


def test_root_keys_are_ignored_when_a_pipeline_object_is_present() -> None:
    overlay = parse_overlay({"pipeline": {}, "manifest_path": "root.json"})
    assert overlay == Overlay()


@pytest.mark.parametrize("document", [[], "x", 5, None, True, [{"pipeline": {}}]])
def test_non_object_root_is_rejected(document: Any) -> None:
    assert parse_error(document) == ROOT_MESSAGE


@pytest.mark.parametrize("value", [5, None, [], "x", False])
def test_non_object_pipeline_value_is_rejected_as_root(value: Any) -> None:
    assert parse_error({"pipeline": value}) == ROOT_MESSAGE


@pytest.mark.parametrize(
    ("pipeline", "field"),
    [
        ({"manifest_path": 5}, "manifest_path"),
        ({"manifest_path": ""}, "manifest_path"),
        ({"manifest_path": "   "}, "manifest_path"),
        ({"manifest_path": None}, "manifest_path"),
        ({"postprocess_config_path": True}, "postprocess_config_path"),
        ({"postprocess_config_path": " \t\n"}, "postprocess_config_path"),
        ({"postprocess": []}, "postprocess"),
        ({"postprocess": "upscale"}, "postprocess"),
        ({"postprocess": None}, "postprocess"),
        ({"postprocess": {"upscale": "true"}}, "postprocess.upscale"),
        ({"postprocess": {"upscale": 1}}, "postprocess.upscale"),
        ({"postprocess": {"upscale": None}}, "postprocess.upscale"),
        ({"postprocess": {"upscale_backend": 5}}, "postprocess.upscale_backend"),
        ({"postprocess": {"upscale_backend": "  "}}, "postprocess.upscale_backend"),
        ({"postprocess": {"upscale_backend": "vulkan"}}, "postprocess.upscale_backend"),
        ({"postprocess": {"upscale_backend": "lanczos"}}, "postprocess.upscale_backend"),
        ({"postprocess": {"color": "yes"}}, "postprocess.color"),
        ({"postprocess": {"color_profile": 5}}, "postprocess.color_profile"),
        ({"postprocess": {"color_profile": " "}}, "postprocess.color_profile"),
        ({"postprocess": {"bg_remove": 0}}, "postprocess.bg_remove"),
        ({"postprocess": {"bg_remove_backends": "rembg"}}, "postprocess.bg_remove_backends"),
        ({"postprocess": {"bg_remove_backends": ["rembg", 5]}}, "postprocess.bg_remove_backends"),
        ({"postprocess": {"bg_remove_backends": ["rembg", "  "]}}, "postprocess.bg_remove_backends"),
        ({"postprocess": {"bg_refine_openai": "false"}}, "postprocess.bg_refine_openai"),
        ({"postprocess": {"bg_refine_openai_required": None}}, "postprocess.bg_refine_openai_required"),
    ],
)
def test_every_field_reports_its_invalid_type_message(pipeline: dict[str, Any], field: str) -> None:
    assert parse_error({"pipeline": pipeline}) == invalid(field)
    assert parse_error(pipeline) == invalid(field)  # same rules for the root-as-pipeline form


def test_first_invalid_field_in_checking_order_is_reported() -> None:
    document = {"postprocess": {"upscale": "x", "color": "x"}, "manifest_path": 1}
    assert parse_error(document) == invalid("manifest_path")
    assert parse_error({"postprocess": {"color": "x", "upscale": "x"}}) == invalid("postprocess.upscale")


def test_strings_are_trimmed_and_backend_is_lower_cased() -> None:
    overlay = parse_overlay(
        {
            "manifest_path": "  config/m.json\n",
            "postprocess_config_path": "\tconfig/p.json ",
            "postprocess": {
                "upscale_backend": " PyThOn ",
                "color_profile": " Studio ",
                "bg_remove_backends": [],
            },
        }
    )
    assert overlay.manifest_path == "config/m.json"
    assert overlay.postprocess_config_path == "config/p.json"
    assert overlay.upscale_backend == "python"
    assert overlay.color_profile == "Studio"  # any name accepted, case kept


def test_builtin_is_an_accepted_upscale_backend() -> None:
    assert parse_overlay({"postprocess": {"upscale_backend": " BUILTIN "}}).upscale_backend == "builtin"


def test_bg_remove_backend_names_are_trimmed_but_not_validated_or_lower_cased() -> None:
    overlay = parse_overlay({"postprocess": {"bg_remove_backends": [" u2net ", "PhotoRoom"]}})
    assert overlay.bg_remove_backends == ("u2net", "PhotoRoom")


def test_empty_backend_list_in_a_file_counts_as_set() -> None:
    overlay = parse_overlay({"postprocess": {"bg_remove_backends": []}})
    assert overlay.bg_remove_backends == ()
    assert overlay.loaded is True


def test_unknown_keys_are_ignored() -> None:
    overlay = parse_overlay({"pipeline": {"extra": 1, "postprocess": {"bogus": [1], "color": False}}, "x": 2})
    assert overlay == Overlay(post_color=False)


def test_loaded_is_true_when_any_key_is_set_even_to_false() -> None:
    assert Overlay().loaded is False
    assert parse_overlay({}).loaded is False
    assert parse_overlay({"postprocess": {}}).loaded is False
    for name in Overlay.__struct_fields__:
        value: Any = False if name.startswith(("post_", "bg_refine")) else "x"
        assert Overlay(**{name: value}).loaded is True, name


def test_trim_strips_rust_whitespace_only() -> None:
    assert trim("\u3000\u00a0 a \u2029\x85") == "a"
    assert trim("\x1fa\x1c") == "\x1fa\x1c"  # Python's str.strip() would remove these; Rust keeps them
    assert parse_overlay({"manifest_path": "\x1f"}).manifest_path == "\x1f"
    assert parse_error({"manifest_path": "\u3000"}) == invalid("manifest_path")


def test_ascii_lower_changes_only_ascii_letters() -> None:
    assert ascii_lower("NCNN-ÉK") == "ncnn-Ék"
    assert "\u212a".lower() == "k"  # the Kelvin sign: str.lower() would turn it into ASCII
    assert ascii_lower("\u212a") == "\u212a"


# --- one settings file (§1.1) ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_missing_file_is_an_empty_overlay(tmp_path: Path, fmt: Any) -> None:
    overlay = load_layer_file(tmp_path / "absent" / f"pipeline.settings.{fmt}", fmt)
    assert overlay == Overlay()
    assert overlay.loaded is False


def test_json_file_is_parsed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path / "s.json", json.dumps({"pipeline": FULL_PIPELINE}))
    assert load_layer_file(path, "json") == FULL_OVERLAY


def test_toml_file_is_converted_then_validated_by_the_json_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.toml",
        '[pipeline]\nmanifest_path = "config/manifest.json"\npostprocess_config_path = "config/post.json"\n'
        '[pipeline.postprocess]\nupscale = true\nupscale_backend = "ncnn"\ncolor = true\n'
        'color_profile = "studio"\nbg_remove = true\nbg_remove_backends = ["rembg", "photoroom"]\n'
        "bg_refine_openai = false\nbg_refine_openai_required = false\n",
    )
    assert load_layer_file(path, "toml") == FULL_OVERLAY
    bad = write(tmp_path / "bad.toml", '[pipeline.postprocess]\nupscale = "yes"\n')
    with pytest.raises(SettingsError) as caught:
        load_layer_file(bad, "toml")
    assert caught.value.message == invalid("postprocess.upscale")


def test_toml_root_keys_without_pipeline_table_are_the_pipeline(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", 'manifest_path = "m.json"\n[postprocess]\ncolor = true\n')
    assert load_layer_file(path, "toml") == Overlay(manifest_path="m.json", post_color=True)


def test_toml_pipeline_value_that_is_not_a_table_is_rejected_as_root(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", "pipeline = 5\n")
    with pytest.raises(SettingsError) as caught:
        load_layer_file(path, "toml")
    assert caught.value.message == ROOT_MESSAGE


def test_toml_values_convert_like_the_reference() -> None:
    converted = toml_to_json({"d": dt.date(2024, 1, 2), "f": float("nan"), "n": [float("inf"), 1.5], "t": {}})
    assert converted == {
        "d": {"$__toml_private_datetime": "2024-01-02"},
        "f": None,
        "n": [None, 1.5],
        "t": {},
    }


def test_json_syntax_error_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s.json", '{"pipeline": ')
    with pytest.raises(SettingsError) as caught:
        load_layer_file(path, "json")
    prefix = f"failed to parse pipeline settings JSON '{path}': "
    assert caught.value.message.startswith(prefix)
    assert len(caught.value.message) > len(prefix)


@pytest.mark.parametrize("text", ["NaN", '{"a": 1} trailing', "\ufeff{}", ""])
def test_json_is_strict(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "s.json", text)
    with pytest.raises(SettingsError) as caught:
        load_layer_file(path, "json")
    assert caught.value.message.startswith(f"failed to parse pipeline settings JSON '{path}': ")


def test_toml_syntax_error_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", "[pipeline\nmanifest_path = \n")
    with pytest.raises(SettingsError) as caught:
        load_layer_file(path, "toml")
    prefix = f"failed to parse pipeline settings TOML '{path}': "
    assert caught.value.message.startswith(prefix)
    assert len(caught.value.message) > len(prefix)


def test_unreadable_path_is_a_read_error_worded_like_rust(tmp_path: Path) -> None:
    folder = tmp_path / "settings.json"
    folder.mkdir()
    with pytest.raises(SettingsError) as caught:
        load_layer_file(folder, "json")
    assert (
        caught.value.message == f"failed to read pipeline settings '{folder}': Is a directory (os error 21)"
    )


def test_invalid_utf8_is_a_read_error(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", b'manifest_path = "\xff"\n')
    with pytest.raises(SettingsError) as caught:
        load_layer_file(path, "toml")
    assert (
        caught.value.message
        == f"failed to read pipeline settings '{path}': stream did not contain valid UTF-8"
    )


# --- app layer lookup (§1.1) -------------------------------------------------------------------


def app_toml(root: Path, manifest: str) -> Path:
    return write(root / "config" / "pipeline.settings.toml", f'[pipeline]\nmanifest_path = "{manifest}"\n')


def app_json(root: Path, manifest: str) -> Path:
    return write(
        root / "config" / "pipeline.settings.json", json.dumps({"pipeline": {"manifest_path": manifest}})
    )


def test_app_default_toml_wins_over_json(tmp_path: Path) -> None:
    app_toml(tmp_path, "from-toml.json")
    app_json(tmp_path, "from-json.json")
    assert load_app_layer(tmp_path).manifest_path == "from-toml.json"


def test_app_falls_back_to_json_when_toml_is_missing(tmp_path: Path) -> None:
    app_json(tmp_path, "legacy.json")
    assert load_app_layer(tmp_path).manifest_path == "legacy.json"


def test_app_without_any_file_is_empty(tmp_path: Path) -> None:
    assert load_app_layer(tmp_path) == Overlay()


def test_app_default_toml_is_parsed_as_toml_and_json_fallback_as_json(tmp_path: Path) -> None:
    write(tmp_path / "config" / "pipeline.settings.json", 'manifest_path = "toml syntax"\n')
    with pytest.raises(SettingsError) as caught:
        load_app_layer(tmp_path)
    assert caught.value.message.startswith(
        f"failed to parse pipeline settings JSON '{tmp_path}/config/pipeline.settings.json': "
    )
    write(tmp_path / "config" / "pipeline.settings.toml", "{}")
    with pytest.raises(SettingsError) as caught:
        load_app_layer(tmp_path)
    assert caught.value.message.startswith(
        f"failed to parse pipeline settings TOML '{tmp_path}/config/pipeline.settings.toml': "
    )


def test_app_explicit_relative_path_is_joined_to_app_root(tmp_path: Path) -> None:
    app_toml(tmp_path, "default.json")
    write(tmp_path / "custom" / "app.json", json.dumps({"manifest_path": "explicit.json"}))
    assert load_app_layer(tmp_path, "custom/app.json").manifest_path == "explicit.json"
    assert load_app_layer(tmp_path, "  custom/app.json  ").manifest_path == "explicit.json"


def test_app_explicit_absolute_path_is_kept(tmp_path: Path) -> None:
    elsewhere = write(tmp_path / "elsewhere" / "app.json", json.dumps({"manifest_path": "abs.json"}))
    assert load_app_layer(tmp_path / "app", str(elsewhere)).manifest_path == "abs.json"


@pytest.mark.parametrize("name", ["app.toml", "app.TOML", "app.Toml"])
def test_app_explicit_toml_extension_in_any_case_is_toml(tmp_path: Path, name: str) -> None:
    write(tmp_path / name, 'manifest_path = "t.json"\n')
    assert load_app_layer(tmp_path, name).manifest_path == "t.json"


@pytest.mark.parametrize("name", ["app.txt", "app", "app.toml.bak", ".toml"])
def test_app_explicit_other_extension_is_json(tmp_path: Path, name: str) -> None:
    write(tmp_path / name, 'manifest_path = "t.json"\n')
    with pytest.raises(SettingsError) as caught:
        load_app_layer(tmp_path, name)
    assert caught.value.message.startswith(f"failed to parse pipeline settings JSON '{tmp_path}/{name}': ")
    write(tmp_path / name, '{"manifest_path": "j.json"}')
    assert load_app_layer(tmp_path, name).manifest_path == "j.json"


def test_app_explicit_missing_file_is_empty_and_skips_the_default(tmp_path: Path) -> None:
    app_toml(tmp_path, "default.json")
    assert load_app_layer(tmp_path, "config/absent.toml") == Overlay()


@pytest.mark.parametrize("explicit", [None, "", "   "])
def test_app_blank_explicit_path_uses_the_default_lookup(tmp_path: Path, explicit: str | None) -> None:
    app_toml(tmp_path, "default.json")
    assert load_app_layer(tmp_path, explicit).manifest_path == "default.json"


def test_app_error_shows_the_path_as_joined_without_normalising(tmp_path: Path) -> None:
    (tmp_path / "config" / "dir.json").mkdir(parents=True)
    with pytest.raises(SettingsError) as caught:
        load_app_layer(tmp_path, "./config//dir.json")
    assert caught.value.message == (
        f"failed to read pipeline settings '{tmp_path}/./config//dir.json': Is a directory (os error 21)"
    )


# --- project layer lookup (§1.1) ---------------------------------------------------------------


def project_file(root: Path, manifest: str, name: str = ".kroma/pipeline.settings.json") -> Path:
    return write(root / name, json.dumps({"pipeline": {"manifest_path": manifest}}))


def test_project_default_file_is_under_dot_kroma(tmp_path: Path) -> None:
    project_file(tmp_path, "project.json")
    assert load_project_layer(tmp_path).manifest_path == "project.json"


def test_project_without_file_or_root_is_empty(tmp_path: Path) -> None:
    assert load_project_layer(tmp_path) == Overlay()
    assert load_project_layer(None) == Overlay()
    assert load_project_layer(None, "  ") == Overlay()


def test_project_explicit_relative_path_is_joined_to_project_root(tmp_path: Path) -> None:
    project_file(tmp_path / "project", "from-project-root.json", ".kroma/custom.json")
    project_file(tmp_path, "from-elsewhere.json", ".kroma/custom.json")
    overlay = load_project_layer(tmp_path / "project", " .kroma/custom.json ")
    assert overlay.manifest_path == "from-project-root.json"


def test_project_explicit_absolute_path_is_kept(tmp_path: Path) -> None:
    path = project_file(tmp_path, "abs.json", "other/settings.json")
    assert load_project_layer(tmp_path / "project", str(path)).manifest_path == "abs.json"


def test_project_explicit_relative_path_without_root_is_used_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_file(tmp_path, "cwd.json", "rel/settings.json")
    monkeypatch.chdir(tmp_path)
    assert load_project_layer(None, "rel/settings.json").manifest_path == "cwd.json"
    (tmp_path / "rel" / "dir.json").mkdir()
    with pytest.raises(SettingsError) as caught:
        load_project_layer(None, "rel/dir.json")
    assert (
        caught.value.message
        == "failed to read pipeline settings 'rel/dir.json': Is a directory (os error 21)"
    )


def test_project_layer_is_always_json(tmp_path: Path) -> None:
    write(tmp_path / "settings.toml", 'manifest_path = "t.json"\n')
    with pytest.raises(SettingsError) as caught:
        load_project_layer(tmp_path, "settings.toml")
    assert caught.value.message.startswith(
        f"failed to parse pipeline settings JSON '{tmp_path}/settings.toml': "
    )


def test_project_validation_error_is_the_settings_message(tmp_path: Path) -> None:
    write(tmp_path / ".kroma" / "pipeline.settings.json", '{"pipeline": {"postprocess": {"color": 1}}}')
    with pytest.raises(SettingsError) as caught:
        load_project_layer(tmp_path)
    assert caught.value.message == invalid("postprocess.color")


# --- precedence (§1.4) -------------------------------------------------------------------------

APP = Overlay(
    manifest_path="app-manifest.json",
    postprocess_config_path="app-post.json",
    post_upscale=True,
    upscale_backend="python",
    post_color=True,
    color_profile="app-profile",
    post_bg_remove=True,
    bg_remove_backends=("rembg", "photoroom"),
    bg_refine_openai=True,
    bg_refine_openai_required=True,
)


def test_request_beats_project_beats_app_key_by_key() -> None:
    project = Overlay(postprocess_config_path="project-post.json", upscale_backend="ncnn", post_color=False)
    request = request_overlay(postprocess_config_path="request-post.json", color_profile="request-profile")
    merged = merge(request, project, APP)
    assert merged == Overlay(
        manifest_path="app-manifest.json",  # only the app sets it
        postprocess_config_path="request-post.json",  # request > project > app
        post_upscale=True,
        upscale_backend="ncnn",  # project > app
        post_color=False,  # a file layer can turn a pass off
        color_profile="request-profile",
        post_bg_remove=True,
        bg_remove_backends=("rembg", "photoroom"),
        bg_refine_openai=True,
        bg_refine_openai_required=True,
    )


def test_unset_everywhere_stays_unset_for_the_built_in_defaults() -> None:
    assert merge(request_overlay(), Overlay(), Overlay()) == Overlay()
    assert merge() == Overlay()


def test_backend_lists_are_replaced_wholesale_never_concatenated() -> None:
    project = Overlay(bg_remove_backends=("removebg",))
    assert merge(project, APP).bg_remove_backends == ("removebg",)
    request = request_overlay(bg_remove_backends=["photoroom"])
    assert merge(request, project, APP).bg_remove_backends == ("photoroom",)


def test_a_set_empty_list_in_a_file_layer_wins() -> None:
    assert merge(Overlay(bg_remove_backends=()), APP).bg_remove_backends == ()


def test_request_false_toggles_do_not_turn_off_passes_set_by_files() -> None:
    request = request_overlay(upscale=False, color=False, bg_remove=False)
    assert request == Overlay()
    merged = merge(request, APP)
    assert (merged.post_upscale, merged.post_color, merged.post_bg_remove) == (True, True, True)


def test_request_true_toggles_are_set_and_win() -> None:
    request = request_overlay(upscale=True, color=True, bg_remove=True)
    assert (request.post_upscale, request.post_color, request.post_bg_remove) == (True, True, True)
    project = Overlay(post_upscale=False, post_color=False, post_bg_remove=False)
    merged = merge(request, project)
    assert (merged.post_upscale, merged.post_color, merged.post_bg_remove) == (True, True, True)


def test_request_empty_backend_list_is_unset() -> None:
    assert request_overlay(bg_remove_backends=[]).bg_remove_backends is None
    assert request_overlay(bg_remove_backends=None).bg_remove_backends is None
    assert merge(request_overlay(bg_remove_backends=[]), APP).bg_remove_backends == ("rembg", "photoroom")


def test_request_refine_flags_are_optional_booleans_where_false_is_set() -> None:
    request = request_overlay(bg_refine_openai=False, bg_refine_openai_required=False)
    merged = merge(request, APP)
    assert (merged.bg_refine_openai, merged.bg_refine_openai_required) == (False, False)
    assert merge(request_overlay(), APP).bg_refine_openai is True


def test_request_strings_are_taken_as_given() -> None:
    request = request_overlay(
        manifest_path="m.json", postprocess_config_path="p.json", upscale_backend="ncnn", color_profile="c"
    )
    assert request == Overlay(
        manifest_path="m.json", postprocess_config_path="p.json", upscale_backend="ncnn", color_profile="c"
    )


def test_request_project_app_layers_merge_from_files(tmp_path: Path) -> None:
    app_root = tmp_path / "app"
    write(
        app_root / "config" / "pipeline.settings.toml",
        '[pipeline]\nmanifest_path = "app.json"\n[pipeline.postprocess]\nupscale = true\ncolor_profile = "a"\n',
    )
    project_root = app_root / "var" / "projects" / "demo"
    write(
        project_root / ".kroma" / "pipeline.settings.json",
        json.dumps({"pipeline": {"manifest_path": "project.json", "postprocess": {"upscale": False}}}),
    )
    merged = merge(request_overlay(upscale=True), load_project_layer(project_root), load_app_layer(app_root))
    assert merged == Overlay(manifest_path="project.json", post_upscale=True, color_profile="a")
    merged = merge(request_overlay(), load_project_layer(project_root), load_app_layer(app_root))
    assert merged.post_upscale is False


# --- paths -------------------------------------------------------------------------------------


def test_resolve_path_keeps_absolute_and_joins_relative_to_app_root(tmp_path: Path) -> None:
    assert resolve_path(tmp_path, "config/m.json") == tmp_path / "config" / "m.json"
    assert resolve_path(tmp_path, "/etc/m.json") == Path("/etc/m.json")


def test_join_path_does_not_normalise(tmp_path: Path) -> None:
    assert join_path(tmp_path, "./a//b.json") == f"{tmp_path}/./a//b.json"
    assert join_path(tmp_path, "/abs/x.json") == "/abs/x.json"
