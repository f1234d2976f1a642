"""Helpers for the project-record tests: error assertions, forced races, read-model dumps."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import TestClient

from kroma.clock import Clock
from kroma.config import Settings
from kroma.http.app import create_app
from kroma.services import Services


def assert_error(
    response: httpx.Response, status: int, message: str, code: str | None = None, kind: str = "validation"
) -> None:
    """The contract's flat error envelope, message byte-for-byte."""
    code = code or ("not_found" if status == 404 else "validation_error")
    assert response.status_code == status, response.text
    assert response.json() == {"ok": False, "error": message, "error_kind": kind, "error_code": code}


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    return body


def race(client: TestClient, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    """Send the requests concurrently on the app's event loop. Commands run by `execute` have their
    first append held until all of them have decided: they all decide on the same project state,
    so all but one lose the expected-version check and must decide again on the state the winner
    left. Project commands (`on_project`) do not race in one process: their project's lane
    decides them one after another, each on the state the one before left."""
    store = client.app.state.services.store
    real_append = store.append

    async def run() -> list[httpx.Response]:
        barrier = asyncio.Barrier(len(requests))
        held = 0

        async def append(*args: Any, **kwargs: Any) -> Any:
            nonlocal held
            if held < len(requests):
                held += 1
                await barrier.wait()
            return await real_append(*args, **kwargs)

        store.append = append
        try:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                return list(
                    await asyncio.gather(*(http.request(m, url, json=body) for m, url, body in requests))
                )
        finally:
            del store.append  # back to the class's method

    return client.blocking_portal.call(run)


def project_events(client: TestClient, slug: str, event_type: str) -> list[dict[str, Any]]:
    body = ok(client.get(f"/api/projects/{slug}/events", params={"type": event_type}))
    return body["events"]


def dump_read_models(client: TestClient) -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model table's rows, sorted, straight from the SQLite file."""
    db = sqlite3.connect(client.app.state.services.settings.readmodels_db)
    try:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


class FrozenClock(Clock):
    """Every event in the same second: list order then rests on the log position alone."""

    def now(self) -> datetime:
        return datetime(2026, 2, 21, 12, 0, 0, tzinfo=UTC)


@contextmanager
def frozen_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=str(tmp_path / "frozen"), auth_dev_bypass=True)
    with TestClient(create_app(settings, Services(settings, clock=FrozenClock()))) as client:
        ok(client.post("/api/projects", json={"name": "Demo Project", "slug": "demo"}))
        yield client
