"""Reservation, leases and cancel: two workers never hold one instruction at once, a dead worker's
lease expires into a recorded lost attempt, a cancel during a dispatch wins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from kroma.agents.client import Tries
from kroma.domain import agent_instructions as domain
from kroma.domain.agent_instructions import DispatchOutcome
from kroma.events.envelope import Metadata
from kroma.events.store import ConcurrencyConflict
from tests.agents.conftest import TOKEN, World, open_world
from tests.fakes.agent_server import FakeAgent
from tests.http.log_seed import ManualClock


def test_two_workers_racing_for_one_instruction_one_reserves_and_the_other_loses(world: World) -> None:
    """Both read the stream at the same version before either appends (reads are slowed down):
    the store's expected-version check lets exactly one reservation in."""
    instruction_id = world.confirmed()
    store = world.services.store
    original_read, original_append = store.read_stream, store.append
    conflicts: list[ConcurrencyConflict] = []

    async def slow_read(stream_id: str, after_version: int = 0) -> Any:
        events = await original_read(stream_id, after_version)
        if stream_id.startswith("instruction:"):
            await asyncio.sleep(0.05)
        return events

    async def counting_append(*args: Any, **kwargs: Any) -> Any:
        try:
            return await original_append(*args, **kwargs)
        except ConcurrencyConflict as exc:
            conflicts.append(exc)
            raise

    a, b = world.dispatcher("a"), world.dispatcher("b")

    async def race() -> list[Any]:
        return list(await asyncio.gather(a.reserve_next(), b.reserve_next()))

    store.read_stream, store.append = slow_read, counting_append  # type: ignore[method-assign]
    try:
        results = world.client.blocking_portal.call(race)
    finally:
        store.read_stream, store.append = original_read, original_append  # type: ignore[method-assign]
    held = [r for r in results if r is not None]
    assert len(held) == 1 and len(conflicts) == 1
    assert world.types(instruction_id) == ["created", "confirmed", "reserved"]
    winner = a if results[0] is not None else b
    world.client.blocking_portal.call(winner.process, held[0])
    assert len(world.agent.requests) == 1 and world.instruction(instruction_id)["status"] == "done"


def test_two_workers_draining_together_dispatch_every_instruction_exactly_once(world: World) -> None:
    world.agent.default = ("slow", 0.05)
    ids = [world.confirmed(f"task {i}") for i in range(8)]
    a, b = world.dispatcher("a"), world.dispatcher("b")

    async def drain(dispatcher: Any) -> None:
        while await dispatcher.run_once():
            pass

    async def both() -> None:
        await asyncio.gather(drain(a), drain(b))

    world.client.blocking_portal.call(both)
    assert sorted(r.instruction_id for r in world.agent.requests) == sorted(ids)
    assert a.processed + b.processed == 8
    for instruction_id in ids:
        assert world.types(instruction_id).count("reserved") == 1
        assert world.instruction(instruction_id)["status"] == "done"


def test_a_dead_workers_lease_expires_into_a_lost_attempt_and_another_worker_takes_over(world: World) -> None:
    instruction_id = world.confirmed()
    dead = world.dispatcher("dead", max_locked_seconds=60)
    reservation = world.client.blocking_portal.call(dead.reserve_next)
    assert reservation is not None  # ... and the worker dies before dispatching
    other = world.dispatcher("other", retry_backoff_seconds=10)

    world.clock.advance(59)
    assert not world.step(other) and world.row(instruction_id)["status"] == "running"
    world.clock.advance(1)
    assert not world.step(other)  # records the lost attempt; it is due after the backoff
    assert world.events(instruction_id)[-1] == (
        "retry_scheduled",
        "error=lease_expired, attempts=1, max_attempts=3, next_attempt_at=2026-03-01T12:01:10Z",
    )
    row = world.row(instruction_id)
    assert (row["status"], row["locked_by"], row["lease_id"]) == ("confirmed", None, None)
    assert world.stream(instruction_id)[-1].data["worker_id"] == "other"
    assert world.agent.requests == []

    world.clock.advance(10)
    assert world.step(other)
    assert world.events(instruction_id)[-1] == ("result", "remote_status=done, attempts=2, http_status=200")
    assert world.instruction(instruction_id)["status"] == "done"

    # Had the "dead" worker only been slow, its outcome is recorded but changes nothing.
    late = DispatchOutcome(ok=True, http_status=200, response={"status": "failed"})
    world.client.blocking_portal.call(dead._record, reservation, late)
    assert world.events(instruction_id)[-1] == ("result", "remote_status=failed, attempts=2, http_status=200")
    assert world.instruction(instruction_id)["status"] == "done"


def test_an_expired_lease_on_the_last_attempt_fails_the_instruction(world: World) -> None:
    world.agent.enqueue(("status", 500), ("status", 500))
    instruction_id = world.confirmed()
    worker = world.dispatcher("w", tries=Tries(timeout=5, retries=0), retry_backoff_seconds=1)
    for _ in range(2):
        assert world.step(worker)
        world.clock.advance(5)
    assert world.client.blocking_portal.call(worker.reserve_next) is not None  # attempt 3, then dies
    world.clock.advance(121)
    assert not world.step(world.dispatcher("other"))
    assert world.events(instruction_id)[-1] == (
        "error",
        "error=lease_expired, attempts=3, max_attempts=3, next_attempt_at=none",
    )
    assert world.instruction(instruction_id)["status"] == "failed"


def test_a_lease_is_never_shorter_than_the_longest_dispatch(world: World) -> None:
    instruction_id = world.confirmed()
    worker = world.dispatcher(max_locked_seconds=1, tries=Tries(timeout=30, retries=1, backoff=2))
    assert worker.options.lease_seconds == 30 * 2 + 2 + 5
    world.client.blocking_portal.call(worker.reserve_next)
    expiry = world.stream(instruction_id)[-1].data["lease_expires_at"]
    assert expiry == "2026-03-01T12:01:07.000000Z"


def test_confirm_during_a_dispatch_waits_for_its_outcome_before_dispatching_again(world: World) -> None:
    instruction_id = world.confirmed()
    first, second = world.dispatcher("first"), world.dispatcher("second")
    reservation = world.client.blocking_portal.call(first.reserve_next)
    assert world.confirm(instruction_id)["status"] == "confirmed"  # allowed from running (contract)

    assert not world.step(second) and world.agent.requests == []  # the first lease is live
    world.client.blocking_portal.call(first.process, reservation)
    assert world.events(instruction_id)[-2:] == [
        ("confirmed", "Instruction confirmed"),
        ("result", "remote_status=done, attempts=1, http_status=200"),
    ]
    assert world.instruction(instruction_id)["status"] == "confirmed"  # the confirm is kept
    assert world.step(second) and len(world.agent.requests) == 2
    assert world.events(instruction_id)[-1] == ("result", "remote_status=done, attempts=2, http_status=200")


def test_a_cancel_during_a_dispatch_is_recorded_and_wins(world: World) -> None:
    world.agent.enqueue(("slow", 1.0, ("ok", {"status": "done", "note": "did it"})))
    instruction_id = world.confirmed()
    worker = world.dispatcher()
    future = world.client.blocking_portal.start_task_soon(worker.run_once)
    world.agent.wait_for_requests(1)
    response = world.cancel(instruction_id)
    assert response.status_code == 200 and response.json()["instruction"]["status"] == "canceled"
    assert future.result(timeout=10) is True

    assert world.instruction(instruction_id)["status"] == "canceled"
    assert world.events(instruction_id) == [
        ("created", "Instruction created"),
        ("confirmed", "Instruction confirmed"),
        ("canceled", "Instruction canceled"),
        ("result", "remote_status=done, attempts=1, http_status=200"),
    ]
    row = world.row(instruction_id)
    assert row["attempts"] == 1 and row["lease_id"] is None and "did it" in row["agent_response_json"]
    world.clock.advance(3600)
    assert not world.step(worker) and len(world.agent.requests) == 1


def test_a_cancel_between_tries_stops_the_dispatch(world: World) -> None:
    world.agent.enqueue(*[("status", 503)] * 3)
    instruction_id = world.confirmed()
    worker = world.dispatcher()
    store, stream = world.services.store, f"instruction:{instruction_id}"
    project_id = world.row(instruction_id)["project_id"]

    async def cancel_in_the_pause(seconds: float) -> None:
        events = await store.read_stream(stream)
        cancel = domain.decide_cancel(
            domain.fold(events), project_id, domain.InstructionAction(), "entry-cancel", Metadata()
        )
        await store.append([cancel], {stream: events[-1].stream_version})

    worker.sleep = cancel_in_the_pause
    assert world.step(worker)
    assert len(world.agent.requests) == 1
    assert world.events(instruction_id)[-2:] == [
        ("canceled", "Instruction canceled"),
        ("error", 'error=http_503:{"error": "fake 503"}, attempts=1, max_attempts=3, next_attempt_at=none'),
    ]
    assert world.instruction(instruction_id)["status"] == "canceled"


def test_the_dispatcher_in_the_services_wakes_on_an_append_not_the_poll(
    tmp_path: Path, clock: ManualClock, agent: FakeAgent
) -> None:
    settings = {
        "agent_dispatch": True,
        "agent_api_url": agent.url,
        "agent_api_token": TOKEN,
        "agent_poll_interval_seconds": 60.0,
        "agent_worker_id": "in-serve",
    }
    with open_world(tmp_path, clock, agent, **settings) as client:
        world = World(client, clock, agent)
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        instruction_id = world.confirmed()
        agent.wait_for_requests(1, timeout=5)
        deadline = time.monotonic() + 5
        while world.instruction(instruction_id)["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert world.row(instruction_id)["locked_by"] is None
        assert world.stream(instruction_id)[2].data["worker_id"] == "in-serve"


def test_a_server_stopped_mid_dispatch_leaves_a_lease_the_next_start_recovers(
    tmp_path: Path, clock: ManualClock, agent: FakeAgent
) -> None:
    settings = {"agent_dispatch": True, "agent_api_url": agent.url, "agent_api_token": TOKEN}
    agent.enqueue(("hang",))
    with open_world(tmp_path, clock, agent, **settings) as client:
        world = World(client, clock, agent)
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        instruction_id = world.confirmed()
        agent.wait_for_requests(1, timeout=5)
        started = time.monotonic()
    assert time.monotonic() - started < 3  # closing does not wait for the hung call

    clock.advance(121)
    with open_world(tmp_path, clock, agent, **settings, agent_retry_backoff_seconds=1) as client:
        world = World(client, clock, agent)
        deadline = time.monotonic() + 5
        while world.instruction(instruction_id)["status"] != "confirmed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert world.events(instruction_id)[-1][1].startswith("error=lease_expired, attempts=1")
        clock.advance(2)
        agent.wait_for_requests(2, timeout=5)  # next poll is 2 s away at most
        while world.instruction(instruction_id)["status"] != "done":
            assert time.monotonic() < deadline + 5
            time.sleep(0.02)


def test_with_dispatch_off_in_the_settings_the_services_dispatch_nothing(
    tmp_path: Path, clock: ManualClock, agent: FakeAgent
) -> None:
    settings = {"agent_dispatch": False, "agent_api_url": agent.url, "agent_poll_interval_seconds": 0.05}
    with open_world(tmp_path, clock, agent, **settings) as client:
        world = World(client, clock, agent)
        client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        instruction_id = world.confirmed()
        time.sleep(0.5)
        assert agent.requests == [] and world.instruction(instruction_id)["status"] == "confirmed"
