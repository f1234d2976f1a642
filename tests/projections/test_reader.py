"""ReadModels: inline reads, a budget that moves long statements to a worker thread, and a cache
that no commit by another connection can outlive."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from kroma.projections.reader import ReadModels


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    file = str(tmp_path / "readmodels.db")
    with closing(sqlite3.connect(file, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO things VALUES (?, ?)", ((i, f"thing {i}") for i in range(1, 50_001)))
        db.execute("COMMIT")
    yield file


@pytest.fixture
async def reader(path: str) -> AsyncIterator[ReadModels]:
    rm = ReadModels(path)
    await rm.open()
    yield rm
    await rm.close()


async def test_rows_come_back_as_dicts_and_scalars_as_values(reader: ReadModels) -> None:
    assert await reader.one("SELECT * FROM things WHERE id = ?", (7,)) == {"id": 7, "name": "thing 7"}
    assert await reader.one("SELECT * FROM things WHERE id = ?", (0,)) is None
    assert await reader.all("SELECT name FROM things WHERE id IN (1, 2) ORDER BY id") == [
        {"name": "thing 1"},
        {"name": "thing 2"},
    ]
    assert await reader.scalar("SELECT count(*) FROM things WHERE id < ?", (11,)) == 10


async def test_a_statement_past_the_inline_budget_finishes_in_a_worker_thread(path: str) -> None:
    rm = ReadModels(path, inline_budget=0.0)  # every statement long enough to be checked moves
    await rm.open()
    try:
        assert await rm.one("SELECT * FROM things WHERE id = 3") == {"id": 3, "name": "thing 3"}
        assert rm.moved_to_thread == 0  # too short to be looked at: it ran inline
        rows = await rm.all("SELECT id FROM things WHERE name LIKE '%9' ORDER BY name DESC")
        assert len(rows) == 5_000 and rm.moved_to_thread == 1
        assert await rm.scalar("SELECT sum(id) FROM things") == 50_000 * 50_001 // 2
        assert rm.moved_to_thread == 2
    finally:
        await rm.close()


async def test_a_cached_answer_never_outlives_a_commit_by_another_connection(
    path: str, reader: ReadModels
) -> None:
    query = "SELECT name FROM things WHERE id = ?"
    assert await reader.scalar(query, (1,)) == "thing 1"
    # Commits reach a reader as the projection runner's do: from another thread, and the loop
    # learns that they are done through a callback.
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as writer:
        await asyncio.to_thread(writer.execute, "UPDATE things SET name = 'renamed' WHERE id = 1")
        assert await reader.scalar(query, (1,)) == "renamed"  # the very next read sees the commit
        await asyncio.to_thread(writer.execute, "DELETE FROM things WHERE id = 1")
    assert await reader.one(query, (1,)) is None


async def test_one_look_at_the_file_serves_the_callback_that_made_it(path: str, reader: ReadModels) -> None:
    """`PRAGMA data_version` is read once per turn of the loop: a commit made within the very
    callback that looked (nothing in the application does that) is seen from the next one on."""
    query = "SELECT name FROM things WHERE id = ?"
    assert await reader.scalar(query, (1,)) == "thing 1"
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("UPDATE things SET name = 'renamed' WHERE id = 1")
        assert await reader.scalar(query, (1,)) == "thing 1"
        await asyncio.sleep(0)
        assert await reader.scalar(query, (1,)) == "renamed"


async def test_rows_handed_out_are_the_callers_own(reader: ReadModels) -> None:
    first = await reader.one("SELECT * FROM things WHERE id = ?", (5,))
    assert first is not None
    first["name"] = "scribbled on"
    again = await reader.all("SELECT * FROM things WHERE id = ?", (5,))
    again[0]["id"] = -1
    assert await reader.one("SELECT * FROM things WHERE id = ?", (5,)) == {"id": 5, "name": "thing 5"}


async def test_the_reader_never_writes(reader: ReadModels) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await reader.all("DELETE FROM things")


async def test_a_derived_value_is_remembered_until_another_connection_commits(
    path: str, reader: ReadModels
) -> None:
    builds = 0

    async def build() -> bytes:
        nonlocal builds
        builds += 1
        return str(await reader.scalar("SELECT name FROM things WHERE id = 1")).encode()

    assert [await reader.derived(("thing", 1), build) for _ in range(3)] == [b"thing 1"] * 3
    assert builds == 1
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as writer:
        await asyncio.to_thread(writer.execute, "UPDATE things SET name = 'renamed' WHERE id = 1")
    assert await reader.derived(("thing", 1), build) == b"renamed" and builds == 2


async def test_a_derived_value_whose_build_fails_is_built_again(reader: ReadModels) -> None:
    attempts = 0

    async def build() -> bytes:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise LookupError("not there yet")
        return b"there"

    with pytest.raises(LookupError):
        await reader.derived("key", build)
    assert await reader.derived("key", build) == b"there" and attempts == 2


async def test_a_lasting_value_is_kept_once_found_and_an_absent_one_is_asked_again(
    reader: ReadModels,
) -> None:
    asked: list[int] = []

    async def build(thing: int) -> str | None:
        asked.append(thing)
        return await reader.scalar("SELECT name FROM things WHERE id = ?", (thing,))

    assert await reader.lasting(("thing", 2), lambda: build(2)) == "thing 2"
    assert await reader.lasting(("thing", 2), lambda: build(2)) == "thing 2"
    assert await reader.lasting(("thing", 0), lambda: build(0)) is None
    assert await reader.lasting(("thing", 0), lambda: build(0)) is None
    assert asked == [2, 0, 0]
    reader.forget()
    assert await reader.lasting(("thing", 2), lambda: build(2)) == "thing 2" and asked == [2, 0, 0, 2]
