"""PostgreSQL fixtures: a set of schemas of their own per test (log, read models, data keys) on the
test server of tests/events/postgres_server.py; every test skips, saying why, when no server answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.http.app import create_app
from tests.events.postgres_server import POSTGRES_URL, connect_or_skip, drop_schemas


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh base name: the log goes in `<name>`, read models in `<name>_rm`, data keys in
    `<name>_keys`; every schema with that prefix is dropped afterwards."""
    admin = await connect_or_skip()
    name = f"kroma_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await drop_schemas(admin, name)
        await admin.close()


def pg_settings(schema: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": str(data_dir),
        "workspace_root": str(data_dir.parent / "app"),
        "auth_dev_bypass": True,
        "agent_dispatch": False,
        "event_store_url": POSTGRES_URL,
        "event_store_schema": schema,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def pg_client(pg_schema: str, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Build TestClients on the test's PostgreSQL schemas (each its own data folder, as separate
    servers on one database would have); keyword arguments override Settings."""
    opened: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        client = TestClient(create_app(pg_settings(pg_schema, tmp_path / f"data{len(opened)}", **overrides)))
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def make_client(pg_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """The HTTP suite's `make_client`, on PostgreSQL: test modules here that import the HTTP
    tests (test_http_suite.py) run them unchanged against the server."""
    return pg_client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """test_http_suite.py imports whole HTTP test modules; a test there that does not build its client
    through `make_client` runs on SQLite as in tests/http already, so it is deselected here."""
    dropped = [
        item
        for item in items
        if item.path.name == "test_http_suite.py" and "make_client" not in getattr(item, "fixturenames", ())
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
