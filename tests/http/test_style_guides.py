"""Style guides through the HTTP contract (§2 rows 39-43, §3.9, §8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from tests.http.records_support import assert_error, frozen_client, ok, project_events, race

BASE = "/api/projects/demo/style-guides"


def create(client: TestClient, name: str, instructions: str = "Use ink.", **extra: Any) -> dict[str, Any]:
    return ok(client.post(BASE, json={"name": name, "instructions": instructions, **extra}))["style_guide"]


def test_crud_round_trip(client: TestClient, project: dict) -> None:
    assert ok(client.get(BASE)) == {"ok": True, "count": 0, "style_guides": []}
    body = ok(client.post(BASE, json={"name": " Noir ", "instructions": " High contrast ", "notes": " n "}))
    guide = body["style_guide"]
    assert set(guide) == {"id", "project_id", "name", "instructions", "notes", "created_at", "updated_at"}
    assert (guide["name"], guide["instructions"], guide["notes"]) == ("Noir", "High contrast", "n")
    assert guide["project_id"] == project["id"] and "audit_id" in body
    assert ok(client.get(f"{BASE}/{guide['id']}")) == {"ok": True, "style_guide": guide}
    assert ok(client.get(BASE))["style_guides"] == [guide]

    updated = ok(client.put(f"{BASE}/{guide['id']}", json={"instructions": "Soft light"}))["style_guide"]
    assert updated["instructions"] == "Soft light" and updated["name"] == "Noir" and updated["notes"] == "n"
    assert updated["created_at"] == guide["created_at"]

    deleted = ok(client.delete(f"{BASE}/{guide['id']}"))
    assert deleted["deleted"] is True and deleted["id"] == guide["id"] and "audit_id" in deleted
    assert_error(client.get(f"{BASE}/{guide['id']}"), 404, "Style guide not found")
    assert ok(client.get(BASE))["count"] == 0


def test_omitted_or_null_notes_come_back_as_empty_string(client: TestClient, project: dict) -> None:
    assert create(client, "A")["notes"] == ""
    assert create(client, "B", notes=None)["notes"] == ""


def test_put_notes_empty_string_clears_them(client: TestClient, project: dict) -> None:
    guide = create(client, "Noir", notes="keep")
    assert ok(client.put(f"{BASE}/{guide['id']}", json={"notes": ""}))["style_guide"]["notes"] == ""


def test_create_requires_name_then_instructions(client: TestClient, project: dict) -> None:
    assert_error(client.post(BASE, json={}), 400, "Field 'name' is required")
    assert_error(client.post(BASE, json={"name": "  ", "instructions": "x"}), 400, "Field 'name' is required")
    assert_error(client.post(BASE, json={"name": "Noir"}), 400, "Field 'instructions' is required")
    assert_error(
        client.post(BASE, json={"name": "Noir", "instructions": " \t "}),
        400,
        "Field 'instructions' is required",
    )


def test_create_validates_the_body_before_looking_up_the_project(client: TestClient) -> None:
    missing = "/api/projects/missing/style-guides"
    assert_error(client.post(missing, json={}), 400, "Field 'name' is required")
    assert_error(client.post(missing, json={"name": "N", "instructions": "I"}), 404, "Project not found")


def test_duplicate_name_is_rejected_case_sensitively_per_project(client: TestClient, project: dict) -> None:
    create(client, "Noir")
    assert_error(
        client.post(BASE, json={"name": "Noir", "instructions": "other"}),
        400,
        "Style guide name already exists",
    )
    create(client, "noir")  # names are case-sensitive
    ok(client.post("/api/projects", json={"name": "Other", "slug": "other"}))
    ok(client.post("/api/projects/other/style-guides", json={"name": "Noir", "instructions": "x"}))


def test_rename_onto_another_name_is_rejected_but_own_name_is_fine(client: TestClient, project: dict) -> None:
    create(client, "Noir")
    pop = create(client, "Pop")
    assert_error(
        client.put(f"{BASE}/{pop['id']}", json={"name": "Noir"}), 400, "Style guide name already exists"
    )
    assert ok(client.put(f"{BASE}/{pop['id']}", json={"name": "Pop"}))["style_guide"]["name"] == "Pop"
    assert (
        ok(client.put(f"{BASE}/{pop['id']}", json={"name": " Pop Art "}))["style_guide"]["name"] == "Pop Art"
    )


def test_put_needs_one_field_and_checks_it_before_any_lookup(client: TestClient) -> None:
    message = "Provide at least one of: name, instructions, notes"
    assert_error(client.put("/api/projects/missing/style-guides/x", json={}), 400, message)
    assert_error(
        client.put("/api/projects/missing/style-guides/x", json={"name": None, "notes": None}), 400, message
    )


def test_put_blank_required_field_is_checked_after_the_lookups(client: TestClient, project: dict) -> None:
    assert_error(client.put(f"{BASE}/nope", json={"instructions": " "}), 404, "Style guide not found")
    guide = create(client, "Noir")
    assert_error(
        client.put(f"{BASE}/{guide['id']}", json={"instructions": " "}),
        400,
        "Field 'instructions' is required",
    )
    assert_error(client.put(f"{BASE}/{guide['id']}", json={"name": ""}), 400, "Field 'name' is required")


def test_not_found_messages_per_handler(client: TestClient, project: dict) -> None:
    assert_error(client.get("/api/projects/missing/style-guides"), 404, "Project not found")
    for path in ("/api/projects/missing/style-guides/x", "/api/projects/!!!/style-guides/x", f"{BASE}/x"):
        assert_error(client.get(path), 404, "Style guide not found")
        assert_error(client.put(path, json={"notes": "n"}), 404, "Style guide not found")
        assert_error(client.delete(path), 404, "Style guide not found")


def test_path_slug_is_normalised(client: TestClient, project: dict) -> None:
    ok(client.post("/api/projects/DEMO/style-guides", json={"name": "Noir", "instructions": "x"}))
    assert ok(client.get("/api/projects/%20Demo%20/style-guides"))["count"] == 1


def test_every_mutation_answers_the_id_of_its_event(client: TestClient, project: dict) -> None:
    created = ok(client.post(BASE, json={"name": "Noir", "instructions": "x"}))
    guide_id = created["style_guide"]["id"]
    updated = ok(client.put(f"{BASE}/{guide_id}", json={"notes": "n"}))
    deleted = ok(client.delete(f"{BASE}/{guide_id}"))
    for body, event_type in (
        (created, "style_guide.created"),
        (updated, "style_guide.updated"),
        (deleted, "style_guide.deleted"),
    ):
        event = ok(client.get(f"/api/events/{body['audit_id']}"))["event"]
        assert event["type"] == event_type and event["stream_id"] == f"project:{project['id']}"
        assert event["data"]["project_id"] == project["id"] and event["data"]["style_guide_id"] == guide_id
    assert updated_data(client, updated["audit_id"]) == {"notes": "n"}


def updated_data(client: TestClient, event_id: str) -> dict[str, Any]:
    data = ok(client.get(f"/api/events/{event_id}"))["event"]["data"]
    return {k: v for k, v in data.items() if k not in ("project_id", "style_guide_id")}


def test_list_is_newest_change_first_and_same_second_ties_follow_the_log(tmp_path: Path) -> None:
    with frozen_client(tmp_path) as client:
        a, b, c = (create(client, name) for name in ("A", "B", "C"))
        assert a["updated_at"] == c["updated_at"]  # one frozen second
        assert [g["name"] for g in ok(client.get(BASE))["style_guides"]] == ["C", "B", "A"]
        ok(client.put(f"{BASE}/{a['id']}", json={"notes": "touched"}))
        assert [g["name"] for g in ok(client.get(BASE))["style_guides"]] == ["A", "C", "B"]
        ok(client.delete(f"{BASE}/{c['id']}"))
        assert [g["id"] for g in ok(client.get(BASE))["style_guides"]] == [a["id"], b["id"]]


def test_racing_creates_of_one_name_admit_exactly_one(client: TestClient, project: dict) -> None:
    body = {"name": "Noir", "instructions": "x"}
    responses = race(client, ("POST", BASE, body), ("POST", BASE, body))
    assert sorted(r.status_code for r in responses) == [200, 400]
    loser = next(r for r in responses if r.status_code == 400)
    assert_error(loser, 400, "Style guide name already exists")
    assert ok(client.get(BASE))["count"] == 1
    assert len(project_events(client, "demo", "style_guide.created")) == 1


def test_racing_updates_both_succeed_and_the_later_event_wins(client: TestClient, project: dict) -> None:
    guide = create(client, "Noir")
    url = f"{BASE}/{guide['id']}"
    responses = race(client, ("PUT", url, {"notes": "first"}), ("PUT", url, {"notes": "second"}))
    assert [r.status_code for r in responses] == [200, 200]
    events = project_events(client, "demo", "style_guide.updated")
    assert sorted(e["data"]["notes"] for e in events) == ["first", "second"]
    last = max(events, key=lambda e: e["position"])
    assert ok(client.get(url))["style_guide"]["notes"] == last["data"]["notes"]
    assert {r.json()["audit_id"] for r in responses} == {e["event_id"] for e in events}
