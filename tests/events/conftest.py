"""Backends for the event-store contract suite.

The contract (tests/events/contract.py) is written once against the EventStore protocol and runs
once per name in BACKENDS: the `store` and `store_factory` fixtures are parametrized over it. To
run the whole suite against a new backend, add one entry here; backend-specific tests (tampering
with the storage itself, say) live in that backend's own test module, e.g. test_sqlite.py.

contract.py is not named test_*.py so that it reads as a library of checks rather than one
backend's tests; `pytest_collect_file` below makes pytest collect it anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kroma.events.postgres import PostgresEventStore
from kroma.events.sqlite import SQLiteEventStore
from kroma.events.store import EventStore
from tests.events.postgres_server import POSTGRES_URL, postgres_schema

HERE = Path(__file__).parent

# A backend maps pytest's tmp_path to a context manager that provides its storage (a file, a
# database, a schema) for one test and yields a factory of *opened* store instances on it. Every
# instance made by one factory shares that storage, as separate processes on one database would.
# The factory accepts `poll_interval` (how often follow() polls for other writers' commits).
StoreFactory = Callable[..., AbstractAsyncContextManager[EventStore]]
Backend = Callable[[Path], AbstractAsyncContextManager[StoreFactory]]


@asynccontextmanager
async def _sqlite_backend(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    path = str(tmp_path / "events.db")

    @asynccontextmanager
    async def instance(poll_interval: float = 1.0) -> AsyncIterator[EventStore]:
        store = SQLiteEventStore(path, poll_interval=poll_interval)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    yield instance


@asynccontextmanager
async def _postgres_backend(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A schema of its own on the test server (skips the test when no server answers)."""
    async with postgres_schema() as schema:

        @asynccontextmanager
        async def instance(poll_interval: float = 1.0) -> AsyncIterator[EventStore]:
            store = PostgresEventStore(POSTGRES_URL, schema=schema, poll_interval=poll_interval)
            await store.open()
            try:
                yield store
            finally:
                await store.close()

        yield instance


BACKENDS: dict[str, Backend] = {
    "sqlite": _sqlite_backend,
    "postgres": _postgres_backend,
}


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # An explicit `pytest tests/events/contract.py` is collected by pytest itself already.
    if file_path == HERE / "contract.py" and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store_factory(backend_name: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens store instances that share one backing storage; each closes when its block ends."""
    async with BACKENDS[backend_name](tmp_path) as factory:
        yield factory


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Any]:
    """An opened store on fresh, empty storage (follow() polls only every second, so a test that
    sees a commit sooner than that was woken by the commit itself)."""
    async with store_factory() as instance:
        yield instance
