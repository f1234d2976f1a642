"""Command execution: cached project state stays exact under concurrent loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kroma.clock import Clock
from kroma.domain import projects
from kroma.domain.aggregate import evolves, project_stream
from kroma.domain.handling import Commands
from kroma.events.envelope import Metadata, NewEvent
from kroma.events.sqlite import SQLiteEventStore


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
