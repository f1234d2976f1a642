"""Chat sessions and messages through the HTTP contract (§3.16, §7 chat_endpoints, §9)."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from tests.http.log_seed import ManualClock, assert_error, clocked_client, event_of

SESSIONS = "/api/projects/demo/chat/sessions"


def _session(client: TestClient, **body: object) -> dict:
    response = client.post(SESSIONS, json=body)
    assert response.status_code == 200, response.text
    return response.json()["session"]


def test_session_with_empty_body_gets_default_title_and_is_listed(client: TestClient, project: dict) -> None:
    assert client.get(SESSIONS).json() == {"ok": True, "count": 0, "sessions": []}
    body = client.post(SESSIONS, json={}).json()
    session = body["session"]
    assert session["title"] == "New Session" and session["status"] == "active"
    assert session["project_id"] == project["id"] and session["created_at"] == session["updated_at"]
    assert set(session) == {"id", "project_id", "title", "status", "created_at", "updated_at"}
    assert event_of(client, body["audit_id"]).type == "chat_session.created"
    assert _session(client, title="   ")["title"] == "New Session"
    assert _session(client, title="  Plot ideas ", username="ignored")["title"] == "Plot ideas"
    listed = client.get(SESSIONS).json()
    assert listed["count"] == 3 and listed["sessions"][0]["title"] == "Plot ideas"  # ties: newest first


def test_messages_come_back_in_insertion_order_trimmed(client: TestClient, project: dict) -> None:
    session = _session(client)
    url = f"{SESSIONS}/{session['id']}/messages"
    posted = []
    for role, content in [("user", " first "), ("ASSISTANT", "second"), ("System", "third"), ("tool", "4")]:
        response = client.post(url, json={"role": role, "content": content})
        assert response.status_code == 200, response.text
        posted.append(response.json()["message"])
    assert posted[0]["content"] == "first" and posted[1]["role"] == "assistant"
    listed = client.get(url).json()
    assert listed["session_id"] == session["id"] and listed["count"] == 4
    assert [m["id"] for m in listed["messages"]] == [m["id"] for m in posted]
    assert set(listed["messages"][0]) == {"id", "project_id", "session_id", "role", "content", "created_at"}


def test_message_post_returns_audit_id_of_its_event(client: TestClient, project: dict) -> None:
    session = _session(client)
    body = client.post(f"{SESSIONS}/{session['id']}/messages", json={"role": "user", "content": "hi"}).json()
    event = event_of(client, body["audit_id"])
    assert event.type == "chat_message.posted" and event.data["project_id"] == project["id"]
    assert event.stream_id == f"chat:{session['id']}"


def test_role_is_checked_first_then_content(client: TestClient, project: dict) -> None:
    url = f"{SESSIONS}/{_session(client)['id']}/messages"
    assert_error(client.post(url, json={}), 400, "Field 'role' is required")
    assert_error(client.post(url, json={"role": "  ", "content": "x"}), 400, "Field 'role' is required")
    assert_error(
        client.post(url, json={"role": "robot"}),
        400,
        "Field 'role' must be one of: user, assistant, system, tool",
    )
    assert_error(client.post(url, json={"role": "user"}), 400, "Field 'content' is required")
    assert_error(
        client.post(url, json={"role": "user", "content": "   "}), 400, "Field 'content' is required"
    )


def test_message_validation_comes_before_project_and_session_lookups(client: TestClient) -> None:
    assert_error(
        client.post("/api/projects/nope/chat/sessions/x/messages", json={}), 400, "Field 'role' is required"
    )
    assert_error(
        client.post("/api/projects/nope/chat/sessions/x/messages", json={"role": "user", "content": "hi"}),
        404,
        "Chat session not found",
    )


def test_content_text_is_accepted_and_content_wins(client: TestClient, project: dict) -> None:
    url = f"{SESSIONS}/{_session(client)['id']}/messages"
    alias = client.post(url, json={"role": "user", "content_text": " from the draft "}).json()["message"]
    assert alias["content"] == "from the draft"
    both = client.post(url, json={"role": "user", "content": "real", "content_text": "alias"}).json()
    assert both["message"]["content"] == "real"
    assert_error(
        client.post(url, json={"role": "user", "content": " ", "content_text": "alias"}),
        400,
        "Field 'content' is required",
    )


def test_missing_session_and_project_messages(client: TestClient, project: dict) -> None:
    assert_error(client.get(f"{SESSIONS}/missing"), 404, "Chat session not found")
    assert_error(client.get(f"{SESSIONS}/missing/messages"), 404, "Chat session not found")
    assert_error(
        client.post(f"{SESSIONS}/missing/messages", json={"role": "user", "content": "x"}),
        404,
        "Chat session not found",
    )
    assert_error(client.get("/api/projects/nope/chat/sessions"), 404, "Project not found")
    assert_error(client.post("/api/projects/nope/chat/sessions", json={}), 404, "Project not found")
    # documented in the reference's test as accepted behaviour: the handler's own message
    assert_error(client.get("/api/projects/nope/chat/sessions/x"), 404, "Chat session not found")


def test_session_of_another_project_is_not_found(client: TestClient, project: dict) -> None:
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    other = client.post("/api/projects/other/chat/sessions", json={}).json()["session"]
    assert_error(client.get(f"{SESSIONS}/{other['id']}"), 404, "Chat session not found")
    assert_error(client.get(f"{SESSIONS}/{other['id']}/messages"), 404, "Chat session not found")
    assert_error(
        client.post(f"{SESSIONS}/{other['id']}/messages", json={"role": "user", "content": "x"}),
        404,
        "Chat session not found",
    )


def test_session_detail_by_unnormalised_slug(client: TestClient, project: dict) -> None:
    session = _session(client, title="T")
    assert client.get(f"/api/projects/DEMO/chat/sessions/{session['id']}").json() == {
        "ok": True,
        "session": session,
    }


def test_messages_do_not_touch_session_updated_at_and_list_is_updated_at_desc(tmp_path: Path) -> None:
    clock = ManualClock()
    with clocked_client(tmp_path, clock) as client:
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        first = _session(client, title="first")
        clock.advance(5)
        second = _session(client, title="second")
        clock.advance(5)
        client.post(f"{SESSIONS}/{first['id']}/messages", json={"role": "user", "content": "late"})
        detail = client.get(f"{SESSIONS}/{first['id']}").json()["session"]
        assert detail["updated_at"] == first["updated_at"] == "2026-03-01T12:00:00Z"
        message = client.get(f"{SESSIONS}/{first['id']}/messages").json()["messages"][0]
        assert message["created_at"] == "2026-03-01T12:00:10Z"
        assert [s["title"] for s in client.get(SESSIONS).json()["sessions"]] == ["second", "first"]
        assert second["created_at"] == "2026-03-01T12:00:05Z"


def test_session_create_requires_a_json_object_body(client: TestClient, project: dict) -> None:
    response = client.post(SESSIONS, content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error_code"] == "validation_error"
