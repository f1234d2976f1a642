"""PostgreSQL-specific event-store tests: tampering with the tables, this backend's edges, one
notification per committed batch, and two processes appending to one database at once.

The backend-neutral contract runs from contract.py (see conftest.py); here `store` is always the
PostgreSQL store on a schema of its own (skipped when no server answers on 127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from kroma.events import codec
from kroma.events.envelope import Event, NewEvent
from kroma.events.postgres import PostgresEventStore
from kroma.events.store import AppendResult
from tests.events.contract import assert_gap_free, read_everything
from tests.events.postgres_server import POSTGRES_URL, connect_or_skip, postgres_schema

APPENDER = Path(__file__).with_name("postgres_appender.py")


@pytest.fixture
def backend_name() -> str:
    return "postgres"


def ev(stream_id: str, **data: object) -> NewEvent:
    return NewEvent(stream_id=stream_id, type="Thing.Happened", data=data or {"n": 1})


@asynccontextmanager
async def raw(store: PostgresEventStore) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection with the store's schema first on its search path, as anyone with
    database access has."""
    conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": store.schema})
    try:
        yield conn
    finally:
        await conn.close()


async def fill(store: PostgresEventStore, n: int = 10) -> None:
    for i in range(n):
        await store.append([ev(f"s{i % 3}", i=i)])
    assert await store.verify_chain() == n


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
    store: PostgresEventStore, column: str, value: object
) -> None:
    await fill(store)
    async with raw(store) as db:
        await db.execute(f"UPDATE events SET {column} = $1 WHERE position = 4", value)

    with pytest.raises(codec.ChainBreak) as info:
        await store.verify_chain()
    assert (info.value.position, info.value.reason) == (4, "hash mismatch")


async def test_deleting_a_stored_event_breaks_the_chain_with_a_gap_across_pages(
    store: PostgresEventStore,
) -> None:
    await fill(store)
    assert await store.verify_chain(page=3) == 10  # the link is carried from page to page
    async with raw(store) as db:
        await db.execute("DELETE FROM events WHERE position = 7")

    with pytest.raises(codec.ChainBreak) as info:
        await store.verify_chain(page=3)
    assert (info.value.position, info.value.reason) == (8, "gap after position 6")


async def test_the_log_lives_in_its_schema_as_the_exact_bytes_the_chain_hashes(
    store: PostgresEventStore,
) -> None:
    await store.append([ev("a", title="Ünïcode ☃"), ev("b")])
    async with raw(store) as db:
        rows = await db.fetch("SELECT position, data, hash FROM events ORDER BY position")
    events = await store.read_all()
    assert [r["position"] for r in rows] == [1, 2]
    assert [r["hash"].hex() for r in rows] == [e.hash for e in events]
    assert rows[0]["data"] == codec.encode(events[0].data)


# -- this backend's edges -------------------------------------------------------------------------


def test_a_schema_name_that_is_not_a_plain_identifier_is_refused() -> None:
    for bad in ("Kroma", "a-b", 'x"; DROP TABLE events; --', "", "x" * 49):
        with pytest.raises(ValueError):
            PostgresEventStore(POSTGRES_URL, schema=bad)


async def test_an_empty_command_is_rejected(store: PostgresEventStore) -> None:
    with pytest.raises(ValueError):
        await store.append([])


async def test_append_and_save_response_on_a_closed_store_raise_instead_of_hanging(
    store_factory: object,
) -> None:
    async with store_factory() as store:  # type: ignore[operator]
        pass
    async with asyncio.timeout(2):
        with pytest.raises(RuntimeError):
            await store.append([ev("a")])
        with pytest.raises(RuntimeError):
            await store.save_response("k", b"r")


async def test_a_command_reusing_an_event_id_fails_alone_and_the_writer_recovers(
    store: PostgresEventStore,
) -> None:
    await store.append([NewEvent("a", "T", {}, event_id="e-1")])

    with pytest.raises(asyncpg.UniqueViolationError):
        await store.append([NewEvent("b", "T", {}), NewEvent("c", "T", {}, event_id="e-1")])
    outcomes = await asyncio.gather(
        store.append([ev("b")]),
        store.append([NewEvent("c", "T", {}, event_id="e-1")]),
        store.append([ev("d")]),
        return_exceptions=True,
    )

    assert isinstance(outcomes[1], asyncpg.UniqueViolationError)
    assert isinstance(outcomes[0], AppendResult) and isinstance(outcomes[2], AppendResult)
    assert await store.stream_version("c") == 0
    assert_gap_free(await read_everything(store))
    assert await store.verify_chain() == 3


async def test_a_response_saved_in_the_same_batch_as_its_keyed_command_is_kept(
    store: PostgresEventStore,
) -> None:
    appended = store.submit([ev("a")], idempotency_key="k1", fingerprint="f1")
    await asyncio.gather(appended, store.save_response("k1", b"first"))

    fingerprint, result = await store.lookup_idempotency("k1")  # type: ignore[misc]
    assert (fingerprint, result.response, result.event_ids) == ("f1", b"first", (await appended).event_ids)


async def test_the_writer_reconnects_after_its_connection_is_killed(store: PostgresEventStore) -> None:
    await store.append([ev("a")])
    async with raw(store) as db:
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1",
            store._writer_conn.get_server_pid(),  # type: ignore[union-attr]
        )
    await asyncio.sleep(0.2)

    result = await store.append([ev("a")], {"a": 1})
    assert (result.first_position, result.stream_versions) == (2, {"a": 2})
    assert await store.verify_chain() == 2


# -- notifications --------------------------------------------------------------------------------


async def test_every_committed_batch_sends_one_notification_carrying_the_new_head(
    store: PostgresEventStore,
) -> None:
    heads: list[int] = []
    reached = asyncio.Event()

    def heard(*args: object) -> None:
        heads.append(int(str(args[3])))
        if heads[-1] >= 202:
            reached.set()

    listener = await connect_or_skip()
    await listener.add_listener(store.channel, heard)
    try:
        await store.append([ev("a"), ev("b")])
        results = await asyncio.gather(*(store.append([ev(f"s{i}")]) for i in range(200)))
        await store.save_response("nothing-to-tell", b"")  # a batch without events says nothing
        async with asyncio.timeout(5):
            await reached.wait()
        await asyncio.sleep(0.1)  # nothing more comes
    finally:
        await listener.close()

    assert heads[0] == 2
    assert heads == sorted(set(heads)) and heads[-1] == 202 == await store.head()
    assert set(heads[1:]) <= {r.last_position for r in results}  # each one ends a batch
    assert len(heads) - 1 < 200  # group commit: far fewer batches than commands


async def test_a_follower_is_woken_by_another_process_after_its_listener_connection_comes_back(
    store_factory: object,
) -> None:
    async with (
        store_factory(poll_interval=30) as a,  # type: ignore[operator]
        store_factory() as b,  # type: ignore[operator]
        aclosing(a.follow()) as follow,
    ):
        await b.append([ev("s")])
        async with asyncio.timeout(2):
            assert [e.position for e in await anext(follow)] == [1]

        lost = a._listener
        async with raw(a) as db:
            await db.execute("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        for _ in range(250):  # the store reconnects by itself
            if a._listener not in (lost, None) and not a._listener.is_closed():
                break
            await asyncio.sleep(0.02)
        assert a._listener is not lost

        await b.append([ev("t")])
        async with asyncio.timeout(2):  # far sooner than the 30 s poll
            assert [e.stream_id for e in await anext(follow)] == ["t"]


# -- two processes on one database ----------------------------------------------------------------


async def test_two_processes_appending_at_once_leave_a_gap_free_log_and_a_valid_chain() -> None:
    """Two OS processes (16 tasks each) append to one log at once: own streams with exact
    versions, multi-stream commands on streams they share, read-modify-write counters that
    conflict across processes, and the same idempotency keys. A follower here pages through the
    log while they write: it must see every position exactly once, in order (a position that
    became visible after a later one would be skipped for good)."""
    tasks, commands = 16, 30
    async with postgres_schema() as schema, PostgresEventStore(POSTGRES_URL, schema=schema) as store:
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(APPENDER),
                POSTGRES_URL,
                schema,
                tag,
                str(tasks),
                str(commands),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for tag in ("p1", "p2")
        ]
        for child in children:
            assert child.stdout is not None
            async with asyncio.timeout(30):
                assert (await child.stdout.readline()).strip() == b"ready"

        seen: list[Event] = []
        done = asyncio.Event()

        async def follower() -> None:
            async with aclosing(store.follow(page=50)) as follow:
                async for page in follow:
                    seen.extend(page)
                    if done.is_set() and seen[-1].position == await store.head():
                        return

        following = asyncio.create_task(follower())
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        async with asyncio.timeout(120):
            outputs = [await child.communicate() for child in children]
        assert [child.returncode for child in children] == [0, 0]
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        done.set()
        await store.append([ev("end")])  # wakes the follower if it is waiting
        async with asyncio.timeout(30):
            await following

        events = await read_everything(store)
        assert_gap_free(events)
        assert [e.position for e in seen] == [e.position for e in events]  # none skipped, none twice
        assert len(events) == sum(r["appended"] for r in reports) + 1
        assert await store.verify_chain() == len(events)

        for counter in (f"counter-{i}" for i in range(4)):  # every increment landed, none lost
            assert await store.stream_version(counter) == sum(
                r["increments"].get(counter, 0) for r in reports
            )
        assert sum(r["conflicts_retried"] for r in reports) > 0  # the counters really were raced
        keys = set(reports[0]["keyed"]) | set(reports[1]["keyed"])
        for key in keys:  # both processes sent each key: exactly one appended, both got its events
            answers = [r["keyed"][key] for r in reports]
            assert sorted(replayed for replayed, _ in answers) == [False, True], key
            assert answers[0][1] == answers[1][1], key
        writers = [e.stream_id[:2] for e in events if e.stream_id[:3] in ("p1-", "p2-")]
        assert sorted(writers) == ["p1"] * tasks * commands + ["p2"] * tasks * commands
        assert sum(a != b for a, b in itertools.pairwise(writers)) > 1  # they interleaved
