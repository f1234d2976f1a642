"""Validation of the pipeline config stack (pipeline spec §2.6 step 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kroma.engine.config_validation import ConfigValidationError, validate_config

MANIFEST = {"scene_refs": ["a.png"], "prompts": {"style_base": "ok"}}


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def summary(
    app: bool = False, project: bool = False, manifest: str | None = None, post: str | None = None
) -> dict[str, Any]:
    return {
        "app_settings_loaded": app,
        "project_settings_loaded": project,
        "resolved_manifest_path": manifest,
        "resolved_postprocess_config_path": post,
    }


def failure(app_root: Path, project_root: Path | None, **options: str | None) -> str:
    with pytest.raises(ConfigValidationError) as caught:
        validate_config(app_root, project_root, **options)
    assert str(caught.value) == caught.value.message
    return caught.value.message


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    app_root = tmp_path / "app"
    project_root = app_root / "var" / "projects" / "demo"
    app_root.mkdir()
    return app_root, project_root


def test_nothing_configured_is_valid_and_resolves_nothing(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    assert validate_config(app_root, project_root) == summary()
    assert validate_config(app_root, None) == summary()


def test_app_toml_paths_are_validated_and_reported_as_written(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(
        app_root / "config" / "pipeline.settings.toml",
        '[pipeline]\nmanifest_path = "config/manifest.json"\npostprocess_config_path = "config/post.json"\n',
    )
    write(app_root / "config" / "manifest.json", MANIFEST)
    write(app_root / "config" / "post.json", {})
    result = validate_config(app_root, project_root)
    assert result == summary(app=True, manifest="config/manifest.json", post="config/post.json")
    assert list(result) == list(summary())


def test_overrides_validate_without_settings_files(roots: tuple[Path, Path]) -> None:
    app_root, _ = roots
    write(app_root / "config" / "manifest.json", MANIFEST)
    write(app_root / "config" / "post.json", {})
    result = validate_config(
        app_root, None, manifest_path="config/manifest.json", postprocess_config_path="config/post.json"
    )
    assert result == summary(manifest="config/manifest.json", post="config/post.json")


def test_overrides_beat_project_beats_app(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(
        app_root / "config" / "pipeline.settings.toml",
        '[pipeline]\nmanifest_path = "app.json"\npostprocess_config_path = "app-post.json"\n',
    )
    write(project_root / ".kroma" / "pipeline.settings.json", {"pipeline": {"manifest_path": "project.json"}})
    for name in ("app.json", "project.json", "override.json"):
        write(app_root / name, {})
    write(app_root / "app-post.json", {})
    write(app_root / "override-post.json", {})
    assert validate_config(app_root, project_root) == summary(
        app=True, project=True, manifest="project.json", post="app-post.json"
    )
    assert validate_config(
        app_root, project_root, manifest_path="override.json", postprocess_config_path="override-post.json"
    ) == summary(app=True, project=True, manifest="override.json", post="override-post.json")


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_blank_options_count_as_absent(roots: tuple[Path, Path], blank: str | None) -> None:
    app_root, project_root = roots
    write(project_root / ".kroma" / "pipeline.settings.json", {"manifest_path": "project.json"})
    write(app_root / "project.json", {})
    write(app_root / "config" / "pipeline.settings.json", {"postprocess_config_path": "post.json"})
    write(app_root / "post.json", {})
    result = validate_config(
        app_root,
        project_root,
        app_settings_path=blank,
        project_settings_path=blank,
        manifest_path=blank,
        postprocess_config_path=blank,
    )
    assert result == summary(app=True, project=True, manifest="project.json", post="post.json")


def test_override_paths_are_trimmed(roots: tuple[Path, Path]) -> None:
    app_root, _ = roots
    write(app_root / "m.json", {})
    assert validate_config(app_root, None, manifest_path="  m.json \n")["resolved_manifest_path"] == "m.json"


def test_explicit_settings_paths_are_used(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(app_root / "custom" / "app.TOML", 'manifest_path = "m.json"\n')
    write(project_root / "custom.json", {"postprocess": {"color": True}})
    write(app_root / "m.json", {})
    result = validate_config(
        app_root, project_root, app_settings_path="custom/app.TOML", project_settings_path="custom.json"
    )
    assert result == summary(app=True, project=True, manifest="m.json")


def test_loaded_means_the_layer_set_a_key(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(app_root / "config" / "pipeline.settings.toml", "[pipeline]\n")
    write(
        project_root / ".kroma" / "pipeline.settings.json", {"pipeline": {"postprocess": {"upscale": False}}}
    )
    assert validate_config(app_root, project_root) == summary(app=False, project=True)


def test_app_settings_error_is_wrapped(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(app_root / "config" / "pipeline.settings.toml", '[pipeline]\nmanifest_path = "  "\n')
    assert failure(app_root, project_root) == (
        "settings layer validation failed: pipeline settings field 'manifest_path' has invalid type"
    )


def test_project_settings_error_is_wrapped(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(project_root / ".kroma" / "pipeline.settings.json", {"pipeline": 5})
    assert failure(app_root, project_root) == (
        "settings layer validation failed: pipeline settings root must be a JSON object"
    )


def test_settings_parse_error_is_wrapped(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    path = write(app_root / "bad.json", "{")
    message = failure(app_root, project_root, app_settings_path="bad.json")
    assert message.startswith(
        f"settings layer validation failed: failed to parse pipeline settings JSON '{path}': "
    )


def test_missing_manifest_file_is_a_wrapped_read_error(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    absolute = f"{app_root}/config/missing.json"
    assert failure(app_root, project_root, manifest_path="config/missing.json") == (
        f"planning manifest validation failed ({absolute}): "
        f"failed to read planning manifest '{absolute}': No such file or directory (os error 2)"
    )


def test_invalid_manifest_is_wrapped_with_its_absolute_path(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(project_root / ".kroma" / "pipeline.settings.json", {"manifest_path": "./config/m.json"})
    write(app_root / "config" / "m.json", {"generation": {"candidates": 0}})
    assert failure(app_root, project_root) == (
        f"planning manifest validation failed ({app_root}/./config/m.json): "
        "planning manifest field 'generation.candidates' must be an integer >= 1"
    )


def test_absolute_manifest_path_is_kept(roots: tuple[Path, Path], tmp_path: Path) -> None:
    app_root, project_root = roots
    outside = write(tmp_path / "outside" / "m.json", [])
    assert failure(app_root, project_root, manifest_path=str(outside)) == (
        f"planning manifest validation failed ({outside}): planning manifest must be a JSON object"
    )
    write(outside, {})
    assert validate_config(app_root, project_root, manifest_path=str(outside))[
        "resolved_manifest_path"
    ] == str(outside)


def test_invalid_postprocess_config_is_wrapped_with_its_absolute_path(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(app_root / "config" / "pipeline.settings.json", {"postprocess_config_path": "config/post.json"})
    write(app_root / "config" / "post.json", {"bg_remove": {"backends": ["bria"]}})
    assert failure(app_root, project_root) == (
        f"postprocess config validation failed ({app_root}/config/post.json): "
        "invalid background-remove backend 'bria'. Expected rembg|photoroom|removebg|builtin."
    )


def test_missing_postprocess_config_is_a_wrapped_read_error(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    absolute = f"{app_root}/post.json"
    assert failure(app_root, project_root, postprocess_config_path="post.json") == (
        f"postprocess config validation failed ({absolute}): "
        f"failed to read postprocess config '{absolute}': No such file or directory (os error 2)"
    )


def test_manifest_is_checked_before_the_postprocess_config(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    message = failure(app_root, project_root, manifest_path="m.json", postprocess_config_path="p.json")
    assert message.startswith(f"planning manifest validation failed ({app_root}/m.json): ")


def test_settings_are_checked_before_the_files_they_name(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(project_root / ".kroma" / "pipeline.settings.json", {"postprocess": {"bg_remove_backends": [1]}})
    message = failure(app_root, project_root, manifest_path="missing.json")
    assert message == (
        "settings layer validation failed: pipeline settings field 'postprocess.bg_remove_backends' has invalid type"
    )


def test_scene_files_prompts_and_batch_limit_are_not_checked(roots: tuple[Path, Path]) -> None:
    app_root, project_root = roots
    write(app_root / "m.json", {"scene_refs": ["does/not/exist.png"], "prompts": {"style_base": ""}})
    assert validate_config(app_root, project_root, manifest_path="m.json") == summary(manifest="m.json")


def test_error_carries_the_http_classification() -> None:
    error = ConfigValidationError("x")
    assert (error.kind, error.code, error.message) == ("validation", "config_validation_failed", "x")
