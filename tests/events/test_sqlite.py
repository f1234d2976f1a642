"""SQLite-specific event-store tests: tampering with the file itself, and this backend's edges.

The backend-neutral contract runs from contract.py (see conftest.py); here `store` is always the
SQLite store, whatever other backends conftest.BACKENDS lists.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest

from kroma.events import codec
from kroma.events.envelope import NewEvent
from kroma.events.sqlite import SQLiteEventStore


@pytest.fixture
def backend_name() -> str:
    return "sqlite"


def ev(stream_id: str, **data: object) -> NewEvent:
    return NewEvent(stream_id=stream_id, type="Thing.Happened", data=data or {"n": 1})


@contextmanager
def raw(store: SQLiteEventStore) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the store's file, as an attacker with file access has."""
    with closing(sqlite3.connect(store.path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")


async def fill(store: SQLiteEventStore, n: int = 10) -> None:
    for i in range(n):
        await store.append([ev(f"s{i % 3}", i=i)])
    assert await store.verify_chain() == n


async def chain_break(store: SQLiteEventStore, page: int = 5000) -> codec.ChainBreak:
    with pytest.raises(codec.ChainBreak) as info:
        await store.verify_chain(page=page)
    return info.value


# -- tamper detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("data", b'{"i":999}'),
        ("metadata", b'{"actor_user_id":"mallory"}'),
        ("type", "Thing.Forged"),
        ("stream_id", "s-other"),
        ("stream_version", 42),
        ("event_id", "forged-id"),
        ("recorded_at", "2000-01-01T00:00:00.000000Z"),
        ("schema_version", 9),
        ("hash", bytes(32)),
    ],
)
async def test_editing_any_column_of_a_stored_event_breaks_the_chain_at_that_event(
    store: SQLiteEventStore, column: str, value: object
) -> None:
    await fill(store)
    with raw(store) as db:
        db.execute(f"UPDATE events SET {column} = ? WHERE position = 4", (value,))

    broken = await chain_break(store)
    assert (broken.position, broken.reason) == (4, "hash mismatch")


async def test_deleting_a_stored_event_breaks_the_chain_with_a_gap(store: SQLiteEventStore) -> None:
    await fill(store)
    with raw(store) as db:
        db.execute("DELETE FROM events WHERE position = 4")

    broken = await chain_break(store)
    assert (broken.position, broken.reason) == (5, "gap after position 3")


async def test_swapping_two_stored_events_breaks_the_chain_at_the_first(store: SQLiteEventStore) -> None:
    await fill(store)
    with raw(store) as db:
        db.execute("UPDATE events SET position = -4 WHERE position = 4")
        db.execute("UPDATE events SET position = 4 WHERE position = 5")
        db.execute("UPDATE events SET position = 5 WHERE position = -4")

    broken = await chain_break(store)
    assert (broken.position, broken.reason) == (4, "hash mismatch")


async def test_verify_chain_carries_the_link_across_pages(store: SQLiteEventStore) -> None:
    await fill(store)
    assert await store.verify_chain(page=3) == 10

    with raw(store) as db:  # the first row of the third page
        db.execute("UPDATE events SET data = ? WHERE position = 7", (b'{"i":0}',))
    broken = await chain_break(store, page=3)
    assert broken.position == 7


# -- this backend's edges -------------------------------------------------------------------------


async def test_the_log_lives_in_the_sqlite_file_in_wal_mode(store: SQLiteEventStore) -> None:
    await fill(store, 3)
    with closing(sqlite3.connect(store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = db.execute("SELECT position, hash FROM events ORDER BY position").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert [r[1].hex() for r in rows] == [e.hash for e in await store.read_all()]


async def test_an_empty_command_is_rejected(store: SQLiteEventStore) -> None:
    with pytest.raises(ValueError):
        await store.append([])


async def test_append_and_save_response_on_a_closed_store_raise_instead_of_hanging(tmp_path) -> None:
    store = SQLiteEventStore(str(tmp_path / "events.db"))
    await store.open()
    await store.close()

    async with asyncio.timeout(2):
        with pytest.raises(RuntimeError):
            await store.append([ev("a")])
        with pytest.raises(RuntimeError):
            await store.save_response("k", b"r")


async def test_a_command_reusing_an_event_id_fails_writes_nothing_and_the_writer_recovers(
    store: SQLiteEventStore,
) -> None:
    await store.append([NewEvent("a", "T", {}, event_id="e-1")])

    with pytest.raises(sqlite3.IntegrityError):
        await store.append([NewEvent("b", "T", {}), NewEvent("c", "T", {}, event_id="e-1")])

    assert await store.head() == 1
    assert await store.stream_version("b") == 0
    result = await store.append([ev("b")])
    assert (result.first_position, result.stream_versions) == (2, {"b": 1})
    assert await store.verify_chain() == 2


async def test_a_command_reusing_an_event_id_fails_alone_in_its_batch(store: SQLiteEventStore) -> None:
    await store.append([NewEvent("a", "T", {}, event_id="e-1")])

    outcomes = await asyncio.gather(
        store.append([ev("b")]),
        store.append([NewEvent("c", "T", {}, event_id="e-1")]),
        store.append([ev("d")]),
        return_exceptions=True,
    )

    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
