"""The PostgreSQL reader's answer cache: emptied when any process folds (its NOTIFY), synchronously by
this process's runner before `settle` returns (read-your-writes, and no stale answer once the runner
has passed another server's write), and off while the LISTEN connection is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.events.postgres import PostgresEventStore
from kroma.http.deps import services_of
from kroma.projections.postgres import PostgresProjectionRunner, PostgresReadModels
from tests.events.postgres_server import POSTGRES_URL, connect_or_skip
from tests.postgres.test_runner import Items, added

COUNT = "SELECT count(*) AS n FROM items"


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    store = PostgresEventStore(POSTGRES_URL, schema=pg_schema)
    await store.open()
    yield store
    await store.close()


async def _until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if not isinstance(found, bool):
            found = await found
        if found:
            return
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.02)


async def _count(reader: PostgresReadModels) -> int:
    row = await reader.one(COUNT)
    assert row is not None
    return int(row["n"])


async def _cached_count(reader: PostgresReadModels) -> int:
    """The count, once it comes from the cache (a NOTIFY still on its way may empty it once more)."""
    for _ in range(50):
        first = await _count(reader)
        hits = reader.hits
        if await _count(reader) == first and reader.hits == hits + 1:
            return first
        await asyncio.sleep(0.02)
    raise AssertionError("never cached")


async def _open(
    store: PostgresEventStore, schema: str, *, hear: bool = True
) -> tuple[PostgresProjectionRunner, PostgresReadModels]:
    """A runner and the reader following it, as one process has them; `hear=False`: the reader's
    NOTIFYs are lost in transit (only its own runner tells it anything)."""
    runner = PostgresProjectionRunner(store, POSTGRES_URL, f"{schema}_rm", [Items()])
    await runner.open()
    reader = PostgresReadModels(POSTGRES_URL, f"{schema}_rm", pool_size=3)
    reader.follow(runner)
    if not hear:
        reader._on_notify = lambda *args: None  # type: ignore[method-assign]
    await reader.open()
    await _until(lambda: reader.caching)
    return runner, reader


async def test_another_process_fold_empties_the_cache_through_its_notify(
    store: PostgresEventStore, pg_schema: str
) -> None:
    folder, folder_reader = await _open(store, pg_schema)  # "process A": folds
    other_store = PostgresEventStore(POSTGRES_URL, schema=pg_schema)
    await other_store.open()
    idle, reader = await _open(other_store, pg_schema)  # "process B": its runner never runs
    try:
        await store.append([added("a", 1)])
        await folder.catch_up()
        assert await _cached_count(reader) == 1
        for n in range(2, 5):
            await store.append([added(f"x{n}", n)])
            await folder.catch_up()
            await _until(lambda n=n: _is(reader, n), timeout=5)  # the NOTIFY alone told it
            assert await _cached_count(reader) == n
        assert idle.position == 0
    finally:
        await reader.close()
        await idle.close()
        await other_store.close()
        await folder_reader.close()
        await folder.close()


async def _is(reader: PostgresReadModels, n: int) -> bool:
    return await _count(reader) == n


async def test_no_stale_answer_once_the_runner_passed_another_process_write(
    store: PostgresEventStore, pg_schema: str
) -> None:
    """Process B's runner finds the page already folded by A (or nothing left to fold) and only
    moves its position on: from then on B never answers from a cache older than A's fold, even
    when A's NOTIFY has not reached B yet (here it never does)."""
    folder, folder_reader = await _open(store, pg_schema)
    other_store = PostgresEventStore(POSTGRES_URL, schema=pg_schema)
    await other_store.open()
    follower, reader = await _open(other_store, pg_schema, hear=False)
    try:
        for n in range(1, 6):
            await store.append([added(f"x{n}", n)])
            assert await _cached_count(reader) == n - 1  # cached before A folds
            await folder.catch_up()
            assert await _count(reader) == n - 1  # still cached: nothing told B yet
            await follower.catch_up()  # B's checkpoint passes the write (folded by A)
            assert follower.position == n
            assert await _count(reader) == n
    finally:
        await reader.close()
        await follower.close()
        await other_store.close()
        await folder_reader.close()
        await folder.close()


async def test_a_dropped_listen_connection_turns_the_cache_off_until_it_is_back(
    store: PostgresEventStore, pg_schema: str
) -> None:
    runner, reader = await _open(store, pg_schema)
    admin = await connect_or_skip()
    try:
        await store.append([added("a", 1)])
        await runner.catch_up()
        assert await _cached_count(reader) == 1

        async def refuse() -> None:
            raise OSError("the server is away")

        reader._listen = refuse  # type: ignore[method-assign]  # it cannot come back for now
        assert reader._listener is not None
        await admin.execute("SELECT pg_terminate_backend($1)", reader._listener.get_server_pid())
        await _until(lambda: not reader.caching, timeout=5)
        # A write nobody announces (straight SQL: no NOTIFY, no runner) is seen at once: no cache.
        await admin.execute(f'INSERT INTO "{pg_schema}_rm".items VALUES ($1, 2, 2)', "quiet")
        hits = reader.hits
        assert await _count(reader) == 2
        assert await _count(reader) == 2
        assert reader.hits == hits
        await admin.execute(f'INSERT INTO "{pg_schema}_rm".items VALUES ($1, 3, 3)', "quieter")
        assert await _count(reader) == 3

        del reader._listen  # the server is back: LISTEN again, then cache again
        await _until(lambda: reader.caching, timeout=10)
        assert await _cached_count(reader) == 3
        await store.append([added("b", 4)])
        await runner.catch_up()
        assert await _count(reader) == 4
    finally:
        await admin.close()
        await reader.close()
        await runner.close()


# -- through the HTTP API: two servers on one database ----------------------------------------------


def _name(client: TestClient) -> Any:
    answer = client.get("/api/projects/demo")
    assert answer.status_code == 200, answer.text
    return answer.json()["project"]["name"]


def _cached_name(client: TestClient, reader: PostgresReadModels) -> Any:
    """The project's name, once it comes from the cache (a NOTIFY on its way may empty it once more)."""
    for _ in range(50):
        name = _name(client)
        hits = reader.hits
        if _name(client) == name and reader.hits > hits:
            return name
        time.sleep(0.02)
    raise AssertionError("never cached")


def test_a_server_never_answers_another_servers_write_from_a_stale_cache(
    pg_client: Callable[..., TestClient],
) -> None:
    first, second = pg_client(), pg_client()
    assert first.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
    deadline = time.monotonic() + 10
    while second.get("/api/projects/demo").status_code != 200:
        assert time.monotonic() < deadline, "the second server never caught up"
        time.sleep(0.02)
    services = services_of(second)
    reader = services.reader
    assert isinstance(reader, PostgresReadModels) and reader.caching
    for i in range(5):
        assert _cached_name(second, reader) == ("Demo" if i == 0 else f"Name {i - 1}")
        written = first.post("/api/projects", json={"name": f"Name {i}", "slug": "demo"})
        assert written.status_code == 200, written.text
        head = first.blocking_portal.call(services_of(first).store.head)
        second.blocking_portal.call(services.runner.wait_for, head)  # the second server caught up
        assert _name(second) == f"Name {i}"  # at once: never the cached answer


def test_read_your_writes_on_the_server_that_took_the_write(pg_client: Callable[..., TestClient]) -> None:
    client = pg_client()
    reader = services_of(client).reader
    assert isinstance(reader, PostgresReadModels) and reader.caching
    assert client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
    for i in range(8):
        assert _cached_name(client, reader) == ("Demo" if i == 0 else f"Name {i - 1}")
        written = client.post("/api/projects", json={"name": f"Name {i}", "slug": "demo"})
        assert written.status_code == 200, written.text
        assert _name(client) == f"Name {i}"
