"""The audit API: one entry per command from the event log, with actor, time, type, entity and a
safe summary; filters by type, actor and time; paging by position; rebuildable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.clock import iso_micro
from kroma.config import Settings
from kroma.domain.aggregate import project_stream
from kroma.domain.users import LOCAL_USER_ID
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.http.app import create_app
from kroma.projections.audit import summarize
from kroma.services import Services
from tests.http.log_seed import ManualClock, append, rows, services_of


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def entries(client: TestClient, path: str = "/api/audit", **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["audit_events"])
    return body["audit_events"]


def test_a_session_of_mutations_under_a_token(auth_client: TestClient) -> None:
    root = auth_client.post("/auth/token", json={"label": "root"}).json()["auth_token"]
    h = bearer(root["token"])
    project = auth_client.post("/api/projects", json={"name": "Demo", "slug": "demo"}, headers=h).json()
    secret_value = "sk-audit-never-shown-0123456789"
    body = {"provider_code": "OpenAI", "secret_name": "api_key", "secret_value": secret_value}
    upserted = auth_client.post("/api/projects/demo/secrets", json=body, headers=h).json()
    rotated = auth_client.post("/api/projects/demo/secrets/rotate", json={"force": True}, headers=h).json()
    deleted = auth_client.delete("/api/projects/demo/secrets/openai/api_key", headers=h).json()
    auth_client.post("/api/projects", json={"name": "Other", "slug": "other"}, headers=h)

    response = auth_client.get("/api/audit", headers=h)
    assert response.status_code == 200
    found = response.json()["audit_events"]
    assert [e["type"] for e in found] == [
        "token.created",
        "project.created",
        "secret.set",
        "secrets.rotated",
        "secret.deleted",
        "project.created",
    ]
    token_entry, project_entry, set_entry, rotate_entry, delete_entry, _other = found
    assert token_entry["actor_user_id"] is None and token_entry["token_id"] is None  # the bootstrap
    assert token_entry["event_count"] == 2  # token.created + its bootstrap reservation
    assert token_entry["summary"] == {
        "token_prefix": root["token_prefix"],
        "label": "root",
        "project_id": None,
        "expires_at": None,
    }
    for entry in found[1:]:
        assert (entry["actor_user_id"], entry["token_id"]) == (LOCAL_USER_ID, root["id"])
    assert [project_entry["id"], set_entry["id"], rotate_entry["id"], delete_entry["id"]] == [
        project["audit_id"],
        upserted["audit_id"],
        rotated["audit_id"],
        deleted["audit_id"],
    ]
    assert project_entry["event_count"] == 2  # project.created + project_slug.reserved
    assert (project_entry["entity_type"], project_entry["entity_id"]) == ("project", project["project"]["id"])
    assert (set_entry["entity_type"], set_entry["entity_id"]) == ("secret", "openai/api_key")
    assert set_entry["summary"] == {
        "provider_code": "openai",
        "secret_name": "api_key",
        "key_ref": "local-master",
    }
    assert rotate_entry["summary"]["rotated"] == 1 and rotate_entry["summary"]["force"] is True
    assert set(found[0]) == {
        "id",
        "position",
        "type",
        "project_id",
        "actor_user_id",
        "token_id",
        "request_id",
        "created_at",
        "recorded_at",
        "entity_type",
        "entity_id",
        "summary",
        "event_count",
    }

    text = response.text
    for secret in (secret_value, "enc:v1:", root["token"], "token_hash", "ciphertext", "key_id"):
        assert secret not in text

    scoped = auth_client.get("/api/projects/demo/audit", headers=h).json()
    assert scoped["project_id"] == project["project"]["id"]
    assert [e["type"] for e in scoped["audit_events"]] == [
        "project.created",
        "secret.set",
        "secrets.rotated",
        "secret.deleted",
    ]
    assert auth_client.get("/api/audit").status_code == 401
    assert auth_client.get("/api/projects/nope/audit", headers=h).status_code == 403


def test_filters_by_type_and_actor(auth_client: TestClient) -> None:
    root = auth_client.post("/auth/token", json={}).json()["auth_token"]
    other = auth_client.post("/auth/token", json={}, headers=bearer(root["token"])).json()["auth_token"]
    auth_client.post("/api/projects", json={"name": "A", "slug": "a"}, headers=bearer(root["token"]))
    auth_client.post("/api/projects", json={"name": "B", "slug": "b"}, headers=bearer(other["token"]))
    auth_client.put("/api/projects/b/storage/s3", json={}, headers=bearer(other["token"]))

    def types(**params: Any) -> list[str]:
        response = auth_client.get("/api/audit", params=params, headers=bearer(root["token"]))
        assert response.status_code == 200, response.text
        return [e["type"] for e in response.json()["audit_events"]]

    assert types(type="project.created") == ["project.created", "project.created"]
    assert types(type="storage.s3_updated,token.created") == [
        "token.created",
        "token.created",
        "storage.s3_updated",
    ]
    assert types(type=["storage.s3_updated", "project.created"]) == [
        "project.created",
        "project.created",
        "storage.s3_updated",
    ]
    assert types(actor=other["id"]) == ["project.created", "storage.s3_updated"]
    assert types(actor=root["id"]) == ["token.created", "project.created"]
    assert types(actor=LOCAL_USER_ID) == types(actor="local") == types(actor="Local")
    assert len(types(actor="local")) == 4
    assert types(actor="alice") == []
    assert types(actor=f"{root['id']},{other['id']}", type="project.created") == ["project.created"] * 2


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[TestClient, ManualClock]]:
    clock = ManualClock(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))
    settings = Settings(data_dir=str(tmp_path / "clocked"), auth_dev_bypass=True)
    with TestClient(create_app(settings, Services(settings, clock=clock))) as client:
        yield client, clock


def test_filters_by_time(clocked: tuple[TestClient, ManualClock]) -> None:
    client, clock = clocked
    for i in range(3):
        client.post("/api/projects", json={"name": f"P{i}", "slug": f"p{i}"})
        clock.advance(3600 * 24)
    names = lambda **p: [e["summary"]["slug"] for e in entries(client, **p)]  # noqa: E731
    assert names() == ["p0", "p1", "p2"]
    assert names(since="2026-03-02") == ["p1", "p2"]
    assert names(until="2026-03-02") == ["p0", "p1"]  # a date bound covers that whole day
    assert names(since="2026-03-01T12:00:00Z", until="2026-03-01T12:00:00Z") == ["p0"]
    assert names(since="2026-03-01T12:00:00.000001Z") == ["p1", "p2"]
    assert names(since="2026-03-02T14:00:00+02:00", until="2026-03-02T12:00:00Z") == ["p1"]
    assert names(since="2026-03-02T12:00:00", until="2026-03-03") == ["p1", "p2"]  # no offset: UTC
    assert entries(client)[0]["created_at"] == "2026-03-01T12:00:00Z"
    assert entries(client)[0]["recorded_at"] == iso_micro(datetime(2026, 3, 1, 12, tzinfo=UTC))
    for name in ("since", "until"):
        response = client.get("/api/audit", params={name: "yesterday"})
        assert response.status_code == 400
        assert response.json()["error"] == (
            f"Query parameter '{name}' must be an ISO8601 timestamp (YYYY-MM-DDTHH:MM:SSZ) or date (YYYY-MM-DD)"
        )


def test_paging_by_position(client: TestClient) -> None:
    for i in range(7):
        client.post("/api/projects", json={"name": f"P{i}", "slug": f"p{i}"})
    everything = entries(client)
    assert len(everything) == 7
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/api/audit", params={"after": after, "limit": 3}).json()
        assert page["count"] <= 3
        if not page["audit_events"]:
            assert page["next_after"] == after
            break
        seen += page["audit_events"]
        after = page["next_after"]
        assert after == page["audit_events"][-1]["position"]
    assert seen == everything
    assert len(entries(client, limit=0)) == 1  # clamped, never rejected
    bad = client.get("/api/audit", params={"after": "x"})
    assert bad.status_code == 400 and bad.json()["error"] == "Query parameter 'after' must be an integer"


def test_project_audit_not_found(client: TestClient) -> None:
    response = client.get("/api/projects/nope/audit")
    assert response.status_code == 404 and response.json()["error"] == "Project not found"
    assert client.get("/api/projects/nope/audit", params={"since": "x"}).status_code == 400  # params first


def test_a_command_is_one_entry_and_a_summary_event_names_it(
    client: TestClient, project: dict[str, Any]
) -> None:
    stream = project_stream(project["id"])
    meta = Metadata(correlation_id="import-1", actor_user_id="u1")
    first = append(
        client,
        NewEvent(
            stream,
            "style_guide.created",
            {"project_id": project["id"], "style_guide_id": "s1", "name": "Ink"},
            meta,
        ),
        NewEvent(
            stream,
            "bootstrap.imported",
            {"project_id": project["id"], "mode": "merge", "changes": {"style_guides": {"created": 1}}},
            meta,
        ),
    )
    append(client, NewEvent(stream, "storage.s3_updated", {"project_id": project["id"], "s3_enabled": False}))
    append(client, NewEvent(stream, "storage.s3_updated", {"project_id": project["id"], "s3_enabled": True}))

    found = entries(client, f"/api/projects/{project['slug']}/audit", after=first.first_position - 1)
    assert [(e["type"], e["event_count"]) for e in found] == [
        ("bootstrap.imported", 2),
        ("storage.s3_updated", 1),
        ("storage.s3_updated", 1),
    ]
    imported = found[0]
    assert (imported["id"], imported["position"]) == (first.event_ids[0], first.first_position)
    assert imported["summary"] == {
        "project_id": project["id"],
        "mode": "merge",
        "changes": {"style_guides": {"created": 1}},
    }
    assert (imported["entity_type"], imported["entity_id"]) == ("project", project["id"])
    assert imported["actor_user_id"] == "u1"


@pytest.mark.parametrize(
    ("type_", "data", "entity", "summary"),
    [
        (
            "secret.set",
            {
                "project_id": "p",
                "provider_code": "openai",
                "secret_name": "k",
                "key_id": "kid",
                "ciphertext": "enc:v1:xxx",
                "key_ref": "local-master",
            },
            ("secret", "openai/k"),
            {"provider_code": "openai", "secret_name": "k", "key_ref": "local-master"},
        ),
        (
            "token.created",
            {
                "token_id": "t",
                "user_id": "u",
                "token_hash": "h",
                "token_prefix": "kroma_abcdef",
                "label": "",
                "expires_at": None,
            },
            ("token", "t"),
            {"token_prefix": "kroma_abcdef", "label": "", "project_id": None, "expires_at": None},
        ),
        (
            "style_guide.created",
            {
                "project_id": "p",
                "style_guide_id": "s",
                "name": "Ink",
                "instructions": "long text",
                "notes": "",
            },
            ("style_guide", "s"),
            {"project_id": "p", "style_guide_id": "s", "name": "Ink"},
        ),
        (
            "chat_message.posted",
            {"project_id": "p", "session_id": "s", "message_id": "m", "role": "user", "content": "hello"},
            ("chat_message", "m"),
            {"project_id": "p", "session_id": "s", "message_id": "m", "role": "user"},
        ),
        (
            "provider_account.created",
            {"project_id": "p", "provider_code": "openai", "config_json": {"api_key": "x"}, "enabled": True},
            ("provider_account", "openai"),
            {"project_id": "p", "provider_code": "openai", "enabled": True},
        ),
        (
            "storage.local_updated",
            {"project_id": "p", "local_base_dir": "/x", "local_project_root": None},
            ("project_storage", "p"),
            {"project_id": "p"},
        ),
    ],
)
def test_summaries_use_safe_fields_only(
    type_: str, data: dict[str, Any], entity: tuple[str, str], summary: dict[str, Any]
) -> None:
    event = Event(1, "e", "s", 1, type_, 1, data, Metadata(), "2026-03-01T12:00:00.000000Z", "")
    entity_type, entity_id, built = summarize(event)
    assert (entity_type, entity_id) == entity
    assert built == summary


def test_rebuild_reproduces_the_audit_trail(client: TestClient, project: dict[str, Any]) -> None:
    client.post(
        "/api/projects/demo/secrets",
        json={"provider_code": "openai", "secret_name": "k", "secret_value": "v"},
    )
    client.post("/auth/token", json={"project_slug": "demo"})
    client.post("/api/projects/demo/secrets/rotate", json={})
    before = rows(client, "SELECT * FROM audit_entries ORDER BY position")
    services = services_of(client)
    client.blocking_portal.call(services.runner.rebuild, ["audit"])
    assert rows(client, "SELECT * FROM audit_entries ORDER BY position") == before
    assert json.loads(before[0]["summary"])["slug"] == "demo"


def test_a_secret_delete_is_audited_with_the_raw_path_values(
    client: TestClient, project: dict[str, Any]
) -> None:
    """Contract §6.1: the delete's audit payload carries the provider code and secret name exactly
    as they appeared in the path (the upsert's, normalised); the entity is the normalised key."""
    body = {"provider_code": "OpenAI", "secret_name": "api_key", "secret_value": "sk-raw-path"}
    client.post("/api/projects/demo/secrets", json=body)
    deleted = client.delete("/api/projects/demo/secrets/OpenAI/%20api_key%20")
    assert deleted.status_code == 200, deleted.text
    entry = entries(client, "/api/projects/demo/audit", type="secret.deleted")[0]
    assert entry["id"] == deleted.json()["audit_id"]
    assert entry["summary"] == {"provider_code": "OpenAI", "secret_name": " api_key "}
    assert (entry["entity_type"], entry["entity_id"]) == ("secret", "openai/api_key")
    upserted = entries(client, "/api/projects/demo/audit", type="secret.set")[0]
    assert upserted["summary"]["provider_code"] == "openai"
