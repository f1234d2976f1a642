"""Agent dispatch in process: the real store and read models on a manual clock, a fake agent API
on 127.0.0.1, and dispatchers the test drives step by step (`World.step`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.agents import Dispatcher, DispatchOptions
from kroma.agents.client import Tries
from kroma.config import Settings
from kroma.events.envelope import Event
from kroma.http.app import create_app
from kroma.projections import agent_instructions as read
from kroma.services import Services
from tests.fakes.agent_server import FakeAgent
from tests.http.log_seed import ManualClock

BASE = "/api/projects/demo/agent/instructions"
TOKEN = "agent-token-0123456789"


class World:
    """One data folder with project `demo`, its HTTP client and helpers over instructions."""

    def __init__(self, client: TestClient, clock: ManualClock, agent: FakeAgent) -> None:
        self.client = client
        self.clock = clock
        self.agent = agent
        self.services: Services = client.app.state.services
        self.sleeps: list[float] = []

    # -- instructions through the API ---------------------------------------------------------

    def create(self, text: str = "Draw the hero") -> str:
        response = self.client.post(BASE, json={"instruction_text": text})
        assert response.status_code == 200, response.text
        return str(response.json()["instruction"]["id"])

    def confirm(self, instruction_id: str) -> dict[str, Any]:
        response = self.client.post(f"{BASE}/{instruction_id}/confirm", json={})
        assert response.status_code == 200, response.text
        return dict(response.json()["instruction"])

    def cancel(self, instruction_id: str) -> Any:
        return self.client.post(f"{BASE}/{instruction_id}/cancel", json={})

    def confirmed(self, text: str = "Draw the hero") -> str:
        instruction_id = self.create(text)
        self.confirm(instruction_id)
        return instruction_id

    def settle(self) -> None:
        head = self.client.blocking_portal.call(self.services.store.head)
        self.client.blocking_portal.call(self.services.settle, head)

    def instruction(self, instruction_id: str) -> dict[str, Any]:
        self.settle()
        return dict(self.client.get(f"{BASE}/{instruction_id}").json()["instruction"])

    def events(self, instruction_id: str) -> list[tuple[str, str]]:
        """The listed events as (event_type, message)."""
        self.settle()
        body = self.client.get(f"{BASE}/{instruction_id}/events").json()
        return [(e["event_type"], e["message"]) for e in body["events"]]

    def row(self, instruction_id: str) -> dict[str, Any]:
        """The read-model row with the worker columns."""
        self.settle()
        found = self.client.blocking_portal.call(read.worker_record, self.services.reader, instruction_id)
        assert found is not None
        return found

    def stream(self, instruction_id: str) -> list[Event]:
        return self.client.blocking_portal.call(
            self.services.store.read_stream, f"instruction:{instruction_id}"
        )

    def types(self, instruction_id: str) -> list[str]:
        return [e.type.removeprefix("agent_instruction.") for e in self.stream(instruction_id)]

    # -- dispatchers ----------------------------------------------------------------------------

    def dispatcher(self, worker_id: str = "w1", **overrides: Any) -> Dispatcher:
        """A dispatcher on these services; it pauses between tries without sleeping (recorded in
        `sleeps`). Defaults: the fake's URL and token, 3 tries, no lease below 120 s."""
        values: dict[str, Any] = {
            "worker_id": worker_id,
            "api_url": self.agent.url,
            "api_token": TOKEN,
            "tries": Tries(timeout=5.0, retries=2, backoff=1.5),
        }
        values.update(overrides)
        dispatcher = Dispatcher(self.services, DispatchOptions(**values))

        async def record_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        dispatcher.sleep = record_sleep
        return dispatcher

    def step(self, dispatcher: Dispatcher) -> bool:
        """One dispatcher step (reserve the oldest due instruction and dispatch it)."""
        worked: bool = self.client.blocking_portal.call(dispatcher.run_once)
        return worked


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with FakeAgent(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def open_world(tmp_path: Path, clock: ManualClock, agent: FakeAgent, **settings: Any) -> TestClient:
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "workspace_root": str(tmp_path / "app"),
        "auth_dev_bypass": True,
        "agent_dispatch": False,
    }
    values.update(settings)
    config = Settings(**values)
    return TestClient(create_app(config, Services(config, clock=clock)))


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock, agent: FakeAgent) -> Iterator[World]:
    with open_world(tmp_path, clock, agent) as client:
        response = client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        assert response.status_code == 200, response.text
        yield World(client, clock, agent)


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for a module's cases that each leave their instruction finished (done, failed,
    canceled), so a later case's dispatcher finds only its own: saves an app per case."""
    clock = ManualClock()
    with (
        FakeAgent(token=TOKEN) as agent,
        open_world(tmp_path_factory.mktemp("shared"), clock, agent) as client,
    ):
        response = client.post("/api/projects", json={"name": "Demo", "slug": "demo"})
        assert response.status_code == 200, response.text
        yield World(client, clock, agent)
