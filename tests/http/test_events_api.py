"""The log over HTTP: paging, type filters, per-project views, and redaction of sensitive fields."""

from __future__ import annotations

from litestar.testing import TestClient


def test_global_log_pages_by_position_and_filters_by_type(client: TestClient) -> None:
    for i in range(3):
        client.post("/api/projects", json={"name": f"P{i}"})
    first = client.get("/api/events?limit=2").json()
    assert [e["position"] for e in first["events"]] == [1, 2] and first["next_after"] == 2
    rest = client.get(f"/api/events?after={first['next_after']}&limit=100").json()
    assert [e["position"] for e in rest["events"]] == [3, 4, 5, 6]
    created = client.get("/api/events?type=project.created").json()
    assert created["count"] == 3 and {e["type"] for e in created["events"]} == {"project.created"}
    both = client.get("/api/events?type=project.created,project_slug.reserved").json()
    assert both["count"] == 6


def test_project_events_only_show_that_project(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "A"})
    client.post("/api/projects", json={"name": "B"})
    client.put("/api/projects/a/storage/s3", json={"bucket": "x"})
    body = client.get("/api/projects/a/events").json()
    assert [e["type"] for e in body["events"]] == [
        "project.created",
        "project_slug.reserved",
        "storage.s3_updated",
    ]
    assert client.get("/api/projects/zzz/events").status_code == 404


def test_event_by_id_or_position_and_unknown_is_404(client: TestClient) -> None:
    audit_id = client.post("/api/projects", json={"name": "A"}).json()["audit_id"]
    assert client.get(f"/api/events/{audit_id}").json()["event"]["position"] == 1
    assert client.get("/api/events/1").json()["event"]["event_id"] == audit_id
    missing = client.get("/api/events/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "Event not found"


def test_secret_ciphertext_and_key_ids_are_redacted_in_log_views(client: TestClient, project: dict) -> None:
    body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-very-secret"}
    assert client.post("/api/projects/demo/secrets", json=body).status_code == 200
    events = client.get("/api/projects/demo/events?type=secret.set").json()["events"]
    assert events and events[0]["data"]["ciphertext"] == "[redacted]"
    assert events[0]["data"]["key_id"] == "[redacted]"
    assert "sk-very-secret" not in client.get("/api/events?limit=1000").text


def test_idempotency_fingerprint_is_keyed_so_a_secret_body_cannot_be_guessed(
    client: TestClient, project: dict
) -> None:
    import hashlib
    import sqlite3

    body = b'{"provider_code":"openai","secret_name":"k","secret_value":"hunter2"}'
    headers = {"Idempotency-Key": "s1", "content-type": "application/json"}
    first = client.post("/api/projects/demo/secrets", content=body, headers=headers)
    again = client.post("/api/projects/demo/secrets", content=body, headers=headers)
    assert first.status_code == 200 and again.json() == first.json()
    services = client.app.state.services
    with sqlite3.connect(services.settings.events_db) as db:
        (stored,) = db.execute("SELECT fingerprint FROM idempotency WHERE key = 's1'").fetchone()
    plain = hashlib.sha256(b"POST /api/projects/demo/secrets\n" + body).hexdigest()
    assert stored != plain and len(stored) == 64
