"""The postprocess config file as the planner reads it (pipeline spec §5.1, "Planning parser
(strict)" column) and the planned post-process record (§5.2).

The planning view carries only what the planner uses; `raw` keeps the whole decoded document for
the adapters' lenient parser (binaries, models, endpoints, ...), which reads it later.

Rules, in the reference's checking order (first violation wins):

- `upscale` object; `upscale.backend` string, trimmed and ASCII-lower-cased, one of
  `UPSCALE_BACKENDS` (else `invalid upscale backend '{v}'. Expected ncnn|python|builtin.`, `{v}`
  being the normalised value; without one the backend is resolved by installation, see
  `planned_record`); `upscale.scale` a JSON integer literal in 1..=255 (a float literal such as
  `2.0`, a boolean or an out-of-range integer gives the field's "has invalid type" message, as the
  reference does); `upscale.format` png/jpg/jpeg(-> jpg)/webp, trimmed, any case (anything else:
  "has invalid type");
- `color` object; `color.default_profile` string, trimmed (not checked against the profiles);
- `bg_remove` object; `bg_remove.backends` array whose items must ALL be strings (else "has
  invalid type") and then each, trimmed and ASCII-lower-cased, one of `BG_REMOVE_BACKENDS` (an
  empty array is accepted); `bg_remove.format` as `upscale.format`; `bg_remove.openai` object
  with booleans `enabled` and `required`.

Where we depart from the reference: `builtin` (Kroma's in-process implementation) is an allowed
name for both passes, the default background-remove chain is `rembg` then `builtin` (so a fresh
install removes backgrounds with no key and no network), and the default upscale backend is the
installed Real-ESRGAN (python, else ncnn) or else `builtin`, instead of always `python`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from kroma.engine.settings_layer import (
    UPSCALE_BACKENDS,  # the one tuple of allowed upscale backends (shared with the settings layer)
    PathText,
    ascii_lower,
    decode_json,
    io_error_text,
    join_path,
    read_utf8,
    trim,
)

__all__ = [
    "BG_REMOVE_BACKENDS",
    "DEFAULT_BG_REMOVE_BACKENDS",
    "IMAGE_FORMATS",
    "UPSCALE_BACKENDS",
    "PostprocessConfig",
    "PostprocessConfigError",
    "load_postprocess_config",
    "load_postprocess_config_from",
    "parse_postprocess_config",
    "planned_record",
    "validate_bg_remove_backends",
    "validate_upscale_backend",
]

BG_REMOVE_BACKENDS: tuple[str, ...] = ("rembg", "photoroom", "removebg", "builtin")
DEFAULT_BG_REMOVE_BACKENDS: tuple[str, ...] = ("rembg", "builtin")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg", "webp")  # plus the alias "jpeg" -> "jpg"
_MAX_SCALE = 255  # u8


class PostprocessConfigError(Exception):
    """The config could not be read or violates the planning parser; `message` is the spec text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PostprocessConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The planning view of the postprocess config, with the planner's built-in defaults."""

    upscale_backend: str | None = None  # None: resolved by installation (`planned_record`)
    upscale_scale: int = 2
    upscale_format: str = "png"
    color_default_profile: str = "neutral"
    bg_remove_backends: tuple[str, ...] = DEFAULT_BG_REMOVE_BACKENDS
    bg_remove_format: str = "png"
    bg_refine_openai_enabled: bool = True
    bg_refine_openai_required: bool = True
    raw: dict[str, Any] = msgspec.field(default_factory=dict)  # the decoded file ({} without one)


def _invalid(field: str) -> PostprocessConfigError:
    return PostprocessConfigError(f"postprocess config field '{field}' has invalid type")


def validate_upscale_backend(value: str) -> str:
    """Trimmed, ASCII-lower-cased backend name, or the invalid-backend error."""
    backend = ascii_lower(trim(value))
    if backend not in UPSCALE_BACKENDS:
        raise PostprocessConfigError(
            f"invalid upscale backend '{backend}'. Expected {'|'.join(UPSCALE_BACKENDS)}."
        )
    return backend


def validate_bg_remove_backends(values: Sequence[str]) -> tuple[str, ...]:
    """Each name trimmed and ASCII-lower-cased; the first unknown one is the error."""
    out: list[str] = []
    for value in values:
        backend = ascii_lower(trim(value))
        if backend not in BG_REMOVE_BACKENDS:
            raise PostprocessConfigError(
                f"invalid background-remove backend '{backend}'. Expected {'|'.join(BG_REMOVE_BACKENDS)}."
            )
        out.append(backend)
    return tuple(out)


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(field)
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _invalid(field)
    return value


def _boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(field)
    return value


def _image_format(value: Any, field: str) -> str:
    normalized = ascii_lower(trim(_string(value, field)))
    if normalized == "jpeg":
        return "jpg"
    if normalized not in IMAGE_FORMATS:
        raise _invalid(field)
    return normalized


def _scale(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SCALE:
        raise _invalid("upscale.scale")
    return value


def _upscale(section: dict[str, Any], values: dict[str, Any]) -> None:
    if "backend" in section:
        values["upscale_backend"] = validate_upscale_backend(_string(section["backend"], "upscale.backend"))
    if "scale" in section:
        values["upscale_scale"] = _scale(section["scale"])
    if "format" in section:
        values["upscale_format"] = _image_format(section["format"], "upscale.format")


def _bg_remove(section: dict[str, Any], values: dict[str, Any]) -> None:
    if "backends" in section:
        items = section["backends"]
        if not isinstance(items, list):
            raise _invalid("bg_remove.backends")
        names = [_string(item, "bg_remove.backends") for item in items]  # all strings first
        values["bg_remove_backends"] = validate_bg_remove_backends(names)
    if "format" in section:
        values["bg_remove_format"] = _image_format(section["format"], "bg_remove.format")
    if "openai" in section:
        openai = _object(section["openai"], "bg_remove.openai")
        if "enabled" in openai:
            values["bg_refine_openai_enabled"] = _boolean(openai["enabled"], "bg_remove.openai.enabled")
        if "required" in openai:
            values["bg_refine_openai_required"] = _boolean(openai["required"], "bg_remove.openai.required")


def parse_postprocess_config(document: Any) -> PostprocessConfig:
    """A decoded postprocess config -> its planning view (defaults for what it does not set)."""
    if not isinstance(document, dict):
        raise PostprocessConfigError("postprocess config root must be a JSON object")
    values: dict[str, Any] = {}
    if "upscale" in document:
        _upscale(_object(document["upscale"], "upscale"), values)
    if "color" in document:
        color = _object(document["color"], "color")
        if "default_profile" in color:
            values["color_default_profile"] = trim(_string(color["default_profile"], "color.default_profile"))
    if "bg_remove" in document:
        _bg_remove(_object(document["bg_remove"], "bg_remove"), values)
    return PostprocessConfig(raw=document, **values)


def load_postprocess_config(path: PathText | None) -> PostprocessConfig:
    """Read and parse a config file; `None` (no configured path) -> the built-in defaults. A
    missing file is a read error."""
    if path is None:
        return PostprocessConfig()
    shown = os.fspath(path)
    try:
        text = read_utf8(shown)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PostprocessConfigError(
            f"failed to read postprocess config '{shown}': {io_error_text(error)}"
        ) from error
    try:
        document = decode_json(text)
    except msgspec.DecodeError as error:
        raise PostprocessConfigError(f"failed to parse postprocess config JSON '{shown}': {error}") from error
    return parse_postprocess_config(document)


def load_postprocess_config_from(app_root: Path, config_path: str | None) -> PostprocessConfig:
    """The effective `postprocess_config_path` as the planner loads it: trimmed, blank or `None`
    -> defaults, relative -> joined to the app root, absolute kept."""
    if config_path is None or not trim(config_path):
        return PostprocessConfig()
    return load_postprocess_config(join_path(app_root, trim(config_path)))


def _installed_upscale_backend(app_root: Path | None) -> str:
    if app_root is None:
        return "builtin"
    # Imported here: the passes module imports this one (for the backend tuples).
    from kroma.engine.passes import default_upscale_backend

    return default_upscale_backend(app_root)


def planned_record(
    *,
    upscale: bool,
    color: bool,
    bg_remove: bool,
    config: PostprocessConfig,
    upscale_backend: str | None = None,
    color_profile: str | None = None,
    bg_remove_backends: Sequence[str] | None = None,
    bg_refine_openai: bool | None = None,
    bg_refine_openai_required: bool | None = None,
    app_root: Path | None = None,
) -> dict[str, Any]:
    """The §5.2 record (`postprocess` in the run log, `planned_postprocess` on every job).

    Overrides win over the config; an override backend is validated like the config's (the
    config's own upscale backend is re-validated too); an empty `bg_remove_backends` override
    counts as none. Values of a disabled pass are null / [] / false.

    An upscale backend set nowhere is resolved by installation under `app_root`
    (`kroma.engine.passes.default_upscale_backend`: python, else ncnn, else builtin); without an
    app root nothing can be installed, so it is `builtin`."""
    planned_upscale_backend: str | None = None
    if upscale:
        if upscale_backend is not None:
            planned_upscale_backend = validate_upscale_backend(upscale_backend)
        elif config.upscale_backend is not None:
            planned_upscale_backend = validate_upscale_backend(config.upscale_backend)
        else:
            planned_upscale_backend = _installed_upscale_backend(app_root)
    planned_color_profile = (
        (trim(color_profile) if color_profile is not None else config.color_default_profile)
        if color
        else None
    )
    planned_backends: list[str] = []
    refine = False
    refine_required = False
    if bg_remove:
        planned_backends = list(
            validate_bg_remove_backends(bg_remove_backends)
            if bg_remove_backends
            else config.bg_remove_backends
        )
        refine = bg_refine_openai if bg_refine_openai is not None else config.bg_refine_openai_enabled
        refine_required = (
            bg_refine_openai_required
            if bg_refine_openai_required is not None
            else config.bg_refine_openai_required
        )
    order = ["generate"]
    if bg_remove:
        order.append("bg_remove")
        if refine:
            order.append("bg_refine_openai")
    if upscale:
        order.append("upscale")
    if color:
        order.append("color")
    return {
        "upscale": upscale,
        "upscale_backend": planned_upscale_backend,
        "color": color,
        "color_profile": planned_color_profile,
        "bg_remove": bg_remove,
        "bg_remove_backends": planned_backends,
        "bg_refine_openai": refine,
        "bg_refine_openai_required": refine_required,
        "pipeline_order": order,
    }
