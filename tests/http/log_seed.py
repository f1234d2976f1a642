"""Test support: seed what the run engine will record by appending its events to the log (never SQL
into read models), and a client on a settable clock for timestamp-order tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from kroma.clock import Clock, iso_micro
from kroma.config import Settings
from kroma.events.envelope import NewEvent
from kroma.events.store import AppendResult
from kroma.http.app import create_app
from kroma.services import Services


def services_of(client: TestClient) -> Services:
    return client.app.state.services


def append(client: TestClient, *events: NewEvent) -> AppendResult:
    """Append events (one atomic command) and wait until the read models show them."""
    services = services_of(client)
    result = client.blocking_portal.call(services.store.append, list(events))
    client.blocking_portal.call(services.settle, result.last_position)
    return result


def event_of(client: TestClient, event_id: str) -> Any:
    return client.blocking_portal.call(services_of(client).store.read_event, event_id)


def rows(client: TestClient, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    return client.blocking_portal.call(services_of(client).reader.all, sql, params)


class ManualClock(Clock):
    """A clock tests move by hand (ids stay random)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def now_iso(self) -> str:  # the store's `recorded_at`
        return iso_micro(self.current)

    def advance(self, seconds: float = 1.0) -> None:
        self.current += timedelta(seconds=seconds)


@contextmanager
def clocked_client(tmp_path: Path, clock: ManualClock) -> Iterator[TestClient]:
    settings = Settings(data_dir=str(tmp_path / "clocked"), auth_dev_bypass=True, agent_dispatch=False)
    with TestClient(create_app(settings, Services(settings, clock=clock))) as client:
        yield client


def assert_error(
    response: Any, status: int, message: str, code: str | None = None, kind: str = "validation"
) -> None:
    assert response.status_code == status, response.text
    expected_code = code or ("not_found" if status == 404 else "validation_error")
    assert response.json() == {"ok": False, "error": message, "error_kind": kind, "error_code": expected_code}
