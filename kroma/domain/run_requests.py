"""The run trigger's body and its validation, in the reference's order (pipeline spec §2.2-§2.3),
plus validate-config's body (§2.6). Pure: no project lookup, no file access."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from kroma.domain.errors import KromaError, ValidationError

PROVIDERS = ("local", "openai")
MAX_TRIGGER_CANDIDATES = 6
PROJECT_ROOT_MANAGED = "Field 'project_root' is managed by project storage and cannot be overridden"


class TriggerBody(msgspec.Struct, kw_only=True):
    """Every field is optional at decode time; `validate_trigger` gives the contract's messages."""

    mode: str | None = None
    confirm_spend: bool | None = None
    project_root: str | None = None
    input: str | None = None
    scene_refs: list[str] | None = None
    style_refs: list[str] | None = None
    stage: str | None = None
    time: str | None = None
    time_of_day: str | None = None  # the run read model's name for `time`; either is accepted
    weather: str | None = None
    candidates: int | None = None
    storage_sync_s3: bool | None = None
    # Beyond the reference: the project's world, composed into the prompt.
    provider: str | None = None
    style_guide_id: str | None = None
    character_ids: list[str] | None = None
    reference_set_id: str | None = None
    prompt_template_id: str | None = None
    template_vars: dict[str, str] | None = None


class ValidateConfigBody(msgspec.Struct, kw_only=True):
    project_root: str | None = None
    app_settings_path: str | None = None
    project_settings_path: str | None = None
    manifest_path: str | None = None
    postprocess_config_path: str | None = None


@dataclass(frozen=True)
class TriggerRequest:
    """A trigger that passed validation: enums lower-cased, blanks dropped, defaults applied."""

    mode: str
    input: str | None
    scene_refs: tuple[str, ...] | None
    style_refs: tuple[str, ...]
    stage: str
    time: str
    weather: str
    candidates: int | None
    storage_sync_s3: bool
    provider: str | None
    style_guide_id: str | None
    character_ids: tuple[str, ...]
    reference_set_id: str | None
    prompt_template_id: str | None
    template_vars: dict[str, str] = field(default_factory=dict)


def _invalid(message: str) -> ValidationError:
    return ValidationError(message, code="invalid_request")


def _blank_to_none(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()


def _refs(values: list[str] | None, name: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if not values:
        raise _invalid(f"Field '{name}' must not be empty")
    trimmed = tuple(v.strip() for v in values)
    if any(not v for v in trimmed):
        raise _invalid(f"Field '{name}' must not contain empty values")
    return trimmed


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    text = _blank_to_none(value)
    if text is None:
        return None
    if text.lower() not in allowed:
        raise _invalid(f"Field '{name}' must be one of: {', '.join(allowed)}")
    return text.lower()


def _exclusive_source(input_path: str | None, scene_refs: tuple[str, ...] | None) -> None:
    if input_path is not None and scene_refs is not None:
        raise _invalid("Provide only one of: input, scene_refs")
    if input_path is None and scene_refs is None:
        raise _invalid("Provide one of: input, scene_refs")


def validate_trigger(body: TriggerBody) -> TriggerRequest:
    """Every check the reference makes before the project lookup, first failure wins (§2.3)."""
    mode = (_blank_to_none(body.mode) or "dry").lower()
    if mode not in ("dry", "run"):
        raise ValidationError("Field 'mode' must be one of: dry, run", code="invalid_mode")
    if _blank_to_none(body.project_root) is not None:
        raise _invalid(PROJECT_ROOT_MANAGED)
    scene_refs = _refs(body.scene_refs, "scene_refs")
    input_path = _blank_to_none(body.input)
    _exclusive_source(input_path, scene_refs)
    style_refs = _refs(body.style_refs, "style_refs") or ()
    stage = _choice(body.stage, "stage", ("style", "time", "weather"))
    time_value = _choice(body.time if body.time is not None else body.time_of_day, "time", ("day", "night"))
    weather = _choice(body.weather, "weather", ("clear", "rain"))
    if body.candidates is not None and not 1 <= body.candidates <= MAX_TRIGGER_CANDIDATES:
        raise _invalid(f"Field 'candidates' must be between 1 and {MAX_TRIGGER_CANDIDATES}")
    provider = _choice(body.provider, "provider", PROVIDERS)
    _exclusive_source(input_path, scene_refs)
    if time_value is not None and stage not in ("time", "weather"):
        raise _invalid("Field 'time' requires stage 'time' or 'weather'")
    if weather is not None and stage != "weather":
        raise _invalid("Field 'weather' requires stage 'weather'")
    if mode == "run" and body.confirm_spend is not True:
        raise KromaError(
            "Run mode requires explicit spend confirmation", kind="policy", code="spend_confirmation_required"
        )
    return TriggerRequest(
        mode=mode,
        input=input_path,
        scene_refs=scene_refs,
        style_refs=style_refs,
        stage=stage or "style",
        time=time_value or "day",
        weather=weather or "clear",
        candidates=body.candidates,
        storage_sync_s3=bool(body.storage_sync_s3) and mode == "run",
        provider=provider,
        style_guide_id=_blank_to_none(body.style_guide_id),
        character_ids=tuple(c.strip() for c in body.character_ids or () if c.strip()),
        reference_set_id=_blank_to_none(body.reference_set_id),
        prompt_template_id=_blank_to_none(body.prompt_template_id),
        template_vars=dict(body.template_vars or {}),
    )


def preflight_failed(message: str) -> ValidationError:
    """A planning or configuration problem found after the lookup: 400 planning_preflight_failed,
    the message verbatim (§2.4)."""
    return ValidationError(message, code="planning_preflight_failed")


def config_validation_failed(message: str) -> ValidationError:
    return ValidationError(message, code="config_validation_failed")
