"""Command execution: cached project state stays exact under concurrent loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kroma.clock import Clock
from kroma.domain import projects
from kroma.domain.handling import Commands
from kroma.events.envelope import Metadata
from kroma.events.sqlite import SQLiteEventStore


async def test_concurrent_loads_fold_each_new_event_exactly_once(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        commands = Commands(store, Clock())
        target = projects.validate_upsert(projects.UpsertProject(name="P"))
        events, expected = projects.decide_upsert(target, None, "p1", Metadata())
        await store.append(events, expected)
        state, _ = await commands.load_project("p1")
        assert state is not None
        # Appended behind the cache's back: every loader below sees the same new events.
        for i in range(5):
            update = projects.UpdateLocalStorage(base_dir=f"dir{i}")
            await store.append([projects.decide_local_storage(state, update, Metadata())])
        loaded = await asyncio.gather(*(commands.load_project("p1") for _ in range(20)))
        assert {version for _, version in loaded} == {6}
        assert loaded[0][0] is not None and loaded[0][0].storage["local_base_dir"] == "dir4"


async def test_slug_lookup_normalises_and_finds_the_project(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        commands = Commands(store, Clock())
        target = projects.validate_upsert(projects.UpsertProject(name="My Comic"))
        events, expected = projects.decide_upsert(target, None, "p9", Metadata())
        await store.append(events, expected)
        assert await commands.project_id_for_slug("My Comic") == "p9"
        assert await commands.project_id_for_slug("___") is None
