"""The EventStore contract: what every backend must do, checked only through the protocol.

Each test runs once per backend in conftest.BACKENDS (the `store` / `store_factory` fixtures are
parametrized over them). Nothing here may know how a backend stores events; checks that poke at
the storage itself belong in that backend's own module (test_sqlite.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import aclosing
from typing import Any

import pytest

from kroma.events import codec, upcasting
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent
from kroma.events.store import AppendResult, ConcurrencyConflict, EventStore, IdempotencyMismatch

NO_STREAM = ExpectedVersion.NO_STREAM
ANY = ExpectedVersion.ANY


def ev(stream_id: str, type_: str = "Thing.Happened", **data: Any) -> NewEvent:
    return NewEvent(stream_id=stream_id, type=type_, data=data or {"n": 1})


async def read_everything(store: EventStore, page: int = 500) -> list[Event]:
    events: list[Event] = []
    while batch := await store.read_all(events[-1].position if events else 0, page):
        events.extend(batch)
    return events


def assert_gap_free(events: list[Event]) -> None:
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, list[int]] = defaultdict(list)
    for e in events:
        versions[e.stream_id].append(e.stream_version)
    for stream_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), stream_id


# -- positions and stream versions ----------------------------------------------------------------


async def test_an_empty_store_has_head_zero_no_events_and_unknown_streams_at_version_zero(
    store: EventStore,
) -> None:
    assert await store.head() == 0
    assert await store.read_all() == []
    assert await store.read_stream("nope") == []
    assert await store.stream_version("nope") == 0
    assert await store.verify_chain() == 0


async def test_positions_count_up_from_one_and_versions_count_up_per_stream(store: EventStore) -> None:
    r1 = await store.append([ev("a")])
    r2 = await store.append([ev("b")])
    r3 = await store.append([ev("a"), ev("a")])

    assert (r1.first_position, r1.last_position, r1.stream_versions) == (1, 1, {"a": 1})
    assert (r2.first_position, r2.last_position, r2.stream_versions) == (2, 2, {"b": 1})
    assert (r3.first_position, r3.last_position, r3.stream_versions) == (3, 4, {"a": 3})
    events = await store.read_all()
    assert [(e.position, e.stream_id, e.stream_version) for e in events] == [
        (1, "a", 1),
        (2, "b", 1),
        (3, "a", 2),
        (4, "a", 3),
    ]
    assert [e.event_id for e in events] == [*r1.event_ids, *r2.event_ids, *r3.event_ids]
    assert await store.head() == 4
    assert await store.stream_version("a") == 3
    assert await store.stream_version("b") == 1


async def test_a_command_spanning_streams_gets_consecutive_positions_and_versions_per_stream(
    store: EventStore,
) -> None:
    await store.append([ev("a")])
    result = await store.append([ev("a"), ev("b"), ev("a"), ev("c")])

    assert (result.first_position, result.last_position) == (2, 5)
    assert result.stream_versions == {"a": 3, "b": 1, "c": 1}
    assert len(result.event_ids) == 4
    events = await store.read_all(after=1)
    assert [e.event_id for e in events] == result.event_ids
    assert [(e.stream_id, e.stream_version) for e in events] == [("a", 2), ("b", 1), ("a", 3), ("c", 1)]


async def test_events_round_trip_id_type_data_metadata_and_schema_version(store: EventStore) -> None:
    data = {"title": "Ünïcode ☃", "tags": ["a", "b"], "nested": {"n": 1, "f": 1.5, "none": None}}
    meta = Metadata(actor_user_id="u-1", request_id="req-1", correlation_id="c-1")
    result = await store.append(
        [NewEvent("p-1", "Project.Created", data, metadata=meta, schema_version=3, event_id="evt-1")]
    )

    assert result.event_ids == ["evt-1"]
    [event] = await store.read_stream("p-1")
    assert (event.event_id, event.type, event.schema_version) == ("evt-1", "Project.Created", 3)
    assert event.data == data
    assert event.metadata == meta
    assert event.recorded_at.endswith("Z")
    assert await store.read_all() == [event]


async def test_concurrent_appenders_get_gap_free_positions_and_per_stream_versions(
    store: EventStore,
) -> None:
    tasks, per_task = 64, 50
    results: list[tuple[list[NewEvent], AppendResult]] = []

    async def appender(i: int) -> None:
        for n in range(per_task):
            # every task owns one stream and shares another with 3 other tasks; every 5th command
            # writes to both at once
            events = [ev(f"own-{i}", n=n)]
            if n % 5 == 0:
                events.append(ev(f"shared-{i % 16}", n=n))
            results.append((events, await store.append(events)))

    await asyncio.gather(*(appender(i) for i in range(tasks)))

    events = await read_everything(store)
    total = sum(len(evs) for evs, _ in results)
    assert len(events) == total == tasks * per_task + tasks * per_task // 5
    assert_gap_free(events)
    by_position = {e.position: e for e in events}
    for submitted, result in results:  # each command landed whole, in consecutive positions
        assert result.last_position - result.first_position + 1 == len(submitted)
        landed = [by_position[p] for p in range(result.first_position, result.last_position + 1)]
        assert [e.event_id for e in landed] == result.event_ids
        assert [(e.stream_id, e.data) for e in landed] == [(s.stream_id, s.data) for s in submitted]
    for i in range(tasks):  # each task's own stream holds its events in the order it sent them
        own = await store.read_stream(f"own-{i}")
        assert [e.data["n"] for e in own] == list(range(per_task))
    assert await store.head() == total
    assert await store.verify_chain() == total


# -- optimistic concurrency -----------------------------------------------------------------------


async def test_an_exact_expected_version_that_matches_appends(store: EventStore) -> None:
    await store.append([ev("a")], expected={"a": NO_STREAM})
    result = await store.append([ev("a")], expected={"a": 1})
    assert result.stream_versions == {"a": 2}


async def test_a_wrong_exact_expected_version_raises_conflict_and_writes_nothing(store: EventStore) -> None:
    await store.append([ev("a"), ev("a")])

    with pytest.raises(ConcurrencyConflict) as info:
        await store.append([ev("a")], expected={"a": 1})
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("a", 1, 2)
    with pytest.raises(ConcurrencyConflict) as info:
        await store.append([ev("new")], expected={"new": 3})
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("new", 3, 0)

    assert await store.head() == 2
    assert await store.stream_version("a") == 2
    assert await store.stream_version("new") == 0


async def test_no_stream_on_an_existing_stream_raises_conflict_and_writes_nothing(store: EventStore) -> None:
    await store.append([ev("a")], expected={"a": NO_STREAM})

    with pytest.raises(ConcurrencyConflict) as info:
        await store.append([ev("a")], expected={"a": NO_STREAM})
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("a", NO_STREAM, 1)
    assert await store.head() == 1


async def test_any_accepts_whatever_version_the_stream_is_at(store: EventStore) -> None:
    r1 = await store.append([ev("a")], expected={"a": ANY})
    r2 = await store.append([ev("a")], expected={"a": ANY})
    r3 = await store.append([ev("a")])  # streams not named default to ANY
    assert [r.stream_versions for r in (r1, r2, r3)] == [{"a": 1}, {"a": 2}, {"a": 3}]


async def test_a_multi_stream_command_with_one_conflicting_stream_writes_none_of_its_events(
    store: EventStore,
) -> None:
    await store.append([ev("a"), ev("b")])

    with pytest.raises(ConcurrencyConflict) as info:
        await store.append([ev("a"), ev("b"), ev("c")], expected={"a": 1, "b": NO_STREAM, "c": NO_STREAM})
    assert info.value.stream_id == "b"

    assert await store.head() == 2
    assert [await store.stream_version(s) for s in "abc"] == [1, 1, 0]
    assert await store.read_stream("c") == []


async def test_a_conflicting_command_submitted_with_successful_ones_fails_alone(store: EventStore) -> None:
    await store.append([ev("a")])

    # submitted together, so a group-committing backend decides them in one batch
    outcomes = await asyncio.gather(
        store.append([ev("b")]),
        store.append([ev("a", bad=True)], expected={"a": NO_STREAM}),
        store.append([ev("c"), ev("a")], expected={"c": NO_STREAM, "a": 1}),
        store.append([ev("a", stale=True)], expected={"a": 1}),  # "a" is at 2 by now
        store.append([ev("d")], expected={"d": NO_STREAM}),
        return_exceptions=True,
    )

    ok = [o for o in outcomes if isinstance(o, AppendResult)]
    failed = [o for o in outcomes if not isinstance(o, AppendResult)]
    assert [type(o) for o in failed] == [ConcurrencyConflict, ConcurrencyConflict]
    assert isinstance(outcomes[1], ConcurrencyConflict)
    assert isinstance(outcomes[3], ConcurrencyConflict)
    assert sorted(p for r in ok for p in range(r.first_position, r.last_position + 1)) == [2, 3, 4, 5]
    events = await read_everything(store)
    assert_gap_free(events)
    assert len(events) == 5
    assert not any("bad" in e.data or "stale" in e.data for e in events)
    assert await store.verify_chain() == 5


async def test_of_many_concurrent_creators_of_one_stream_exactly_one_wins(store: EventStore) -> None:
    outcomes = await asyncio.gather(
        *(store.append([ev("x", n=i)], expected={"x": NO_STREAM}) for i in range(10)),
        return_exceptions=True,
    )

    winners = [o for o in outcomes if isinstance(o, AppendResult)]
    losers = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
    assert len(winners) == 1 and len(losers) == 9
    assert all(c.actual == 1 for c in losers)
    assert await store.head() == 1


# -- idempotency ----------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_and_fingerprint_replays_the_first_result_and_appends_nothing(
    store: EventStore,
) -> None:
    first = await store.append([ev("a"), ev("b")], idempotency_key="k1", fingerprint="f1")
    assert first.replayed is False

    again = await store.append([ev("a"), ev("b")], idempotency_key="k1", fingerprint="f1")

    assert again.replayed is True
    assert (again.first_position, again.last_position) == (first.first_position, first.last_position)
    assert again.event_ids == first.event_ids
    assert again.stream_versions == first.stream_versions
    assert await store.head() == 2


async def test_a_replay_is_decided_before_the_expected_version_check(store: EventStore) -> None:
    await store.append([ev("a")], {"a": NO_STREAM}, idempotency_key="k1", fingerprint="f1")

    # the retry still expects NO_STREAM, which its own first attempt made false
    again = await store.append([ev("a")], {"a": NO_STREAM}, idempotency_key="k1", fingerprint="f1")

    assert again.replayed is True
    assert await store.head() == 1


async def test_reusing_a_key_with_another_fingerprint_raises_idempotency_mismatch_and_appends_nothing(
    store: EventStore,
) -> None:
    await store.append([ev("a")], idempotency_key="k1", fingerprint="f1")

    with pytest.raises(IdempotencyMismatch) as info:
        await store.append([ev("a")], idempotency_key="k1", fingerprint="f2")
    assert info.value.key == "k1"
    assert await store.head() == 1


async def test_concurrent_commands_with_one_key_append_once(store: EventStore) -> None:
    outcomes = await asyncio.gather(
        *(store.append([ev("a")], idempotency_key="k1", fingerprint="f1") for _ in range(5))
    )

    assert sorted(o.replayed for o in outcomes) == [False, True, True, True, True]
    assert {tuple(o.event_ids) for o in outcomes} == {tuple(outcomes[0].event_ids)}
    assert await store.head() == 1


async def test_a_keyed_command_that_conflicts_does_not_consume_its_key(store: EventStore) -> None:
    await store.append([ev("a")])
    with pytest.raises(ConcurrencyConflict):
        await store.append([ev("a")], {"a": NO_STREAM}, idempotency_key="k1", fingerprint="f1")
    assert await store.lookup_idempotency("k1") is None

    result = await store.append([ev("a")], {"a": 1}, idempotency_key="k1", fingerprint="f1")
    assert result.replayed is False
    assert result.stream_versions == {"a": 2}


async def test_lookup_returns_fingerprint_and_result_and_then_the_saved_response(store: EventStore) -> None:
    assert await store.lookup_idempotency("k1") is None
    first = await store.append([ev("a")], idempotency_key="k1", fingerprint="f1")

    fingerprint, recorded = await store.lookup_idempotency("k1")  # type: ignore[misc]
    assert fingerprint == "f1"
    assert recorded.event_ids == first.event_ids
    assert recorded.response is None

    await store.save_response("k1", b'{"status": 201}')

    fingerprint, recorded = await store.lookup_idempotency("k1")  # type: ignore[misc]
    assert (fingerprint, recorded.response) == ("f1", b'{"status": 201}')
    again = await store.append([ev("a")], idempotency_key="k1", fingerprint="f1")
    assert (again.replayed, again.response, again.event_ids) == (True, b'{"status": 201}', first.event_ids)


# -- reads ----------------------------------------------------------------------------------------


async def test_read_stream_returns_one_streams_events_in_version_order_after_a_version(
    store: EventStore,
) -> None:
    for i in range(4):
        await store.append([ev("a", i=i), ev("b", i=i)])

    assert [(e.stream_version, e.data["i"]) for e in await store.read_stream("a")] == [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 3),
    ]
    assert [e.stream_version for e in await store.read_stream("a", after_version=2)] == [3, 4]
    assert await store.read_stream("a", after_version=4) == []
    assert {e.stream_id for e in await store.read_stream("b")} == {"b"}


async def test_read_all_pages_by_position_after_a_position_with_a_limit(store: EventStore) -> None:
    for i in range(10):
        await store.append([ev(f"s{i % 3}", i=i)])

    assert [e.position for e in await store.read_all(limit=4)] == [1, 2, 3, 4]
    assert [e.position for e in await store.read_all(after=4, limit=4)] == [5, 6, 7, 8]
    assert [e.position for e in await store.read_all(after=8, limit=4)] == [9, 10]
    assert await store.read_all(after=10) == []
    assert [e.data["i"] for e in await read_everything(store, page=3)] == list(range(10))


async def test_read_all_with_types_returns_only_those_types_paged_by_position(store: EventStore) -> None:
    kinds = ["A", "B", "C"]
    for i in range(12):
        await store.append([ev("s", kinds[i % 3], i=i)])

    page1 = await store.read_all(limit=3, types=["A", "C"])
    assert [(e.position, e.type) for e in page1] == [(1, "A"), (3, "C"), (4, "A")]
    page2 = await store.read_all(after=page1[-1].position, limit=100, types=["A", "C"])
    assert [e.position for e in page2] == [6, 7, 9, 10, 12]
    assert [e.position for e in await store.read_all(types=["B"])] == [2, 5, 8, 11]
    assert await store.read_all(types=["Nope"]) == []


async def test_read_positions_returns_the_requested_events_in_position_order_skipping_missing(
    store: EventStore,
) -> None:
    for i in range(6):
        await store.append([ev("s", i=i)])

    events = await store.read_positions([5, 2, 99, 4])
    assert [(e.position, e.data["i"]) for e in events] == [(2, 1), (4, 3), (5, 4)]
    assert await store.read_positions([]) == []


# -- the hash chain -------------------------------------------------------------------------------


async def test_each_events_hash_links_it_to_the_previous_one_and_verify_chain_returns_the_head(
    store: EventStore,
) -> None:
    for i in range(5):
        await store.append([ev(f"s{i % 2}", i=i), ev("t", i=i)])
    events = await store.read_all()

    prev = codec.GENESIS
    for e in events:
        header = codec.header_bytes(
            e.position, e.event_id, e.stream_id, e.stream_version, e.type, e.schema_version, e.recorded_at
        )
        prev = codec.link(prev, header, codec.encode(e.data), codec.encode(e.metadata))
        assert e.hash == prev.hex(), e.position
    assert await store.verify_chain() == 10


async def test_a_reopened_store_continues_positions_versions_and_the_chain(store_factory: Any) -> None:
    async with store_factory() as first:
        await first.append([ev("a"), ev("a")])

    async with store_factory() as second:
        result = await second.append([ev("a")], expected={"a": 2})
        assert (result.first_position, result.stream_versions) == (3, {"a": 3})
        assert await second.verify_chain() == 3


async def test_a_second_instance_on_the_same_storage_can_append_and_the_first_continues_the_chain(
    store_factory: Any,
) -> None:
    async with store_factory() as a:
        await a.append([ev("x"), ev("x"), ev("x")])
        async with store_factory() as b:  # another process, say a CLI command
            assert await b.head() == 3
            await b.append([ev("x")], expected={"x": 3})
            await b.append([ev("y")])

        # a's writer last saw x at version 3 and the head at 3: it must notice both moved
        with pytest.raises(ConcurrencyConflict) as info:
            await a.append([ev("x")], expected={"x": 3})
        assert info.value.actual == 4
        result = await a.append([ev("x")], expected={"x": 4})
        assert (result.first_position, result.stream_versions) == (6, {"x": 5})

        async with store_factory() as b:
            await b.append([ev("z")])
        result = await a.append([ev("x"), ev("z")])  # no expectations: versions come from storage
        assert (result.first_position, result.stream_versions) == (8, {"x": 6, "z": 2})

        events = await read_everything(a)
        assert_gap_free(events)
        assert len(events) == 9
        assert await a.verify_chain() == 9


# -- following the log ----------------------------------------------------------------------------


async def test_a_follower_paging_while_writers_append_sees_every_event_once_in_order(
    store: EventStore,
) -> None:
    writers, commands = 16, 25
    total = writers * commands * 2  # every command writes two events

    async def writer(i: int) -> None:
        for n in range(commands):
            await store.append([ev(f"w{i}", n=n), ev(f"shared{i % 4}", n=n)])
            await asyncio.sleep(0)

    seen: list[Event] = []
    pages = 0

    async def follower() -> None:
        nonlocal pages
        async with aclosing(store.follow(after=0, page=7)) as follow:
            async for page in follow:
                pages += 1
                seen.extend(page)
                if len(seen) >= total:
                    return

    async with asyncio.timeout(10):
        await asyncio.gather(follower(), *(writer(i) for i in range(writers)))

    assert [e.position for e in seen] == list(range(1, total + 1))
    assert [e.event_id for e in seen] == [e.event_id for e in await read_everything(store)]
    assert pages >= total // 7


async def test_follow_starts_after_the_given_position(store: EventStore) -> None:
    for i in range(5):
        await store.append([ev("s", i=i)])

    async with aclosing(store.follow(after=3)) as follow:
        page = await anext(follow)
    assert [e.position for e in page] == [4, 5]


async def test_follow_wakes_promptly_when_a_new_event_is_committed(store: EventStore) -> None:
    await store.append([ev("s")])
    async with aclosing(store.follow(after=0)) as follow:
        assert [e.position for e in await anext(follow)] == [1]

        async def next_page() -> list[Event]:
            return await anext(follow)

        waiting = asyncio.create_task(next_page())
        try:
            await asyncio.sleep(0.05)
            assert not waiting.done()  # caught up: it waits for a commit

            started = time.perf_counter()
            await store.append([ev("s")])
            async with asyncio.timeout(2):
                page = await waiting
            latency = time.perf_counter() - started
        finally:
            waiting.cancel()

    assert [e.position for e in page] == [2]
    assert latency < 0.25  # the fixtures poll only every second: this was the commit's wake-up


async def test_wait_for_append_returns_on_a_commit_or_else_the_unchanged_head_at_the_timeout(
    store: EventStore,
) -> None:
    await store.append([ev("s")])

    started = time.perf_counter()
    assert await store.wait_for_append(after=1, timeout=0.05) == 1
    assert time.perf_counter() - started >= 0.04
    assert await store.wait_for_append(after=0, timeout=5) == 1  # already past: no waiting

    waiter = asyncio.create_task(store.wait_for_append(after=1, timeout=5))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await store.append([ev("s")])
    assert await waiter == 2
    assert time.perf_counter() - started < 0.25


async def test_a_follower_sees_commits_made_by_another_instance(store_factory: Any) -> None:
    async with (
        store_factory(poll_interval=0.05) as a,
        store_factory() as b,
        aclosing(a.follow()) as follow,
    ):
        await b.append([ev("s"), ev("t")])
        async with asyncio.timeout(2):
            page = await anext(follow)
    assert [e.stream_id for e in page] == ["s", "t"]


# -- lifecycle ------------------------------------------------------------------------------------


async def test_close_completes_appends_already_submitted(store_factory: Any) -> None:
    async with asyncio.timeout(5):
        async with store_factory() as s:
            submitted = asyncio.create_task(s.append([ev("a")]))
            await asyncio.sleep(0)  # the append is queued; closing must not strand it
        result = await submitted
    assert result.first_position == 1

    async with store_factory() as s:
        assert [e.event_id for e in await s.read_all()] == result.event_ids


# -- schema evolution -----------------------------------------------------------------------------


async def test_events_of_an_old_schema_version_are_read_in_the_newest_shape_and_the_chain_still_verifies(
    store: EventStore,
) -> None:
    upcasting.upcaster("Thing.Evolved", 1)(lambda d: {"name": d["title"]})
    upcasting.upcaster("Thing.Evolved", 2)(lambda d: {**d, "tags": d.get("tags", [])})
    try:
        await store.append([NewEvent("e", "Thing.Evolved", {"title": "old"}, schema_version=1)])
        await store.append([NewEvent("e", "Thing.Evolved", {"name": "new", "tags": ["x"]}, schema_version=3)])
        expected = [(3, {"name": "old", "tags": []}), (3, {"name": "new", "tags": ["x"]})]

        async with aclosing(store.follow()) as follow:
            followed = await anext(follow)
        for read in (
            await store.read_all(),
            await store.read_all(types=["Thing.Evolved"]),
            await store.read_stream("e"),
            await store.read_positions([1, 2]),
            followed,
        ):
            assert [(e.schema_version, e.data) for e in read] == expected
        assert await store.verify_chain() == 2  # the stored bytes were never rewritten
    finally:
        upcasting.unregister("Thing.Evolved", 2)
        upcasting.unregister("Thing.Evolved", 1)
