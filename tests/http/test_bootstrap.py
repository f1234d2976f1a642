"""Bootstrap prompt exchange over HTTP (contract §4, §7 bootstrap_endpoints, §10 items 10-11): the export
from the read models, the import as one atomic batch of the record routes' own events."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from kroma.domain import bootstrap_commands
from kroma.domain.bootstrap import EXPECTED_RESPONSE, Delete, build_prompt
from kroma.events.envelope import NewEvent
from tests.http.log_seed import ManualClock, clocked_client, services_of
from tests.http.records_support import assert_error, dump_read_models, ok, project_events

SLUG = "bootstrap_demo"
BASE = f"/api/projects/{SLUG}"
EXPORT = f"{BASE}/bootstrap-prompt"
IMPORT = f"{BASE}/bootstrap-import"
SECTIONS = (
    "provider_accounts",
    "style_guides",
    "characters",
    "reference_sets",
    "secrets",
    "prompt_templates",
)
SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# -- helpers -------------------------------------------------------------------------------------------


def export_of(client: TestClient, base: str = BASE) -> dict[str, Any]:
    return ok(client.get(f"{base}/bootstrap-prompt"))["bootstrap"]


def do_import(client: TestClient, body: dict[str, Any], base: str = BASE) -> dict[str, Any]:
    return ok(client.post(f"{base}/bootstrap-import", json=body))


def head(client: TestClient) -> int:
    return client.blocking_portal.call(services_of(client).store.head)


def all_events(client: TestClient, after: int = 0) -> list[dict[str, Any]]:
    return ok(client.get("/api/events", params={"after": after, "limit": 1000}))["events"]


def item_rows(client: TestClient, project_id: str) -> list[dict[str, Any]]:
    return client.blocking_portal.call(
        services_of(client).reader.all,
        "SELECT * FROM reference_set_items WHERE project_id = ? ORDER BY label",
        (project_id,),
    )


def seed(client: TestClient, slug: str = SLUG) -> dict[str, Any]:
    """The reference's seeded project: one row in every section (the secret with a value), plus an
    orphan item (its set deleted) that the export does not show."""
    project = ok(client.post("/api/projects", json={"name": "Bootstrap Demo", "slug": slug}))["project"]
    base = f"/api/projects/{slug}"
    ok(
        client.post(
            f"{base}/provider-accounts", json={"provider_code": "openai", "display_name": "Old Provider"}
        )
    )
    ok(
        client.post(
            f"{base}/style-guides",
            json={"name": "Old Style", "instructions": "Old instructions", "notes": "legacy"},
        )
    )
    ok(client.post(f"{base}/prompt-templates", json={"name": "Old Template", "template_text": "Old text"}))
    ok(
        client.post(
            f"{base}/characters",
            json={
                "name": "Protagonist",
                "description": "Legacy character description",
                "prompt_text": "Legacy character prompt",
            },
        )
    )
    legacy = ok(
        client.post(
            f"{base}/reference-sets",
            json={"name": "Legacy References", "description": "Seed set for bootstrap export"},
        )
    )["reference_set"]
    ok(
        client.post(
            f"{base}/reference-sets/{legacy['id']}/items",
            json={
                "label": "Hero Face",
                "content_text": "Legacy face reference notes",
                "sort_order": 1,
                "metadata_json": {"source": "legacy"},
            },
        )
    )
    gone = ok(client.post(f"{base}/reference-sets", json={"name": "Gone"}))["reference_set"]
    ok(
        client.post(
            f"{base}/reference-sets/{gone['id']}/items", json={"label": "Orphan", "content_text": "t"}
        )
    )
    ok(client.delete(f"{base}/reference-sets/{gone['id']}"))
    ok(
        client.post(
            f"{base}/secrets",
            json={"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-seed"},
        )
    )
    return project


def secret_state(client: TestClient, project_id: str) -> dict[str, Any]:
    state, _version = client.blocking_portal.call(services_of(client).commands.load_project, project_id)
    return copy.deepcopy(state.items("secrets"))


FULL_REPLACE: dict[str, Any] = {
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


def content(settings: dict[str, Any]) -> dict[str, list[Any]]:
    """Settings without ids, timestamps and project ids, each section sorted, for comparisons across
    projects (rows written in one second are ordered by their random ids, contract §8.5)."""
    out: dict[str, list[Any]] = {}
    for section in SECTIONS:
        rows = []
        for row in settings[section]:
            kept = {k: v for k, v in row.items() if k not in ("id", "project_id", "created_at", "updated_at")}
            if "items" in kept:
                kept["items"] = sorted(kept["items"], key=lambda i: json.dumps(i, sort_keys=True))
            rows.append(kept)
        out[section] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    return out


# -- export --------------------------------------------------------------------------------------------


def test_export_counts_shapes_and_prompt(client: TestClient) -> None:
    project = seed(client)
    export = export_of(client)

    assert set(export) == {
        "schema_version",
        "generated_at",
        "project",
        "settings",
        "expected_response",
        "prompt",
    }
    assert export["schema_version"] == "kroma.bootstrap.v1"
    assert SECONDS.match(export["generated_at"])
    assert export["project"] == {
        "id": project["id"],
        "slug": SLUG,
        "name": "Bootstrap Demo",
        "description": "",
    }
    settings = export["settings"]
    assert {s: len(rows) for s, rows in settings.items()} == {
        "provider_accounts": 1,
        "style_guides": 1,
        "characters": 1,
        "reference_sets": 1,  # "Gone" was deleted; its orphan item is not shown anywhere
        "secrets": 1,
        "prompt_templates": 1,
    }
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
    # the other sections are the list endpoints' API objects
    for section, path in (
        ("provider_accounts", "provider-accounts"),
        ("style_guides", "style-guides"),
        ("characters", "characters"),
        ("prompt_templates", "prompt-templates"),
    ):
        assert settings[section] == ok(client.get(f"{BASE}/{path}"))[section]
    assert export["expected_response"] == EXPECTED_RESPONSE
    assert "Return ONLY valid JSON" in export["prompt"]
    assert export["prompt"] == build_prompt(export["project"], settings)
    assert settings["secrets"] == [{"provider_code": "openai", "secret_name": "api_key", "has_value": True}]
    assert "secret_value" not in json.dumps(export) and "sk-seed" not in json.dumps(export)


def test_export_of_an_empty_project_has_every_section_empty(client: TestClient) -> None:
    ok(client.post("/api/projects", json={"name": "Empty", "slug": "empty"}))
    export = export_of(client, "/api/projects/empty")
    assert export["settings"] == {section: [] for section in SECTIONS}
    assert export["prompt"].endswith("\n") and "Current project settings:\n" in export["prompt"]


def test_export_and_import_of_a_missing_project_are_not_found(client: TestClient) -> None:
    assert_error(client.get("/api/projects/nope/bootstrap-prompt"), 404, "Project not found")
    assert_error(client.get("/api/projects/!!!/bootstrap-prompt"), 404, "Project not found")
    body = {"settings": {"style_guides": [{"name": "A", "instructions": "B"}]}}
    assert_error(client.post("/api/projects/nope/bootstrap-import", json=body), 404, "Project not found")
    dry = {**body, "dry_run": True}
    assert_error(client.post("/api/projects/nope/bootstrap-import", json=dry), 404, "Project not found")


# -- import validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Provide either 'settings' or 'ai_response_text'"),
        ({"mode": "merge"}, "Provide either 'settings' or 'ai_response_text'"),
        ({"ai_response_text": "  "}, "Field 'ai_response_text' must not be empty"),
        ({"ai_response_text": "no json here"}, "Could not parse JSON from 'ai_response_text'"),
        ({"ai_response_text": "[1, 2]"}, "Could not parse bootstrap JSON from 'ai_response_text'"),
        (
            {"mode": "overwrite", "settings": {"style_guides": [{"name": "A", "instructions": "B"}]}},
            "Field 'mode' must be one of: merge, replace",
        ),
        ({"mode": "", "settings": {"characters": []}}, "Field 'mode' must be one of: merge, replace"),
        ({"settings": {}}, "Import payload does not include any settings"),
        (
            {"settings": {"reference_sets": [{"name": "Hero Faces"}]}},
            "Field 'reference_sets[].items' is required (use [] to provide an empty set)",
        ),
        (
            {"settings": {"reference_sets": [{"name": "R", "items": [{"label": "L"}]}]}},
            "Field 'reference_sets[].items[]' requires at least one of: content_uri, content_text",
        ),
        (
            {"settings": {"secrets": [{"provider_code": "openai"}]}},
            "Field 'secrets[].secret_name' is required",
        ),
        ({"settings": {"style_guides": "x"}}, "Field 'settings.style_guides' must be array, not str"),
        ({"dry_run": "yes", "settings": {"characters": []}}, "Field 'dry_run' must be bool, not str"),
    ],
)
def test_invalid_payloads_are_400_with_the_contract_message_even_on_a_missing_project(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    seed(client)
    before = head(client)
    assert_error(client.post(IMPORT, json=body), 400, message)
    assert_error(client.post("/api/projects/nope/bootstrap-import", json=body), 400, message)
    assert head(client) == before


def test_a_body_that_is_not_a_json_object_is_400(client: TestClient) -> None:
    seed(client)
    assert_error(client.post(IMPORT, json=[1]), 400, "Request body must be a JSON object")
    assert_error(client.post(IMPORT, content=b"{nope"), 400, "Request body is not valid JSON")


# -- real imports ------------------------------------------------------------------------------------------


def test_full_replace_import_reports_the_reference_changes_and_persists_them(client: TestClient) -> None:
    project = seed(client)
    body = do_import(client, FULL_REPLACE)
    result = body["bootstrap_import"]

    assert set(result) == {
        "schema_version",
        "mode",
        "dry_run",
        "project_updated",
        "applied",
        "changes",
        "project",
        "settings",
    }
    assert (result["mode"], result["dry_run"], result["project_updated"]) == ("replace", False, True)
    assert result["applied"] == {section: 1 for section in SECTIONS}
    changes = result["changes"]
    assert changes["project"] == {
        "provided": True,
        "updated": True,
        "name_changed": True,
        "description_changed": True,
    }
    assert changes["provider_accounts"] == {
        "provided": True,
        "replaced": True,
        "before_count": 1,
        "after_count": 1,
        "created": 0,
        "updated": 1,
        "deleted": 0,
        "unchanged": 0,
    }
    style = changes["style_guides"]
    assert (style["replaced"], style["created"], style["deleted"]) == (True, 1, 1)
    assert changes["characters"]["updated"] == 1
    refs = changes["reference_sets"]
    assert (refs["created"], refs["deleted"], refs["before_count"], refs["after_count"]) == (1, 1, 1, 1)
    assert changes["secrets"] == {
        "provided": True,
        "replaced": False,
        "before_count": 1,
        "after_count": 2,
        "created": 1,
        "updated": 0,
        "deleted": 0,
        "unchanged": 1,
    }
    # secrets are never deleted, even in replace mode, and a new one has no value
    assert result["settings"]["secrets"] == [
        {"provider_code": "anthropic", "secret_name": "api_key", "has_value": False},
        {"provider_code": "openai", "secret_name": "api_key", "has_value": True},
    ]
    assert result["project"] == {
        "id": project["id"],
        "slug": SLUG,
        "name": "Bootstrap Demo v2",
        "description": "Imported via bootstrap payload",
    }

    # The response is the state the import left: the export (and the list routes) read the same.
    export = export_of(client)
    assert export["settings"] == result["settings"]
    assert export["project"] == result["project"]
    assert [s["name"] for s in ok(client.get(f"{BASE}/style-guides"))["style_guides"]] == ["Studio Look"]
    (character,) = ok(client.get(f"{BASE}/characters"))["characters"]
    assert (character["name"], character["description"]) == ("Protagonist", "Refined protagonist profile")
    (account,) = ok(client.get(f"{BASE}/provider-accounts"))["provider_accounts"]
    assert (account["display_name"], account["config_json"]) == ("OpenAI Primary", {"model": "gpt-image-1"})
    detail = ok(client.get(BASE))["project"]
    assert (detail["name"], detail["description"]) == ("Bootstrap Demo v2", "Imported via bootstrap payload")
    assert detail["updated_at"] == character["updated_at"]
    # replacing reference sets purged every item, the orphan included
    assert [row["label"] for row in item_rows(client, project["id"])] == ["Hero Front"]


def test_import_events_are_one_batch_under_one_correlation_id_led_by_the_summary(client: TestClient) -> None:
    seed(client)
    before = head(client)
    body = do_import(client, FULL_REPLACE)
    events = all_events(client, before)

    assert [e["position"] for e in events] == list(range(before + 1, before + 1 + len(events)))
    assert len({e["metadata"]["correlation_id"] for e in events}) == 1
    assert len({e["recorded_at"] for e in events}) == 1
    assert {e["stream_id"] for e in events} == {f"project:{body['bootstrap_import']['project']['id']}"}
    first = events[0]
    assert (first["type"], first["event_id"]) == ("bootstrap.imported", body["audit_id"])
    assert first["data"] == {
        "project_id": body["bootstrap_import"]["project"]["id"],
        "mode": "replace",
        "applied": body["bootstrap_import"]["applied"],
        "changes": body["bootstrap_import"]["changes"],
    }
    assert "api_key" not in json.dumps(first["data"])  # counts only, no setting values
    # the record routes' own event types, in the plan's order (§4.2)
    assert [e["type"] for e in events[1:]] == [
        "project.updated",
        "provider_account.deleted",
        "style_guide.deleted",
        "character.deleted",
        "reference_set_item.deleted",  # the purge: the live set's item and the orphan
        "reference_set_item.deleted",
        "reference_set.deleted",
        "prompt_template.deleted",
        "provider_account.created",
        "style_guide.created",
        "character.created",
        "reference_set.created",
        "reference_set_item.created",
        "secret.declared",
        "prompt_template.created",
    ]
    # the project's event listing shows the same batch
    listed = ok(client.get(f"{BASE}/events", params={"after": before}))["events"]
    assert [e["event_id"] for e in listed] == [e["event_id"] for e in events]
    # and the audit API shows it as ONE entry with its change counts
    entries = ok(client.get(f"{BASE}/audit", params={"after": before}))["audit_events"]
    assert [(e["id"], e["type"], e["event_count"]) for e in entries] == [
        (body["audit_id"], "bootstrap.imported", len(events))
    ]
    assert entries[0]["summary"] == first["data"]


def test_secrets_are_metadata_only_never_overwritten_nor_deleted(client: TestClient) -> None:
    project = seed(client)
    stored = secret_state(client, project["id"])
    before = head(client)
    body = {
        "mode": "replace",
        "settings": {
            "secrets": [
                {"provider_code": "OpenAI", "secret_name": "api_key", "secret_value": "sk-overwrite"},
                {"provider_code": "fal", "secret_name": "token", "value": "sk-new"},
            ]
        },
    }
    result = do_import(client, body)["bootstrap_import"]

    assert result["settings"]["secrets"] == [
        {"provider_code": "fal", "secret_name": "token", "has_value": False},
        {"provider_code": "openai", "secret_name": "api_key", "has_value": True},
    ]
    counts = result["changes"]["secrets"]
    assert (counts["replaced"], counts["created"], counts["unchanged"], counts["deleted"]) == (False, 1, 1, 0)
    declared = [e["data"] for e in all_events(client, before) if e["type"] == "secret.declared"]
    assert declared == [
        {"project_id": project["id"], "provider_code": "fal", "secret_name": "token"},
        {"project_id": project["id"], "provider_code": "openai", "secret_name": "api_key"},
    ]
    assert "sk-" not in json.dumps(all_events(client, before))
    after = secret_state(client, project["id"])
    kept = {
        k: v for k, v in after[next(k for k in after if k.startswith("openai"))].items() if k != "updated_at"
    }
    assert kept == {k: v for k, v in next(iter(stored.values())).items() if k != "updated_at"}
    assert export_of(client)["settings"]["secrets"] == result["settings"]["secrets"]
    listed = ok(client.get(f"{BASE}/secrets"))["secrets"]
    assert [(r["provider_code"], r["has_value"]) for r in listed] == [("fal", False), ("openai", True)]
    # a replace that omits secrets (or provides none) deletes none
    do_import(client, {"mode": "replace", "settings": {"secrets": [], "characters": []}})
    assert len(export_of(client)["settings"]["secrets"]) == 2


def test_ai_response_text_in_a_json_code_fence_imports(client: TestClient) -> None:
    seed(client)
    fenced = (
        "```json\n"
        + json.dumps(
            {
                "mode": "merge",
                "settings": {
                    "style_guides": [
                        {
                            "name": "Painterly",
                            "instructions": "Painterly brushwork with controlled color palette.",
                        }
                    ],
                    "prompt_templates": [
                        {"name": "Scene Prompt", "template_text": "Generate a scene in the configured style."}
                    ],
                },
            },
            indent=2,
        )
        + "\n```"
    )
    result = do_import(client, {"ai_response_text": fenced})["bootstrap_import"]
    assert result["mode"] == "merge"
    assert (result["applied"]["style_guides"], result["applied"]["prompt_templates"]) == (1, 1)
    assert result["changes"]["style_guides"]["created"] == 1
    assert result["changes"]["style_guides"]["unchanged"] == 1  # merge keeps "Old Style"
    names = sorted(s["name"] for s in ok(client.get(f"{BASE}/style-guides"))["style_guides"])
    assert names == ["Old Style", "Painterly"]
    # the request's mode wins over the wrapper's
    wrapped = {"ai_response_text": fenced, "mode": "replace"}
    assert do_import(client, wrapped)["bootstrap_import"]["mode"] == "replace"
    assert [s["name"] for s in ok(client.get(f"{BASE}/style-guides"))["style_guides"]] == ["Painterly"]


def test_ai_response_text_with_prose_around_the_json_imports(client: TestClient) -> None:
    seed(client)
    text = 'Here is your profile: {"characters": [{"name": "Sidekick"}]} Enjoy!'
    result = do_import(client, {"ai_response_text": text})["bootstrap_import"]
    assert result["changes"]["characters"]["created"] == 1


def test_replace_mode_touches_only_the_provided_sections(client: TestClient) -> None:
    project = seed(client)
    before = export_of(client)["settings"]
    body = {"mode": "replace", "settings": {"style_guides": [{"name": "Only", "instructions": "One"}]}}
    result = do_import(client, body)["bootstrap_import"]

    after = export_of(client)["settings"]
    assert [s["name"] for s in after["style_guides"]] == ["Only"]
    for section in ("provider_accounts", "characters", "reference_sets", "prompt_templates"):
        assert after[section] == before[section], section
        assert result["changes"][section]["provided"] is False
        assert result["changes"][section]["replaced"] is False
        assert result["changes"][section]["unchanged"] == len(before[section])
    assert result["project_updated"] is False
    # reference sets were not provided: the orphan item stays where it was
    assert len(item_rows(client, project["id"])) == 2


def test_an_empty_section_in_replace_mode_deletes_the_whole_section(client: TestClient) -> None:
    project = seed(client)
    body = {"mode": "replace", "settings": {"reference_sets": [], "provider_accounts": []}}
    result = do_import(client, body)["bootstrap_import"]
    assert result["applied"]["reference_sets"] == 0
    assert result["changes"]["reference_sets"]["deleted"] == 1
    assert result["changes"]["provider_accounts"]["deleted"] == 1
    assert ok(client.get(f"{BASE}/reference-sets"))["count"] == 0
    assert ok(client.get(f"{BASE}/provider-accounts"))["count"] == 0
    assert item_rows(client, project["id"]) == []  # orphans included
    # an empty section in merge mode changes nothing
    merge = do_import(client, {"settings": {"characters": []}})["bootstrap_import"]
    assert merge["changes"]["characters"]["unchanged"] == 1


def test_every_real_import_bumps_the_project_and_stamps_what_it_wrote(tmp_path: Path) -> None:
    clock = ManualClock()
    with clocked_client(tmp_path, clock) as client:
        seed(client)
        created = ok(client.get(BASE))["project"]["updated_at"]
        old = ok(client.get(f"{BASE}/characters"))["characters"][0]
        clock.advance(5)
        body = {"settings": {"characters": [], "style_guides": [{"name": "Late", "instructions": "i"}]}}
        result = do_import(client, body)["bootstrap_import"]
        assert result["project_updated"] is False
        project = ok(client.get(BASE))["project"]
        assert (created, project["updated_at"]) == ("2026-03-01T12:00:00Z", "2026-03-01T12:00:05Z")
        late = next(s for s in result["settings"]["style_guides"] if s["name"] == "Late")
        assert (late["created_at"], late["updated_at"]) == ("2026-03-01T12:00:05Z", "2026-03-01T12:00:05Z")
        # untouched rows keep their times; the newest row leads the list
        assert [s["name"] for s in result["settings"]["style_guides"]] == ["Late", "Old Style"]
        assert ok(client.get(f"{BASE}/characters"))["characters"] == [old]
        # a dry run stamps its preview with the time, and writes nothing
        clock.advance(5)
        preview = do_import(client, {**body, "dry_run": True})["bootstrap_import"]
        assert preview["settings"]["style_guides"][0]["updated_at"] == "2026-03-01T12:00:10Z"
        assert ok(client.get(BASE))["project"]["updated_at"] == "2026-03-01T12:00:05Z"


def test_merge_upserts_by_exact_name_and_reference_items_are_authoritative(client: TestClient) -> None:
    seed(client)
    old = ok(client.get(f"{BASE}/style-guides"))["style_guides"][0]
    (legacy,) = ok(client.get(f"{BASE}/reference-sets"))["reference_sets"]
    body = {
        "settings": {
            "style_guides": [
                {"name": "Old Style", "instructions": "New instructions"},  # exact name: updated in place
                {"name": "old style", "instructions": "A case variant"},  # a second row (dedup is per key)
            ],
            "reference_sets": [
                {
                    "name": "Legacy References",
                    "description": "Seed set for bootstrap export",
                    "items": [{"label": "Replacement", "content_uri": "s3://r.png"}],
                }
            ],
        }
    }
    result = do_import(client, body)["bootstrap_import"]
    assert result["applied"]["style_guides"] == 1  # deduped case-insensitively, last one wins
    guides = {g["name"]: g for g in ok(client.get(f"{BASE}/style-guides"))["style_guides"]}
    assert set(guides) == {"Old Style", "old style"}
    assert guides["Old Style"]["instructions"] == "Old instructions"  # "Old Style" lost the dedup
    body["settings"]["style_guides"] = [{"name": "Old Style", "instructions": "New instructions"}]
    do_import(client, body)
    kept = ok(client.get(f"{BASE}/style-guides/{old['id']}"))["style_guide"]
    assert (kept["instructions"], kept["notes"], kept["created_at"]) == (
        "New instructions",
        "",
        old["created_at"],
    )
    # the set keeps its id; its items are exactly the provided ones, in merge mode too
    (after_set,) = ok(client.get(f"{BASE}/reference-sets"))["reference_sets"]
    assert after_set["id"] == legacy["id"]
    items = ok(client.get(f"{BASE}/reference-sets/{legacy['id']}/items"))["items"]
    assert [i["label"] for i in items] == ["Replacement"]


def test_an_identical_import_counts_as_unchanged(client: TestClient) -> None:
    seed(client)
    settings = export_of(client)["settings"]
    result = do_import(client, {"mode": "merge", "settings": settings})["bootstrap_import"]
    for section in SECTIONS:
        expected = len(settings[section])
        counts = result["changes"][section]
        assert (counts["unchanged"], counts["created"], counts["updated"], counts["deleted"]) == (
            expected,
            0,
            0,
            0,
        ), section


# -- dry run -----------------------------------------------------------------------------------------------


DRY_RUN_REPLACE: dict[str, Any] = {
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


def test_dry_run_previews_without_persisting_or_appending(client: TestClient) -> None:
    seed(client)
    before_export = export_of(client)
    before_head = head(client)
    before_tables = dump_read_models(client)

    result = do_import(client, DRY_RUN_REPLACE)
    assert "audit_id" not in result
    preview = result["bootstrap_import"]
    assert (preview["dry_run"], preview["mode"]) == (True, "replace")
    for section in ("style_guides", "characters", "reference_sets"):
        counts = preview["changes"][section]
        assert (counts["created"], counts["deleted"], counts["replaced"]) == (1, 1, True), section
    assert (preview["changes"]["secrets"]["created"], preview["changes"]["secrets"]["replaced"]) == (1, False)
    assert preview["settings"]["secrets"] == [
        {"provider_code": "anthropic", "secret_name": "api_key", "has_value": False},
        {"provider_code": "openai", "secret_name": "api_key", "has_value": True},
    ]
    assert re.fullmatch(r"preview_style_[0-9a-f-]{36}", preview["settings"]["style_guides"][0]["id"])
    assert re.fullmatch(r"preview_character_[0-9a-f-]{36}", preview["settings"]["characters"][0]["id"])

    assert head(client) == before_head
    assert dump_read_models(client) == before_tables
    assert export_of(client)["settings"] == before_export["settings"]

    # the real import reports the same changes the dry run previewed
    real = do_import(client, {**DRY_RUN_REPLACE, "dry_run": False})["bootstrap_import"]
    assert real["changes"] == preview["changes"]
    assert real["applied"] == preview["applied"]
    assert content(real["settings"]) == content(preview["settings"])


def test_dry_run_of_a_merge_keeps_existing_ids_and_orders_by_the_dedup_key(client: TestClient) -> None:
    seed(client)
    old = ok(client.get(f"{BASE}/characters"))["characters"][0]
    body = {
        "dry_run": True,
        "settings": {"characters": [{"name": "Zed"}, {"name": "protagonist", "description": "x"}]},
    }
    preview = do_import(client, body)["bootstrap_import"]
    chars = preview["settings"]["characters"]
    assert [c["name"] for c in chars] == ["protagonist", "Zed"]  # by lower-cased name
    assert (chars[0]["id"], chars[0]["created_at"]) == (old["id"], old["created_at"])
    assert chars[1]["id"].startswith("preview_character_")


# -- atomicity and concurrency ------------------------------------------------------------------------------


def test_an_import_that_fails_part_way_appends_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(client)
    real_plan = bootstrap_commands.plan_import

    def plan_with_a_bad_step(*args: Any, **kwargs: Any) -> Any:
        plan = real_plan(*args, **kwargs)
        ops = list(plan.operations)
        ops.insert(len(ops) // 2, Delete("character", "no-such-character"))  # valid steps on both sides
        plan.operations = tuple(ops)
        return plan

    monkeypatch.setattr(bootstrap_commands, "plan_import", plan_with_a_bad_step)
    before_head, before_tables = head(client), dump_read_models(client)
    assert_error(client.post(IMPORT, json=FULL_REPLACE), 404, "Character not found")
    assert head(client) == before_head
    assert dump_read_models(client) == before_tables


def test_an_import_that_loses_a_race_plans_again_on_the_new_state(client: TestClient) -> None:
    """The import decides on a state without "Racer"; a style guide create commits before the
    import's append, which is then refused and the import plans again: it deletes "Racer" too."""
    seed(client)
    store = services_of(client).store
    real_append = store.append
    body = {"mode": "replace", "settings": {"style_guides": [{"name": "Only", "instructions": "One"}]}}
    attempts: list[str] = []

    async def run() -> list[httpx.Response]:
        import_decided, racer_committed = asyncio.Event(), asyncio.Event()

        async def append(events: list[NewEvent], *args: Any, **kwargs: Any) -> Any:
            if events[0].type == "bootstrap.imported" and not racer_committed.is_set():
                import_decided.set()
                await racer_committed.wait()
            attempts.append(events[0].type)
            return await real_append(events, *args, **kwargs)

        store.append = append
        try:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                importing = asyncio.create_task(http.post(IMPORT, json=body))
                await import_decided.wait()  # the import has decided; its append is held
                racer = await http.post(f"{BASE}/style-guides", json={"name": "Racer", "instructions": "fast"})
                attempts.append("style_guide.created")  # committed: its response is read-your-writes
                racer_committed.set()
                return [await importing, racer]
        finally:
            del store.append

    imported, racer = client.blocking_portal.call(run)
    assert (imported.status_code, racer.status_code) == (200, 200), (imported.text, racer.text)
    assert attempts == ["style_guide.created", "bootstrap.imported", "bootstrap.imported"]  # 1st refused
    (summary,) = project_events(client, SLUG, "bootstrap.imported")
    counts = summary["data"]["changes"]["style_guides"]
    assert (counts["before_count"], counts["deleted"], counts["created"]) == (2, 2, 1)
    assert [s["name"] for s in ok(client.get(f"{BASE}/style-guides"))["style_guides"]] == ["Only"]
    deleted = {e["data"]["style_guide_id"] for e in project_events(client, SLUG, "style_guide.deleted")}
    assert racer.json()["style_guide"]["id"] in deleted
    assert imported.json()["bootstrap_import"]["changes"] == summary["data"]["changes"]
    assert imported.json()["audit_id"] == summary["event_id"]


def test_an_idempotent_retry_returns_the_first_answer_and_appends_nothing(client: TestClient) -> None:
    seed(client)
    headers = {"Idempotency-Key": "import-1"}
    first = client.post(IMPORT, json=FULL_REPLACE, headers=headers)
    after_first = head(client)
    again = client.post(IMPORT, json=FULL_REPLACE, headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    assert head(client) == after_first

    # A retry after a crash that lost the stored answer: the store refuses to append twice, and the
    # answer carries the counts the import recorded and the settings as they are.
    db = sqlite3.connect(services_of(client).settings.events_db)
    with db:
        db.execute("UPDATE idempotency SET response = NULL")
    db.close()
    replayed = ok(client.post(IMPORT, json=FULL_REPLACE, headers=headers))
    assert head(client) == after_first
    assert replayed["audit_id"] == first.json()["audit_id"]
    expected = first.json()["bootstrap_import"]
    assert replayed["bootstrap_import"] == expected


# -- round trip and rebuild ------------------------------------------------------------------------------


def test_export_import_export_round_trips_the_settings(client: TestClient) -> None:
    seed(client)
    ok(
        client.post(
            f"{BASE}/provider-accounts", json={"provider_code": "fal", "enabled": False, "base_url": "u"}
        )
    )
    (legacy,) = ok(client.get(f"{BASE}/reference-sets"))["reference_sets"]
    ok(
        client.post(
            f"{BASE}/reference-sets/{legacy['id']}/items",
            json={
                "label": "Side",
                "content_uri": "s3://side.png",
                "sort_order": 3,
                "metadata_json": [1, 2.5],
            },
        )
    )
    ok(client.post(f"{BASE}/reference-sets", json={"name": "Empty Set"}))
    first = export_of(client)

    ok(client.post("/api/projects", json={"name": "Fresh", "slug": "fresh"}))
    fresh = "/api/projects/fresh"
    result = do_import(client, {"settings": first["settings"]}, fresh)["bootstrap_import"]
    assert all(result["changes"][s]["created"] == len(first["settings"][s]) for s in SECTIONS)
    second = export_of(client, fresh)

    # A secret's value never travels: the fresh project has the name, without a value.
    assert [s["has_value"] for s in first["settings"]["secrets"]] == [True]
    assert [s["has_value"] for s in second["settings"]["secrets"]] == [False]
    for settings in (first["settings"], second["settings"]):
        for secret in settings["secrets"]:
            del secret["has_value"]
    assert content(second["settings"]) == content(first["settings"])
    assert second["settings"]["reference_sets"] != [] and second["project"]["slug"] == "fresh"
    assert all(row["project_id"] == second["project"]["id"] for row in second["settings"]["style_guides"])


def test_rebuilding_the_read_models_after_imports_reproduces_them(client: TestClient) -> None:
    seed(client)
    seed(client, "second")
    do_import(client, FULL_REPLACE)
    do_import(client, {"settings": {"reference_sets": [{"name": "Hero Faces", "items": []}]}})
    do_import(client, {**DRY_RUN_REPLACE})
    do_import(client, {"settings": export_of(client)["settings"]}, "/api/projects/second")
    do_import(client, {"mode": "replace", "settings": {"characters": [], "reference_sets": []}})
    before = dump_read_models(client)
    assert before["reference_set_items"], "the workload leaves items (the second project's orphan included)"

    client.blocking_portal.call(services_of(client).runner.rebuild)

    assert dump_read_models(client) == before


def test_with_auth_enforced_the_import_needs_a_token_and_is_audited_under_it(auth_client: TestClient) -> None:
    token = ok(auth_client.post("/auth/token", json={"label": "bootstrap"}))["auth_token"]
    bearer = {"Authorization": f"Bearer {token['token']}"}
    ok(auth_client.post("/api/projects", json={"name": "Bootstrap Demo", "slug": SLUG}, headers=bearer))
    body = {"settings": {"characters": [{"name": "Hero"}]}}

    denied = auth_client.post(IMPORT, json=body)
    assert_error(denied, 401, "Missing Authorization: Bearer token", code="unauthorized")
    assert auth_client.get(EXPORT).status_code == 401

    imported = ok(auth_client.post(IMPORT, json=body, headers=bearer))
    assert (
        ok(auth_client.get(EXPORT, headers=bearer))["bootstrap"]["settings"]["characters"][0]["name"]
        == "Hero"
    )
    entries = ok(auth_client.get(f"{BASE}/audit", params={"type": "bootstrap.imported"}, headers=bearer))
    (entry,) = entries["audit_events"]
    assert (entry["id"], entry["token_id"]) == (imported["audit_id"], token["id"])


# -- the dry run against the real import that follows ------------------------------------------------


LEGACY_ITEM = {
    "label": "Hero Face",
    "content_text": "Legacy face reference notes",
    "sort_order": 1,
    "metadata_json": {"source": "legacy"},
}
TIES = [{"label": label, "content_text": label.lower()} for label in "ABCDEF"]
DRY_THEN_REAL: list[dict[str, Any]] = [
    FULL_REPLACE,
    {key: value for key, value in DRY_RUN_REPLACE.items() if key != "dry_run"},
    {"settings": {"project": {"name": "Bootstrap Demo"}}},
    {"settings": {"project": {"description": ""}, "provider_accounts": [{"provider_code": "OpenAI"}]}},
    {"settings": {"provider_accounts": [{"provider_code": "x", "config_json": {"a": 1}}]}},
    {"settings": {"provider_accounts": [{"provider_code": "x", "config_json": {"a": 1.0}}]}},
    {"settings": {"style_guides": [{"name": "Old Style", "instructions": "Old instructions", "notes": ""}]}},
    # the seeded set, unchanged: its one item, then with a second item given before it
    {"settings": {"reference_sets": [{"name": "Legacy References", "items": [LEGACY_ITEM]}]}},
    {
        "settings": {
            "reference_sets": [
                {"name": "Legacy References", "items": [{"label": "Zero", "content_uri": "z"}, LEGACY_ITEM]}
            ]
        }
    },
    {
        "settings": {
            "reference_sets": [
                {"name": "Legacy References", "items": [LEGACY_ITEM, {"label": "Zero", "content_uri": "z"}]}
            ]
        }
    },
    # six items with one sort_order: read back in the order of their random ids
    {"settings": {"reference_sets": [{"name": "Ties", "items": TIES}]}},
    {"settings": {"reference_sets": [{"name": "Ties", "items": TIES[::-1]}]}},
    {"mode": "replace", "settings": {"reference_sets": [{"name": "Ties", "items": TIES}]}},
    {
        "settings": {
            "secrets": [
                {"provider_code": "openai", "secret_name": "api_key"},
                {"provider_code": "openai", "secret_name": "API_KEY"},
            ]
        }
    },
    {"mode": "replace", "settings": {section: [] for section in SECTIONS}},
]


def test_a_dry_run_reports_exactly_what_the_real_import_that_follows_reports(client: TestClient) -> None:
    """Issue 6: a dry run appends nothing and returns the changes summary the real import would
    produce. (The one documented exception, a name that differs from an existing one only in case,
    is pinned in the next test.)"""
    seed(client)
    for body in DRY_THEN_REAL:
        before_head, before_tables = head(client), dump_read_models(client)
        dry = do_import(client, {**body, "dry_run": True})["bootstrap_import"]
        assert (head(client), dump_read_models(client)) == (before_head, before_tables), body
        real = do_import(client, body)["bootstrap_import"]
        assert dry["changes"] == real["changes"], body
        assert (dry["applied"], dry["project_updated"]) == (real["applied"], real["project_updated"]), body
        assert content(dry["settings"]) == content(real["settings"]), body
        assert dry["project"] == real["project"], body


def test_the_one_documented_dry_run_difference_is_a_name_differing_only_in_case(client: TestClient) -> None:
    """The reference's dry run matches entries to existing rows by their lower-cased name, while the
    real import matches the store's case-sensitive names (contract §4.2, §10 item 10): a preview of
    "old style" takes over "Old Style"; the real import adds a second row beside it."""
    seed(client)
    body = {"settings": {"style_guides": [{"name": "old style", "instructions": "Old instructions"}]}}
    dry = do_import(client, {**body, "dry_run": True})["bootstrap_import"]
    assert [s["name"] for s in dry["settings"]["style_guides"]] == ["old style"]
    real = do_import(client, body)["bootstrap_import"]
    assert sorted(s["name"] for s in real["settings"]["style_guides"]) == ["Old Style", "old style"]


def test_reimporting_the_same_reference_items_counts_as_unchanged_whatever_their_order(
    client: TestClient,
) -> None:
    seed(client)
    first = do_import(client, {"settings": {"reference_sets": [{"name": "Ties", "items": TIES}]}})
    assert first["bootstrap_import"]["changes"]["reference_sets"]["created"] == 1
    for items in (TIES, TIES[::-1], TIES[2:] + TIES[:2]):
        body = {"settings": {"reference_sets": [{"name": "Ties", "items": items}]}}
        counts = do_import(client, body)["bootstrap_import"]["changes"]["reference_sets"]
        assert (counts["unchanged"], counts["updated"]) == (2, 0), items
    changed = [*TIES[:-1], {"label": "F", "content_text": "other"}]
    body = {"settings": {"reference_sets": [{"name": "Ties", "items": changed}]}}
    counts = do_import(client, body)["bootstrap_import"]["changes"]["reference_sets"]
    assert (counts["unchanged"], counts["updated"]) == (1, 1)


# -- adversarial bodies ----------------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _provider_text(config_json: str, *, wrapped: bool = False) -> str:
    """JSON text of a provider_accounts section whose config_json is the given JSON text."""
    section = '{"provider_accounts": [{"provider_code": "deep", "config_json": ' + config_json + "}]}"
    return '{"settings": ' + section + "}" if wrapped else section


@pytest.mark.parametrize("depth", [124, 300, 990, 5000])
def test_a_body_nested_deeper_than_serde_allows_is_a_400_never_a_500(client: TestClient, depth: int) -> None:
    """serde_json refuses JSON nested 128 levels deep; the body's root object and settings, the
    section array and the entry are four levels, so config_json may nest 123 levels."""
    seed(client)
    before = head(client)
    for dry_run in ("false", "true"):
        body = '{"dry_run": ' + dry_run + ', "settings": ' + _provider_text(_nested(depth)) + "}"
        response = client.post(IMPORT, content=body.encode(), headers={"content-type": "application/json"})
        assert_error(response, 400, "Request body is not valid JSON")
    assert head(client) == before


@pytest.mark.parametrize("depth", [128, 300, 990, 5000])
def test_ai_response_text_nested_deeper_than_serde_allows_does_not_parse(
    client: TestClient, depth: int
) -> None:
    seed(client)
    before = head(client)
    text = _provider_text(_nested(depth - 3))
    for dry_run in (False, True):
        response = client.post(IMPORT, json={"dry_run": dry_run, "ai_response_text": text})
        assert_error(response, 400, "Could not parse JSON from 'ai_response_text'")
    assert head(client) == before


def test_json_nested_as_deep_as_serde_allows_imports_exports_and_rebuilds(client: TestClient) -> None:
    """127 levels parse: the wrapper, settings, section, entry and 123 levels of config_json; the
    body, settings, section, set, items, item and 121 levels of metadata_json."""
    seed(client)
    text = _provider_text(_nested(123), wrapped=True)
    do_import(client, {"ai_response_text": text})
    deep_item = {"label": "L", "content_uri": "u", "metadata_json": json.loads(_nested(121))}
    do_import(client, {"settings": {"reference_sets": [{"name": "Deep", "items": [deep_item]}]}})
    export = export_of(client)
    assert export["prompt"].count("[") > 2 * 123
    again = do_import(client, {"settings": export["settings"]})["bootstrap_import"]["changes"]
    assert (again["provider_accounts"]["unchanged"], again["reference_sets"]["unchanged"]) == (2, 2)
    tables = dump_read_models(client)
    client.blocking_portal.call(services_of(client).runner.rebuild)
    assert dump_read_models(client) == tables


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_ai_response_text_with_a_number_beyond_f64_does_not_parse(client: TestClient, number: str) -> None:
    """serde_json refuses a number out of f64 range; Python would read it as infinity, which a JSON
    encoder then writes as null."""
    seed(client)
    before = head(client)
    text = _provider_text('{"n": ' + number + "}")
    assert_error(
        client.post(IMPORT, json={"ai_response_text": text}),
        400,
        "Could not parse JSON from 'ai_response_text'",
    )
    assert head(client) == before


# -- secrets, round trip through the CLI rebuild ----------------------------------------------------------


def test_a_secret_with_a_value_survives_replace_imports_that_list_it_and_that_do_not(
    client: TestClient,
) -> None:
    project = seed(client)
    stored = secret_state(client, project["id"])
    listed = {
        "mode": "replace",
        "settings": {"secrets": [{"provider_code": "openai", "secret_name": "api_key"}]},
    }
    omitted = {"mode": "replace", "settings": {"secrets": [], "provider_accounts": [], "characters": []}}
    for body in (listed, omitted, {**listed, "dry_run": True}, {**omitted, "dry_run": True}):
        result = do_import(client, body)["bootstrap_import"]
        assert result["settings"]["secrets"] == [
            {"provider_code": "openai", "secret_name": "api_key", "has_value": True}
        ]
        assert (
            result["changes"]["secrets"]["deleted"] == 0 and result["changes"]["secrets"]["replaced"] is False
        )
    after = secret_state(client, project["id"])
    assert {k: {f: v for f, v in row.items() if f != "updated_at"} for k, row in after.items()} == {
        k: {f: v for f, v in row.items() if f != "updated_at"} for k, row in stored.items()
    }
    assert ok(client.get(f"{BASE}/secrets"))["secrets"][0]["has_value"] is True


def test_kroma_projections_rebuild_reproduces_the_read_models_after_imports(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kroma.cli import main
    from kroma.config import Settings
    from kroma.http.app import create_app

    data_dir = tmp_path / "data"
    with TestClient(create_app(Settings(data_dir=str(data_dir), auth_dev_bypass=True))) as client:
        seed(client)
        do_import(client, FULL_REPLACE)
        do_import(client, {"settings": {"reference_sets": [{"name": "Ties", "items": TIES}]}})
        do_import(client, {"mode": "replace", "settings": {"characters": [], "prompt_templates": []}})
        before = dump_read_models(client)
        readmodels = client.app.state.services.settings.readmodels_db

    result = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output

    db = sqlite3.connect(readmodels)
    try:
        after = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in before}
    finally:
        db.close()
    assert after == before
