"""Dispatching one instruction (pipeline spec §7.2): the request, the result mapping, tries, backoff,
retries, timeouts, the target URL/token, and the events every step leaves on the stream."""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from kroma.agents.client import Tries
from kroma.domain.errors import Internal
from tests.agents.conftest import TOKEN, World

START = "2026-03-01T12:00:00Z"
BODY_503 = 'http_503:{"error": "fake 503"}'


def test_a_confirmed_instruction_is_posted_with_the_spec_body_and_headers_and_ends_done(world: World) -> None:
    instruction_id = world.confirmed("  Draw the hero  ")
    dispatcher = world.dispatcher("w1")
    assert world.step(dispatcher) is True

    [request] = world.agent.requests
    assert request.method == "POST" and request.path == "/agent/instructions"
    assert list(request.json.items()) == [
        ("instruction_id", instruction_id),
        ("project_slug", "demo"),
        ("instruction_type", "agent_instruction"),
        ("objective", "Draw the hero"),
        ("payload", {"instruction_text": "Draw the hero"}),
    ]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"

    assert world.instruction(instruction_id)["status"] == "done"
    assert world.events(instruction_id) == [
        ("created", "Instruction created"),
        ("confirmed", "Instruction confirmed"),
        ("result", "remote_status=done, attempts=1, http_status=200"),
    ]
    row = world.row(instruction_id)
    assert (row["attempts"], row["max_attempts"], row["next_attempt_at"], row["last_error"]) == (
        1,
        3,
        None,
        None,
    )
    assert (row["locked_by"], row["locked_at"], row["lease_id"]) == (None, None, None)
    assert json.loads(row["agent_response_json"]) == {"status": "done"}
    assert world.types(instruction_id) == ["created", "confirmed", "reserved", "dispatched"]
    reserved = world.stream(instruction_id)[2].data
    assert reserved["worker_id"] == "w1" and reserved["attempt"] == 1 and reserved["max_attempts"] == 3
    assert reserved["lease_expires_at"] == "2026-03-01T12:02:00.000000Z"  # now + 120 s
    assert world.step(dispatcher) is False and len(world.agent.requests) == 1


def test_a_reserved_instruction_is_running_and_locked_by_its_worker(world: World) -> None:
    instruction_id = world.confirmed()
    dispatcher = world.dispatcher("w-lock")
    assert world.client.blocking_portal.call(dispatcher.reserve_next) is not None
    row = world.row(instruction_id)
    assert (row["status"], row["locked_by"], row["locked_at"]) == ("running", "w-lock", START)
    assert world.instruction(instruction_id)["status"] == "running"
    assert world.events(instruction_id)[-1][0] == "confirmed"  # a reservation is not listed


@pytest.mark.parametrize(
    ("behaviour", "status", "remote", "response"),
    [
        (("ok", {"status": "done"}), "done", "done", {"status": "done"}),
        (("ok", {"status": "failed", "why": "no"}), "failed", "failed", {"status": "failed", "why": "no"}),
        (("ok", {"status": "  Accepted "}), "done", "done", {"status": "  Accepted "}),
        (("ok", {"status": "QUEUED"}), "done", "done", {"status": "QUEUED"}),
        (("ok", {"status": "running", "job": 7}), "done", "running", {"status": "running", "job": 7}),
        (("ok", {"status": "exploded"}), "failed", "failed", {"status": "exploded"}),
        (("ok", {"status": ""}), "failed", "failed", {"status": ""}),
        (("ok", {"job": 1}), "done", "done", {"job": 1}),
        (("ok", {"status": 5}), "done", "done", {"status": 5}),
        (("ok", [1, 2]), "done", "done", [1, 2]),
        (("raw", 200, b""), "done", "done", {}),
        (("raw", 202, b"{not json"), "done", "done", {}),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_remote_status_maps_to_the_instruction_status_and_the_response_is_kept(
    shared_world: World, behaviour: tuple, status: str, remote: str, response: object
) -> None:
    """done/failed; accepted/queued -> done; anything else -> failed; no status -> done; `running`
    ends `done` too (never parked in running), the message keeps the spec's mapped value."""
    shared_world.agent.enqueue(behaviour)
    instruction_id = shared_world.confirmed()
    assert shared_world.step(shared_world.dispatcher())
    http_status = behaviour[1] if behaviour[0] == "raw" else 200
    assert shared_world.instruction(instruction_id)["status"] == status
    assert shared_world.events(instruction_id)[-1] == (
        "result",
        f"remote_status={remote}, attempts=1, http_status={http_status}",
    )
    assert json.loads(shared_world.row(instruction_id)["agent_response_json"]) == response


def test_http_errors_are_tried_with_backoff_then_retried_later_then_failed(world: World) -> None:
    world.agent.enqueue(*[("status", 503)] * 9)
    instruction_id = world.confirmed()
    dispatcher = world.dispatcher(retry_backoff_seconds=10.0)

    assert world.step(dispatcher)
    assert len(world.agent.requests) == 3 and world.sleeps == [1.5, 3.0]  # backoff x try number
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        f"error={BODY_503}, attempts=1, max_attempts=3, next_attempt_at=2026-03-01T12:00:10Z",
    )
    row = world.row(instruction_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("confirmed", 1, BODY_503)
    assert (row["next_attempt_at"], row["locked_by"]) == ("2026-03-01T12:00:10Z", None)

    world.clock.advance(9)
    assert not world.step(dispatcher) and len(world.agent.requests) == 3  # not due yet
    world.clock.advance(1)
    assert world.step(dispatcher) and len(world.agent.requests) == 6
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        f"error={BODY_503}, attempts=2, max_attempts=3, next_attempt_at=2026-03-01T12:00:30Z",  # 10 x 2
    )
    world.clock.advance(20)
    assert world.step(dispatcher)
    assert world.events(instruction_id)[-1] == (
        "error",
        f"error={BODY_503}, attempts=3, max_attempts=3, next_attempt_at=none",
    )
    row = world.row(instruction_id)
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("failed", 3, None)
    world.clock.advance(3600)
    assert not world.step(dispatcher) and len(world.agent.requests) == 9


def test_a_failed_try_followed_by_a_2xx_is_one_successful_attempt(world: World) -> None:
    world.agent.enqueue(("status", 500, "boom"), ("ok", {"status": "done"}))
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher())
    assert [r.status for r in world.agent.requests] == [500, 200] and world.sleeps == [1.5]
    assert world.events(instruction_id)[-1] == ("result", "remote_status=done, attempts=1, http_status=200")
    assert world.row(instruction_id)["last_error"] is None


def test_retries_and_backoff_follow_the_options_with_their_floors(world: World) -> None:
    world.agent.enqueue(*[("status", 502, "bad gateway")] * 4)
    instruction_id = world.confirmed()
    dispatcher = world.dispatcher(tries=Tries(timeout=5, retries=3, backoff=0.0), retry_backoff_seconds=0.0)
    assert world.step(dispatcher)
    assert len(world.agent.requests) == 4 and world.sleeps == pytest.approx([0.1, 0.2, 0.3])
    # retry backoff below 1 s counts as 1 s
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        "error=http_502:bad gateway, attempts=1, max_attempts=3, next_attempt_at=2026-03-01T12:00:01Z",
    )


def test_a_timeout_is_a_failed_try(world: World) -> None:
    world.agent.enqueue(("slow", 5.0))
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(tries=Tries(timeout=0.2, retries=0)))
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        "error=timeout: no response within 0.2s, attempts=1, max_attempts=3, next_attempt_at=2026-03-01T12:00:10Z",
    )


def test_a_dropped_connection_is_a_failed_try_with_the_transport_error(world: World) -> None:
    world.agent.enqueue(("drop",), ("drop",))
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(tries=Tries(timeout=5, retries=1, backoff=1)))
    assert len(world.agent.requests) == 2
    row = world.row(instruction_id)
    assert row["status"] == "confirmed" and row["last_error"] not in (None, "", "dispatch_failed")
    assert world.events(instruction_id)[-1][1].startswith(f"error={row['last_error']}, attempts=1")


def test_without_a_url_the_attempt_fails_with_missing_agent_api_url(world: World) -> None:
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(api_url="", api_token=""))
    assert world.agent.requests == []
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        "error=missing_agent_api_url, attempts=1, max_attempts=3, next_attempt_at=2026-03-01T12:00:10Z",
    )
    assert world.row(instruction_id)["last_error"] == "missing_agent_api_url"


def _set_secret(world: World, name: str, value: str) -> None:
    body = {"provider_code": "agent_api", "secret_name": name, "secret_value": value}
    response = world.client.post("/api/projects/demo/secrets", json=body)
    assert response.status_code == 200, response.text


def test_url_and_token_come_from_the_project_secrets_and_are_never_logged_or_recorded(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _set_secret(world, "url", world.agent.url)
    _set_secret(world, "token", TOKEN)
    instruction_id = world.confirmed()
    with caplog.at_level(logging.DEBUG):
        assert world.step(world.dispatcher(api_url="", api_token=""))
    [request] = world.agent.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert world.instruction(instruction_id)["status"] == "done"
    log = world.client.blocking_portal.call(world.services.store.read_all, 0, 10_000)
    assert any(e.type == "agent_instruction.dispatched" for e in log) and caplog.text
    text = caplog.text + msgspec.json.encode(log).decode()
    assert TOKEN not in text and world.agent.url not in text


def test_settings_win_over_secrets_field_by_field(world: World) -> None:
    _set_secret(world, "url", "http://127.0.0.1:9/nowhere")
    _set_secret(world, "token", "secret-token-abcdef")
    world.confirmed()
    assert world.step(world.dispatcher(api_url=world.agent.url, api_token="", tries=Tries(retries=0)))
    [request] = world.agent.requests  # the settings' URL, the secret's token (the fake says 401)
    assert request.headers["authorization"] == "Bearer secret-token-abcdef"


def test_a_secret_that_cannot_be_decrypted_fails_the_attempt_without_detail(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_secret(world, "url", world.agent.url)

    async def broken(**_: object) -> object:
        raise Internal()

    monkeypatch.setattr(world.services.vault, "keys", broken)
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(api_url="", api_token=""))
    assert world.agent.requests == []
    assert world.row(instruction_id)["last_error"] == "agent_api_secret_unavailable"


def test_an_error_text_never_carries_the_token_or_url(world: World) -> None:
    world.agent.enqueue(("status", 400, f"bad token {TOKEN} for {world.agent.url}"))
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(tries=Tries(timeout=5, retries=0)))
    assert (
        world.row(instruction_id)["last_error"] == "http_400:bad token <agent_api_token> for <agent_api_url>"
    )


def test_an_instruction_that_is_not_confirmed_is_never_dispatched(world: World) -> None:
    pending = world.create("pending")
    canceled = world.create("canceled")
    assert world.cancel(canceled).status_code == 200
    dispatcher = world.dispatcher()
    world.clock.advance(3600)
    assert not world.step(dispatcher)
    assert world.agent.requests == []
    assert world.types(pending) == ["created"] and world.types(canceled) == ["created", "canceled"]


def test_max_attempts_is_at_least_the_default_and_the_option_can_raise_it(world: World) -> None:
    world.agent.enqueue(("status", 500))
    instruction_id = world.confirmed()
    assert world.step(world.dispatcher(default_max_attempts=5, tries=Tries(timeout=5, retries=0)))
    assert world.events(instruction_id)[-1][1].endswith(
        "attempts=1, max_attempts=5, next_attempt_at=2026-03-01T12:00:10Z"
    )
    assert world.row(instruction_id)["max_attempts"] == 5


def test_confirming_a_failed_instruction_again_gives_it_one_more_attempt(world: World) -> None:
    """The reference never resets attempts: after a re-confirm of a failed instruction the next
    failure is final at once."""
    world.agent.enqueue(*[("status", 500)] * 4, ("ok", {"status": "done"}))
    instruction_id = world.confirmed()
    dispatcher = world.dispatcher(tries=Tries(timeout=5, retries=0), retry_backoff_seconds=1)
    for _ in range(3):
        assert world.step(dispatcher)
        world.clock.advance(10)
    assert world.instruction(instruction_id)["status"] == "failed"
    world.confirm(instruction_id)
    assert world.row(instruction_id)["last_error"] is None
    assert world.step(dispatcher)
    assert world.events(instruction_id)[-1] == (
        "error",
        'error=http_500:{"error": "fake 500"}, attempts=4, max_attempts=3, next_attempt_at=none',
    )
    world.confirm(instruction_id)
    assert world.step(dispatcher)
    assert world.events(instruction_id)[-1] == ("result", "remote_status=done, attempts=5, http_status=200")
