"""Characters through the HTTP contract (§2 rows 44-48, §3.10, §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from tests.http.records_support import assert_error, frozen_client, ok, project_events, race

BASE = "/api/projects/demo/characters"


def create(client: TestClient, name: str, **extra: Any) -> dict[str, Any]:
    return ok(client.post(BASE, json={"name": name, **extra}))["character"]


def test_crud_round_trip(client: TestClient, project: dict) -> None:
    assert ok(client.get(BASE)) == {"ok": True, "count": 0, "characters": []}
    body = ok(client.post(BASE, json={"name": " Hero ", "description": " brave ", "prompt_text": " a hero "}))
    hero = body["character"]
    assert set(hero) == {"id", "project_id", "name", "description", "prompt_text", "created_at", "updated_at"}
    assert (hero["name"], hero["description"], hero["prompt_text"]) == ("Hero", "brave", "a hero")
    assert hero["project_id"] == project["id"] and "audit_id" in body
    assert ok(client.get(f"{BASE}/{hero['id']}")) == {"ok": True, "character": hero}
    assert ok(client.get(BASE)) == {"ok": True, "count": 1, "characters": [hero]}

    updated = ok(client.put(f"{BASE}/{hero['id']}", json={"prompt_text": "a tired hero"}))
    assert updated["character"]["prompt_text"] == "a tired hero" and "audit_id" in updated

    deleted = ok(client.delete(f"{BASE}/{hero['id']}"))
    assert deleted["deleted"] is True and deleted["id"] == hero["id"] and "audit_id" in deleted
    assert_error(client.get(f"{BASE}/{hero['id']}"), 404, "Character not found")


def test_only_the_name_is_required_and_optional_text_defaults_to_empty(
    client: TestClient, project: dict
) -> None:
    assert_error(client.post(BASE, json={}), 400, "Field 'name' is required")
    assert_error(client.post(BASE, json={"name": " ", "description": "d"}), 400, "Field 'name' is required")
    hero = create(client, "Hero", description=None)
    assert hero["description"] == "" and hero["prompt_text"] == ""


def test_put_description_empty_string_clears_it(client: TestClient, project: dict) -> None:
    hero = create(client, "Hero", description="brave")
    assert ok(client.put(f"{BASE}/{hero['id']}", json={"description": ""}))["character"]["description"] == ""


def test_duplicate_name_is_rejected_on_create_and_rename(client: TestClient, project: dict) -> None:
    create(client, "Hero")
    assert_error(client.post(BASE, json={"name": "Hero"}), 400, "Character name already exists")
    villain = create(client, "HERO")  # case-sensitive
    assert_error(
        client.put(f"{BASE}/{villain['id']}", json={"name": "Hero"}), 400, "Character name already exists"
    )


def test_put_needs_one_field_before_any_lookup(client: TestClient) -> None:
    message = "Provide at least one of: name, description, prompt_text"
    assert_error(client.put("/api/projects/missing/characters/x", json={}), 400, message)
    assert_error(client.put("/api/projects/missing/characters/x", json={"description": None}), 400, message)


def test_put_blank_name_is_400_only_after_the_lookups(client: TestClient, project: dict) -> None:
    assert_error(client.put(f"{BASE}/nope", json={"name": ""}), 404, "Character not found")
    hero = create(client, "Hero")
    assert_error(client.put(f"{BASE}/{hero['id']}", json={"name": "  "}), 400, "Field 'name' is required")


def test_create_validates_before_the_project_lookup(client: TestClient) -> None:
    assert_error(client.post("/api/projects/missing/characters", json={}), 400, "Field 'name' is required")
    assert_error(
        client.post("/api/projects/missing/characters", json={"name": "Hero"}), 404, "Project not found"
    )


def test_not_found_messages_per_handler(client: TestClient, project: dict) -> None:
    assert_error(client.get("/api/projects/missing/characters"), 404, "Project not found")
    for path in ("/api/projects/missing/characters/x", "/api/projects/___/characters/x", f"{BASE}/x"):
        assert_error(client.get(path), 404, "Character not found")
        assert_error(client.put(path, json={"name": "n"}), 404, "Character not found")
        assert_error(client.delete(path), 404, "Character not found")


def test_list_is_newest_change_first_with_log_order_for_ties(tmp_path: Path) -> None:
    with frozen_client(tmp_path) as client:
        first, second = create(client, "First"), create(client, "Second")
        assert [c["id"] for c in ok(client.get(BASE))["characters"]] == [second["id"], first["id"]]
        ok(client.put(f"{BASE}/{first['id']}", json={"description": "d"}))
        assert [c["id"] for c in ok(client.get(BASE))["characters"]] == [first["id"], second["id"]]


def test_racing_creates_of_one_name_admit_exactly_one(client: TestClient, project: dict) -> None:
    responses = race(client, ("POST", BASE, {"name": "Hero"}), ("POST", BASE, {"name": "Hero"}))
    assert sorted(r.status_code for r in responses) == [200, 400]
    assert_error(next(r for r in responses if r.status_code == 400), 400, "Character name already exists")
    assert ok(client.get(BASE))["count"] == 1


def test_racing_renames_onto_one_name_admit_exactly_one(client: TestClient, project: dict) -> None:
    a, b = create(client, "A"), create(client, "B")
    responses = race(
        client, ("PUT", f"{BASE}/{a['id']}", {"name": "Hero"}), ("PUT", f"{BASE}/{b['id']}", {"name": "Hero"})
    )
    assert sorted(r.status_code for r in responses) == [200, 400]
    assert sorted(c["name"] for c in ok(client.get(BASE))["characters"]).count("Hero") == 1
    assert len(project_events(client, "demo", "character.updated")) == 1
