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
is folded with no rollback journal, no fsync and many pages to a transaction; the swap itself is
an ordinary durable transaction on the live file. Without a journal nothing can be rolled back: if
a page fails to fold, the fold starts again in a fresh file with an in-memory journal, where the
failing page is folded event by event as on the live file (the event recorded as a failure). The
few events appended during the fold, the carried-over tables and the swap run with that journal.

`build_as_of` folds the log up to a position into a separate file (time travel); nothing live is
touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import aiosqlite

from kroma import dbthread
from kroma.projections.runner import HOST, RUNNER_TABLES, Progress, ProjectionRunner, UnjournaledFailure

log = logging.getLogger(__name__)

PAUSE_SECONDS = 120.0  # the longest a swap may pause the live runners (a dead rebuilder's pause ends sooner)
PROGRESS_EVERY = 1.0  # seconds between progress notes in the live file
CACHE_KIB = 32 * 1024  # page cache of a fresh file while it is built (peak RSS stays bounded)
# While the indexes are sorted: the sorter holds up to a cache's worth of keys in memory besides the
# cache itself, and writing an index needs few cached pages.
INDEX_CACHE_KIB = 8 * 1024


class RebuildBusy(Exception):
    """Another rebuild of the same read models is running."""


async def connect_scratch(path: str, copy_from: str | None = None, like: str | None = None) -> aiosqlite.Connection:
    """A connection to a fresh file for a rebuild: a copy of the live file's contents when
    `copy_from` is given, else empty with the page size of `like` (the backup into a WAL file needs
    equal page sizes); no rollback journal (`journaled()` adds one) and no fsync."""
    _remove(path)
    conn = await aiosqlite.connect(path, isolation_level=None)

    def setup(db: sqlite3.Connection) -> None:
        if copy_from is not None:
            with contextlib.closing(_connect_live(copy_from)) as live:
                live.backup(db)
        elif like is not None and Path(like).exists():
            with contextlib.closing(_connect_live(like)) as live:
                db.execute(f"PRAGMA page_size={int(live.execute('PRAGMA page_size').fetchone()[0])}")
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    await dbthread.run(conn, setup)
    return conn


def journaled(db: sqlite3.Connection) -> None:
    """From now on a scratch file keeps an in-memory rollback journal: its transactions can roll back."""
    db.execute("PRAGMA journal_mode=MEMORY")


def _connect_live(path: str) -> sqlite3.Connection:
    """A connection to the live file with the durability its runners use (WAL, synchronous=NORMAL)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA synchronous=NORMAL")
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


# -- folding a fresh file --------------------------------------------------------------------------


async def _fold_fresh(
    open_fresh: Callable[[bool], Awaitable[ProjectionRunner]],
    progress: Progress | None,
    on_page: Callable[[int, int], None] | None = None,
    until: int | None = None,
) -> tuple[ProjectionRunner, int]:
    """Fold a scratch file opened by `open_fresh(journaled)` up to the head (or `until`), then create
    its deferred indexes; returns its runner and the position reached. The file is first folded with
    no journal; if a page fails there, `open_fresh(True)` starts it again with one."""
    fresh = await open_fresh(False)
    if getattr(fresh.store, "page_reader", None) is None:  # folded by catch_up, which rolls a failed page back
        assert fresh._conn is not None
        await dbthread.run(fresh._conn, journaled)
    try:
        with _frozen_heap():
            reached = await fresh.build(progress, until, on_page)
    except UnjournaledFailure:
        log.warning("a page failed to fold without a journal; folding again with one", exc_info=True)
        fresh = await open_fresh(True)
        with _frozen_heap():
            reached = await fresh.build(progress, until, on_page)
    assert fresh._conn is not None
    await dbthread.run(fresh._conn, lambda db: db.execute(f"PRAGMA cache_size=-{INDEX_CACHE_KIB}"))
    await dbthread.run(fresh._conn, fresh.create_deferred_indexes)
    return fresh, reached


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """While a fold runs, the collector leaves the objects that existed before it alone: a full
    collection then walks only what the fold allocates, not the whole application's heap. A heap
    that was frozen already (`kroma serve` freezes its own) stays frozen afterwards."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


async def rebuild_live(
    runner: ProjectionRunner, names: Sequence[str] | None = None, progress: Progress | None = None
) -> int:
    """Rebuild the named projections (all when None) of `runner`'s live file without downtime;
    returns the position the swapped-in read models reflect."""
    live = runner.path
    with _exclusive(live):
        path = f"{live}.rebuild-{os.getpid()}"
        notes = _LiveNotes(live)
        owned = set(RUNNER_TABLES) | {t for p in runner.projections for t in p.tables}
        opened: list[ProjectionRunner] = []

        async def open_fresh(with_journal: bool) -> ProjectionRunner:
            for earlier in opened:
                await earlier.close()
            fresh = ProjectionRunner(runner.store, path, runner.projections, runner.page, scratch=True)
            opened.append(fresh)
            await fresh.open(copy_from=live if names else None, like=live)
            assert fresh._conn is not None
            if with_journal:
                await dbthread.run(fresh._conn, journaled)
            if names:
                await dbthread.run(fresh._conn, fresh.reset, list(names))
            return fresh

        try:
            head = await runner.store.head()
            await asyncio.to_thread(notes.building, 0, head, True)
            fresh, reached = await _fold_fresh(open_fresh, progress, notes.building)
            assert fresh._conn is not None
            await dbthread.run(fresh._conn, journaled)  # the rest can fail and roll back like any file
            await asyncio.to_thread(notes.pause, reached, head)
            reached = await fresh.build(progress)  # what was appended meanwhile; the live file waits
            await dbthread.run(fresh._conn, _carry_over, live, owned)
            await dbthread.run(fresh._conn, _swap_into, live)
            return reached
        finally:
            for fresh in opened:
                await fresh.close()
            await asyncio.to_thread(notes.clear)
            _remove(path)


async def build_as_of(
    runner: ProjectionRunner, target: str, until: int, progress: Progress | None = None
) -> int:
    """Fold the log up to position `until` into a new read-model file at `target` (which must not
    exist), as the read models were right after that event; returns the position reached."""
    if os.path.exists(target):  # noqa: ASYNC240  # one stat before a long fold
        raise FileExistsError(f"{target} already exists")
    opened: list[ProjectionRunner] = []

    async def open_fresh(with_journal: bool) -> ProjectionRunner:
        for earlier in opened:
            await earlier.close()
        built = ProjectionRunner(runner.store, target, runner.projections, runner.page, scratch=True)
        opened.append(built)
        await built.open()
        if with_journal:
            assert built._conn is not None
            await dbthread.run(built._conn, journaled)
        return built

    try:
        built, reached = await _fold_fresh(open_fresh, progress, until=until)
        assert built._conn is not None
        await dbthread.run(built._conn, lambda db: db.execute("PRAGMA journal_mode=WAL"))
        return reached
    except BaseException:
        for built in opened:
            await built.close()
        _remove(target)
        raise
    finally:
        for built in opened:
            await built.close()

