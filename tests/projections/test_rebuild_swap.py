"""Rebuilding without downtime: a rebuild folds into a fresh file while the live one keeps answering
(whole old tables, never a partial fold) and keeps following the log, then swaps the new tables in
atomically, with no restart of anything that reads the file. `kroma projections status` shows each
projection's checkpoint, lag, rate and last error, and a rebuild in progress."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kroma.cli import main
from kroma.events.envelope import Event, NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.projections.rebuild import RebuildBusy
from kroma.projections.runner import HOST, ProjectionRunner


class Tally:
    """Counts events per stream; each row remembers which fold (`tag`) created it; slow on demand."""

    name = "tally"
    version = 1
    tables = ("tally",)
    handles = frozenset({"tick"})
    schema = "CREATE TABLE tally (stream_id TEXT PRIMARY KEY, n INTEGER NOT NULL, tag TEXT NOT NULL)"

    def __init__(self) -> None:
        self.tag = "first"
        self.delay = 0.0

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        if self.delay:
            time.sleep(self.delay)
        db.execute(
            "INSERT INTO tally VALUES (?, 1, ?) ON CONFLICT(stream_id) DO UPDATE SET n = n + 1",
            (event.stream_id, self.tag),
        )


def tally(db: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    return {s: (n, tag) for s, n, tag in db.execute("SELECT stream_id, n, tag FROM tally")}


async def ticks(store: SQLiteEventStore, streams: str, times: int = 1) -> None:
    for _ in range(times):
        await store.append([NewEvent(s, "tick", {}) for s in streams])


@pytest.fixture
async def store(tmp_path: Path):
    async with SQLiteEventStore(str(tmp_path / "events.db"), poll_interval=0.02) as s:
        yield s


async def test_the_live_file_answers_whole_tables_while_a_rebuild_folds_then_swaps_in_the_new_ones(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    await ticks(store, "abcd", times=25)  # 100 events
    projection = Tally()
    live = ProjectionRunner(store, str(tmp_path / "rm.db"), [projection], page=10)
    await live.open()
    await live.start()  # follows the log, as a server does
    await live.wait_for(100, timeout=5)
    reader = sqlite3.connect(tmp_path / "rm.db", isolation_level=None)  # a reader that never reopens
    projection.tag, projection.delay = "rebuilt", 0.003  # the rebuild's fold takes a while
    seen: list[dict[str, tuple[int, str]]] = []

    rebuild = asyncio.create_task(live.rebuild())
    while not rebuild.done():
        seen.append(tally(reader))
        if len(seen) == 5:
            await ticks(store, "ae")  # appended while the fresh file is folded: both must show it
        await asyncio.sleep(0.01)
    assert await rebuild >= 102
    await ticks(store, "b")  # the live runner keeps following after the swap
    await live.wait_for(103, timeout=5)
    after = tally(reader)

    assert len(seen) > 10 and (tmp_path / "rm.db.rebuild.lock").exists()
    for snapshot in seen:  # never a partial fold: whole counts of what was committed, one fold's rows
        counts = {s: n for s, (n, _tag) in snapshot.items()}
        assert counts in ({s: 25 for s in "abcd"}, {"a": 26, "b": 25, "c": 25, "d": 25, "e": 1})
        assert len({snapshot[s][1] for s in "abcd"}) == 1
    assert seen[0]["a"][1] == "first"  # the old tables answered while the fresh file was folded
    assert after == {"a": (26, "rebuilt"), "b": (26, "rebuilt"), "c": (25, "rebuilt"), "d": (25, "rebuilt"),
                     "e": (1, "rebuilt")}  # fmt: skip
    assert not [name for name in os.listdir(tmp_path) if ".rebuild-" in name]  # the fresh file is gone
    reader.close()
    await live.close()


async def test_a_swap_pauses_every_runner_on_the_file_until_it_is_done_unless_its_rebuilder_is_gone(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [Tally()], page=10)
    await runner.open()
    await ticks(store, "ab")
    assert await runner.catch_up() == 2
    finished = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import os; print(os.getpid())", stdout=asyncio.subprocess.PIPE
    )
    dead_pid = int((await finished.communicate())[0])

    def swapping(pid: int, until: float) -> None:
        with closing(sqlite3.connect(tmp_path / "rm.db", isolation_level=None)) as db:
            db.execute("DELETE FROM projection_rebuild")
            db.execute("INSERT INTO projection_rebuild VALUES (1, ?, ?, 'swapping', 0, 0, 0, ?)", (HOST, pid, until))

    await ticks(store, "c")
    swapping(os.getpid(), time.time() + 60)
    assert await runner.catch_up() == 2  # paused: event 3 waits for the swap
    for pid, until in ((dead_pid, time.time() + 60), (os.getpid(), time.time() - 1)):
        await ticks(store, "d")
        swapping(pid, until)  # a rebuilder that died, or a pause past its deadline: not a pause
        assert await runner.catch_up() == await store.head()
    await runner.close()


async def test_a_second_rebuild_of_the_same_file_is_refused_while_one_runs(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    await ticks(store, "abcd", times=10)
    projection = Tally()
    runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [projection], page=5)
    await runner.open()
    projection.delay = 0.005
    first = asyncio.create_task(runner.rebuild())
    await asyncio.sleep(0.05)
    with pytest.raises(RebuildBusy):
        await runner.rebuild()
    assert await first == 40
    await runner.close()


# -- kroma projections status -------------------------------------------------------------------------


def seed(data_dir: Path) -> None:
    from tests.test_cli import seed as seed_projects

    seed_projects(data_dir, 3)  # 6 events, folded by nothing yet


def status(data_dir: Path, *extra: str) -> Any:
    result = CliRunner().invoke(main, ["projections", "status", "--data-dir", str(data_dir), *extra])
    assert result.exit_code == 0, result.output
    return result


def test_status_shows_checkpoint_lag_rate_and_last_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(tmp_path)
    build = CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(tmp_path)])
    assert build.exit_code == 0, build.output
    with closing(sqlite3.connect(tmp_path / "readmodels.db", isolation_level=None)) as db:
        db.execute("INSERT INTO projection_failures VALUES ('audit', 4, 'project.created', 'KeyError(''x'')')")
        db.execute("UPDATE checkpoints SET position = 2 WHERE name = 'projects'")

    real_sleep = time.sleep

    def moving_sleep(seconds: float) -> None:  # while status samples, a runner folds 4 events
        with closing(sqlite3.connect(tmp_path / "readmodels.db", isolation_level=None)) as db:
            db.execute("UPDATE checkpoints SET position = 6 WHERE name = 'projects'")
        real_sleep(seconds)

    monkeypatch.setattr("kroma.cli_log.time.sleep", moving_sleep)
    before = status(tmp_path, "--sample", "0")
    answer = json.loads(status(tmp_path, "--json", "--sample", "0.2").output)

    assert "log head: 6" in before.output
    assert "projects" in before.output and "4 behind" in before.output
    assert "skipped event 4 (project.created): KeyError('x')" in before.output
    rows = {p["name"]: p for p in answer["projections"]}
    assert answer["head"] == 6 and answer["rebuild"] is None
    assert rows["projects"]["checkpoint"] == 6 and rows["projects"]["lag"] == 0
    assert 4 / 0.5 < rows["projects"]["rate"] <= 4 / 0.2 + 1  # 4 events over the sample
    assert rows["event_index"]["rate"] == 0 and rows["event_index"]["last_error"] is None
    assert rows["audit"]["last_error"] == {"position": 4, "type": "project.created", "error": "KeyError('x')"}


def test_status_shows_a_rebuild_in_progress_and_ignores_one_whose_process_is_gone(tmp_path: Path) -> None:
    seed(tmp_path)
    assert CliRunner().invoke(main, ["projections", "rebuild", "--data-dir", str(tmp_path)]).exit_code == 0
    with closing(sqlite3.connect(tmp_path / "readmodels.db", isolation_level=None)) as db:
        db.execute("INSERT INTO projection_rebuild VALUES (1, ?, ?, 'building', 3, 6, 0, 0)", (HOST, os.getpid()))

    shown = status(tmp_path, "--sample", "0").output

    assert f"rebuild in progress (building, pid {os.getpid()} on {HOST}): position 3 of 6" in shown
    with closing(sqlite3.connect(tmp_path / "readmodels.db", isolation_level=None)) as db:
        db.execute("UPDATE projection_rebuild SET pid = 999999999")
    assert "rebuild in progress" not in status(tmp_path, "--sample", "0").output

