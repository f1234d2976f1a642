"""Command execution: cached project state stays exact under concurrent loads, and commands on one
project are decided in order (in groups that share a commit) instead of racing each other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kroma.clock import Clock
from kroma.domain import projects, records, style_guides
from kroma.domain.aggregate import ProjectState, evolves, fold, project_stream
from kroma.domain.errors import Conflict, ValidationError
from kroma.domain.handling import MAX_ATTEMPTS, Commands, Decision
from kroma.events.envelope import Metadata, NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.events.store import ConcurrencyConflict


@evolves("test_tick.counted")
def _count(state, _data, _event) -> None:
    """Not idempotent on purpose: folding an event twice shows up in the count."""
    tally = state.items("test_ticks").setdefault("n", {"count": 0})
    tally["count"] += 1


async def test_concurrent_loads_fold_each_new_event_exactly_once(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        commands = Commands(store, Clock())
        target = projects.validate_upsert(projects.UpsertProject(name="P"))
        events, expected = projects.decide_upsert(target, None, "p1", Metadata())
        await store.append(events, expected)
        state, _ = await commands.load_project("p1")
        assert state is not None
        # Appended behind the cache's back: every loader below sees the same new events.
        for _ in range(5):
            await store.append([NewEvent(project_stream("p1"), "test_tick.counted", {"project_id": "p1"})])
        loaded = await asyncio.gather(*(commands.load_project("p1") for _ in range(20)))
        assert {version for _, version in loaded} == {6}
        assert loaded[0][0] is not None and loaded[0][0].items("test_ticks")["n"]["count"] == 5


async def test_slug_lookup_normalises_and_finds_the_project(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        commands = Commands(store, Clock())
        target = projects.validate_upsert(projects.UpsertProject(name="My Comic"))
        events, expected = projects.decide_upsert(target, None, "p9", Metadata())
        await store.append(events, expected)
        assert await commands.project_id_for_slug("My Comic") == "p9"
        assert await commands.project_id_for_slug("___") is None


# -- lanes: commands on one project are decided in order, in groups, and never race each other ------


async def _project(store: SQLiteEventStore, project_id: str = "p1") -> None:
    target = projects.validate_upsert(projects.UpsertProject(name=f"Project {project_id}"))
    events, expected = projects.decide_upsert(target, None, project_id, Metadata())
    await store.append(events, expected)


def _create(name: str, new_id: str) -> Callable[[ProjectState, Metadata], list[NewEvent]]:
    values = {"name": name, "instructions": "ink", "notes": ""}
    return lambda state, meta: [records.decide_create(style_guides.KIND, state, values, new_id, meta)]


def _count_outcomes(store: SQLiteEventStore) -> dict[str, int]:
    """Wrap the store's submit so every command's fate is counted (and each batch's size kept)."""
    seen = {"committed": 0, "conflicts": 0, "batches": 0, "largest_batch": 0}
    real_submit, real_write = store.submit, store._write_batch

    def submit(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future = real_submit(*args, **kwargs)

        def count(done: asyncio.Future[Any]) -> None:
            failed = done.exception()
            seen["conflicts" if isinstance(failed, ConcurrencyConflict) else "committed"] += (
                failed is None or isinstance(failed, ConcurrencyConflict)
            )

        future.add_done_callback(count)
        return future

    def write_batch(db: Any, batch: list[Any]) -> Any:
        seen["batches"] += 1
        seen["largest_batch"] = max(seen["largest_batch"], len(batch))
        return real_write(db, batch)

    store.submit, store._write_batch = submit, write_batch  # type: ignore[method-assign]
    return seen


async def test_concurrent_commands_on_one_project_never_conflict_and_share_group_commits(
    tmp_path: Path,
) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await _project(store)
        commands = Commands(store, Clock())
        seen = _count_outcomes(store)
        outcomes = await asyncio.gather(
            *(commands.on_project("p1", _create(f"Guide {i}", f"g{i}")) for i in range(300))
        )
        assert seen["conflicts"] == 0 and seen["committed"] == 300
        assert seen["largest_batch"] > 1 and seen["batches"] < 300  # decided in order, written together
        positions = sorted(o.append.first_position for o in outcomes)
        assert len(set(positions)) == 300
        state, version = await commands.load_project("p1")
        assert state is not None and version == 301 and len(state.items("style_guides")) == 300


async def test_each_command_of_a_group_is_decided_on_what_the_ones_before_it_decided(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await _project(store)
        commands = Commands(store, Clock())
        results = await asyncio.gather(
            *(commands.on_project("p1", _create("Noir", f"g{i}")) for i in range(50)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, ValidationError)]
        assert len(refused) == 49 and {r.message for r in refused} == {"Style guide name already exists"}
        assert len([e for e in await store.read_stream("project:p1") if e.type == "style_guide.created"]) == 1


async def test_a_command_whose_append_fails_leaves_no_trace_in_the_cached_state(tmp_path: Path) -> None:
    """The state a group decides on holds its earlier commands' events before they are written; when
    one of them is not written, the commands decided after it are decided again on the log's state."""
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await _project(store)
        commands = Commands(store, Clock())
        real_submit = store.submit

        def submit(events: list[NewEvent], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            if events[0].data.get("name") == "Lost":  # refused by the store, nothing written
                refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                refused.set_exception(RuntimeError("disk on fire"))
                return refused
            return real_submit(events, *args, **kwargs)

        store.submit = submit  # type: ignore[method-assign]
        names = ["Before", "Lost", "After", "Lost"]  # the second "Lost" would be a duplicate of the first
        results = await asyncio.gather(
            *(commands.on_project("p1", _create(n, f"g{i}")) for i, n in enumerate(names)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["Outcome", "RuntimeError", "Outcome", "RuntimeError"]
        state, version = await commands.load_project("p1")
        fresh = fold(None, await store.read_stream("project:p1"))
        assert state is not None and fresh is not None and version == 3
        assert state.items("style_guides") == fresh.items("style_guides")
        assert sorted(g["name"] for g in state.items("style_guides").values()) == ["After", "Before"]
        assert state.named("style_guides") == fresh.named("style_guides")


async def test_an_append_by_another_process_is_seen_before_the_next_decision(tmp_path: Path) -> None:
    """The lane decides on its cached state when the store knows of no other append; another
    process's append makes that state stale, the append conflicts, and the command is decided
    again on the log (here: refused as a duplicate)."""
    path = str(tmp_path / "events.db")
    async with SQLiteEventStore(path) as store, SQLiteEventStore(path) as other:
        await _project(store)
        commands = Commands(store, Clock())
        await commands.on_project("p1", _create("Mine", "g1"))
        theirs = Commands(other, Clock())
        await theirs.on_project("p1", _create("Theirs", "g2"))
        with pytest.raises(ValidationError, match="Style guide name already exists"):
            await commands.on_project("p1", _create("Theirs", "g3"))
        assert (await commands.on_project("p1", _create("Third", "g4"))).append.stream_versions == {
            "project:p1": 4
        }


async def test_a_command_that_keeps_losing_races_gets_a_conflict_not_an_internal_error(
    tmp_path: Path,
) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await _project(store)
        commands = Commands(store, Clock())
        real_submit = store.submit
        interloper = 0

        def submit(events: list[NewEvent], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            """Another writer gets to the project's stream before every one of our appends."""
            nonlocal interloper
            interloper += 1
            real_submit([NewEvent("project:p1", "test_tick.counted", {"project_id": "p1"})])
            return real_submit(events, *args, **kwargs)

        store.submit = submit  # type: ignore[method-assign]
        with pytest.raises(Conflict) as lost:
            await commands.on_project("p1", _create("Never", "g1"))
        assert (lost.value.status, lost.value.kind, lost.value.code) == (409, "infra", "concurrency_conflict")
        assert interloper == MAX_ATTEMPTS

        async def decide(meta: Metadata) -> Decision:
            state, version = await commands.load_project("p1")
            assert state is not None
            return Decision(_create("Never", "g2")(state, meta), {"project:p1": version})

        with pytest.raises(Conflict):
            await commands.execute(decide)
        assert not [e for e in await store.read_stream("project:p1") if e.type == "style_guide.created"]


async def test_an_append_of_this_process_still_queued_on_the_stream_is_waited_for_not_raced(
    tmp_path: Path,
) -> None:
    """The run engine appends links to a project's stream behind the lane's back: a group decides
    only once such an append is written, so it sees it and does not lose the race to it."""
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await _project(store)
        commands = Commands(store, Clock())
        await commands.on_project("p1", _create("First", "g1"))
        seen = _count_outcomes(store)
        engine = {
            "project_id": "p1",
            "style_guide_id": "g2",
            "name": "Engine's",
            "instructions": "",
            "notes": "",
        }
        queued = store.submit([NewEvent("project:p1", "style_guide.created", engine)])  # not yet written
        with pytest.raises(ValidationError, match="Style guide name already exists"):
            await commands.on_project("p1", _create("Engine's", "g3"))
        await queued
        assert seen["conflicts"] == 0
