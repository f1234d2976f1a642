"""Layered pipeline settings (pipeline spec §1): app file < project file < request, key by key.

Each layer parses into an `Overlay` whose fields are all `None` ("unset") unless the layer sets
them. `merge` takes layers highest precedence first and keeps, for every key, the first layer that
set it; lists are replaced wholesale. Every failure is a `SettingsError` whose `message` is the
spec's text (§1.3) character for character.

This module is also the base of the engine's config loaders (`manifest`, `postprocess_config`):
it holds the helpers that make them behave like the reference implementation (Rust):

- `trim` strips exactly Rust's `str::trim` whitespace set and `ascii_lower` lowercases ASCII only
  (so error messages echo non-ASCII characters unchanged, as the reference does);
- `join_path` joins like Rust's `Path::join` without normalising, so a path in a message reads
  exactly as written (`/app/./config/x.json` stays as is; `pathlib` would drop the `./`);
- `read_utf8` / `io_error_text` read a file and render a failure as Rust's `io::Error` does
  (`No such file or directory (os error 2)`, `stream did not contain valid UTF-8`);
- `decode_json` is the strict JSON decoder (msgspec: no NaN/Infinity, no trailing data, no BOM).
  Parser messages (`{message}` in the spec) are msgspec's / tomllib's own text; they cannot match
  serde's wording and the spec does not fix them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal

import msgspec

# The upscale backends every layer accepts (settings §1.2, postprocess config §5.1, planned record
# §5.2). One tuple for all of them: the "Expected ncnn|python|builtin." messages follow it.
# `builtin` is Kroma's own in-process upscaler (no external tool), the default when no Real-ESRGAN
# backend is installed (`kroma.engine.passes.default_upscale_backend`).
UPSCALE_BACKENDS: tuple[str, ...] = ("ncnn", "python", "builtin")

APP_SETTINGS_TOML = "config/pipeline.settings.toml"
APP_SETTINGS_JSON = "config/pipeline.settings.json"  # "back-compat during migration"
PROJECT_SETTINGS = ".kroma/pipeline.settings.json"

ROOT_MUST_BE_OBJECT = "pipeline settings root must be a JSON object"

PathText = str | os.PathLike[str]

# Rust's `char::is_whitespace` (Unicode White_Space). Python's `str.strip()` also strips
# U+001C..U+001F, which Rust keeps.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# How the reference's TOML -> JSON conversion renders a TOML date/time: an object with this one key.
_TOML_DATETIME_KEY = "$__toml_private_datetime"


class SettingsError(Exception):
    """A settings layer could not be loaded; `message` is the §1.3 text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Overlay(msgspec.Struct, frozen=True, kw_only=True):
    """One layer's pipeline settings. `None` means the layer does not set the key."""

    manifest_path: str | None = None
    postprocess_config_path: str | None = None
    post_upscale: bool | None = None
    upscale_backend: str | None = None
    post_color: bool | None = None
    color_profile: str | None = None
    post_bg_remove: bool | None = None
    bg_remove_backends: tuple[str, ...] | None = None
    bg_refine_openai: bool | None = None
    bg_refine_openai_required: bool | None = None

    @property
    def loaded(self) -> bool:
        """True when the layer sets at least one key (a missing file sets none)."""
        return any(getattr(self, name) is not None for name in self.__struct_fields__)


# ---------------------------------------------------------------------------------------------
# Shared text, path and file helpers (also used by manifest.py and postprocess_config.py)


def trim(value: str) -> str:
    """Rust's `str::trim`: strip Unicode White_Space from both ends."""
    return value.strip(_RUST_WHITESPACE)


def ascii_lower(value: str) -> str:
    """Rust's `to_ascii_lowercase`: only A-Z change."""
    return value.translate(_ASCII_LOWER)


def join_path(root: PathText, value: str) -> str:
    """`root.join(value)` as Rust displays it: an absolute `value` replaces the root, a relative one
    is appended with one separator, nothing is normalised."""
    return os.path.join(os.fspath(root), value)


def resolve_path(app_root: Path, value: str) -> Path:
    """A config path as the pipeline uses it: absolute kept, relative joined to the app root."""
    return Path(join_path(app_root, value))


def io_error_text(error: OSError | UnicodeDecodeError | ValueError) -> str:
    """A read failure worded like Rust's `io::Error` display."""
    if isinstance(error, UnicodeDecodeError):
        return "stream did not contain valid UTF-8"
    if isinstance(error, OSError):
        if error.strerror and error.errno is not None:
            return f"{error.strerror} (os error {error.errno})"
        return str(error)
    return "file name contained an unexpected NUL byte"  # ValueError from open(): embedded NUL


def read_utf8(path: PathText) -> str:
    """The file's text; raises OSError, UnicodeDecodeError or ValueError (NUL in the path)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return data.decode("utf-8")


def decode_json(text: str) -> Any:
    """Strict JSON (raises msgspec.DecodeError). Duplicate keys: the last one wins (as serde_json)."""
    return msgspec.json.decode(text)


def toml_to_json(value: Any) -> Any:
    """The reference's TOML -> JSON value conversion: a date/time becomes a one-key object, a
    non-finite float becomes null (serde_json has no NaN/Infinity)."""
    if isinstance(value, dict):
        return {key: toml_to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [toml_to_json(item) for item in value]
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return {_TOML_DATETIME_KEY: value.isoformat()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Parsing one layer (§1.2)


def _invalid(field: str) -> SettingsError:
    return SettingsError(f"pipeline settings field '{field}' has invalid type")


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not trim(value):
        raise _invalid(field)
    return trim(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(field)
    return value


def _string_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _invalid(field)
    return tuple(_string(item, field) for item in value)


def _upscale_backend(value: Any, field: str) -> str:
    backend = ascii_lower(_string(value, field))
    if backend not in UPSCALE_BACKENDS:
        raise _invalid(field)  # the settings layer reports an unknown name as a type error
    return backend


# (key inside `pipeline.postprocess`, overlay field, parser), in the reference's checking order.
_POSTPROCESS_KEYS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = (
    ("upscale", "post_upscale", _bool),
    ("upscale_backend", "upscale_backend", _upscale_backend),
    ("color", "post_color", _bool),
    ("color_profile", "color_profile", _string),
    ("bg_remove", "post_bg_remove", _bool),
    ("bg_remove_backends", "bg_remove_backends", _string_list),
    ("bg_refine_openai", "bg_refine_openai", _bool),
    ("bg_refine_openai_required", "bg_refine_openai_required", _bool),
)


def parse_overlay(document: Any) -> Overlay:
    """Validate a decoded settings document: `{"pipeline": {...}}`, or (without a `pipeline` key)
    the root itself as the pipeline object. Unknown keys are ignored."""
    if not isinstance(document, dict):
        raise SettingsError(ROOT_MUST_BE_OBJECT)
    pipeline = document.get("pipeline", document)  # a present `pipeline` must itself be an object
    if not isinstance(pipeline, dict):
        raise SettingsError(ROOT_MUST_BE_OBJECT)
    values: dict[str, Any] = {}
    for key in ("manifest_path", "postprocess_config_path"):
        if key in pipeline:
            values[key] = _string(pipeline[key], key)
    if "postprocess" in pipeline:
        post = pipeline["postprocess"]
        if not isinstance(post, dict):
            raise _invalid("postprocess")
        for key, field, parse in _POSTPROCESS_KEYS:
            if key in post:
                values[field] = parse(post[key], f"postprocess.{key}")
    return Overlay(**values)


# ---------------------------------------------------------------------------------------------
# Loading layers (§1.1)


def load_layer_file(path: PathText, fmt: Literal["json", "toml"]) -> Overlay:
    """One settings file. A missing file is an empty overlay, not an error."""
    shown = os.fspath(path)
    if not os.path.exists(shown):
        return Overlay()
    try:
        text = read_utf8(shown)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SettingsError(f"failed to read pipeline settings '{shown}': {io_error_text(error)}") from error
    if fmt == "toml":
        try:
            document = toml_to_json(tomllib.loads(text))
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"failed to parse pipeline settings TOML '{shown}': {error}") from error
    else:
        try:
            document = decode_json(text)
        except msgspec.DecodeError as error:
            raise SettingsError(f"failed to parse pipeline settings JSON '{shown}': {error}") from error
    return parse_overlay(document)


def _given(value: str | None) -> str | None:
    """An explicit path option: trimmed; blank counts as absent."""
    if value is None or not trim(value):
        return None
    return trim(value)


def _format_by_extension(path: str) -> Literal["json", "toml"]:
    return "toml" if ascii_lower(PurePath(path).suffix[1:]) == "toml" else "json"


def load_app_layer(app_root: Path, explicit: str | None = None) -> Overlay:
    """The app layer: the explicit `app_settings_path` (relative -> app root; `.toml` in any case is
    TOML, anything else JSON), else `config/pipeline.settings.toml` if it exists, else
    `config/pipeline.settings.json`."""
    given = _given(explicit)
    if given is not None:
        path = join_path(app_root, given)
        return load_layer_file(path, _format_by_extension(path))
    toml_path = join_path(app_root, APP_SETTINGS_TOML)
    if os.path.exists(toml_path):
        return load_layer_file(toml_path, "toml")
    return load_layer_file(join_path(app_root, APP_SETTINGS_JSON), "json")


def load_project_layer(project_root: Path | None, explicit: str | None = None) -> Overlay:
    """The project layer (always JSON): the explicit `project_settings_path` (absolute as is,
    relative -> project root, or as given when there is no project root), else
    `<project root>/.kroma/pipeline.settings.json`; no project root and no path -> empty."""
    given = _given(explicit)
    if given is not None:
        path = given if project_root is None else join_path(project_root, given)
    elif project_root is not None:
        path = join_path(project_root, PROJECT_SETTINGS)
    else:
        return Overlay()
    return load_layer_file(path, "json")


# ---------------------------------------------------------------------------------------------
# Precedence (§1.4)


def merge(*layers: Overlay) -> Overlay:
    """Highest precedence first: for every key the first layer that sets it wins (a list is taken
    whole from that layer, never concatenated)."""
    values: dict[str, Any] = {}
    for name in Overlay.__struct_fields__:
        for layer in layers:
            value = getattr(layer, name)
            if value is not None:
                values[name] = value
                break
    return Overlay(**values)


def request_overlay(
    *,
    manifest_path: str | None = None,
    postprocess_config_path: str | None = None,
    upscale: bool = False,
    upscale_backend: str | None = None,
    color: bool = False,
    color_profile: str | None = None,
    bg_remove: bool = False,
    bg_remove_backends: Sequence[str] | None = None,
    bg_refine_openai: bool | None = None,
    bg_refine_openai_required: bool | None = None,
) -> Overlay:
    """The request's layer. The three toggles are plain booleans in a request: `True` sets the key,
    `False` leaves it unset (a request cannot turn off a pass a file turns on). An empty backend
    list is unset too. Other values are taken as given (`None` = unset)."""
    return Overlay(
        manifest_path=manifest_path,
        postprocess_config_path=postprocess_config_path,
        post_upscale=True if upscale else None,
        upscale_backend=upscale_backend,
        post_color=True if color else None,
        color_profile=color_profile,
        post_bg_remove=True if bg_remove else None,
        bg_remove_backends=tuple(bg_remove_backends) if bg_remove_backends else None,
        bg_refine_openai=bg_refine_openai,
        bg_refine_openai_required=bg_refine_openai_required,
    )
