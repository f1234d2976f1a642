"""Validation of the whole pipeline config stack (pipeline spec §2.6, step 3).

Loads the app and project settings layers, merges app < project < overrides (the overrides carry
only `manifest_path` and `postprocess_config_path`), then fully parses the manifest and the
postprocess config (planning parser) the merged paths point at. Scene/style file existence,
prompt completeness and `safe_batch_limit` are not checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kroma.engine.manifest import ManifestError, load_manifest
from kroma.engine.postprocess_config import PostprocessConfigError, load_postprocess_config_from
from kroma.engine.settings_layer import (
    Overlay,
    SettingsError,
    join_path,
    load_app_layer,
    load_project_layer,
    merge,
    trim,
)


class ConfigValidationError(Exception):
    """HTTP 400, kind `validation`, code `config_validation_failed`; `message` is the §2.6 text."""

    kind = "validation"
    code = "config_validation_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _given(value: str | None) -> str | None:
    """A body path: trimmed; blank counts as absent."""
    if value is None or not trim(value):
        return None
    return trim(value)


def validate_config(
    app_root: Path,
    project_root: Path | None,
    *,
    app_settings_path: str | None = None,
    project_settings_path: str | None = None,
    manifest_path: str | None = None,
    postprocess_config_path: str | None = None,
) -> dict[str, Any]:
    """The §2.6 summary, or ConfigValidationError at the first failure. The resolved paths are
    reported exactly as written in the winning layer (not made absolute); the absolute path in an
    error message is that value joined to the app root."""
    try:
        app = load_app_layer(app_root, _given(app_settings_path))
        project = load_project_layer(project_root, _given(project_settings_path))
    except SettingsError as error:
        raise ConfigValidationError(f"settings layer validation failed: {error.message}") from error
    overrides = Overlay(
        manifest_path=_given(manifest_path), postprocess_config_path=_given(postprocess_config_path)
    )
    merged = merge(overrides, project, app)

    if merged.manifest_path is not None:
        absolute = join_path(app_root, merged.manifest_path)
        try:
            load_manifest(absolute)
        except ManifestError as error:
            raise ConfigValidationError(
                f"planning manifest validation failed ({absolute}): {error.message}"
            ) from error
    if merged.postprocess_config_path is not None:
        absolute = join_path(app_root, merged.postprocess_config_path)
        try:
            load_postprocess_config_from(app_root, merged.postprocess_config_path)
        except PostprocessConfigError as error:
            raise ConfigValidationError(
                f"postprocess config validation failed ({absolute}): {error.message}"
            ) from error

    return {
        "app_settings_loaded": app.loaded,
        "project_settings_loaded": project.loaded,
        "resolved_manifest_path": merged.manifest_path,
        "resolved_postprocess_config_path": merged.postprocess_config_path,
    }
