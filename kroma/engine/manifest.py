"""The planning manifest (pipeline spec §3.1, §3.2): a JSON object whose every key is optional.

`parse_manifest` applies the §3.1 rules in the reference's order (scene_refs, style_refs,
safe_batch_limit, generation, output_guard, policy, prompts) and raises `ManifestError` with the
spec's text at the first violation. Numbers follow serde_json's typing, which the reference reads
through `as_u64` / `as_f64`:

- an integer field (`safe_batch_limit`, `generation.candidates`, `generation.max_candidates`)
  needs a JSON integer literal in 1..=2**64-1: a float literal (`2.0`), a boolean, a negative or a
  larger integer is rejected with the field's "must be an integer >= 1" message;
- `output_guard.max_chroma_delta` takes any JSON number (integer or float) that is finite and
  >= 0, and is stored as a float; a boolean is not a number.

`prompts` values are trimmed (an empty value is kept) and merged over the five default prompts;
when several prompt values are not strings, the error names the smallest key (the reference
walks a sorted map).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from kroma.engine.settings_layer import PathText, decode_json, io_error_text, read_utf8, trim

_U64_MAX = 2**64 - 1

DEFAULT_PROMPTS: Mapping[str, str] = MappingProxyType(
    {
        "style_base": (
            "Preserve geometry and perspective. Apply one coherent noir drawing hand. "
            "No text, no logos, no watermark."
        ),
        "time_day": "Daylight scene with clear readability and stable contrast family.",
        "time_night": "Night scene with controlled deep shadows, no topology changes.",
        "weather_clear": "Dry clear atmosphere. No rain streaks, no snow particles, no diagonal sky hatching.",
        "weather_rain": "Visible wet surfaces, puddles, and reflection cues; no style drift.",
    }
)


class ManifestError(Exception):
    """The manifest could not be read or violates §3.1; `message` is the full spec text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    candidates: int = 1
    max_candidates: int = 6


EXTRA_CHECKS = ("wrong_size", "near_blank", "geometry_drift")


class OutputGuard(msgspec.Struct, frozen=True, kw_only=True):
    enforce_grayscale: bool = False
    max_chroma_delta: float = 2.0
    fail_on_chroma_exceed: bool = False
    # Beyond the reference (all off by default): soft warnings unless named in hard_checks.
    expected_size: str | None = None  # "WxH": a candidate of another size is `wrong_size`
    min_contrast: float | None = None  # luma standard deviation below it is `near_blank`
    max_geometry_drift: float | None = None  # 1 - edge-map similarity to the scene, above it
    hard_checks: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The planned output-guard record (§6.1); the extra checks only when set."""
        out: dict[str, Any] = {
            "enabled": True,
            "enforce_grayscale": self.enforce_grayscale,
            "max_chroma_delta": self.max_chroma_delta,
            "fail_on_chroma_exceed": self.fail_on_chroma_exceed,
        }
        extras = {
            "expected_size": self.expected_size,
            "min_contrast": self.min_contrast,
            "max_geometry_drift": self.max_geometry_drift,
        }
        out.update({k: v for k, v in extras.items() if v is not None})
        if self.hard_checks:
            out["hard_checks"] = list(self.hard_checks)
        return out


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    default_no_invention: bool = True


def _default_prompts() -> dict[str, str]:
    return dict(DEFAULT_PROMPTS)


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    scene_refs: tuple[str, ...] = ()
    style_refs: tuple[str, ...] = ()
    safe_batch_limit: int = 20
    generation: Generation = msgspec.field(default_factory=Generation)
    output_guard: OutputGuard = msgspec.field(default_factory=OutputGuard)
    policy: Policy = msgspec.field(default_factory=Policy)
    prompts: dict[str, str] = msgspec.field(default_factory=_default_prompts)


DEFAULT_MANIFEST = Manifest()


def _field_error(field: str, must: str) -> ManifestError:
    return ManifestError(f"planning manifest field '{field}' must {must}")


def _string_array(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _field_error(field, "be an array of strings")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _field_error(field, "be an array of strings")
        if not trim(item):
            raise _field_error(field, "not contain empty strings")
        out.append(trim(item))
    return tuple(out)


def _positive_integer(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _U64_MAX:
        raise _field_error(field, "be an integer >= 1")
    return value


def _non_negative_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _field_error(field, "be a non-negative number")
    try:
        number = float(value)
    except OverflowError:  # an integer literal beyond the float range
        raise _field_error(field, "be a non-negative number") from None
    if not math.isfinite(number) or number < 0.0:
        raise _field_error(field, "be a non-negative number")
    return number


def _boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _field_error(field, "be a boolean")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _field_error(field, "be an object")
    return value


def _generation(value: Any) -> Generation:
    section = _object(value, "generation")
    base = Generation()
    return Generation(
        candidates=(
            _positive_integer(section["candidates"], "generation.candidates")
            if "candidates" in section
            else base.candidates
        ),
        max_candidates=(
            _positive_integer(section["max_candidates"], "generation.max_candidates")
            if "max_candidates" in section
            else base.max_candidates
        ),
    )


def _output_guard(value: Any) -> OutputGuard:
    section = _object(value, "output_guard")
    base = OutputGuard()
    return OutputGuard(
        enforce_grayscale=(
            _boolean(section["enforce_grayscale"], "output_guard.enforce_grayscale")
            if "enforce_grayscale" in section
            else base.enforce_grayscale
        ),
        max_chroma_delta=(
            _non_negative_number(section["max_chroma_delta"], "output_guard.max_chroma_delta")
            if "max_chroma_delta" in section
            else base.max_chroma_delta
        ),
        fail_on_chroma_exceed=(
            _boolean(section["fail_on_chroma_exceed"], "output_guard.fail_on_chroma_exceed")
            if "fail_on_chroma_exceed" in section
            else base.fail_on_chroma_exceed
        ),
        **_extra_checks(section),
    )


def _extra_checks(section: dict[str, Any]) -> dict[str, Any]:
    """Kroma's optional checks; messages in the manifest's own wording."""
    values: dict[str, Any] = {}
    if section.get("expected_size") is not None:
        size = section["expected_size"]
        if isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size):
            size = f"{size[0]}x{size[1]}"
        if not isinstance(size, str) or not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", size.strip()):
            raise _field_error("output_guard.expected_size", "be a size like '1024x1536'")
        values["expected_size"] = size.strip()
    for key in ("min_contrast", "max_geometry_drift"):
        if section.get(key) is not None:
            values[key] = _non_negative_number(section[key], f"output_guard.{key}")
    if section.get("hard_checks") is not None:
        checks = section["hard_checks"]
        if not isinstance(checks, list) or any(c not in EXTRA_CHECKS for c in checks):
            raise _field_error("output_guard.hard_checks", f"be an array of: {', '.join(EXTRA_CHECKS)}")
        values["hard_checks"] = tuple(checks)
    return values


def _policy(value: Any) -> Policy:
    section = _object(value, "policy")
    if "default_no_invention" not in section:
        return Policy()
    return Policy(
        default_no_invention=_boolean(section["default_no_invention"], "policy.default_no_invention")
    )


def _prompts(value: Any) -> dict[str, str]:
    section = _object(value, "prompts")
    prompts = _default_prompts()
    for key in sorted(section):
        text = section[key]
        if not isinstance(text, str):
            raise _field_error(f"prompts.{key}", "be a string")
        prompts[key] = trim(text)
    return prompts


def parse_manifest(document: Any) -> Manifest:
    """A decoded manifest document -> Manifest (missing keys take the §3.2 defaults; unknown
    top-level keys are ignored)."""
    if not isinstance(document, dict):
        raise ManifestError("planning manifest must be a JSON object")
    values: dict[str, Any] = {}
    for key in ("scene_refs", "style_refs"):
        if key in document:
            values[key] = _string_array(document[key], key)
    if "safe_batch_limit" in document:
        values["safe_batch_limit"] = _positive_integer(document["safe_batch_limit"], "safe_batch_limit")
    if "generation" in document:
        values["generation"] = _generation(document["generation"])
    if "output_guard" in document:
        values["output_guard"] = _output_guard(document["output_guard"])
    if "policy" in document:
        values["policy"] = _policy(document["policy"])
    if "prompts" in document:
        values["prompts"] = _prompts(document["prompts"])
    return Manifest(**values)


def load_manifest(path: PathText) -> Manifest:
    """Read and parse a manifest file. A missing file is a read error (there is no optional
    manifest file: without a manifest path the pipeline uses DEFAULT_MANIFEST)."""
    shown = os.fspath(path)
    try:
        text = read_utf8(shown)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ManifestError(f"failed to read planning manifest '{shown}': {io_error_text(error)}") from error
    try:
        document = decode_json(text)
    except msgspec.DecodeError as error:
        raise ManifestError(f"failed to parse planning manifest JSON '{shown}': {error}") from error
    return parse_manifest(document)
