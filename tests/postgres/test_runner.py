"""The projection runner on PostgreSQL: folds, checkpoints and failures as on SQLite, several runners
on one schema folding each event once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest

from kroma.events.envelope import Event, NewEvent
from kroma.events.postgres import PostgresEventStore
from kroma.projections.postgres import PostgresProjectionRunner
from tests.events.postgres_server import POSTGRES_URL, connect_or_skip


class Items:
    """Inserts one row per `item.added`; an item named "bad" cannot be folded (a duplicate key,
    an error the database itself raises, possibly a few statements late in pipeline mode)."""

    name = "items"
    version = 1
    tables = ("items",)
    handles = frozenset({"item.added"})
    schema = "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL, position INTEGER NOT NULL)"

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        item = event.data["id"]
        if item == "bad":
            db.execute("INSERT INTO items VALUES ('dup', 0, 0)")
            db.execute("INSERT INTO items VALUES ('dup', 0, 0)")
        db.execute("INSERT INTO items VALUES (?, ?, ?)", (item, event.data["n"], event.position))


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresEventStore]:
    store = PostgresEventStore(POSTGRES_URL, schema=pg_schema)
    await store.open()
    yield store
    await store.close()


def added(item: str, n: int) -> NewEvent:
    return NewEvent(f"item:{item}", "item.added", {"id": item, "n": n})


async def _runner(store: PostgresEventStore, schema: str) -> PostgresProjectionRunner:
    runner = PostgresProjectionRunner(store, POSTGRES_URL, f"{schema}_rm", [Items()])
    await runner.open()
    return runner


async def test_an_event_that_cannot_be_folded_is_recorded_and_skipped(
    store: PostgresEventStore, pg_schema: str
) -> None:
    await store.append([added("a", 1), added("bad", 2), added("c", 3)])
    runner = await _runner(store, pg_schema)
    try:
        assert await runner.catch_up() == 3
        assert [(name, pos, typ) for name, pos, typ, _ in await runner.failures()] == [
            ("items", 2, "item.added")
        ]
        rows = await runner._run(lambda db: db.execute("SELECT id, n FROM items ORDER BY id").fetchall())
        assert rows == [("a", 1), ("c", 3)]
        assert await runner.checkpoints() == {"items": 3}
    finally:
        await runner.close()


async def test_runners_sharing_a_schema_fold_every_event_once(
    store: PostgresEventStore, pg_schema: str
) -> None:
    runners = [await _runner(store, pg_schema) for _ in range(3)]
    try:
        for runner in runners:
            await runner.start()

        async def write(k: int) -> None:
            for i in range(30):
                result = await store.append([added(f"{k}-{i}", i)])
                await runners[k].wait_for(result.last_position)  # read-your-writes on the writer's runner

        await asyncio.gather(*(write(k) for k in range(3)))
        head = await store.head()
        for runner in runners:
            await runner.wait_for(head)
        count = await runners[0]._run(lambda db: db.execute("SELECT count(*) FROM items").fetchone())
        assert count == (90,)
        assert await runners[1].failures() == []
    finally:
        for runner in runners:
            await runner.close()


async def test_folding_resumes_on_a_new_connection_after_the_server_dropped_it(
    store: PostgresEventStore, pg_schema: str
) -> None:
    runner = await _runner(store, pg_schema)
    try:
        await runner.start()
        first = await store.append([added("a", 1)])
        await runner.wait_for(first.last_position)
        assert runner._pg is not None
        pid = runner._pg.conn.info.backend_pid
        admin = await connect_or_skip()
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        second = await store.append([added("b", 2)])
        await runner.wait_for(second.last_position)
        rows = await runner._run(lambda db: db.execute("SELECT id FROM items ORDER BY id").fetchall())
        assert rows == [("a",), ("b",)]
    finally:
        await runner.close()
