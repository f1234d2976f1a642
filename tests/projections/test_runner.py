"""The projection runner: checkpoints in the same transaction, catch-up, follow, rebuild."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from kroma.domain.errors import Internal, StorageUnavailable
from kroma.events.envelope import Event, NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.projections.runner import ProjectionRunner


class Crash(BaseException):
    """Stands for the process dying mid-batch (not an error the runner may handle)."""


class Counter:
    """A tiny projection: counts events per stream; can be told to fail on one position."""

    name = "counter"
    tables = ("counts",)
    handles = frozenset({"tick"})
    schema = "CREATE TABLE counts (stream_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"

    def __init__(self, version: int = 1, fail_at: int | None = None, crash_at: int | None = None) -> None:
        self.version = version
        self.fail_at = fail_at
        self.crash_at = crash_at

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        if event.position == self.crash_at:
            raise Crash()
        if event.position == self.fail_at:
            raise RuntimeError("cannot fold this event")
        db.execute(
            "INSERT INTO counts VALUES (?, 1) ON CONFLICT(stream_id) DO UPDATE SET n = n + 1",
            (event.stream_id,),
        )


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT stream_id, n FROM counts").fetchall())


@pytest.fixture
async def store(tmp_path: Path):
    async with SQLiteEventStore(str(tmp_path / "events.db")) as s:
        yield s


async def ticks(store: SQLiteEventStore, *streams: str) -> None:
    for stream in streams:
        await store.append([NewEvent(stream, "tick", {})])


async def test_catch_up_applies_every_event_once_and_records_checkpoint(store, tmp_path) -> None:
    await ticks(store, "a", "a", "b")
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()])
    await runner.open()
    assert await runner.catch_up() == 3
    assert await runner.catch_up() == 3  # nothing applied twice
    assert counts(tmp_path / "rm.db") == {"a": 2, "b": 1}
    assert await runner.checkpoints() == {"counter": 3}
    await runner.close()


async def test_a_crash_mid_batch_leaves_rows_and_checkpoint_untouched(store, tmp_path) -> None:
    await ticks(store, "a", "b", "c")
    broken = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter(crash_at=2)])
    await broken.open()
    with pytest.raises(Crash):
        await broken.catch_up()
    assert counts(tmp_path / "rm.db") == {} and await broken.checkpoints() == {"counter": 0}
    await broken.close()
    healthy = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()])
    await healthy.open()
    await healthy.catch_up()
    assert counts(tmp_path / "rm.db") == {"a": 1, "b": 1, "c": 1}
    await healthy.close()


async def test_follow_applies_new_commits_and_wait_for_returns_once_visible(store, tmp_path) -> None:
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()])
    await runner.open()
    await runner.start()
    await ticks(store, "a", "a")
    await runner.wait_for(2, timeout=5)
    assert counts(tmp_path / "rm.db") == {"a": 2}
    await runner.close()


async def test_wait_for_wakes_each_waiter_at_its_position_and_fails_late_or_faulty_ones(store, tmp_path) -> None:
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()])
    await runner.open()
    await runner.start()
    early, late = asyncio.create_task(runner.wait_for(1, timeout=5)), asyncio.create_task(runner.wait_for(3))
    gone = asyncio.create_task(runner.wait_for(2, timeout=5))
    await asyncio.sleep(0)
    gone.cancel()  # a caller that went away is forgotten, and wakes no one else
    await ticks(store, "a")
    await asyncio.wait_for(early, 5)
    assert not late.done()
    await ticks(store, "a", "b")
    await asyncio.wait_for(late, 5)
    assert counts(tmp_path / "rm.db") == {"a": 2, "b": 1}
    await runner.wait_for(3, timeout=0)  # already visible: no wait, whatever the timeout
    started = time.monotonic()
    with pytest.raises(Internal):
        await runner.wait_for(99, timeout=0.2)  # past its deadline, not at the next look half a second on
    assert time.monotonic() - started < 0.45
    await runner.close()
    stalled = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()])  # not following: the fault stays
    await stalled.open()
    stalled.fault = OSError("disk full")
    with pytest.raises(StorageUnavailable):
        await stalled.wait_for(99, timeout=10)  # a fault lasting FAULT_PATIENCE ends the wait
    assert stalled._waiters == []
    await stalled.close()


async def test_a_version_bump_rebuilds_the_projection_from_zero(store, tmp_path) -> None:
    await ticks(store, "a", "b")
    first = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter(version=1)])
    await first.open()
    await first.catch_up()
    await first.close()
    with sqlite3.connect(tmp_path / "rm.db") as db:
        db.execute("UPDATE counts SET n = 99")  # a stale shape the new version must not keep
    second = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter(version=2)])
    await second.open()
    await second.catch_up()
    assert counts(tmp_path / "rm.db") == {"a": 1, "b": 1}
    await second.close()


async def test_rebuild_reproduces_the_tables_and_reports_progress(store, tmp_path) -> None:
    await ticks(store, *["a", "b", "c"] * 50)
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()], page=40)
    await runner.open()
    await runner.catch_up()
    live = counts(tmp_path / "rm.db")
    seen: list[int] = []
    assert await runner.rebuild(["counter"], lambda pos, head: seen.append(pos)) == 150
    assert counts(tmp_path / "rm.db") == live
    assert seen == [40, 80, 120, 150]
    await runner.close()


async def test_a_projection_behind_a_page_is_not_overrun(store, tmp_path) -> None:
    """A rebuild elsewhere (checkpoint reset to 0) must not let a later page skip events."""
    await ticks(store, "a", "b", "c", "d")
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter()], page=2)
    await runner.open()
    await runner.catch_up()
    with sqlite3.connect(tmp_path / "rm.db") as db:
        db.execute("DELETE FROM counts")
        db.execute("UPDATE checkpoints SET position = 0")
    await ticks(store, "e")
    await runner.catch_up()
    assert counts(tmp_path / "rm.db") == {s: 1 for s in "abcde"}
    await runner.close()


async def test_an_event_a_projection_cannot_fold_is_recorded_and_skipped_not_a_stall(store, tmp_path) -> None:
    await ticks(store, "a", "b", "c")
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter(fail_at=2)])
    await runner.open()
    assert await runner.catch_up() == 3
    assert counts(tmp_path / "rm.db") == {"a": 1, "c": 1}
    failures = await runner.failures()
    assert [(name, pos, typ) for name, pos, typ, _ in failures] == [("counter", 2, "tick")]
    await ticks(store, "d")
    assert await runner.catch_up() == 4  # later events still flow
    await runner.close()


async def test_a_page_that_fails_in_a_rebuild_folds_again_with_a_journal_and_matches_the_live_fold(
    store, tmp_path, caplog
) -> None:
    """A rebuild folds without a rollback journal, many pages to a transaction; a page that fails
    there cannot be rolled back, so the fold starts again with a journal and isolates the event,
    as the live fold did."""
    await ticks(store, *["a", "b", "c"] * 20)
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Counter(fail_at=57)], page=2)
    await runner.open()
    await runner.catch_up()
    live = counts(tmp_path / "rm.db")
    assert live == {"a": 20, "b": 20, "c": 19}
    assert await runner.rebuild() == 60
    assert counts(tmp_path / "rm.db") == live
    assert [pos for _, pos, _, _ in await runner.failures()] == [57]
    assert "folding again with one" in caplog.text
    await runner.close()
