"""Bootstrap prompt exchange (contract §4): export, prompt text, import parsing, planning and preview."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest

from kroma.domain.bootstrap import (
    EXPECTED_RESPONSE,
    CharacterUpsert,
    Delete,
    ProjectTouched,
    ProjectUpdate,
    ProviderAccountUpsert,
    ReferenceItemsPurged,
    ReferenceSetItemsReplaced,
    ReferenceSetUpsert,
    SecretMetadataCreated,
    SecretMetadataTouched,
    StyleGuideUpsert,
    build_export,
    build_prompt,
    import_response,
    parse_import_request,
    plan_import,
    pretty_json,
    preview,
)
from kroma.domain.bootstrap_prompt import format_float
from kroma.domain.errors import ValidationError

NOW = "2026-03-01T12:00:00Z"
OLD = "2026-01-01T00:00:00Z"
PID = "project-1"


def id_source(prefix: str = "new") -> Any:
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):04d}"


# -- snapshot builders ---------------------------------------------------------------------------------


def provider(code: str, display: str | None = None, **extra: Any) -> dict[str, Any]:
    row = {
        "project_id": PID,
        "provider_code": code,
        "display_name": display or code,
        "account_ref": "",
        "base_url": "",
        "enabled": True,
        "config_json": {},
        "created_at": OLD,
        "updated_at": OLD,
    }
    return {**row, **extra}


def style(id_: str, name: str, instructions: str = "Rules", notes: str = "", at: str = OLD) -> dict:
    return {
        "id": id_,
        "project_id": PID,
        "name": name,
        "instructions": instructions,
        "notes": notes,
        "created_at": OLD,
        "updated_at": at,
    }


def character(id_: str, name: str, description: str = "", prompt_text: str = "", at: str = OLD) -> dict:
    return {
        "id": id_,
        "project_id": PID,
        "name": name,
        "description": description,
        "prompt_text": prompt_text,
        "created_at": OLD,
        "updated_at": at,
    }


def template(id_: str, name: str, text: str = "Template", at: str = OLD) -> dict:
    return {
        "id": id_,
        "project_id": PID,
        "name": name,
        "template_text": text,
        "created_at": OLD,
        "updated_at": at,
    }


def item(id_: str, set_id: str, label: str, text: str = "notes", sort_order: int = 0, **extra: Any) -> dict:
    row = {
        "id": id_,
        "project_id": PID,
        "reference_set_id": set_id,
        "label": label,
        "content_uri": "",
        "content_text": text,
        "sort_order": sort_order,
        "metadata_json": {},
        "created_at": OLD,
        "updated_at": OLD,
    }
    return {**row, **extra}


def ref_set(id_: str, name: str, description: str = "", items: list | None = None, at: str = OLD) -> dict:
    return {
        "id": id_,
        "project_id": PID,
        "name": name,
        "description": description,
        "created_at": OLD,
        "updated_at": at,
        "items": items or [],
    }


def secret(code: str, name: str, has_value: bool = True) -> dict[str, Any]:
    return {
        "project_id": PID,
        "provider_code": code,
        "secret_name": name,
        "has_value": has_value,
        "updated_at": OLD,
    }


def snapshot(**sections: list[dict[str, Any]]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "project": {"id": PID, "slug": "bootstrap_demo", "name": "Bootstrap Demo", "description": ""},
        "provider_accounts": [],
        "style_guides": [],
        "characters": [],
        "prompt_templates": [],
        "reference_sets": [],
        "secrets": [],
    }
    return {**base, **sections}


def error_of(body: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_import_request(body)
    return info.value.message


def plan(snap: dict[str, Any], body: dict[str, Any]):
    return plan_import(snap, parse_import_request(body), NOW, id_source())


# -- validation messages -------------------------------------------------------------------------------

VALID = {"style_guides": [{"name": "One", "instructions": "Two"}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Provide either 'settings' or 'ai_response_text'"),
        ({"settings": None}, "Provide either 'settings' or 'ai_response_text'"),
        ({"mode": "merge"}, "Provide either 'settings' or 'ai_response_text'"),
        ({"ai_response_text": ""}, "Field 'ai_response_text' must not be empty"),
        ({"ai_response_text": " \n\t "}, "Field 'ai_response_text' must not be empty"),
        ({"ai_response_text": "Sure! Here you go."}, "Could not parse JSON from 'ai_response_text'"),
        ({"ai_response_text": "{not json}"}, "Could not parse JSON from 'ai_response_text'"),
        ({"ai_response_text": '{"a": NaN}'}, "Could not parse JSON from 'ai_response_text'"),
        ({"ai_response_text": '"a JSON string"'}, "Could not parse bootstrap JSON from 'ai_response_text'"),
        ({"ai_response_text": "42"}, "Could not parse bootstrap JSON from 'ai_response_text'"),
        (
            {"ai_response_text": '{"style_guides": 5}'},
            "Could not parse bootstrap JSON from 'ai_response_text'",
        ),
        ({"mode": "overwrite", "settings": VALID}, "Field 'mode' must be one of: merge, replace"),
        ({"mode": "", "settings": VALID}, "Field 'mode' must be one of: merge, replace"),
        ({"mode": "   ", "settings": VALID}, "Field 'mode' must be one of: merge, replace"),
        ({"settings": {}}, "Import payload does not include any settings"),
        (
            {"settings": {"unknown": [1], "style_guides": None}},
            "Import payload does not include any settings",
        ),
        ({"ai_response_text": "{}"}, "Import payload does not include any settings"),
        ({"settings": {"project": {"name": "  "}}}, "Field 'project.name' is required"),
        ({"settings": {"provider_accounts": [{}]}}, "Field 'provider_code' is required"),
        (
            {"settings": {"provider_accounts": [{"provider_code": "___"}]}},
            "Field 'provider_code' is required",
        ),
        ({"settings": {"style_guides": [{"instructions": "x"}]}}, "Field 'style_guides[].name' is required"),
        (
            {"settings": {"style_guides": [{"name": "A", "instructions": " "}]}},
            "Field 'style_guides[].instructions' is required",
        ),
        ({"settings": {"characters": [{"name": ""}]}}, "Field 'characters[].name' is required"),
        ({"settings": {"reference_sets": [{"items": []}]}}, "Field 'reference_sets[].name' is required"),
        (
            {"settings": {"reference_sets": [{"name": "Refs Without Items"}]}},
            "Field 'reference_sets[].items' is required (use [] to provide an empty set)",
        ),
        (
            {"settings": {"reference_sets": [{"name": "R", "items": None}]}},
            "Field 'reference_sets[].items' is required (use [] to provide an empty set)",
        ),
        (
            {"settings": {"reference_sets": [{"name": "R", "items": [{"content_text": "t"}]}]}},
            "Field 'reference_sets[].items[].label' is required",
        ),
        (
            {"settings": {"reference_sets": [{"name": "R", "items": [{"label": "L", "content_uri": " "}]}]}},
            "Field 'reference_sets[].items[]' requires at least one of: content_uri, content_text",
        ),
        ({"settings": {"secrets": [{"secret_name": "api_key"}]}}, "Field 'provider_code' is required"),
        (
            {"settings": {"secrets": [{"provider_code": "openai", "secret_name": " "}]}},
            "Field 'secrets[].secret_name' is required",
        ),
        (
            {"settings": {"prompt_templates": [{"template_text": "t"}]}},
            "Field 'prompt_templates[].name' is required",
        ),
        (
            {"settings": {"prompt_templates": [{"name": "T"}]}},
            "Field 'prompt_templates[].template_text' is required",
        ),
    ],
)
def test_each_invalid_payload_is_rejected_with_the_contract_message(body: dict, message: str) -> None:
    assert error_of(body) == message


def test_the_first_section_in_contract_order_reports_its_error() -> None:
    body = {
        "settings": {
            "prompt_templates": [{"name": ""}],
            "characters": [{"name": ""}],
            "style_guides": [{"name": ""}],
            "project": {"name": ""},
        }
    }
    assert error_of(body) == "Field 'project.name' is required"
    del body["settings"]["project"]
    assert error_of(body) == "Field 'style_guides[].name' is required"


def test_settings_source_is_checked_before_mode_and_mode_before_sections() -> None:
    assert error_of({"mode": "bogus"}) == "Provide either 'settings' or 'ai_response_text'"
    body = {"mode": "bogus", "settings": {"style_guides": [{"name": ""}]}}
    assert error_of(body) == "Field 'mode' must be one of: merge, replace"


def test_wrong_json_types_in_the_body_are_a_validation_error_naming_the_field() -> None:
    # Worded like kroma.http.errors' body decode errors.
    assert error_of({"settings": {"style_guides": [{"name": None}]}}) == (
        "Field 'settings.style_guides[0].name' must be str, not null"
    )
    assert error_of({"dry_run": "yes", "settings": VALID}) == "Field 'dry_run' must be bool, not str"
    assert (
        error_of({"settings": {"characters": {}}}) == "Field 'settings.characters' must be array, not object"
    )
    assert error_of({"settings": {"secrets": ["x"]}}) == "Field 'settings.secrets[0]' must be object, not str"
    item = {"label": "L", "content_text": "t", "sort_order": True}
    assert error_of({"settings": {"reference_sets": [{"name": "R", "items": [item]}]}}) == (
        "Field 'settings.reference_sets[0].items[0].sort_order' must be int, not bool"
    )
    item["sort_order"] = 2**63
    assert error_of({"settings": {"reference_sets": [{"name": "R", "items": [item]}]}}) == (
        "Field 'settings.reference_sets[0].items[0].sort_order' must be a 64-bit integer"
    )
    assert error_of([]) == "Request body must be a JSON object"


# -- mode and settings source ---------------------------------------------------------------------------


def test_mode_defaults_to_merge_and_is_trimmed_and_case_folded() -> None:
    assert parse_import_request({"settings": VALID}).mode == "merge"
    assert parse_import_request({"mode": " RePlAcE ", "settings": VALID}).mode == "replace"
    assert parse_import_request({"mode": None, "settings": VALID}).mode == "merge"


def test_dry_run_defaults_to_false() -> None:
    assert parse_import_request({"settings": VALID}).dry_run is False
    assert parse_import_request({"settings": VALID, "dry_run": True}).dry_run is True


def test_settings_win_over_ai_response_text() -> None:
    request = parse_import_request({"settings": VALID, "ai_response_text": "garbage"})
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_ai_response_text_is_parsed_as_a_whole_json_document() -> None:
    request = parse_import_request({"ai_response_text": json.dumps({"settings": VALID})})
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_ai_response_text_in_a_json_labelled_code_fence_is_unwrapped() -> None:
    text = "```json\n" + json.dumps({"mode": "replace", "settings": VALID}, indent=2) + "\n```"
    request = parse_import_request({"ai_response_text": text})
    assert request.mode == "replace"
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_code_fence_without_closing_line_and_with_crlf_is_unwrapped() -> None:
    text = "```\r\n" + json.dumps({"settings": VALID}).replace(", ", ",\r\n")
    request = parse_import_request({"ai_response_text": text})
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_ai_response_text_falls_back_to_first_brace_through_last_brace() -> None:
    text = "Here is your profile:\n" + json.dumps({"settings": VALID}) + "\nEnjoy!"
    request = parse_import_request({"ai_response_text": text})
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_fenced_json_is_parsed_even_when_it_is_not_an_object() -> None:
    # Only the fence candidate parses here, so the error is about the bootstrap shape, not the JSON.
    fenced = "```json\n[1, 2]\n```"
    assert error_of({"ai_response_text": fenced}) == "Could not parse bootstrap JSON from 'ai_response_text'"
    assert error_of({"ai_response_text": "Data: [1, 2]"}) == "Could not parse JSON from 'ai_response_text'"


def test_only_the_outermost_braces_are_tried_as_the_last_candidate() -> None:
    text = 'Profile {"settings": {"characters": [{"name": "A"}]}} and also {"x": 1}'
    assert error_of({"ai_response_text": text}) == "Could not parse JSON from 'ai_response_text'"


def test_wrapper_mode_is_used_only_when_the_request_has_no_mode() -> None:
    text = json.dumps({"mode": "replace", "settings": VALID})
    assert parse_import_request({"ai_response_text": text}).mode == "replace"
    assert parse_import_request({"ai_response_text": text, "mode": None}).mode == "replace"
    assert parse_import_request({"ai_response_text": text, "mode": "merge"}).mode == "merge"
    with pytest.raises(ValidationError, match="Field 'mode' must be one of"):
        parse_import_request({"ai_response_text": text, "mode": ""})


def test_invalid_wrapper_mode_is_rejected() -> None:
    text = json.dumps({"mode": "overwrite", "settings": VALID})
    assert error_of({"ai_response_text": text}) == "Field 'mode' must be one of: merge, replace"


def test_json_without_a_settings_object_is_read_as_settings_and_its_mode_ignored() -> None:
    text = json.dumps({"mode": "replace", **VALID})
    request = parse_import_request({"ai_response_text": text})
    assert request.mode == "merge"
    assert [s.name for s in request.settings.style_guides] == ["One"]


def test_a_wrapper_with_mistyped_settings_is_discarded_like_the_reference() -> None:
    # The wrapper fails to decode, so the whole document is read as settings: it has none.
    text = json.dumps({"mode": "replace", "settings": {"style_guides": [{"name": 7}]}})
    assert error_of({"ai_response_text": text}) == "Import payload does not include any settings"


# -- normalisation and dedup -----------------------------------------------------------------------------


def test_named_entries_dedup_case_insensitively_last_wins_sorted_by_key() -> None:
    request = parse_import_request(
        {
            "settings": {
                "style_guides": [
                    {"name": "Zeta", "instructions": "z"},
                    {"name": "core style", "instructions": "first"},
                    {"name": "  Core Style ", "instructions": " second "},
                ],
                "characters": [{"name": "Hero"}, {"name": "HERO", "description": "loud"}],
                "prompt_templates": [
                    {"name": "b", "template_text": "1"},
                    {"name": "A", "template_text": "2"},
                ],
            }
        }
    )
    styles = request.settings.style_guides
    assert [(s.name, s.instructions) for s in styles] == [("Core Style", "second"), ("Zeta", "z")]
    assert [(c.name, c.description) for c in request.settings.characters] == [("HERO", "loud")]
    assert [t.name for t in request.settings.prompt_templates] == ["A", "b"]
    assert request.applied() == {
        "provider_accounts": 0,
        "style_guides": 2,
        "characters": 1,
        "reference_sets": 0,
        "secrets": 0,
        "prompt_templates": 2,
    }


def test_provider_accounts_dedup_on_the_normalised_code_with_defaults() -> None:
    request = parse_import_request(
        {
            "settings": {
                "provider_accounts": [
                    {"provider_code": "openai", "display_name": "First"},
                    {"provider_code": " OpenAI ", "account_ref": "  ", "base_url": None, "config_json": None},
                    {"provider_code": "My Provider!", "enabled": False, "config_json": [1]},
                ]
            }
        }
    )
    accounts = request.settings.provider_accounts
    assert [a.provider_code for a in accounts] == ["my_provider", "openai"]
    openai = accounts[1]
    assert (openai.display_name, openai.account_ref, openai.base_url) == ("openai", "", "")
    assert openai.enabled is True and openai.config_json == {}
    assert accounts[0].enabled is False and accounts[0].config_json == [1]


def test_secrets_dedup_on_code_and_exact_name_and_ignore_value_fields() -> None:
    request = parse_import_request(
        {
            "settings": {
                "secrets": [
                    {"provider_code": "OpenAI", "secret_name": "api_key", "secret_value": "sk-live"},
                    {"provider_code": "openai", "secret_name": "API_KEY"},
                    {"provider_code": "openai", "secret_name": " api_key "},
                ]
            }
        }
    )
    assert [(s.provider_code, s.secret_name) for s in request.settings.secrets] == [
        ("openai", "API_KEY"),
        ("openai", "api_key"),
    ]
    assert "secret_value" not in repr(request)


def test_reference_set_items_keep_order_and_are_not_deduped() -> None:
    request = parse_import_request(
        {
            "settings": {
                "reference_sets": [
                    {
                        "name": "Faces",
                        "description": "  ",
                        "items": [
                            {"label": "B", "content_text": "b", "sort_order": 5},
                            {"label": "A", "content_uri": " file://a "},
                            {"label": "B", "content_text": "b", "sort_order": 5},
                        ],
                    }
                ]
            }
        }
    )
    (faces,) = request.settings.reference_sets
    assert faces.description == ""
    assert [(i.label, i.sort_order) for i in faces.items] == [("B", 5), ("A", 0), ("B", 5)]
    assert faces.items[1].content_uri == "file://a" and faces.items[1].metadata_json == {}


def test_an_empty_array_counts_as_a_provided_section() -> None:
    request = parse_import_request({"settings": {"characters": []}})
    assert request.settings.provided("characters")
    assert request.settings.characters == ()
    assert not request.settings.provided("style_guides")


def test_project_description_may_be_blank_and_name_is_optional() -> None:
    patch = parse_import_request({"settings": {"project": {"description": "  "}}}).settings.project
    assert patch is not None and patch.name is None and patch.description == ""
    patch = parse_import_request({"settings": {"project": {}}}).settings.project
    assert patch is not None and patch.name is None and patch.description is None


# -- planning: merge / replace semantics ------------------------------------------------------------------


def test_exact_case_upsert_creates_a_second_row_for_a_case_variant_in_merge_mode() -> None:
    snap = snapshot(style_guides=[style("s1", "Core Style", "old")])
    result = plan(snap, {"settings": {"style_guides": [{"name": "core style", "instructions": "new"}]}})

    names = sorted(row["name"] for row in result.after["style_guides"])
    assert names == ["Core Style", "core style"]
    (upsert,) = [op for op in result.operations if isinstance(op, StyleGuideUpsert)]
    assert upsert.created is True and upsert.id == "new-0001"
    # Changes match rows by lower-cased name: the older "Core Style" is read last and wins the key.
    changes = result.changes["style_guides"]
    assert (changes["before_count"], changes["after_count"]) == (1, 1)
    assert (changes["created"], changes["updated"], changes["unchanged"]) == (0, 0, 1)


def test_exact_name_upsert_keeps_id_and_created_at() -> None:
    snap = snapshot(characters=[character("c1", "Hero", "old")])
    result = plan(snap, {"settings": {"characters": [{"name": "Hero", "description": "new"}]}})
    (row,) = result.after["characters"]
    assert (row["id"], row["created_at"], row["updated_at"]) == ("c1", OLD, NOW)
    assert (row["description"], row["prompt_text"]) == ("new", "")
    (upsert,) = [op for op in result.operations if isinstance(op, CharacterUpsert)]
    assert upsert.created is False and upsert.id == "c1"
    assert result.changes["characters"]["updated"] == 1


def test_provider_upsert_overwrites_every_field_and_keeps_created_at() -> None:
    existing = provider("openai", "Old", account_ref="acct", base_url="https://x", config_json={"a": 1})
    result = plan(
        snapshot(provider_accounts=[existing]),
        {"settings": {"provider_accounts": [{"provider_code": "OpenAI"}]}},
    )
    (row,) = result.after["provider_accounts"]
    assert row["display_name"] == "openai"
    assert (row["account_ref"], row["base_url"], row["config_json"]) == ("", "", {})
    assert (row["created_at"], row["updated_at"]) == (OLD, NOW)
    (op,) = [op for op in result.operations if isinstance(op, ProviderAccountUpsert)]
    assert op.created is False and op.provider_code == "openai"


def test_replace_deletes_only_the_provided_sections() -> None:
    snap = snapshot(
        provider_accounts=[provider("openai", "Original Provider")],
        style_guides=[style("s1", "Old Style")],
        prompt_templates=[template("t1", "Original Template")],
        characters=[character("c1", "Original Character")],
        reference_sets=[ref_set("r1", "Original Reference Set", items=[item("i1", "r1", "Baseline Ref")])],
        secrets=[secret("openai", "api_key")],
    )
    body = {"mode": "replace", "settings": {"style_guides": [{"name": "New Style", "instructions": "x"}]}}
    result = plan(snap, body)

    deletes = [op for op in result.operations if isinstance(op, Delete)]
    assert deletes == [Delete("style_guide", "s1")]
    assert [r["name"] for r in result.after["style_guides"]] == ["New Style"]
    for section in ("provider_accounts", "prompt_templates", "characters", "reference_sets", "secrets"):
        assert result.after[section] == result.before[section]
        assert result.changes[section]["provided"] is False
        assert result.changes[section]["deleted"] == 0
        assert result.changes[section]["replaced"] is False
    assert result.changes["style_guides"]["replaced"] is True


def test_an_empty_array_in_replace_mode_deletes_the_whole_section() -> None:
    snap = snapshot(characters=[character("c1", "A"), character("c2", "B")])
    result = plan(snap, {"mode": "replace", "settings": {"characters": []}})
    assert result.after["characters"] == []
    assert [op for op in result.operations if isinstance(op, Delete)] == [
        Delete("character", "c2"),
        Delete("character", "c1"),
    ]
    changes = result.changes["characters"]
    assert (changes["deleted"], changes["after_count"], changes["replaced"]) == (2, 0, True)


def test_replacing_reference_sets_purges_all_items_before_deleting_the_sets() -> None:
    snap = snapshot(reference_sets=[ref_set("r1", "Old", items=[item("i1", "r1", "L")])])
    result = plan(snap, {"mode": "replace", "settings": {"reference_sets": []}})
    assert list(result.operations[:2]) == [ReferenceItemsPurged(), Delete("reference_set", "r1")]


def test_replace_of_provider_accounts_deletes_by_provider_code() -> None:
    snap = snapshot(provider_accounts=[provider("openai"), provider("anthropic")])
    result = plan(snap, {"mode": "replace", "settings": {"provider_accounts": [{"provider_code": "openai"}]}})
    assert [op for op in result.operations if isinstance(op, Delete)] == [
        Delete("provider_account", "anthropic"),
        Delete("provider_account", "openai"),
    ]
    changes = result.changes["provider_accounts"]
    assert (changes["deleted"], changes["updated"], changes["unchanged"]) == (1, 0, 1)


def test_reference_set_items_are_authoritative_even_in_merge_mode() -> None:
    snap = snapshot(
        reference_sets=[ref_set("r1", "Faces", items=[item("i1", "r1", "A"), item("i2", "r1", "B")])]
    )
    body = {
        "settings": {"reference_sets": [{"name": "Faces", "items": [{"label": "C", "content_text": "c"}]}]}
    }
    result = plan(snap, body)
    replaced = [op for op in result.operations if isinstance(op, ReferenceSetItemsReplaced)]
    assert len(replaced) == 1
    assert replaced[0].set_id == "r1"
    assert sorted(replaced[0].removed_item_ids) == ["i1", "i2"]
    assert [i.label for i in replaced[0].items] == ["C"]
    (row,) = result.after["reference_sets"]
    assert [i["label"] for i in row["items"]] == ["C"]
    assert result.changes["reference_sets"]["updated"] == 1


def test_secrets_are_never_deleted_nor_overwritten_even_in_replace_mode() -> None:
    snap = snapshot(secrets=[secret("openai", "api_key", True), secret("zeta", "token", True)])
    body = {
        "mode": "replace",
        "settings": {
            "secrets": [
                {"provider_code": "openai", "secret_name": "api_key"},
                {"provider_code": "anthropic", "secret_name": "api_key"},
            ]
        },
    }
    result = plan(snap, body)
    secret_ops = [
        op for op in result.operations if isinstance(op, SecretMetadataCreated | SecretMetadataTouched)
    ]
    assert secret_ops == [
        SecretMetadataCreated("anthropic", "api_key", NOW),
        SecretMetadataTouched("openai", "api_key", NOW),
    ]
    assert not [op for op in result.operations if isinstance(op, Delete)]
    assert [(s["provider_code"], s["has_value"]) for s in result.after["secrets"]] == [
        ("anthropic", False),
        ("openai", True),
        ("zeta", True),
    ]
    changes = result.changes["secrets"]
    assert (changes["created"], changes["deleted"], changes["unchanged"], changes["replaced"]) == (
        1,
        0,
        2,
        False,
    )


def test_project_update_only_when_name_or_description_changes_and_always_touched() -> None:
    snap = snapshot()
    snap["project"]["description"] = "Keep me"
    renamed = plan(snap, {"settings": {"project": {"name": "Renamed"}}})
    assert renamed.project_updated is True
    assert renamed.operations[0] == ProjectUpdate("Renamed", "Keep me", NOW)
    assert renamed.operations[-1] == ProjectTouched(NOW)
    assert renamed.changes["project"] == {
        "provided": True,
        "updated": True,
        "name_changed": True,
        "description_changed": False,
    }

    same = plan(snap, {"settings": {"project": {"name": "Bootstrap Demo", "description": "Keep me"}}})
    assert same.project_updated is False
    assert list(same.operations) == [ProjectTouched(NOW)]

    cleared = plan(snap, {"settings": {"project": {"description": ""}}})
    assert cleared.after["project"]["description"] == ""
    assert cleared.changes["project"]["description_changed"] is True


def test_an_identical_upsert_counts_as_unchanged_and_json_types_matter() -> None:
    snap = snapshot(provider_accounts=[provider("openai", "OpenAI", config_json={"n": 1, "flag": True})])
    same = {"provider_code": "openai", "display_name": "OpenAI", "config_json": {"flag": True, "n": 1}}
    assert (
        plan(snap, {"settings": {"provider_accounts": [same]}}).changes["provider_accounts"]["unchanged"] == 1
    )
    floaty = {**same, "config_json": {"flag": True, "n": 1.0}}
    assert (
        plan(snap, {"settings": {"provider_accounts": [floaty]}}).changes["provider_accounts"]["updated"] == 1
    )
    truthy = {**same, "config_json": {"flag": 1, "n": 1}}
    assert (
        plan(snap, {"settings": {"provider_accounts": [truthy]}}).changes["provider_accounts"]["updated"] == 1
    )


def test_replace_reinsert_under_the_same_name_is_updated_or_unchanged_not_deleted_and_created() -> None:
    snap = snapshot(style_guides=[style("s1", "Look", "same"), style("s2", "Other", "old")])
    body = {
        "mode": "replace",
        "settings": {
            "style_guides": [
                {"name": "Look", "instructions": "same"},
                {"name": "other", "instructions": "new"},
            ]
        },
    }
    changes = plan(snap, body).changes["style_guides"]
    assert (changes["created"], changes["updated"], changes["unchanged"], changes["deleted"]) == (0, 1, 1, 0)


# -- examples from the reference tests ------------------------------------------------------------------


def seeded_round_trip_snapshot() -> dict[str, Any]:
    return snapshot(
        provider_accounts=[provider("openai", "Old Provider")],
        style_guides=[style("s1", "Old Style", "Old instructions", "legacy")],
        prompt_templates=[template("t1", "Old Template", "Old template text")],
        characters=[
            character("c1", "Protagonist", "Legacy character description", "Legacy character prompt")
        ],
        reference_sets=[
            ref_set(
                "r1",
                "Legacy References",
                "Seed set for bootstrap export",
                [
                    item(
                        "i1",
                        "r1",
                        "Hero Face",
                        "Legacy face reference notes",
                        1,
                        metadata_json={"source": "legacy"},
                    )
                ],
            )
        ],
        secrets=[secret("openai", "api_key", True)],
    )


FULL_REPLACE = {
    "mode": "replace",
    "settings": {
        "project": {"name": "Bootstrap Demo v2", "description": "Imported via bootstrap payload"},
        "provider_accounts": [
            {
                "provider_code": "openai",
                "display_name": "OpenAI Primary",
                "base_url": "https://api.openai.com/v1",
                "enabled": True,
                "config_json": {"model": "gpt-image-1"},
            }
        ],
        "style_guides": [
            {"name": "Studio Look", "instructions": "Use cinematic lighting.", "notes": "Primary style"}
        ],
        "characters": [
            {"name": "Protagonist", "description": "Refined protagonist profile", "prompt_text": "Same face."}
        ],
        "reference_sets": [
            {
                "name": "Hero Faces",
                "description": "Canonical face references",
                "items": [
                    {
                        "label": "Hero Front",
                        "content_text": "Front-facing portrait",
                        "sort_order": 0,
                        "metadata_json": {"source": "bootstrap"},
                    }
                ],
            }
        ],
        "secrets": [{"provider_code": "anthropic", "secret_name": "api_key"}],
        "prompt_templates": [{"name": "Hero Prompt", "template_text": "Create a hero image."}],
    },
}


def test_reference_example_full_replace_import_change_summary() -> None:
    snap = seeded_round_trip_snapshot()
    request = parse_import_request(FULL_REPLACE)
    result = plan_import(snap, request, NOW, id_source())
    response = import_response(request, result, result.after)

    assert (response["mode"], response["dry_run"], response["project_updated"]) == ("replace", False, True)
    assert response["applied"] == {s: 1 for s in response["applied"]}
    changes = response["changes"]
    assert (changes["provider_accounts"]["updated"], changes["provider_accounts"]["deleted"]) == (1, 0)
    assert changes["style_guides"]["replaced"] is True
    assert changes["characters"]["updated"] == 1
    assert (changes["reference_sets"]["created"], changes["reference_sets"]["deleted"]) == (1, 1)
    secrets = changes["secrets"]
    assert (secrets["created"], secrets["deleted"], secrets["replaced"]) == (1, 0, False)
    assert response["project"]["name"] == "Bootstrap Demo v2"
    settings = response["settings"]
    assert [p["display_name"] for p in settings["provider_accounts"]] == ["OpenAI Primary"]
    assert [s["name"] for s in settings["style_guides"]] == ["Studio Look"]
    assert [(c["name"], c["description"]) for c in settings["characters"]] == [
        ("Protagonist", "Refined protagonist profile")
    ]
    assert [(r["name"], [i["label"] for i in r["items"]]) for r in settings["reference_sets"]] == [
        ("Hero Faces", ["Hero Front"])
    ]
    assert settings["secrets"] == [
        {"provider_code": "anthropic", "secret_name": "api_key", "has_value": False},
        {"provider_code": "openai", "secret_name": "api_key", "has_value": True},
    ]
    assert [t["name"] for t in settings["prompt_templates"]] == ["Hero Prompt"]


def test_reference_example_ai_response_text_in_json_fence_imports() -> None:
    ai_payload = """```json
{
  "mode": "merge",
  "settings": {
    "style_guides": [
      {
        "name": "Painterly",
        "instructions": "Painterly brushwork with controlled color palette."
      }
    ],
    "prompt_templates": [
      {
        "name": "Scene Prompt",
        "template_text": "Generate a scene in the configured style."
      }
    ]
  }
}
```"""
    request = parse_import_request({"ai_response_text": ai_payload})
    result = plan_import(snapshot(), request, NOW, id_source())
    response = import_response(request, result, result.after)
    assert response["mode"] == "merge"
    assert (response["applied"]["style_guides"], response["applied"]["prompt_templates"]) == (1, 1)
    assert [s["name"] for s in response["settings"]["style_guides"]] == ["Painterly"]
    assert [t["name"] for t in response["settings"]["prompt_templates"]] == ["Scene Prompt"]


def dry_run_seed() -> dict[str, Any]:
    return snapshot(
        style_guides=[style("s1", "Existing Style", "Baseline instructions")],
        characters=[character("c1", "Existing Character", prompt_text="Baseline prompt")],
        reference_sets=[
            ref_set("r1", "Existing Refs", "Baseline refs", [item("i1", "r1", "Existing Ref Item")])
        ],
        secrets=[secret("openai", "api_key", True)],
    )


DRY_RUN_REPLACE = {
    "mode": "replace",
    "dry_run": True,
    "settings": {
        "style_guides": [{"name": "Preview Style", "instructions": "Preview-only style instructions."}],
        "characters": [{"name": "Preview Character", "description": "Preview", "prompt_text": "Prompt"}],
        "reference_sets": [
            {
                "name": "Preview Refs",
                "description": "Preview-only refs",
                "items": [
                    {"label": "Preview Ref Item", "content_text": "Preview-only ref text", "sort_order": 1}
                ],
            }
        ],
        "secrets": [{"provider_code": "anthropic", "secret_name": "api_key"}],
    },
}


def test_reference_example_dry_run_replace_previews_without_operations() -> None:
    snap = dry_run_seed()
    original = copy.deepcopy(snap)
    request = parse_import_request(DRY_RUN_REPLACE)
    result = preview(snap, request, NOW, id_source("uuid"))
    response = import_response(request, result, result.after)

    assert result.operations == ()
    assert snap == original
    assert (response["dry_run"], response["mode"]) == (True, "replace")
    for section in ("style_guides", "characters", "reference_sets"):
        changes = response["changes"][section]
        assert (changes["created"], changes["deleted"], changes["replaced"]) == (1, 1, True)
    assert (response["changes"]["secrets"]["created"], response["changes"]["secrets"]["deleted"]) == (1, 0)
    assert response["changes"]["secrets"]["replaced"] is False
    settings = response["settings"]
    assert settings["style_guides"][0]["name"] == "Preview Style"
    assert settings["characters"][0]["name"] == "Preview Character"
    assert settings["reference_sets"][0]["name"] == "Preview Refs"
    assert len(settings["secrets"]) == 2


# -- dry-run preview ------------------------------------------------------------------------------------


def test_preview_ids_use_the_preview_kind_uuid_format() -> None:
    body = {
        "dry_run": True,
        "settings": {
            "style_guides": [{"name": "S", "instructions": "i"}],
            "characters": [{"name": "C"}],
            "prompt_templates": [{"name": "T", "template_text": "t"}],
        },
    }
    result = preview(snapshot(), parse_import_request(body), NOW, id_source("uuid"))
    assert result.after["style_guides"][0]["id"] == "preview_style_uuid-0001"
    assert result.after["characters"][0]["id"] == "preview_character_uuid-0002"
    assert result.after["prompt_templates"][0]["id"] == "preview_prompt_uuid-0003"
    for section in ("style_guides", "characters", "prompt_templates"):
        row = result.after[section][0]
        assert (row["project_id"], row["created_at"], row["updated_at"]) == (PID, NOW, NOW)


def test_preview_orders_sections_by_dedup_key_not_read_order() -> None:
    snap = snapshot(
        style_guides=[style("s1", "beta", at="2026-02-01T00:00:00Z"), style("s2", "Alpha", at=OLD)],
        secrets=[secret("openai", "b"), secret("anthropic", "z")],
    )
    body = {
        "dry_run": True,
        "settings": {
            "style_guides": [{"name": "Gamma", "instructions": "g"}],
            "secrets": [{"provider_code": "openai", "secret_name": "a"}],
        },
    }
    request = parse_import_request(body)
    result = preview(snap, request, NOW, id_source())
    response = import_response(request, result, result.after)
    assert [s["name"] for s in response["settings"]["style_guides"]] == ["Alpha", "beta", "Gamma"]
    assert [(s["provider_code"], s["secret_name"]) for s in response["settings"]["secrets"]] == [
        ("anthropic", "z"),
        ("openai", "a"),
        ("openai", "b"),
    ]
    # A real import reads back newest first.
    real = plan_import(snap, request, NOW, id_source())
    assert [s["name"] for s in real.after["style_guides"]] == ["Gamma", "beta", "Alpha"]


def test_preview_keeps_existing_ids_and_created_at_and_matches_by_lowercased_name() -> None:
    snap = snapshot(style_guides=[style("s1", "Core Style", "old")])
    body = {"dry_run": True, "settings": {"style_guides": [{"name": "core style", "instructions": "new"}]}}
    result = preview(snap, parse_import_request(body), NOW, id_source())
    (row,) = result.after["style_guides"]
    assert (row["id"], row["name"], row["created_at"], row["updated_at"]) == ("s1", "core style", OLD, NOW)
    assert result.changes["style_guides"]["updated"] == 1


def test_preview_keeps_existing_secret_values_and_adds_new_ones_without_value() -> None:
    snap = snapshot(secrets=[secret("openai", "api_key", True)])
    body = {
        "dry_run": True,
        "settings": {
            "secrets": [
                {"provider_code": "openai", "secret_name": "api_key"},
                {"provider_code": "anthropic", "secret_name": "api_key"},
            ]
        },
    }
    result = preview(snap, parse_import_request(body), NOW, id_source())
    assert [(s["provider_code"], s["has_value"]) for s in result.after["secrets"]] == [
        ("anthropic", False),
        ("openai", True),
    ]


def test_preview_keeps_reference_items_in_payload_order() -> None:
    body = {
        "dry_run": True,
        "settings": {
            "reference_sets": [
                {
                    "name": "R",
                    "items": [
                        {"label": "late", "content_text": "x", "sort_order": 9},
                        {"label": "early", "content_text": "y"},
                    ],
                }
            ]
        },
    }
    request = parse_import_request(body)
    result = preview(snapshot(), request, NOW, id_source())
    response = import_response(request, result, result.after)
    assert [i["label"] for i in response["settings"]["reference_sets"][0]["items"]] == ["late", "early"]
    real = plan_import(snapshot(), request, NOW, id_source())
    assert [i["label"] for i in real.after["reference_sets"][0]["items"]] == ["early", "late"]


# -- response --------------------------------------------------------------------------------------------


def test_import_response_has_the_contract_keys_and_recomputes_changes_from_a_reread_snapshot() -> None:
    snap = seeded_round_trip_snapshot()
    request = parse_import_request(FULL_REPLACE)
    result = plan_import(snap, request, NOW, id_source())
    reread = copy.deepcopy(result.after)
    for section in ("provider_accounts", "style_guides", "secrets"):
        reread[section].reverse()  # a re-read in any order gives the same response
    response = import_response(request, result, reread)
    assert set(response) == {
        "schema_version",
        "mode",
        "dry_run",
        "project_updated",
        "applied",
        "changes",
        "project",
        "settings",
    }
    assert response["schema_version"] == "kroma.bootstrap.v1"
    assert response == import_response(request, result, result.after)
    assert response["changes"] == result.changes
    assert set(response["project"]) == {"id", "slug", "name", "description"}


# -- export and prompt -------------------------------------------------------------------------------------


def test_export_has_sections_in_export_shapes_and_no_secret_values() -> None:
    snap = seeded_round_trip_snapshot()
    snap["secrets"][0]["secret_value"] = "sk-seeded"  # even if a caller leaks it into the snapshot
    export = build_export(snap, NOW)
    assert export["schema_version"] == "kroma.bootstrap.v1"
    assert export["generated_at"] == NOW
    assert export["project"] == {
        "id": PID,
        "slug": "bootstrap_demo",
        "name": "Bootstrap Demo",
        "description": "",
    }
    settings = export["settings"]
    assert {k: len(v) for k, v in settings.items()} == {
        "provider_accounts": 1,
        "style_guides": 1,
        "characters": 1,
        "reference_sets": 1,
        "secrets": 1,
        "prompt_templates": 1,
    }
    assert settings["secrets"] == [{"provider_code": "openai", "secret_name": "api_key", "has_value": True}]
    assert "secret_value" not in json.dumps(export)
    assert settings["reference_sets"] == [
        {
            "name": "Legacy References",
            "description": "Seed set for bootstrap export",
            "items": [
                {
                    "label": "Hero Face",
                    "content_uri": "",
                    "content_text": "Legacy face reference notes",
                    "sort_order": 1,
                    "metadata_json": {"source": "legacy"},
                }
            ],
        }
    ]
    assert set(settings["style_guides"][0]) == {
        "id",
        "project_id",
        "name",
        "instructions",
        "notes",
        "created_at",
        "updated_at",
    }
    assert export["expected_response"] == EXPECTED_RESPONSE
    assert "Return ONLY valid JSON" in export["prompt"]


def test_export_orders_sections_like_the_list_endpoints() -> None:
    snap = snapshot(
        provider_accounts=[provider("zeta"), provider("anthropic")],
        style_guides=[style("a", "Old", at=OLD), style("b", "New", at=NOW), style("c", "New2", at=NOW)],
        secrets=[secret("openai", "b"), secret("anthropic", "z"), secret("openai", "a")],
        reference_sets=[
            ref_set(
                "r1",
                "R",
                items=[
                    item("i1", "r1", "second", sort_order=1),
                    item("i2", "r1", "first-old", sort_order=0),
                    item("i3", "r1", "first-new", sort_order=0, updated_at=NOW),
                ],
            )
        ],
    )
    settings = build_export(snap, NOW)["settings"]
    assert [p["provider_code"] for p in settings["provider_accounts"]] == ["anthropic", "zeta"]
    assert [s["id"] for s in settings["style_guides"]] == ["c", "b", "a"]
    assert [(s["provider_code"], s["secret_name"]) for s in settings["secrets"]] == [
        ("anthropic", "z"),
        ("openai", "a"),
        ("openai", "b"),
    ]
    assert [i["label"] for i in settings["reference_sets"][0]["items"]] == [
        "first-new",
        "first-old",
        "second",
    ]


def test_prompt_text_has_the_exact_line_structure() -> None:
    project = {"id": PID, "slug": "s", "name": "N", "description": ""}
    settings = build_export(snapshot(secrets=[secret("openai", "api_key")]), NOW)["settings"]
    prompt = build_prompt(project, settings)
    template = json.dumps(EXPECTED_RESPONSE, indent=2, sort_keys=True, ensure_ascii=False)
    current = json.dumps({"project": project, **settings}, indent=2, sort_keys=True, ensure_ascii=False)
    expected = (
        "You are configuring a Kroma project bootstrap profile.\n"
        "Return ONLY valid JSON (no markdown, no comments, no prose).\n"
        "Use this exact response shape:\n"
        f"{template}\n"
        "\n"
        "Rules:\n"
        "- Keep provider_code lowercase (letters, numbers, '-', '_').\n"
        "- Omit sections you do not want to change.\n"
        "- Keep arrays concise and production-ready.\n"
        "- Never include secret values or API keys.\n"
        "- If you include a `secrets` section, provide metadata only (`provider_code`, `secret_name`).\n"
        "- `secrets` imports are merge-only for safety; omitted secrets are not deleted.\n"
        "- If you include `reference_sets`, each set must include an explicit `items` array"
        " (use `[]` for an empty set).\n"
        "- For each provided reference set, the `items` array is treated as authoritative"
        " (omitted items for that set are removed).\n"
        "\n"
        "Current project settings:\n"
        f"{current}\n"
    )
    assert prompt == expected
    lines = prompt.split("\n")
    assert lines[3] == "{" and lines[4] == '  "mode": "merge",'
    assert lines.count("Rules:") == 1
    assert sum(1 for line in lines if line.startswith("- ")) == 8
    assert prompt.endswith("}\n")
    assert '"characters": [],' in prompt  # empty arrays render inline, as serde does


def test_pretty_json_matches_serde_layout_for_floats_strings_and_empties() -> None:
    value = {"b": [], "a": {}, "f": [1.0, 0.00001, 1e-7, 1.5e20, 1e16, -0.0], "s": 'é "q"\n\x01\x7f'}
    assert pretty_json(value) == (
        "{\n"
        '  "a": {},\n'
        '  "b": [],\n'
        '  "f": [\n'
        "    1.0,\n"
        "    0.00001,\n"
        "    1e-7,\n"
        "    1.5e20,\n"
        "    1e16,\n"
        "    -0.0\n"
        "  ],\n"
        '  "s": "é \\"q\\"\\n\\u0001\x7f"\n'
        "}"
    )
    assert format_float(float("nan")) == "null"


# -- round trip ------------------------------------------------------------------------------------------

_VOLATILE = {"id", "project_id", "created_at", "updated_at"}


def _content(settings: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, rows in settings.items():
        cleaned = [{k: v for k, v in row.items() if k not in _VOLATILE} for row in rows]
        out[section] = sorted(cleaned, key=lambda r: json.dumps(r, sort_keys=True))
    return out


def test_export_then_import_into_an_empty_project_then_export_gives_the_same_settings() -> None:
    source = snapshot(
        provider_accounts=[
            provider(
                "openai", "OpenAI", account_ref="acct", base_url="https://api", config_json={"m": [1, 2.5]}
            ),
            provider("local", "Local", enabled=False),
        ],
        style_guides=[style("s1", "Core Style", "Ink", "n"), style("s2", "Alt", "Paint", at=NOW)],
        characters=[character("c1", "Hero", "d", "p")],
        prompt_templates=[template("t1", "Cover", "text")],
        reference_sets=[
            ref_set(
                "r1", "Faces", "d", [item("i1", "r1", "A", sort_order=0), item("i2", "r1", "B", sort_order=2)]
            ),
            ref_set("r2", "Empty"),
        ],
        secrets=[secret("openai", "api_key", has_value=False)],
    )
    exported = build_export(source, NOW)
    body = {"settings": {**exported["settings"], "project": {"name": "Bootstrap Demo"}}}

    target = snapshot()
    target["project"] = {"id": "other", "slug": "other", "name": "Other", "description": ""}
    result = plan_import(target, parse_import_request(body), NOW, id_source())
    reexported = build_export(result.after, NOW)

    assert _content(reexported["settings"]) == _content(exported["settings"])
    assert all(row["project_id"] == "other" for row in result.after["style_guides"])


def test_imported_secrets_never_carry_a_value_even_when_the_export_had_one() -> None:
    exported = build_export(snapshot(secrets=[secret("openai", "api_key", True)]), NOW)
    result = plan(snapshot(), {"settings": exported["settings"]})
    assert result.after["secrets"][0]["has_value"] is False


def test_new_entries_get_fresh_ids_and_now_timestamps() -> None:
    body = {
        "settings": {
            "style_guides": [{"name": "S", "instructions": "i"}],
            "reference_sets": [{"name": "R", "items": [{"label": "L", "content_text": "t"}]}],
        }
    }
    result = plan(snapshot(), body)
    (style_row,) = result.after["style_guides"]
    assert (style_row["id"], style_row["created_at"], style_row["updated_at"]) == ("new-0001", NOW, NOW)
    set_ops = [op for op in result.operations if isinstance(op, ReferenceSetUpsert)]
    assert set_ops == [ReferenceSetUpsert(True, "new-0002", "R", "", NOW, NOW)]
    (set_row,) = result.after["reference_sets"]
    assert set_row["items"][0]["id"] == "new-0003"
    assert set_row["items"][0]["reference_set_id"] == "new-0002"


# -- a dry run reports the changes the real import makes ------------------------------------------------


def _faces(*items: dict[str, Any]) -> dict[str, Any]:
    return snapshot(reference_sets=[ref_set("r1", "Faces", "", list(items))])


def _faces_body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"settings": {"reference_sets": [{"name": "Faces", "items": list(items)}]}}


def _set_changes(snap: dict[str, Any], body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the dry run's reference_sets changes, the real import's)."""
    dry = preview(snap, parse_import_request({**body, "dry_run": True}), NOW, id_source())
    real = plan(snap, body)
    return dry.changes["reference_sets"], real.changes["reference_sets"]


def test_items_given_out_of_sort_order_are_unchanged_in_the_dry_run_as_in_the_real_import() -> None:
    snap = _faces(item("i1", "r1", "Front", sort_order=0), item("i2", "r1", "Side", sort_order=1))
    body = _faces_body(
        {"label": "Side", "content_text": "notes", "sort_order": 1},
        {"label": "Front", "content_text": "notes", "sort_order": 0},
    )
    dry, real = _set_changes(snap, body)
    assert (real["unchanged"], real["updated"]) == (1, 0)  # the store reads items back by sort_order
    assert dry == real


def test_items_with_equal_sort_order_compare_whatever_order_they_come_back_in() -> None:
    # Items with one sort_order are read back by their random ids (contract §8.5): their order is
    # no content. Here the new ids put the real import's items in the reverse of the old order.
    snap = _faces(item("i1", "r1", "A"), item("i2", "r1", "B"))
    same = _faces_body({"label": "B", "content_text": "notes"}, {"label": "A", "content_text": "notes"})
    dry, real = _set_changes(snap, same)
    assert (real["unchanged"], real["updated"]) == (1, 0)
    assert dry == real
    # a different item, or the same item twice instead of two, is still an update
    for items in (
        ({"label": "B", "content_text": "notes"}, {"label": "A", "content_text": "other"}),
        ({"label": "A", "content_text": "notes"}, {"label": "A", "content_text": "notes"}),
        ({"label": "A", "content_text": "notes", "sort_order": 1}, {"label": "B", "content_text": "notes"}),
    ):
        dry, real = _set_changes(snap, _faces_body(*items))
        assert (real["unchanged"], real["updated"]) == (0, 1), items
        assert dry == real
