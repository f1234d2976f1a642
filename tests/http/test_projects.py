"""Projects and storage through the HTTP contract (§3.2, §3.3)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.http.log_seed import services_of


def assert_error(
    response, status: int, message: str, code: str = "validation_error", kind: str = "validation"
):
    assert response.status_code == status, response.text
    assert response.json() == {"ok": False, "error": message, "error_kind": kind, "error_code": code}


def test_project_list_starts_empty_then_has_the_created_project(client: TestClient) -> None:
    assert client.get("/api/projects").json() == {"ok": True, "count": 0, "projects": []}
    created = client.post("/api/projects", json={"name": "Alpha Project", "description": " first "}).json()
    assert created["project"]["slug"] == "alpha_project"
    listed = client.get("/api/projects").json()
    assert listed["count"] == 1
    item = listed["projects"][0]
    assert item["description"] == "first" and item["username"] == "local" and item["status"] == "active"


def test_create_returns_audit_id_of_the_appended_event(client: TestClient) -> None:
    body = client.post("/api/projects", json={"name": "Alpha"}).json()
    event = client.get(f"/api/events/{body['audit_id']}").json()["event"]
    assert event["type"] == "project.created"
    assert event["data"]["project_id"] == body["project"]["id"]


def test_missing_name_is_400_with_contract_message(client: TestClient) -> None:
    assert_error(client.post("/api/projects", json={}), 400, "Field 'name' is required")
    assert_error(client.post("/api/projects", json={"name": "   "}), 400, "Field 'name' is required")


def test_unnormalisable_slug_falls_back_to_slug_of_name(client: TestClient) -> None:
    body = client.post("/api/projects", json={"name": "My Fancy Project", "slug": "___"}).json()
    assert body["project"]["slug"] == "my_fancy_project"


def test_upsert_same_slug_updates_and_omitted_description_is_wiped(client: TestClient) -> None:
    first = client.post("/api/projects", json={"name": "A", "slug": "a", "description": "keep?"}).json()
    second = client.post("/api/projects", json={"name": "A2", "slug": "a"}).json()
    assert second["project"]["id"] == first["project"]["id"]
    detail = client.get("/api/projects/a").json()["project"]
    assert detail["name"] == "A2" and detail["description"] == ""
    assert client.get("/api/projects").json()["count"] == 1


def test_a_create_decided_on_a_lagging_read_model_is_decided_again_from_the_log(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create takes the read models' word that a slug is free (no read of the log); when they
    lag (another process took the slug), the append's NO_STREAM check refuses it and the command
    is decided again from the log: here an update of the project that holds the slug."""
    first = client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]
    services = services_of(client)
    real_one = services.reader.one

    async def lagging(sql: str, params: Any = ()) -> Any:
        return None if "AS taken" in sql else await real_one(sql, params)

    monkeypatch.setattr(services.reader, "one", lagging)
    response = client.post("/api/projects", json={"name": "Demo again", "slug": "demo"})
    assert response.status_code == 200, response.text
    project = response.json()["project"]
    assert project["id"] == first["id"] and project["name"] == "Demo again"
    monkeypatch.setattr(services.reader, "one", real_one)
    assert client.get("/api/projects").json()["count"] == 1


def test_slug_owned_by_another_user_is_rejected(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "A", "slug": "shared", "username": "alice"})
    assert_error(
        client.post("/api/projects", json={"name": "A", "slug": "shared", "username": "bob"}),
        400,
        "Project slug is already used by another user. Choose a different slug.",
    )


def test_detail_by_unnormalised_path_slug_with_zero_counts(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "Alpha Project", "description": "desc"})
    body = client.get("/api/projects/Alpha%20Project").json()
    assert body["project"]["description"] == "desc"
    assert body["counts"] == {"runs": 0, "jobs": 0, "assets": 0}
    assert_error(client.get("/api/projects/nope"), 404, "Project not found", code="not_found")


def test_list_filters_by_username_and_ignores_an_unnormalisable_one(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "A", "username": "alice"})
    client.post("/api/projects", json={"name": "B"})
    assert client.get("/api/projects?username=Alice").json()["count"] == 1
    assert client.get("/api/projects?username=!!!").json()["count"] == 2


def test_storage_defaults_and_local_update(client: TestClient, project: dict) -> None:
    storage = client.get("/api/projects/demo/storage").json()["storage"]
    assert storage["local"]["base_dir"] == "var/projects"
    assert storage["local"]["project_root"].endswith("/var/projects/demo")
    assert storage["s3"] == {
        "enabled": False,
        "bucket": "",
        "prefix": "iat-projects",
        "region": "",
        "profile": "",
        "endpoint_url": "",
    }
    body = client.put("/api/projects/demo/storage/local", json={"project_root": "/abs/root"}).json()
    assert body["updated"] == "local" and body["storage"]["local"]["project_root"] == "/abs/root"
    assert "audit_id" in body
    cleared = client.put("/api/projects/demo/storage/local", json={"project_root": ""}).json()
    assert cleared["storage"]["local"]["project_root"].endswith("/var/projects/demo")


def test_local_storage_rules_and_their_order(client: TestClient, project: dict) -> None:
    assert_error(
        client.put("/api/projects/missing/storage/local", json={}),
        400,
        "Provide at least one of: base_dir, project_root",
    )
    assert_error(
        client.put("/api/projects/missing/storage/local", json={"base_dir": " "}),
        404,
        "Project not found",
        "not_found",
    )
    assert_error(
        client.put("/api/projects/demo/storage/local", json={"base_dir": " "}),
        400,
        "Field 'base_dir' must not be empty",
    )


def test_s3_update_round_trips_and_empty_body_is_valid(client: TestClient, project: dict) -> None:
    body = client.put(
        "/api/projects/demo/storage/s3",
        json={"enabled": True, "bucket": " art ", "prefix": "p", "region": "eu-west-1"},
    ).json()
    assert body["updated"] == "s3"
    s3 = client.get("/api/projects/demo/storage").json()["storage"]["s3"]
    assert (
        s3["enabled"] is True
        and s3["bucket"] == "art"
        and s3["prefix"] == "p"
        and s3["region"] == "eu-west-1"
    )
    empty = client.put("/api/projects/demo/storage/s3", json={})
    assert empty.status_code == 200 and "audit_id" in empty.json()
    assert (
        client.put("/api/projects/demo/storage/s3", json={"bucket": ""}).json()["storage"]["s3"]["bucket"]
        == ""
    )
    assert_error(client.put("/api/projects/zzz/storage/s3", json={}), 404, "Project not found", "not_found")
