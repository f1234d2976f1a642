"""Bootstrap export (contract §4.1): export shapes, the fixed response template and the prompt text.

Pure functions over a *snapshot*: the project's current settings as plain dicts in API-object shape
(`{"project": {...}, "provider_accounts": [...], "style_guides": [...], "characters": [...],
"prompt_templates": [...], "reference_sets": [{..., "items": [...]}], "secrets": [...]}`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any, Final

SCHEMA_VERSION: Final = "kroma.bootstrap.v1"

#: The six settings sections, in the contract's processing order.
SECTIONS: Final = (
    "provider_accounts",
    "style_guides",
    "characters",
    "reference_sets",
    "secrets",
    "prompt_templates",
)

#: The fixed `expected_response` template (§4.1). Treat as read-only; `expected_response()` copies it.
EXPECTED_RESPONSE: Final[dict[str, Any]] = {
    "mode": "merge",
    "settings": {
        "project": {
            "name": "[OPTIONAL_PROJECT_NAME]",
            "description": "[OPTIONAL_PROJECT_DESCRIPTION]",
        },
        "provider_accounts": [
            {
                "provider_code": "openai",
                "display_name": "OpenAI Main",
                "account_ref": "[OPTIONAL_ACCOUNT_REF]",
                "base_url": "https://api.openai.com/v1",
                "enabled": True,
                "config_json": {"model": "gpt-image-1"},
            }
        ],
        "style_guides": [
            {
                "name": "Core Style",
                "instructions": "Describe the visual style rules here.",
                "notes": "[OPTIONAL_NOTES]",
            }
        ],
        "characters": [
            {
                "name": "Hero Character",
                "description": "[OPTIONAL_CHARACTER_DESCRIPTION]",
                "prompt_text": "Describe the character and visual constraints.",
            }
        ],
        "reference_sets": [
            {
                "name": "Hero Faces",
                "description": "[OPTIONAL_REFERENCE_SET_DESCRIPTION]",
                "items": [
                    {
                        "label": "Hero closeup",
                        "content_uri": "[OPTIONAL_FILE_OR_HTTP_URI]",
                        "content_text": "Short text reference notes for this item.",
                        "sort_order": 0,
                        "metadata_json": {"source": "manual"},
                    }
                ],
            }
        ],
        "secrets": [{"provider_code": "openai", "secret_name": "api_key"}],
        "prompt_templates": [
            {
                "name": "Cover Prompt",
                "template_text": "Write the reusable generation prompt text here.",
            }
        ],
    },
}

_PROMPT_HEAD: Final = (
    "You are configuring a Kroma project bootstrap profile.\n"
    "Return ONLY valid JSON (no markdown, no comments, no prose).\n"
    "Use this exact response shape:\n"
)
_PROMPT_RULES: Final = (
    "Rules:\n"
    "- Keep provider_code lowercase (letters, numbers, '-', '_').\n"
    "- Omit sections you do not want to change.\n"
    "- Keep arrays concise and production-ready.\n"
    "- Never include secret values or API keys.\n"
    "- If you include a `secrets` section, provide metadata only (`provider_code`, `secret_name`).\n"
    "- `secrets` imports are merge-only for safety; omitted secrets are not deleted.\n"
    "- If you include `reference_sets`, each set must include an explicit `items` array "
    "(use `[]` for an empty set).\n"
    "- For each provided reference set, the `items` array is treated as authoritative "
    "(omitted items for that set are removed).\n"
)


def expected_response() -> dict[str, Any]:
    """A fresh copy of the fixed template."""
    return copy.deepcopy(EXPECTED_RESPONSE)


# -- JSON text exactly as serde_json::to_string_pretty writes it --------------------------------------

_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1


def format_float(value: float) -> str:
    """A finite f64 the way serde_json (ryu) prints it: "1.0", "0.00001", "1e-7", "1.5e20".

    Python's repr gives the same shortest round-trip digits, but a different layout ("1e-05").
    """
    if not math.isfinite(value):
        return "null"  # serde_json writes non-finite floats as null
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    exponent = int(exp_text or "0") - len(frac_part)
    if not digits:
        return sign + "0.0"
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + exponent  # 10^(kk-1) <= value < 10^kk
    if exponent >= 0 and kk <= 16:
        body = digits + "0" * exponent + ".0"
    elif 0 < kk <= 16:
        body = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        body = "0." + "0" * -kk + digits
    elif length == 1:
        body = f"{digits}e{kk - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + body


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if _I64_MIN <= value <= _U64_MAX:
            return str(value)
        try:  # serde_json would have read an out-of-range integer as an f64
            return format_float(float(value))
        except OverflowError:
            return "null"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        # Same escape set as serde_json: '"', '\\' and U+0000..U+001F; nothing else.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _pretty(value: Any, indent: str, out: list[str]) -> None:
    if isinstance(value, Mapping):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{\n")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",\n")
            out.append(inner + _scalar(str(key)) + ": ")
            _pretty(value[key], inner, out)
        out.append("\n" + indent + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[\n")
        for i, item in enumerate(value):
            if i:
                out.append(",\n")
            out.append(inner)
            _pretty(item, inner, out)
        out.append("\n" + indent + "]")
    else:
        out.append(_scalar(value))


def pretty_json(value: Any) -> str:
    """2-space indented JSON with object keys sorted, byte-identical to serde_json's pretty printer."""
    out: list[str] = []
    _pretty(value, "", out)
    return "".join(out)


# -- export shapes -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Optional text as the API returns it: NULL becomes ""."""
    return "" if value is None else value


def _json_value(row: Mapping[str, Any], key: str) -> Any:
    return row.get(key, {})


def export_project(project: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": project["id"],
        "slug": project["slug"],
        "name": project["name"],
        "description": _text(project.get("description")),
    }


def export_provider_account(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "project_id": row.get("project_id", ""),
        "provider_code": row["provider_code"],
        "display_name": row["display_name"],
        "account_ref": _text(row.get("account_ref")),
        "base_url": _text(row.get("base_url")),
        "enabled": bool(row.get("enabled", True)),
        "config_json": _json_value(row, "config_json"),
        "created_at": row.get("created_at", ""),
        "updated_at": row.get("updated_at", ""),
    }


def export_style_guide(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row.get("project_id", ""),
        "name": row["name"],
        "instructions": row["instructions"],
        "notes": _text(row.get("notes")),
        "created_at": row.get("created_at", ""),
        "updated_at": row.get("updated_at", ""),
    }


def export_character(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row.get("project_id", ""),
        "name": row["name"],
        "description": _text(row.get("description")),
        "prompt_text": _text(row.get("prompt_text")),
        "created_at": row.get("created_at", ""),
        "updated_at": row.get("updated_at", ""),
    }


def export_prompt_template(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row.get("project_id", ""),
        "name": row["name"],
        "template_text": row["template_text"],
        "created_at": row.get("created_at", ""),
        "updated_at": row.get("updated_at", ""),
    }


def export_reference_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "label": item["label"],
        "content_uri": _text(item.get("content_uri")),
        "content_text": _text(item.get("content_text")),
        "sort_order": item.get("sort_order", 0),
        "metadata_json": _json_value(item, "metadata_json"),
    }


def export_reference_set(row: Mapping[str, Any]) -> dict[str, Any]:
    """Name, description and items only: no ids on sets or items."""
    return {
        "name": row["name"],
        "description": _text(row.get("description")),
        "items": [export_reference_item(item) for item in row.get("items", ())],
    }


def export_secret(row: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata only; a value never leaves the store."""
    return {
        "provider_code": row["provider_code"],
        "secret_name": row["secret_name"],
        "has_value": bool(row.get("has_value", False)),
    }


_EXPORTERS: Final = {
    "provider_accounts": export_provider_account,
    "style_guides": export_style_guide,
    "characters": export_character,
    "reference_sets": export_reference_set,
    "secrets": export_secret,
    "prompt_templates": export_prompt_template,
}


# -- read order (what a GET of the section returns) --------------------------------------------------


def _newest_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """updated_at DESC, id DESC."""
    return sorted(rows, key=lambda r: (r.get("updated_at") or "", r.get("id") or ""), reverse=True)


def order_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference-set items: sort_order ASC, updated_at DESC, id DESC."""
    return sorted(_newest_first(items), key=lambda r: r.get("sort_order", 0))


def order_section(section: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A section's rows in the store's read order."""
    if section == "provider_accounts":
        return sorted(rows, key=lambda r: r["provider_code"])
    if section == "secrets":
        return sorted(rows, key=lambda r: (r["provider_code"], r["secret_name"]))
    ordered = _newest_first(rows)
    if section == "reference_sets":
        ordered = [{**row, "items": order_items(list(row.get("items", ())))} for row in ordered]
    return ordered


def read_ordered(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the snapshot with every section (and every set's items) in read order."""
    out = copy.deepcopy(dict(snapshot))
    for section in SECTIONS:
        out[section] = order_section(section, list(out.get(section) or ()))
    return out


def export_settings(snapshot: Mapping[str, Any], *, reorder: bool = True) -> dict[str, Any]:
    """The six sections in export shapes; `reorder=False` keeps the snapshot's order (dry-run preview)."""
    source = read_ordered(snapshot) if reorder else snapshot
    return {section: [_EXPORTERS[section](row) for row in source.get(section) or ()] for section in SECTIONS}


def build_prompt(
    project: Mapping[str, Any],
    settings: Mapping[str, Any],
    template: Mapping[str, Any] = EXPECTED_RESPONSE,
) -> str:
    """The prompt text: instructions, the template, eight rules, then the current settings.

    `project` is the export project {id, slug, name, description}; `settings` the export-shape sections.
    """
    current = {"project": dict(project), **{section: settings[section] for section in SECTIONS}}
    return (
        _PROMPT_HEAD
        + pretty_json(template)
        + "\n\n"
        + _PROMPT_RULES
        + "\nCurrent project settings:\n"
        + pretty_json(current)
        + "\n"
    )


def build_export(snapshot: Mapping[str, Any], generated_at: str) -> dict[str, Any]:
    """The `bootstrap` object of GET /bootstrap-prompt."""
    project = export_project(snapshot["project"])
    settings = export_settings(snapshot)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": generated_at,
        "project": project,
        "settings": settings,
        "expected_response": expected_response(),
        "prompt": build_prompt(project, settings),
    }
