"""Agent instructions and their state machine through the HTTP contract (§3.16, §6, §7, §8, §9)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from litestar.testing import TestClient

from kroma.events.store import ConcurrencyConflict
from tests.http.log_seed import ManualClock, assert_error, clocked_client, event_of, services_of

BASE = "/api/projects/demo/agent/instructions"
FIELDS = {
    "id",
    "project_id",
    "instruction_text",
    "status",
    "created_at",
    "updated_at",
    "confirmed_at",
    "canceled_at",
}


def _create(client: TestClient, text: str = "Draw the hero") -> dict:
    response = client.post(BASE, json={"instruction_text": text})
    assert response.status_code == 200, response.text
    return response.json()


def _events(client: TestClient, instruction_id: str) -> list[dict]:
    body = client.get(f"{BASE}/{instruction_id}/events").json()
    assert body["instruction_id"] == instruction_id and body["count"] == len(body["events"])
    return body["events"]


def test_create_gives_pending_and_one_created_event(client: TestClient, project: dict) -> None:
    body = _create(client, "  Draw the hero  ")
    instruction = body["instruction"]
    assert set(instruction) == FIELDS
    assert instruction["instruction_text"] == "Draw the hero" and instruction["status"] == "pending"
    assert instruction["confirmed_at"] == "" and instruction["canceled_at"] == ""
    assert instruction["project_id"] == project["id"]
    event = event_of(client, body["audit_id"])
    assert event.type == "agent_instruction.created" and event.stream_id == f"instruction:{instruction['id']}"
    assert event.data["instruction_id"] == instruction["id"] and event.data["status"] == "pending"
    [created] = _events(client, instruction["id"])
    assert created["event_type"] == "created" and created["message"] == "Instruction created"
    assert set(created) == {"id", "project_id", "instruction_id", "event_type", "message", "created_at"}
    assert client.get(f"{BASE}/{instruction['id']}").json() == {"ok": True, "instruction": instruction}
    assert client.get(BASE).json() == {"ok": True, "count": 1, "instructions": [instruction]}


def test_confirm_with_message_adds_a_confirmed_event(client: TestClient, project: dict) -> None:
    instruction = _create(client)["instruction"]
    body = client.post(f"{BASE}/{instruction['id']}/confirm", json={"message": "  go ahead "}).json()
    assert body["instruction"]["status"] == "confirmed" and body["instruction"]["confirmed_at"] != ""
    assert body["instruction"]["canceled_at"] == ""
    assert event_of(client, body["audit_id"]).type == "agent_instruction.confirmed"
    events = _events(client, instruction["id"])
    assert [(e["event_type"], e["message"]) for e in events] == [
        ("created", "Instruction created"),
        ("confirmed", "go ahead"),
    ]


def test_default_messages_for_confirm_and_cancel(client: TestClient, project: dict) -> None:
    a, b = _create(client)["instruction"], _create(client)["instruction"]
    client.post(f"{BASE}/{a['id']}/confirm", json={"message": "   "})
    client.post(f"{BASE}/{b['id']}/cancel", json={})
    assert _events(client, a["id"])[-1]["message"] == "Instruction confirmed"
    cancel = _events(client, b["id"])[-1]
    assert cancel["event_type"] == "canceled" and cancel["message"] == "Instruction canceled"
    assert client.get(f"{BASE}/{b['id']}").json()["instruction"]["canceled_at"] != ""


def test_repeated_confirm_is_unchanged_without_event_but_audited(client: TestClient, project: dict) -> None:
    instruction = _create(client)["instruction"]
    first = client.post(f"{BASE}/{instruction['id']}/confirm", json={}).json()
    again = client.post(f"{BASE}/{instruction['id']}/confirm", json={"message": "again"}).json()
    assert again["instruction"] == first["instruction"]
    assert again["audit_id"] != first["audit_id"]
    repeated = event_of(client, again["audit_id"])
    assert repeated.type == "agent_instruction.confirm_repeated"
    assert repeated.data == {
        "project_id": project["id"],
        "instruction_id": instruction["id"],
        "status": "confirmed",
    }
    assert len(_events(client, instruction["id"])) == 2


def test_repeated_cancel_is_unchanged_without_event_but_audited(client: TestClient, project: dict) -> None:
    instruction = _create(client)["instruction"]
    first = client.post(f"{BASE}/{instruction['id']}/cancel", json={}).json()
    again = client.post(f"{BASE}/{instruction['id']}/cancel", json={}).json()
    assert again["instruction"] == first["instruction"] and again["instruction"]["status"] == "canceled"
    assert event_of(client, again["audit_id"]).type == "agent_instruction.cancel_repeated"
    assert len(_events(client, instruction["id"])) == 2


def test_opposite_terminal_states_are_400(client: TestClient, project: dict) -> None:
    canceled = _create(client)["instruction"]
    client.post(f"{BASE}/{canceled['id']}/cancel", json={})
    assert_error(
        client.post(f"{BASE}/{canceled['id']}/confirm", json={}), 400, "Instruction is already canceled"
    )
    confirmed = _create(client)["instruction"]
    client.post(f"{BASE}/{confirmed['id']}/confirm", json={})
    assert_error(
        client.post(f"{BASE}/{confirmed['id']}/cancel", json={}), 400, "Instruction is already confirmed"
    )
    assert len(_events(client, canceled["id"])) == 2 and len(_events(client, confirmed["id"])) == 2


def test_create_validation_precedes_the_project_lookup(client: TestClient) -> None:
    missing = "/api/projects/nope/agent/instructions"
    assert_error(client.post(missing, json={}), 400, "Field 'instruction_text' is required")
    assert_error(
        client.post(missing, json={"instruction_text": "  "}), 400, "Field 'instruction_text' is required"
    )
    assert_error(client.post(missing, json={"instruction_text": "x"}), 404, "Project not found")
    assert_error(client.get(missing), 404, "Project not found")


def test_openapi_draft_payload_text_is_accepted_but_objective_is_not(
    client: TestClient, project: dict
) -> None:
    draft = {"instruction_type": "generate", "payload_json": {"instruction_text": " from payload "}}
    assert client.post(BASE, json=draft).json()["instruction"]["instruction_text"] == "from payload"
    both = {"instruction_text": "top", "payload_json": {"instruction_text": "nested"}}
    assert client.post(BASE, json=both).json()["instruction"]["instruction_text"] == "top"
    assert_error(
        client.post(BASE, json={"instruction_text": " ", "payload_json": {"instruction_text": "nested"}}),
        400,
        "Field 'instruction_text' is required",
    )
    for body in ({"objective": "x"}, {"payload_json": {"instruction_text": 5}}, {"payload_json": "text"}):
        assert_error(client.post(BASE, json=body), 400, "Field 'instruction_text' is required")


def test_missing_instruction_or_project_is_404_with_the_handler_message(
    client: TestClient, project: dict
) -> None:
    for response in (
        client.get(f"{BASE}/missing"),
        client.get(f"{BASE}/missing/events"),
        client.post(f"{BASE}/missing/confirm", json={}),
        client.post(f"{BASE}/missing/cancel", json={}),
        client.get("/api/projects/nope/agent/instructions/x"),
        client.post("/api/projects/nope/agent/instructions/x/confirm", json={}),
        client.post("/api/projects/nope/agent/instructions/x/cancel", json={}),
    ):
        assert_error(response, 404, "Agent instruction not found")


def test_instruction_of_another_project_is_not_found(client: TestClient, project: dict) -> None:
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    other = client.post("/api/projects/other/agent/instructions", json={"instruction_text": "x"}).json()
    other_id = other["instruction"]["id"]
    assert_error(client.get(f"{BASE}/{other_id}"), 404, "Agent instruction not found")
    assert_error(client.post(f"{BASE}/{other_id}/confirm", json={}), 404, "Agent instruction not found")


def test_confirm_and_cancel_require_a_json_body(client: TestClient, project: dict) -> None:
    instruction = _create(client)["instruction"]
    for action in ("confirm", "cancel"):
        response = client.post(f"{BASE}/{instruction['id']}/{action}", content=b"")
        assert response.status_code == 400 and response.json()["ok"] is False
    assert client.get(f"{BASE}/{instruction['id']}").json()["instruction"]["status"] == "pending"


def test_a_confirm_or_cancel_body_that_is_not_a_json_object_is_a_400_envelope_before_any_lookup(
    client: TestClient, project: dict
) -> None:
    """The body is read before the handler (the reference's framework 400/422), so also on a missing
    project or instruction; never a 500, and nothing is appended."""
    instruction = _create(client)["instruction"]
    store = services_of(client).store
    before = client.blocking_portal.call(store.head)
    bodies = {
        b"": "Request body must be a JSON object",
        b"null": "Request body must be a JSON object",
        b"[]": "Request body must be a JSON object",
        b'"x"': "Request body must be a JSON object",
        b"{": "Request body is not valid JSON",
        b'{"message": 1}': "Field 'message' must be str | null, not int",
    }
    for action in ("confirm", "cancel"):
        for url in (
            f"{BASE}/{instruction['id']}/{action}",
            f"{BASE}/missing/{action}",
            f"/api/projects/nope/agent/instructions/x/{action}",
        ):
            for body, message in bodies.items():
                headers = {"content-type": "application/json"}
                assert_error(client.post(url, content=body, headers=headers), 400, message)
    assert client.blocking_portal.call(store.head) == before
    assert client.get(f"{BASE}/{instruction['id']}").json()["instruction"]["status"] == "pending"


def test_list_is_updated_at_desc_with_log_order_breaking_ties(client: TestClient, project: dict) -> None:
    a, b = _create(client, "a")["instruction"], _create(client, "b")["instruction"]
    assert [i["id"] for i in client.get(BASE).json()["instructions"]] == [b["id"], a["id"]]
    client.post(f"{BASE}/{a['id']}/confirm", json={})
    assert [i["id"] for i in client.get(BASE).json()["instructions"]] == [a["id"], b["id"]]


def test_transition_timestamps_come_from_the_event(tmp_path: Path) -> None:
    clock = ManualClock()
    with clocked_client(tmp_path, clock) as client:
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        instruction = _create(client)["instruction"]
        clock.advance(30)
        confirmed = client.post(f"{BASE}/{instruction['id']}/confirm", json={}).json()["instruction"]
        assert confirmed["created_at"] == "2026-03-01T12:00:00Z"
        assert confirmed["confirmed_at"] == confirmed["updated_at"] == "2026-03-01T12:00:30Z"
        clock.advance(30)
        again = client.post(f"{BASE}/{instruction['id']}/confirm", json={}).json()["instruction"]
        assert again["updated_at"] == "2026-03-01T12:00:30Z"


@pytest.mark.parametrize("rounds", [6])
def test_racing_confirm_and_cancel_exactly_one_wins(client: TestClient, project: dict, rounds: int) -> None:
    """Both requests read the instruction at the same version before either appends (the store read
    is slowed down), so one append loses the expected-version check and is decided again."""
    store = services_of(client).store
    original, original_append = store.read_stream, store.append
    conflicts = []

    async def counting_append(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await original_append(*args, **kwargs)
        except ConcurrencyConflict as exc:
            conflicts.append(exc)
            raise

    async def slow_read(stream_id: str, after_version: int = 0):  # type: ignore[no-untyped-def]
        events = await original(stream_id, after_version)
        if stream_id.startswith("instruction:"):
            await asyncio.sleep(0.05)
        return events

    store.read_stream = slow_read  # type: ignore[method-assign]
    store.append = counting_append  # type: ignore[method-assign]
    try:
        for _ in range(rounds):
            instruction_id = _create(client)["instruction"]["id"]
            with ThreadPoolExecutor(max_workers=2) as pool:
                confirm = pool.submit(client.post, f"{BASE}/{instruction_id}/confirm", json={})
                cancel = pool.submit(client.post, f"{BASE}/{instruction_id}/cancel", json={})
                results = {"confirm": confirm.result(), "cancel": cancel.result()}
            statuses = sorted(r.status_code for r in results.values())
            assert statuses == [200, 400], {k: v.text for k, v in results.items()}
            winner = "confirm" if results["confirm"].status_code == 200 else "cancel"
            loser = results["cancel" if winner == "confirm" else "confirm"].json()
            final = {"confirm": "confirmed", "cancel": "canceled"}[winner]
            assert loser["error"] == f"Instruction is already {final}"
            assert client.get(f"{BASE}/{instruction_id}").json()["instruction"]["status"] == final
            assert [e["event_type"] for e in _events(client, instruction_id)] == ["created", final]
        assert len(conflicts) >= rounds  # every round really raced on the stream version
    finally:
        store.read_stream, store.append = original, original_append  # type: ignore[method-assign]
