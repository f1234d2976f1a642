"""A command that loses every race against writers outside its lane answers 409 in the contract's
flat error shape (never a 500), and nothing of it is written."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import TestClient

from kroma.domain.handling import MAX_ATTEMPTS
from kroma.events.envelope import NewEvent
from tests.http.records_support import assert_error, ok

CONFLICT = "Concurrent changes conflicted with this request; retry it"


def _interloper_before_every_append(client: TestClient, project_id: str) -> list[int]:
    """Another writer (another process, say) appends to the project's stream just before each of
    this process's appends, so every expected version is stale by the time it is checked."""
    store = client.app.state.services.store
    real_submit = store.submit
    calls: list[int] = []

    def submit(events: list[NewEvent], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        if any(e.stream_id == f"project:{project_id}" for e in events):
            calls.append(1)
            real_submit([NewEvent(f"project:{project_id}", "test.interloper", {"project_id": project_id})])
        return real_submit(events, *args, **kwargs)

    store.submit = submit
    return calls


def test_a_project_command_that_keeps_losing_answers_409_in_the_contract_shape(
    client: TestClient, project: dict
) -> None:
    calls = _interloper_before_every_append(client, project["id"])
    response = client.post("/api/projects/demo/style-guides", json={"name": "Noir", "instructions": "ink"})
    assert_error(response, 409, CONFLICT, "concurrency_conflict", kind="infra")
    assert len(calls) == MAX_ATTEMPTS
    del client.app.state.services.store.submit
    assert ok(client.get("/api/projects/demo/style-guides"))["count"] == 0


def test_an_execute_command_that_keeps_losing_answers_409_too(client: TestClient, project: dict) -> None:
    """A project update is decided by `execute` (it may create the project instead): its retries
    run in the project's lane, and the last lost race is a 409 as well."""
    calls = _interloper_before_every_append(client, project["id"])
    response = client.post("/api/projects", json={"name": "Renamed", "slug": "demo"})
    assert_error(response, 409, CONFLICT, "concurrency_conflict", kind="infra")
    assert len(calls) == MAX_ATTEMPTS
    del client.app.state.services.store.submit
    assert ok(client.get("/api/projects/demo"))["project"]["name"] == "Demo Project"
