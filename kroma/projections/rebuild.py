"""Rebuilding read models without downtime, and building them as of a past position.

`rebuild_live` folds the log again into a fresh file beside the live one while the live file keeps
answering (its runner keeps following the log). When the fresh fold has caught up it pauses every
runner on the live file (a row in `projection_rebuild`, read inside their transactions), folds the
few events appended meanwhile, carries over the tables no projection owns (`token_usage`), and
copies the fresh file into the live one with SQLite's backup API: one write transaction, so every
reader sees either the old read models or the new ones, never a mix, and nothing is restarted.
The fresh file has no rebuild row, so the copy also ends the pause. If the rebuilding process
dies, the pause ends by itself (its pid is gone, or its deadline passes) and the live file is as
it was.

A fresh file needs no durability until it is swapped in (a crash just means starting over), so it
is written with an in-memory rollback journal and no fsync; the swap itself is an ordinary
durable transaction on the live file.

`build_as_of` folds the log up to a position into a separate file (time travel); nothing live is
touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import aiosqlite

from kroma import dbthread
from kroma.events.store import EventStore
from kroma.projections.runner import HOST, RUNNER_TABLES, Progress, ProjectionRunner

PAUSE_SECONDS = 120.0  # the longest a swap may pause the live runners (a dead rebuilder's pause ends sooner)
PROGRESS_EVERY = 1.0  # seconds between progress notes in the live file
PARALLEL_MIN_EVENTS = 100_000  # a shorter fold is over before a worker process has started
CACHE_KIB = 32 * 1024  # page cache of a fresh file while it is built (peak RSS stays bounded)


class RebuildBusy(Exception):
    """Another rebuild of the same read models is running."""


async def connect_scratch(path: str, copy_from: str | None = None, like: str | None = None) -> aiosqlite.Connection:
    """A connection to a fresh file for a rebuild: a copy of the live file's contents when
    `copy_from` is given, else empty with the page size of `like` (the backup into a WAL file needs
    equal page sizes); an in-memory rollback journal and no fsync."""
    _remove(path)
    conn = await aiosqlite.connect(path, isolation_level=None)

    def setup(db: sqlite3.Connection) -> None:
        if copy_from is not None:
            with contextlib.closing(_connect_live(copy_from)) as live:
                live.backup(db)
        elif like is not None and Path(like).exists():
            with contextlib.closing(_connect_live(like)) as live:
                db.execute(f"PRAGMA page_size={int(live.execute('PRAGMA page_size').fetchone()[0])}")
        db.execute("PRAGMA journal_mode=MEMORY")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    await dbthread.run(conn, setup)
    return conn


def _connect_live(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _remove(path: str) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


@contextlib.contextmanager
def _exclusive(live_path: str) -> Iterator[None]:
    """One rebuild of a read-model file at a time (an OS lock, released if the process dies)."""
    with open(f"{live_path}.rebuild.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RebuildBusy(f"another rebuild of {live_path} is running") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _LiveNotes:
    """The rebuild row in the live file: progress while building, the pause while swapping."""

    def __init__(self, live_path: str) -> None:
        self.path = live_path
        self.started = time.time()
        self.noted = 0.0

    def _write(self, phase: str, position: int, head: int, pause_until: float) -> None:
        with contextlib.closing(_connect_live(self.path)) as db:
            db.execute(
                "INSERT OR REPLACE INTO projection_rebuild VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (HOST, os.getpid(), phase, position, head, self.started, pause_until),
            )

    def building(self, position: int, head: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.noted >= PROGRESS_EVERY:
            self.noted = now
            with contextlib.suppress(sqlite3.Error):  # a note; the rebuild does not depend on it
                self._write("building", position, head, 0.0)

    def pause(self, position: int, head: int) -> None:
        self._write("swapping", position, head, time.time() + PAUSE_SECONDS)

    def clear(self) -> None:
        """Remove our row if it is still there (the swap normally removed it)."""
        with contextlib.suppress(sqlite3.Error), contextlib.closing(_connect_live(self.path)) as db:
            db.execute("DELETE FROM projection_rebuild WHERE host = ? AND pid = ?", (HOST, os.getpid()))


def _carry_over(db: sqlite3.Connection, live_path: str, owned: set[str]) -> None:
    """Copy into the fresh file, as the live file has them now, the tables no projection and not the
    runner owns (best-effort state such as `token_usage`), with their indexes."""
    db.execute("ATTACH DATABASE ? AS live", (live_path,))
    try:
        tables = db.execute(
            "SELECT name, sql FROM live.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        foreign = [(name, sql) for name, sql in tables if name not in owned]
        indexes = db.execute(
            "SELECT tbl_name, sql FROM live.sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        db.execute("BEGIN")
        for name, sql in foreign:
            db.execute(f'DROP TABLE IF EXISTS main."{name}"')
            db.execute(sql)
            db.execute(f'INSERT INTO main."{name}" SELECT * FROM live."{name}"')
            for table, index_sql in indexes:
                if table == name:
                    db.execute(index_sql)
        db.execute("DELETE FROM main.projection_rebuild")
        db.execute("COMMIT")
    finally:
        db.execute("DETACH DATABASE live")


def _swap_into(db: sqlite3.Connection, live_path: str) -> None:
    """Copy the fresh file over the live one in one write transaction (readers keep their snapshot
    until it commits), then fold the live WAL back into the file."""
    with contextlib.closing(_connect_live(live_path)) as live:
        db.backup(live)
        with contextlib.suppress(sqlite3.Error):
            live.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- folding a fresh file, in two processes when the log is long ------------------------------------


def _split(runner: ProjectionRunner) -> tuple[list[str], list[str]] | None:
    """(the projections of every event, the others) when both kinds exist and the others are the
    catalog's own (another process can build them by name), else None."""
    from kroma.projections.catalog import all_projections

    catalog = {p.name: type(p) for p in all_projections()}
    every = [p.name for p in runner.projections if p.handles is None]
    others = [p for p in runner.projections if p.handles is not None]
    if not every or not others or any(catalog.get(p.name) is not type(p) for p in others):
        return None
    return every, [p.name for p in others]


async def _fold_fresh(
    fresh: ProjectionRunner,
    progress: Progress | None,
    on_page: Callable[[int, int], None] | None = None,
    until: int | None = None,
    parallel: bool = True,
) -> int:
    """Fold a scratch file up to the head (or `until`) and create its deferred indexes. A long log
    is folded by two processes at once: the projections of every event (the event index, the audit
    trail) here, the others in a worker process into a side file, whose tables are then copied in
    whole (SQLite's transfer of identical tables: record by record, no re-indexing)."""
    with _frozen_heap():
        return await _fold(fresh, progress, on_page, until, parallel)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """While a fold runs, the collector leaves the objects that existed before it alone: a full
    collection then walks only what the fold allocates, not the whole application's heap."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _fold(
    fresh: ProjectionRunner,
    progress: Progress | None,
    on_page: Callable[[int, int], None] | None,
    until: int | None,
    parallel: bool,
) -> int:
    assert fresh._conn is not None
    events_db = getattr(fresh.store, "path", None)
    head = await fresh.store.head()
    todo = (head if until is None else min(head, until)) - min((await fresh.checkpoints()).values(), default=0)
    split = _split(fresh) if parallel and isinstance(events_db, str) else None
    if split is None or todo < PARALLEL_MIN_EVENTS or (os.cpu_count() or 1) < 2:
        reached = await fresh.build(progress, until, on_page)
        await dbthread.run(fresh._conn, fresh.create_deferred_indexes)
        return reached
    assert isinstance(events_db, str)
    every, others = split
    side = f"{fresh.path}.side"
    progress_of = _Combined(progress)
    worker = await _start_worker(events_db, side, others, fresh.page, until)
    try:
        watching = asyncio.create_task(_watch(worker, progress_of))
        fresh.set_active(every)
        try:
            own = await fresh.build(progress_of.own, until, on_page)
            tables = [t for p in fresh.projections if p.name in every for t in p.tables]
            await dbthread.run(fresh._conn, fresh.create_deferred_indexes, tables)
        finally:
            fresh.set_active(None)
        theirs = await watching
        await dbthread.run(fresh._conn, _merge_side, fresh, side, others)
        return min(own, theirs)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        _remove(side)


class _Combined:
    """Progress of two folds as one: the lower of the two positions."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.positions = [0, 0]
        self.head = 0
        self.shown = 0

    def _show(self) -> None:
        low = min(self.positions)
        if self.progress is not None and low > self.shown:
            self.shown = low
            self.progress(low, max(self.head, low))

    def own(self, position: int, head: int) -> None:
        self.positions[0], self.head = position, max(self.head, head)
        self._show()

    def theirs(self, position: int) -> None:
        self.positions[1] = position
        self._show()


async def _start_worker(
    events_db: str, side: str, names: Sequence[str], page: int, until: int | None
) -> asyncio.subprocess.Process:
    _remove(side)
    args = [sys.executable, "-m", "kroma.projections.rebuild", events_db, side, ",".join(names), str(page)]
    if until is not None:
        args.append(str(until))
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _watch(worker: asyncio.subprocess.Process, progress: _Combined) -> int:
    """Follow the worker's progress lines; its final position once it exits cleanly."""
    assert worker.stdout is not None and worker.stderr is not None
    reached = None
    async for line in worker.stdout:
        kind, _, value = line.decode().partition(" ")
        if kind in ("at", "done"):
            progress.theirs(int(value))
        if kind == "done":
            reached = int(value)
    errors = (await worker.stderr.read()).decode(errors="replace").strip()
    if await worker.wait() != 0 or reached is None:
        raise RuntimeError(f"the rebuild worker failed: {errors.splitlines()[-1] if errors else worker.returncode}")
    return reached


def _merge_side(db: sqlite3.Connection, fresh: ProjectionRunner, side: str, names: Sequence[str]) -> None:
    """Copy the side file's tables (empty here) with their checkpoints and failures into the fresh file."""
    tables = [t for p in fresh.projections if p.name in names for t in p.tables]
    fresh.create_deferred_indexes(db, tables)  # on empty tables, so the transfer copies the side's indexes
    db.execute("ATTACH DATABASE ? AS side", (side,))
    try:
        db.execute("BEGIN")
        for table in tables:
            db.execute(f'INSERT INTO main."{table}" SELECT * FROM side."{table}"')
        db.executemany(
            "UPDATE main.checkpoints SET position = ? WHERE name = ?",
            [(pos, name) for name, pos in db.execute("SELECT name, position FROM side.checkpoints")],
        )
        db.execute("INSERT OR REPLACE INTO main.projection_failures SELECT * FROM side.projection_failures")
        db.execute("COMMIT")
    finally:
        db.execute("DETACH DATABASE side")


def _work(events_db: str, side: str, names: Sequence[str], page: int, until: int | None) -> int:
    """In the worker process: fold the named catalog projections into the side file."""
    from kroma.events.sqlite import PageReader
    from kroma.projections.catalog import all_projections

    projections = [p for p in all_projections() if p.name in names]
    runner = ProjectionRunner(cast(EventStore, None), side, projections, page, scratch=True)  # reads the file itself
    db = sqlite3.connect(side, isolation_level=None)
    try:
        for pragma in ("journal_mode=MEMORY", "synchronous=OFF", f"cache_size=-{CACHE_KIB}"):
            db.execute(f"PRAGMA {pragma}")
        runner._prepare(db)
        last = [0.0]

        def at(position: int) -> None:
            if time.monotonic() - last[0] >= 0.2:
                last[0] = time.monotonic()
                print(f"at {position}", flush=True)

        reached = runner._build_pages(db, PageReader(events_db), until, at)
        runner.create_deferred_indexes(db)
        return reached
    finally:
        db.close()


async def rebuild_live(
    runner: ProjectionRunner, names: Sequence[str] | None = None, progress: Progress | None = None
) -> int:
    """Rebuild the named projections (all when None) of `runner`'s live file without downtime;
    returns the position the swapped-in read models reflect."""
    live = runner.path
    with _exclusive(live):
        fresh = ProjectionRunner(runner.store, f"{live}.rebuild-{os.getpid()}", runner.projections, runner.page, scratch=True)
        notes = _LiveNotes(live)
        owned = set(RUNNER_TABLES) | {t for p in runner.projections for t in p.tables}
        try:
            await fresh.open(copy_from=live if names else None, like=live)
            assert fresh._conn is not None
            if names:
                await dbthread.run(fresh._conn, fresh.reset, list(names))

            head = await runner.store.head()
            await asyncio.to_thread(notes.building, 0, head, True)
            reached = await _fold_fresh(fresh, progress, notes.building, parallel=not names)
            await asyncio.to_thread(notes.pause, reached, head)
            reached = await fresh.build(progress)  # what was appended meanwhile; the live file waits
            await dbthread.run(fresh._conn, _carry_over, live, owned)
            await dbthread.run(fresh._conn, _swap_into, live)
            return reached
        finally:
            await fresh.close()
            await asyncio.to_thread(notes.clear)
            _remove(fresh.path)


async def build_as_of(
    runner: ProjectionRunner, target: str, until: int, progress: Progress | None = None
) -> int:
    """Fold the log up to position `until` into a new read-model file at `target` (which must not
    exist), as the read models were right after that event; returns the position reached."""
    if os.path.exists(target):  # noqa: ASYNC240  # one stat before a long fold
        raise FileExistsError(f"{target} already exists")
    built = ProjectionRunner(runner.store, target, runner.projections, runner.page, scratch=True)
    try:
        await built.open()
        reached = await _fold_fresh(built, progress, until=until)
        assert built._conn is not None
        await dbthread.run(built._conn, lambda db: db.execute("PRAGMA journal_mode=WAL"))
        return reached
    except BaseException:
        await built.close()
        _remove(target)
        raise
    finally:
        await built.close()


if __name__ == "__main__":  # the rebuild worker: python -m kroma.projections.rebuild EVENTS SIDE NAMES PAGE [UNTIL]
    _events, _side, _names, _page, *_until = sys.argv[1:]
    gc.disable()  # a short-lived process that folds and exits: nothing for the collector to win
    _reached = _work(_events, _side, _names.split(","), int(_page), int(_until[0]) if _until else None)
    print(f"done {_reached}", flush=True)
