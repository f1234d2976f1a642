"""Bootstrap import (contract §4.2): request parsing, normalisation, the import plan and the preview.

Everything here is pure. `parse_import_request` turns a request body into an `ImportRequest` (or raises
`ValidationError` with the contract's exact message). `plan_import` computes what a real import does
to a snapshot, as typed operations for the command layer plus the resulting state; `preview` computes
the dry-run state. `import_response` builds the `bootstrap_import` object from either.
"""

from __future__ import annotations

import copy
import json
import math
import string
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import msgspec

from kroma.domain.bootstrap_prompt import (
    SCHEMA_VERSION,
    SECTIONS,
    export_project,
    export_settings,
    read_ordered,
)
from kroma.domain.errors import ValidationError, required
from kroma.domain.slugs import normalize_slug

Mode = Literal["merge", "replace"]

# Rust's str::trim strips Unicode White_Space; Python's str.strip would also strip U+001C..U+001F.
_WS: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

MSG_NO_SOURCE: Final = "Provide either 'settings' or 'ai_response_text'"
MSG_EMPTY_TEXT: Final = "Field 'ai_response_text' must not be empty"
MSG_NO_JSON: Final = "Could not parse JSON from 'ai_response_text'"
MSG_NO_BOOTSTRAP_JSON: Final = "Could not parse bootstrap JSON from 'ai_response_text'"
MSG_BAD_MODE: Final = "Field 'mode' must be one of: merge, replace"
MSG_NO_ITEMS: Final = "Field 'reference_sets[].items' is required (use [] to provide an empty set)"
MSG_ITEM_CONTENT: Final = (
    "Field 'reference_sets[].items[]' requires at least one of: content_uri, content_text"
)
MSG_NOTHING: Final = "Import payload does not include any settings"
MSG_BODY_NOT_JSON: Final = "Request body is not valid JSON"  # worded like kroma.http.errors

#: serde_json's recursion limit: JSON nested this many arrays/objects deep does not parse (127 does).
MAX_DEPTH: Final = 128


def _trim(value: str) -> str:
    return value.strip(_WS)


def name_key(name: str) -> str:
    """The dedup / change-matching key of a named entry: ASCII-lower-cased (Rust to_ascii_lowercase)."""
    return name.translate(_ASCII_LOWER)


def secret_key(provider_code: str, secret_name: str) -> str:
    return f"{provider_code}\x00{secret_name}"


def fields_of(struct: msgspec.Struct) -> dict[str, Any]:
    """A struct's fields as a deep-copied dict."""
    return copy.deepcopy(msgspec.structs.asdict(struct))


# -- normalised request ------------------------------------------------------------------------------
# Optional text is carried as "" for NULL (the API shape); the store stores NULL, reads return "".


class ProjectPatch(msgspec.Struct, frozen=True):
    name: str | None  # None: keep the current name
    description: str | None  # None: keep; "" is a real value


class ProviderAccountSpec(msgspec.Struct, frozen=True):
    provider_code: str
    display_name: str
    account_ref: str
    base_url: str
    enabled: bool
    config_json: Any


class StyleGuideSpec(msgspec.Struct, frozen=True):
    name: str
    instructions: str
    notes: str


class CharacterSpec(msgspec.Struct, frozen=True):
    name: str
    description: str
    prompt_text: str


class ReferenceItemSpec(msgspec.Struct, frozen=True):
    label: str
    content_uri: str
    content_text: str
    sort_order: int
    metadata_json: Any


class ReferenceSetSpec(msgspec.Struct, frozen=True):
    name: str
    description: str
    items: tuple[ReferenceItemSpec, ...]  # in payload order, not deduped


class SecretSpec(msgspec.Struct, frozen=True):
    provider_code: str
    secret_name: str


class PromptTemplateSpec(msgspec.Struct, frozen=True):
    name: str
    template_text: str


class ImportSettings(msgspec.Struct, frozen=True):
    """Deduped sections, each sorted by its dedup key. None = section not provided; () = provided empty."""

    project: ProjectPatch | None = None
    provider_accounts: tuple[ProviderAccountSpec, ...] | None = None
    style_guides: tuple[StyleGuideSpec, ...] | None = None
    characters: tuple[CharacterSpec, ...] | None = None
    reference_sets: tuple[ReferenceSetSpec, ...] | None = None
    secrets: tuple[SecretSpec, ...] | None = None
    prompt_templates: tuple[PromptTemplateSpec, ...] | None = None

    def section(self, name: str) -> tuple[Any, ...] | None:
        return getattr(self, name)

    def provided(self, name: str) -> bool:
        return getattr(self, name) is not None


class ImportRequest(msgspec.Struct, frozen=True):
    mode: Mode
    dry_run: bool
    settings: ImportSettings

    def replaces(self, section: str) -> bool:
        """Replace mode empties a provided section first; secrets are never replaced."""
        return self.mode == "replace" and section != "secrets" and self.settings.provided(section)

    def applied(self) -> dict[str, int]:
        return {s: len(self.settings.section(s) or ()) for s in SECTIONS}


# -- body decoding: the request's JSON types (what serde enforces before any validation) -------------


class _ShapeError(Exception):
    pass


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_JSON_TYPE_NAMES: Final = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "array"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return next((name for kind, name in _JSON_TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


def _mistyped(path: str, want: str, value: Any) -> _ShapeError:
    """Worded like kroma.http.errors' decode errors: "Field 'x' must be str, not int"."""
    return _ShapeError(f"Field '{path}' must be {want}, not {_json_type(value)}")


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _mistyped(path, "object", value)
    return value


def _str(obj: dict[str, Any], key: str, path: str) -> str:
    """A plain string field: missing means "", null is a type error."""
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise _mistyped(_where(path, key), "str", value)
    return value


def _opt(obj: dict[str, Any], key: str, path: str, kind: type, want: str) -> Any:
    """An optional field: missing or null means None."""
    value = obj.get(key)
    if value is None:
        return None
    ok = type(value) is int if kind is int else isinstance(value, kind)  # bool is not an int here
    if not ok:
        raise _mistyped(_where(path, key), want, value)
    if kind is int and not -(2**63) <= value < 2**63:
        raise _ShapeError(f"Field '{_where(path, key)}' must be a 64-bit integer")
    return value


def _list(obj: dict[str, Any], key: str, path: str) -> list[dict[str, Any]] | None:
    value = _opt(obj, key, path, list, "array")
    if value is None:
        return None
    return [_obj(entry, f"{_where(path, key)}[{i}]") for i, entry in enumerate(value)]


_SECTION_FIELDS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    # field, type: "str" (plain string), "ostr" (optional string), "obool", "value" (any JSON)
    "provider_accounts": (
        ("provider_code", "str"),
        ("display_name", "ostr"),
        ("account_ref", "ostr"),
        ("base_url", "ostr"),
        ("enabled", "obool"),
        ("config_json", "value"),
    ),
    "style_guides": (("name", "str"), ("instructions", "str"), ("notes", "ostr")),
    "characters": (("name", "str"), ("description", "ostr"), ("prompt_text", "ostr")),
    "reference_sets": (("name", "str"), ("description", "ostr")),
    "secrets": (("provider_code", "str"), ("secret_name", "str")),
    "prompt_templates": (("name", "str"), ("template_text", "str")),
}
_ITEM_FIELDS: Final = (
    ("label", "str"),
    ("content_uri", "ostr"),
    ("content_text", "ostr"),
    ("sort_order", "oint"),
    ("metadata_json", "value"),
)


def _fields(obj: dict[str, Any], spec: tuple[tuple[str, str], ...], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in spec:
        if kind == "str":
            out[key] = _str(obj, key, path)
        elif kind == "ostr":
            out[key] = _opt(obj, key, path, str, "str")
        elif kind == "obool":
            out[key] = _opt(obj, key, path, bool, "bool")
        elif kind == "oint":
            out[key] = _opt(obj, key, path, int, "int")
        else:
            out[key] = obj.get(key)  # any JSON; null counts as absent
    return out


def _decode_settings(value: Any, path: str) -> dict[str, Any]:
    """Type-check a settings object; unknown keys are dropped. Sections: None or a list of dicts."""
    obj = _obj(value, path)
    out: dict[str, Any] = {"project": None}
    project = _opt(obj, "project", path, dict, "object")
    if project is not None:
        ppath = _where(path, "project")
        out["project"] = {
            "name": _opt(project, "name", ppath, str, "str"),
            "description": _opt(project, "description", ppath, str, "str"),
        }
    for section in SECTIONS:
        entries = _list(obj, section, path)
        if entries is None:
            out[section] = None
            continue
        decoded = []
        for i, entry in enumerate(entries):
            epath = f"{_where(path, section)}[{i}]"
            fields = _fields(entry, _SECTION_FIELDS[section], epath)
            if section == "reference_sets":
                items = _list(entry, "items", epath)
                fields["items"] = (
                    None
                    if items is None
                    else [_fields(item, _ITEM_FIELDS, f"{epath}.items[{j}]") for j, item in enumerate(items)]
                )
            decoded.append(fields)
        out[section] = decoded
    return out


# -- settings source and mode ------------------------------------------------------------------------


def _reject_surrogates(value: Any) -> None:
    """serde_json refuses unpaired surrogate escapes; Python's json accepts them."""
    if isinstance(value, str):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            raise ValueError("lone surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_surrogates(key)
            _reject_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _reject_surrogates(item)


def too_deep(value: Any) -> bool:
    """Whether `value` nests arrays/objects MAX_DEPTH levels deep (the root is level 1). Iterative,
    so any depth Python could build is safe to ask about."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def _finite(text: str) -> float:
    """serde_json refuses a number beyond f64's range; Python would read it as an infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _loads(text: str) -> Any:
    """Parse like serde_json: no NaN/Infinity, no out-of-range numbers, no lone surrogates, and
    nothing nested MAX_DEPTH deep. Any refusal is a ValueError."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constants, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deep") from None
    if too_deep(value):
        raise ValueError("nested too deep")
    _reject_surrogates(value)
    return value


def _strip_code_fence(text: str) -> str | None:
    if not text.startswith("```"):
        return None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    body = lines[1:]
    if body and _trim(body[-1]) == "```":
        body.pop()
    return _trim("\n".join(body))


def extract_json(text: str) -> Any:
    """First parseable candidate: the whole text, the text inside a ``` fence, first '{' to last '}'."""
    trimmed = _trim(text)
    candidates = [trimmed]
    unfenced = _strip_code_fence(trimmed)
    if unfenced is not None:
        candidates.append(unfenced)
    start, end = trimmed.find("{"), trimmed.rfind("}")
    if start >= 0 and end > start:
        candidates.append(trimmed[start : end + 1])
    for candidate in candidates:
        try:
            return _loads(candidate)
        except ValueError:
            continue
    raise ValidationError(MSG_NO_JSON)


def _resolve_source(
    settings: dict[str, Any] | None, ai_text: str | None
) -> tuple[str | None, dict[str, Any]]:
    """(mode from the AI wrapper, decoded settings)."""
    if settings is not None:
        return None, settings
    if ai_text is None:
        raise ValidationError(MSG_NO_SOURCE)
    text = _trim(ai_text)
    if not text:
        raise ValidationError(MSG_EMPTY_TEXT)
    value = extract_json(text)
    if isinstance(value, dict):
        try:  # the `{mode, settings}` wrapper; any type error in it discards the whole wrapper
            wrapper_mode = _opt(value, "mode", "", str, "str")
            wrapper_settings = value.get("settings")
            if wrapper_settings is not None:
                return wrapper_mode, _decode_settings(wrapper_settings, "settings")
        except _ShapeError:
            pass
    try:
        return None, _decode_settings(value, "")
    except _ShapeError:
        raise ValidationError(MSG_NO_BOOTSTRAP_JSON) from None


def parse_mode(raw: str | None) -> Mode:
    if raw is None:
        return "merge"
    value = name_key(_trim(raw))
    if value == "merge":
        return "merge"
    if value == "replace":
        return "replace"
    raise ValidationError(MSG_BAD_MODE)


# -- normalisation -------------------------------------------------------------------------------------


def _required(value: str, field: str) -> str:
    text = _trim(value)
    if not text:
        raise required(field)
    return text


def _optional(value: str | None) -> str:
    return "" if value is None else _trim(value)


def _provider_code(raw: str) -> str:
    code = normalize_slug(raw)
    if not code:
        raise required("provider_code")
    return code


def _deduped(entries: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entries[key] for key in sorted(entries))


def _norm_providers(entries: list[dict[str, Any]]) -> tuple[ProviderAccountSpec, ...]:
    out: dict[str, ProviderAccountSpec] = {}
    for e in entries:
        code = _provider_code(e["provider_code"])
        config = e["config_json"]
        out[code] = ProviderAccountSpec(
            provider_code=code,
            display_name=_optional(e["display_name"]) or code,
            account_ref=_optional(e["account_ref"]),
            base_url=_optional(e["base_url"]),
            enabled=True if e["enabled"] is None else e["enabled"],
            config_json={} if config is None else copy.deepcopy(config),
        )
    return _deduped(out)


def _norm_styles(entries: list[dict[str, Any]]) -> tuple[StyleGuideSpec, ...]:
    out: dict[str, StyleGuideSpec] = {}
    for e in entries:
        name = _required(e["name"], "style_guides[].name")
        instructions = _required(e["instructions"], "style_guides[].instructions")
        out[name_key(name)] = StyleGuideSpec(name, instructions, _optional(e["notes"]))
    return _deduped(out)


def _norm_characters(entries: list[dict[str, Any]]) -> tuple[CharacterSpec, ...]:
    out: dict[str, CharacterSpec] = {}
    for e in entries:
        name = _required(e["name"], "characters[].name")
        out[name_key(name)] = CharacterSpec(name, _optional(e["description"]), _optional(e["prompt_text"]))
    return _deduped(out)


def _norm_item(item: dict[str, Any]) -> ReferenceItemSpec:
    label = _required(item["label"], "reference_sets[].items[].label")
    uri, text = _optional(item["content_uri"]), _optional(item["content_text"])
    if not uri and not text:
        raise ValidationError(MSG_ITEM_CONTENT)
    metadata = item["metadata_json"]
    sort_order = item["sort_order"]
    return ReferenceItemSpec(
        label=label,
        content_uri=uri,
        content_text=text,
        sort_order=0 if sort_order is None else sort_order,
        metadata_json={} if metadata is None else copy.deepcopy(metadata),
    )


def _norm_reference_sets(entries: list[dict[str, Any]]) -> tuple[ReferenceSetSpec, ...]:
    out: dict[str, ReferenceSetSpec] = {}
    for e in entries:
        name = _required(e["name"], "reference_sets[].name")
        description = _optional(e["description"])
        if e["items"] is None:
            raise ValidationError(MSG_NO_ITEMS)
        items = tuple(_norm_item(item) for item in e["items"])
        out[name_key(name)] = ReferenceSetSpec(name, description, items)
    return _deduped(out)


def _norm_secrets(entries: list[dict[str, Any]]) -> tuple[SecretSpec, ...]:
    out: dict[str, SecretSpec] = {}
    for e in entries:
        code = _provider_code(e["provider_code"])
        secret_name = _required(e["secret_name"], "secrets[].secret_name")
        out[secret_key(code, secret_name)] = SecretSpec(code, secret_name)
    return _deduped(out)


def _norm_templates(entries: list[dict[str, Any]]) -> tuple[PromptTemplateSpec, ...]:
    out: dict[str, PromptTemplateSpec] = {}
    for e in entries:
        name = _required(e["name"], "prompt_templates[].name")
        text = _required(e["template_text"], "prompt_templates[].template_text")
        out[name_key(name)] = PromptTemplateSpec(name, text)
    return _deduped(out)


_NORMALISERS: Final[dict[str, Callable[[list[dict[str, Any]]], tuple[Any, ...]]]] = {
    "provider_accounts": _norm_providers,
    "style_guides": _norm_styles,
    "characters": _norm_characters,
    "reference_sets": _norm_reference_sets,
    "secrets": _norm_secrets,
    "prompt_templates": _norm_templates,
}


def normalize_settings(raw: dict[str, Any]) -> ImportSettings:
    """Sections in the contract's order; the first error wins."""
    project = None
    if raw["project"] is not None:
        name, description = raw["project"]["name"], raw["project"]["description"]
        project = ProjectPatch(
            name=None if name is None else _required(name, "project.name"),
            description=None if description is None else _trim(description),
        )
    sections = {
        section: None if raw[section] is None else _NORMALISERS[section](raw[section]) for section in SECTIONS
    }
    if project is None and all(value is None for value in sections.values()):
        raise ValidationError(MSG_NOTHING)
    return ImportSettings(project=project, **sections)


def parse_import_request(body: Any) -> ImportRequest:
    """Validate a bootstrap-import body. All checks here precede the project lookup (400 before 404).

    JSON type mismatches in the body itself (the framework's 422 in the reference system) raise a
    ValidationError "Field '<path>' must be <type>" instead.
    """
    if too_deep(body):  # serde_json would not have parsed it (the framework's 400 in the reference)
        raise ValidationError(MSG_BODY_NOT_JSON)
    try:
        if not isinstance(body, dict):
            raise _ShapeError("Request body must be a JSON object")
        raw_mode = _opt(body, "mode", "", str, "str")
        dry_run = _opt(body, "dry_run", "", bool, "bool")
        ai_text = _opt(body, "ai_response_text", "", str, "str")
        settings = None if body.get("settings") is None else _decode_settings(body["settings"], "settings")
    except _ShapeError as exc:
        raise ValidationError(str(exc)) from None
    wrapper_mode, raw_settings = _resolve_source(settings, ai_text)
    mode = parse_mode(raw_mode if raw_mode is not None else wrapper_mode)
    return ImportRequest(mode=mode, dry_run=bool(dry_run), settings=normalize_settings(raw_settings))


# -- operations for the command layer ------------------------------------------------------------------

EntityKind = Literal["provider_account", "style_guide", "character", "reference_set", "prompt_template"]

SECTION_KIND: Final[dict[str, EntityKind]] = {
    "provider_accounts": "provider_account",
    "style_guides": "style_guide",
    "characters": "character",
    "reference_sets": "reference_set",
    "prompt_templates": "prompt_template",
}


class ProjectUpdate(msgspec.Struct, frozen=True, tag="project_update"):
    """Name and/or description differ from the current values: set both."""

    name: str
    description: str
    updated_at: str


class Delete(msgspec.Struct, frozen=True, tag="delete"):
    """Replace mode: a row of a provided section. `key` is the id, or the provider_code for accounts."""

    kind: EntityKind
    key: str


class ReferenceItemsPurged(msgspec.Struct, frozen=True, tag="reference_items_purged"):
    """Replace mode with reference_sets provided: every item of the project goes, orphans included
    (orphans are not visible in the snapshot). Emitted before the sets' Delete operations."""


class ProviderAccountUpsert(msgspec.Struct, frozen=True, tag="provider_account_upsert"):
    """Insert, or overwrite every field of the account with this code (created_at kept)."""

    created: bool
    provider_code: str
    display_name: str
    account_ref: str  # "" = NULL
    base_url: str  # "" = NULL
    enabled: bool
    config_json: Any
    created_at: str
    updated_at: str


class StyleGuideUpsert(msgspec.Struct, frozen=True, tag="style_guide_upsert"):
    created: bool
    id: str
    name: str
    instructions: str
    notes: str
    created_at: str
    updated_at: str


class CharacterUpsert(msgspec.Struct, frozen=True, tag="character_upsert"):
    created: bool
    id: str
    name: str
    description: str
    prompt_text: str
    created_at: str
    updated_at: str


class ReferenceSetUpsert(msgspec.Struct, frozen=True, tag="reference_set_upsert"):
    created: bool
    id: str
    name: str
    description: str
    created_at: str
    updated_at: str


class ReferenceItem(msgspec.Struct, frozen=True):
    id: str
    label: str
    content_uri: str
    content_text: str
    sort_order: int
    metadata_json: Any
    created_at: str
    updated_at: str


class ReferenceSetItemsReplaced(msgspec.Struct, frozen=True, tag="reference_set_items_replaced"):
    """Every item of the set goes (`removed_item_ids`, as seen in the snapshot); `items` are inserted."""

    set_id: str
    removed_item_ids: tuple[str, ...]
    items: tuple[ReferenceItem, ...]


class SecretMetadataCreated(msgspec.Struct, frozen=True, tag="secret_metadata_created"):
    """A new secret row with an empty value (has_value false, key_ref default)."""

    provider_code: str
    secret_name: str
    created_at: str


class SecretMetadataTouched(msgspec.Struct, frozen=True, tag="secret_metadata_touched"):
    """Existing secret: only updated_at changes; the stored value is never overwritten."""

    provider_code: str
    secret_name: str
    updated_at: str


class PromptTemplateUpsert(msgspec.Struct, frozen=True, tag="prompt_template_upsert"):
    created: bool
    id: str
    name: str
    template_text: str
    created_at: str
    updated_at: str


class ProjectTouched(msgspec.Struct, frozen=True, tag="project_touched"):
    """Always last: the project's updated_at is bumped by every real import."""

    updated_at: str


Operation = (
    ProjectUpdate
    | Delete
    | ReferenceItemsPurged
    | ProviderAccountUpsert
    | StyleGuideUpsert
    | CharacterUpsert
    | ReferenceSetUpsert
    | ReferenceSetItemsReplaced
    | SecretMetadataCreated
    | SecretMetadataTouched
    | PromptTemplateUpsert
    | ProjectTouched
)


class ImportPlan(msgspec.Struct):
    """What an import (or, from `preview`, a dry run) does. `operations` is empty for a preview."""

    mode: Mode
    dry_run: bool
    project_updated: bool
    operations: tuple[Operation, ...]
    before: dict[str, Any]  # the snapshot, in read order
    after: dict[str, Any]  # post-import state (read order) or the preview (dedup-key order)
    applied: dict[str, int]
    changes: dict[str, Any]


# -- change summary ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else value


def json_equal(a: Any, b: Any) -> bool:
    """serde_json::Value equality: 1 != 1.0 and true != 1, unlike Python's ==."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_TEXT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "provider_accounts": ("provider_code", "display_name", "account_ref", "base_url"),
    "style_guides": ("name", "instructions", "notes"),
    "characters": ("name", "description", "prompt_text"),
    "reference_sets": ("name", "description"),
    "secrets": ("provider_code", "secret_name"),
    "prompt_templates": ("name", "template_text"),
}
_ITEM_TEXT: Final = ("label", "content_uri", "content_text")


def _unsigned_zero(value: Any) -> Any:
    """`value` with -0.0 as 0.0 (json_equal holds them equal), for a canonical text."""
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, dict):
        return {key: _unsigned_zero(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_unsigned_zero(item) for item in value]
    return value


def _item_order(item: Mapping[str, Any]) -> tuple[Any, ...]:
    """A canonical order of a set's items: sort_order, then content; equal items sort alike."""
    metadata = json.dumps(_unsigned_zero(item.get("metadata_json", {})), sort_keys=True)
    return (item.get("sort_order", 0), *(_text(item.get(f)) for f in _ITEM_TEXT), metadata)


def _items_equal(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    """The same items, compared in a canonical order rather than as listed: the store reads a set's
    items back by sort_order and then by their random ids (§8.5), so the order among items with one
    sort_order is no content, and a dry run (items as given) must compare like the real import."""
    if len(left) != len(right):
        return False
    for a, b in zip(sorted(left, key=_item_order), sorted(right, key=_item_order), strict=True):
        if any(_text(a.get(f)) != _text(b.get(f)) for f in _ITEM_TEXT):
            return False
        if a.get("sort_order", 0) != b.get("sort_order", 0):
            return False
        if not json_equal(a.get("metadata_json", {}), b.get("metadata_json", {})):
            return False
    return True


def entries_equal(section: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Content equality: ids and timestamps ignored."""
    if any(_text(a.get(f)) != _text(b.get(f)) for f in _TEXT_FIELDS[section]):
        return False
    if section == "provider_accounts":
        return bool(a.get("enabled", True)) == bool(b.get("enabled", True)) and json_equal(
            a.get("config_json", {}), b.get("config_json", {})
        )
    if section == "reference_sets":
        return _items_equal(list(a.get("items", ())), list(b.get("items", ())))
    if section == "secrets":
        return bool(a.get("has_value")) == bool(b.get("has_value"))
    return True


def entry_key(section: str, row: Mapping[str, Any]) -> str:
    if section == "provider_accounts":
        return row["provider_code"]
    if section == "secrets":
        return secret_key(row["provider_code"], row["secret_name"])
    return name_key(row["name"])


def _keyed(section: str, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows by key; on a key collision (e.g. "Core Style" and "core style") the later row wins."""
    return {entry_key(section, row): row for row in rows}


def section_changes(
    section: str, before: list[dict[str, Any]], after: list[dict[str, Any]], provided: bool, replaced: bool
) -> dict[str, Any]:
    before_map, after_map = _keyed(section, before), _keyed(section, after)
    created = updated = unchanged = 0
    for key, row in after_map.items():
        if key not in before_map:
            created += 1
        elif entries_equal(section, before_map[key], row):
            unchanged += 1
        else:
            updated += 1
    return {
        "provided": provided,
        "replaced": replaced,
        "before_count": len(before_map),
        "after_count": len(after_map),
        "created": created,
        "updated": updated,
        "deleted": sum(1 for key in before_map if key not in after_map),
        "unchanged": unchanged,
    }


def compute_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], request: ImportRequest, project_updated: bool
) -> dict[str, Any]:
    """The `changes` summary. Both snapshots are taken in the order given (see `import_response`)."""
    settings = request.settings
    changes: dict[str, Any] = {
        "project": {
            "provided": settings.project is not None,
            "updated": project_updated,
            "name_changed": before["project"]["name"] != after["project"]["name"],
            "description_changed": _text(before["project"].get("description"))
            != _text(after["project"].get("description")),
        }
    }
    for section in SECTIONS:
        changes[section] = section_changes(
            section,
            list(before.get(section) or ()),
            list(after.get(section) or ()),
            settings.provided(section),
            request.replaces(section),
        )
    return changes


# -- planning ------------------------------------------------------------------------------------------


def _project_after(before: dict[str, Any], patch: ProjectPatch | None) -> tuple[dict[str, Any], bool]:
    project = dict(before["project"])
    if patch is None:
        return project, False
    name = project["name"] if patch.name is None else patch.name
    current_description = _text(project.get("description"))
    description = current_description if patch.description is None else patch.description
    if name == project["name"] and description == current_description:
        return project, False
    project["name"], project["description"] = name, description
    return project, True


_SECRET_FIELDS: Final = ("provider_code", "secret_name")


class _Planner:
    """Rows are matched through per-section indexes (exact-case key -> first row with it, as the
    store's UNIQUE(project_id, name) constraint matches), so planning is linear in the entries."""

    def __init__(self, before: dict[str, Any], now: str, new_id: Callable[[], str]) -> None:
        self.now, self.new_id = now, new_id
        self.project_id = before["project"]["id"]
        self.after = copy.deepcopy(before)
        self.ops: list[Operation] = []
        self._indexes: dict[str, tuple[tuple[str, ...], dict[tuple[Any, ...], int]]] = {}

    def _index(self, section: str, fields: tuple[str, ...]) -> dict[tuple[Any, ...], int]:
        known = self._indexes.get(section)
        if known is None or known[0] != fields:
            index: dict[tuple[Any, ...], int] = {}
            for i, row in enumerate(self.after[section]):
                index.setdefault(tuple(row.get(f) for f in fields), i)
            known = self._indexes[section] = (fields, index)
        return known[1]

    def _row(self, section: str, field: str, value: str) -> tuple[int | None, dict[str, Any] | None]:
        index = self._index(section, (field,)).get((value,))
        return index, None if index is None else self.after[section][index]

    def _put(self, section: str, field: str, index: int | None, row: dict[str, Any]) -> None:
        rows = self.after[section]
        if index is None:
            self._index(section, (field,)).setdefault((row.get(field),), len(rows))
            rows.append(row)
        else:
            rows[index] = row

    def _ids(self, existing: dict[str, Any] | None) -> tuple[bool, str, str]:
        if existing is None:
            return True, self.new_id(), self.now
        return False, existing["id"], existing.get("created_at", self.now)

    def clear(self, section: str) -> None:
        if section == "reference_sets":
            self.ops.append(ReferenceItemsPurged())
        kind = SECTION_KIND[section]
        for row in self.after[section]:
            key = row["provider_code"] if section == "provider_accounts" else row["id"]
            self.ops.append(Delete(kind, key))
        self.after[section] = []
        self._indexes.pop(section, None)

    def provider(self, spec: ProviderAccountSpec) -> None:
        index, existing = self._row("provider_accounts", "provider_code", spec.provider_code)
        created_at = self.now if existing is None else existing.get("created_at", self.now)
        op = ProviderAccountUpsert(
            existing is None,
            spec.provider_code,
            spec.display_name,
            spec.account_ref,
            spec.base_url,
            spec.enabled,
            copy.deepcopy(spec.config_json),
            created_at,
            self.now,
        )
        self.ops.append(op)
        row = {"project_id": self.project_id, **fields_of(op)}
        del row["created"]
        self._put("provider_accounts", "provider_code", index, row)

    def named(self, section: str, spec: Any, op_type: type) -> None:
        index, existing = self._row(section, "name", spec.name)
        created, id_, created_at = self._ids(existing)
        fields = fields_of(spec)
        op = op_type(created=created, id=id_, created_at=created_at, updated_at=self.now, **fields)
        self.ops.append(op)
        row = {"id": id_, "project_id": self.project_id, **fields}
        self._put(section, "name", index, {**row, "created_at": created_at, "updated_at": self.now})

    def reference_set(self, spec: ReferenceSetSpec) -> None:
        index, existing = self._row("reference_sets", "name", spec.name)
        created, set_id, created_at = self._ids(existing)
        self.ops.append(
            ReferenceSetUpsert(created, set_id, spec.name, spec.description, created_at, self.now)
        )
        items = tuple(
            ReferenceItem(
                self.new_id(),
                item.label,
                item.content_uri,
                item.content_text,
                item.sort_order,
                copy.deepcopy(item.metadata_json),
                self.now,
                self.now,
            )
            for item in spec.items
        )
        removed = tuple(item.get("id", "") for item in (existing or {}).get("items", ()))
        self.ops.append(ReferenceSetItemsReplaced(set_id, removed, items))
        item_rows = [
            {"project_id": self.project_id, "reference_set_id": set_id, **fields_of(item)} for item in items
        ]
        row = {
            "id": set_id,
            "project_id": self.project_id,
            "name": spec.name,
            "description": spec.description,
            "created_at": created_at,
            "updated_at": self.now,
            "items": item_rows,
        }
        self._put("reference_sets", "name", index, row)

    def secret(self, spec: SecretSpec) -> None:
        rows = self.after["secrets"]
        found = self._index("secrets", _SECRET_FIELDS)
        index = found.get((spec.provider_code, spec.secret_name))
        if index is None:
            self.ops.append(SecretMetadataCreated(spec.provider_code, spec.secret_name, self.now))
            found[(spec.provider_code, spec.secret_name)] = len(rows)
            rows.append(
                {
                    "project_id": self.project_id,
                    "provider_code": spec.provider_code,
                    "secret_name": spec.secret_name,
                    "has_value": False,
                    "updated_at": self.now,
                }
            )
        else:
            self.ops.append(SecretMetadataTouched(spec.provider_code, spec.secret_name, self.now))
            rows[index] = {**rows[index], "updated_at": self.now}


def plan_import(
    snapshot: Mapping[str, Any], request: ImportRequest, now: str, new_id: Callable[[], str]
) -> ImportPlan:
    """The real import: operations in the order the reference store applies them, and the state after.

    Order: project update; replace-mode deletes (accounts, styles, characters, sets, templates); upserts
    (accounts, styles, characters, sets with their items, secrets, templates); the project bump.
    """
    before = read_ordered(snapshot)
    settings = request.settings
    planner = _Planner(before, now, new_id)
    project, project_updated = _project_after(before, settings.project)
    planner.after["project"] = project
    if project_updated:
        planner.ops.append(ProjectUpdate(project["name"], project["description"], now))
    for section in SECTIONS:
        if request.replaces(section):
            planner.clear(section)
    for account in settings.provider_accounts or ():
        planner.provider(account)
    for style in settings.style_guides or ():
        planner.named("style_guides", style, StyleGuideUpsert)
    for character in settings.characters or ():
        planner.named("characters", character, CharacterUpsert)
    for reference_set in settings.reference_sets or ():
        planner.reference_set(reference_set)
    for secret in settings.secrets or ():
        planner.secret(secret)
    for template in settings.prompt_templates or ():
        planner.named("prompt_templates", template, PromptTemplateUpsert)
    planner.ops.append(ProjectTouched(now))
    after = read_ordered(planner.after)
    return ImportPlan(
        mode=request.mode,
        dry_run=False,
        project_updated=project_updated,
        operations=tuple(planner.ops),
        before=before,
        after=after,
        applied=request.applied(),
        changes=compute_changes(before, after, request, project_updated),
    )


# -- dry-run preview -------------------------------------------------------------------------------------

_PREVIEW_PREFIX: Final = {
    "style_guides": "preview_style_",
    "characters": "preview_character_",
    "prompt_templates": "preview_prompt_",
}


def _preview_row(section: str, spec: Any, existing: dict[str, Any] | None, ctx: dict[str, Any]) -> dict:
    now, project_id = ctx["now"], ctx["project_id"]
    created_at = now if existing is None else existing.get("created_at", now)
    fields = fields_of(spec)
    if section == "provider_accounts":
        return {"project_id": project_id, **fields, "created_at": created_at, "updated_at": now}
    if section == "reference_sets":
        # Sets and items have no ids in the export shape; a new set's id stays "".
        set_id = "" if existing is None else existing.get("id", "")
        items = [
            {"id": "", "project_id": project_id, "reference_set_id": set_id, **fields_of(i)}
            for i in spec.items
        ]
        return {
            "id": set_id,
            "project_id": project_id,
            "name": spec.name,
            "description": spec.description,
            "created_at": created_at,
            "updated_at": now,
            "items": items,
        }
    id_ = f"{_PREVIEW_PREFIX[section]}{ctx['new_id']()}" if existing is None else existing["id"]
    return {"id": id_, "project_id": project_id, **fields, "created_at": created_at, "updated_at": now}


def preview(
    snapshot: Mapping[str, Any], request: ImportRequest, now: str, new_id: Callable[[], str]
) -> ImportPlan:
    """The dry run: nothing to apply, only the previewed state.

    Unlike the real import, entries match existing rows by their dedup key (lower-cased name), so a
    provided "core style" takes over an existing "Core Style" (its id and created_at). Each section is
    ordered by the dedup key. New styles/characters/templates get `preview_<kind>_<new_id()>` ids.
    """
    before = read_ordered(snapshot)
    settings = request.settings
    project, project_updated = _project_after(before, settings.project)
    after: dict[str, Any] = {**copy.deepcopy(before), "project": project}
    ctx = {"now": now, "project_id": project["id"], "new_id": new_id}
    for section in SECTIONS:
        current = {} if request.replaces(section) else copy.deepcopy(_keyed(section, before[section]))
        for spec in settings.section(section) or ():
            key = entry_key(section, msgspec.structs.asdict(spec))
            if section == "secrets":
                current.setdefault(
                    key,
                    {
                        "project_id": project["id"],
                        "provider_code": spec.provider_code,
                        "secret_name": spec.secret_name,
                        "has_value": False,
                        "updated_at": now,
                    },
                )
            else:
                current[key] = _preview_row(section, spec, current.get(key), ctx)
        after[section] = [current[key] for key in sorted(current)]
    return ImportPlan(
        mode=request.mode,
        dry_run=True,
        project_updated=project_updated,
        operations=(),
        before=before,
        after=after,
        applied=request.applied(),
        changes=compute_changes(before, after, request, project_updated),
    )


# -- response ----------------------------------------------------------------------------------------------


def import_response(request: ImportRequest, plan: ImportPlan, after_snapshot: Mapping[str, Any]) -> dict:
    """The `bootstrap_import` object.

    Dry run: pass `plan.after` (kept in dedup-key order). Real import: pass the snapshot re-read after
    applying the operations (or `plan.after`); it is put in read order and `changes` is recomputed
    against `plan.before`, exactly as the reference store compares its before and after reads.
    """
    after = dict(after_snapshot) if request.dry_run else read_ordered(after_snapshot)
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": request.mode,
        "dry_run": request.dry_run,
        "project_updated": plan.project_updated,
        "applied": dict(plan.applied),
        "changes": compute_changes(plan.before, after, request, plan.project_updated),
        "project": export_project(after["project"]),
        "settings": export_settings(after, reorder=not request.dry_run),
    }
