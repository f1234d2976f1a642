"""Prompt templates through the HTTP contract (§2 rows 29-33, §3.12, §8)."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from tests.http.records_support import assert_error, ok, project_events, race

BASE = "/api/projects/demo/prompt-templates"


def create(client: TestClient, name: str, text: str = "Draw {{subject}}") -> dict[str, Any]:
    return ok(client.post(BASE, json={"name": name, "template_text": text}))["prompt_template"]


def test_crud_round_trip(client: TestClient, project: dict) -> None:
    assert ok(client.get(BASE)) == {"ok": True, "count": 0, "prompt_templates": []}
    body = ok(client.post(BASE, json={"name": " Cover ", "template_text": " Draw {{subject}} "}))
    template = body["prompt_template"]
    assert set(template) == {"id", "project_id", "name", "template_text", "created_at", "updated_at"}
    assert (template["name"], template["template_text"]) == ("Cover", "Draw {{subject}}")
    assert "audit_id" in body
    assert ok(client.get(f"{BASE}/{template['id']}")) == {"ok": True, "prompt_template": template}
    assert ok(client.get(BASE)) == {"ok": True, "count": 1, "prompt_templates": [template]}

    updated = ok(client.put(f"{BASE}/{template['id']}", json={"template_text": "Paint {{subject}}"}))
    assert updated["prompt_template"]["template_text"] == "Paint {{subject}}"
    assert updated["prompt_template"]["name"] == "Cover" and "audit_id" in updated

    deleted = ok(client.delete(f"{BASE}/{template['id']}"))
    assert deleted["deleted"] is True and deleted["id"] == template["id"] and "audit_id" in deleted
    assert_error(client.get(f"{BASE}/{template['id']}"), 404, "Prompt template not found")


def test_both_fields_are_required_on_create(client: TestClient, project: dict) -> None:
    assert_error(client.post(BASE, json={}), 400, "Field 'name' is required")
    assert_error(client.post(BASE, json={"name": "Cover"}), 400, "Field 'template_text' is required")
    assert_error(
        client.post(BASE, json={"name": "Cover", "template_text": "   "}),
        400,
        "Field 'template_text' is required",
    )


def test_duplicate_name_is_400(client: TestClient, project: dict) -> None:
    create(client, "Cover")
    assert_error(
        client.post(BASE, json={"name": "Cover", "template_text": "x"}),
        400,
        "Prompt template name already exists",
    )


def test_put_empty_body_on_a_missing_template_is_400(client: TestClient, project: dict) -> None:
    assert_error(client.put(f"{BASE}/missing", json={}), 400, "Provide at least one of: name, template_text")


def test_put_blank_fields_are_400_after_the_lookup(client: TestClient, project: dict) -> None:
    assert_error(client.put(f"{BASE}/missing", json={"name": ""}), 404, "Prompt template not found")
    template = create(client, "Cover")
    assert_error(client.put(f"{BASE}/{template['id']}", json={"name": " "}), 400, "Field 'name' is required")
    assert_error(
        client.put(f"{BASE}/{template['id']}", json={"template_text": ""}),
        400,
        "Field 'template_text' is required",
    )


def test_not_found_messages_per_handler(client: TestClient) -> None:
    assert_error(client.get("/api/projects/missing/prompt-templates"), 404, "Project not found")
    assert_error(
        client.post("/api/projects/missing/prompt-templates", json={"name": "n", "template_text": "t"}),
        404,
        "Project not found",
    )
    for method in ("GET", "DELETE"):
        response = client.request(method, "/api/projects/missing/prompt-templates/x")
        assert_error(response, 404, "Prompt template not found")


def test_racing_creates_of_one_name_admit_exactly_one(client: TestClient, project: dict) -> None:
    body = {"name": "Cover", "template_text": "x"}
    responses = race(client, ("POST", BASE, body), ("POST", BASE, body))
    assert sorted(r.status_code for r in responses) == [200, 400]
    assert_error(
        next(r for r in responses if r.status_code == 400), 400, "Prompt template name already exists"
    )
    assert len(project_events(client, "demo", "prompt_template.created")) == 1
