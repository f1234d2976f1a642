"""Keeps read models up to date: catch up from checkpoints, then follow the log.

Each batch of events is applied to every projection and each projection's checkpoint is written
in the same transaction as its rows, so no event is applied twice or skipped, even across a
crash. Checkpoints are re-read inside every transaction, so a rebuild by another process (the
CLI) is never overrun: a projection whose checkpoint is behind a batch is left for the next round.

A rebuild (`rebuild`, see `kroma.projections.rebuild`) folds the log into a fresh file while this
runner keeps the live one current, then swaps the fresh tables in atomically. While it swaps it
sets a pause in the live file (`projection_rebuild`, phase `swapping`), read inside the same
transaction as the checkpoints: every runner on that file then stops advancing until the swap is
done, so the swapped-in tables are never behind what a runner already reported as visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from kroma import dbthread
from kroma.domain.errors import Internal, StorageUnavailable
from kroma.events.envelope import Event
from kroma.events.store import EventStore
from kroma.faults import storage_fault
from kroma.processes import process_alive
from kroma.projections.base import Projection

log = logging.getLogger(__name__)

CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    position INTEGER NOT NULL
)"""
FAILURES = """
CREATE TABLE IF NOT EXISTS projection_failures (
    name     TEXT NOT NULL,
    position INTEGER NOT NULL,
    type     TEXT NOT NULL,
    error    TEXT NOT NULL,
    PRIMARY KEY (name, position)
)"""
# At most one row, only while a rebuild runs: who builds, how far it got, and (phase `swapping`)
# until when every runner on this file must pause. A fresh file has the table empty, so the swap
# that replaces the live tables also ends the pause.
REBUILDS = """
CREATE TABLE IF NOT EXISTS projection_rebuild (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    phase       TEXT NOT NULL,
    position    INTEGER NOT NULL,
    head        INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    pause_until REAL NOT NULL
)"""
RUNNER_TABLES = ("checkpoints", "projection_failures", "projection_rebuild")
PAUSE_POLL = 0.05  # seconds between looks at a paused read model
BUILD_GROUP = 16  # pages to a transaction in a file written without a rollback journal (a rebuild's)
FAULT_PATIENCE = 2.0  # seconds a read-your-writes wait lasts while the read models cannot be written
AUTOCHECKPOINT_PAGES = 10_000  # the live file's fold commits checkpoint past this WAL size (SQLite's: 1,000)
WATCH = 0.5  # seconds between two looks at the read-your-writes waiters' deadlines and the fault

Progress = Callable[[int, int], None]  # (position reached, head)
HOST = socket.gethostname()


class UnjournaledFailure(Exception):
    """A page failed to fold into a file written without a rollback journal: what the file holds is
    unknown, so the build starts again in a file with one (see kroma.projections.rebuild)."""


def pid_alive(host: str, pid: int) -> bool:
    """Whether the process that wrote a rebuild row may still be running (assumed so on another host)."""
    return host != HOST or process_alive(pid)


def paused(db: sqlite3.Connection) -> bool:
    """Whether a rebuild is swapping its tables into this file right now."""
    row = db.execute("SELECT host, pid, pause_until FROM projection_rebuild WHERE phase = 'swapping'").fetchone()
    return row is not None and row[2] > time.time() and pid_alive(row[0], row[1])


class ProjectionRunner:
    def __init__(
        self,
        store: EventStore,
        path: str,
        projections: Sequence[Projection],
        page: int = 2000,
        *,
        scratch: bool = False,
    ) -> None:
        """`scratch`: a file only this runner uses until it is swapped in or kept elsewhere (a
        rebuild), written without the live file's durability (see kroma.projections.rebuild)."""
        self.store = store
        self.path = path
        self.projections = list(projections)
        self.page = page
        self.scratch = scratch
        self.position = 0  # every projection has applied at least this far
        self.fault: BaseException | None = None  # the storage fault the last round failed on
        self._conn: aiosqlite.Connection | None = None
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._routes: dict[str, tuple[int, ...]] = {}  # event type -> indexes of the selective projections
        self._deferred: list[str] = []  # CREATE INDEX statements a scratch file runs at the end
        self._building: dict[str, dict[str, Any]] = {}  # projection -> build state while its unique indexes wait
        # wait_for's waiters: (position, seq, future, deadline, since), a heap by position; one timer
        # (`_watch`) for all of them fails those past their deadline or a lasting fault.
        self._waiters: list[tuple[int, int, asyncio.Future[None], float, float]] = []
        self._waiter_seq = itertools.count()
        self._watch: asyncio.TimerHandle | None = None

    def by_name(self, name: str) -> Projection:
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(name)

    async def open(self, copy_from: str | None = None, like: str | None = None) -> None:
        """Open (creating) the file and its tables. A scratch file starts as a copy of `copy_from`
        when given, else empty with the page size of the file `like`."""
        if self.scratch:
            from kroma.projections.rebuild import connect_scratch

            self._conn = await connect_scratch(self.path, copy_from, like)
        else:
            self._conn = await dbthread.connect(self.path)
            # The file's Checkpointer (kroma.projections.reader) keeps the WAL short off the commit
            # path; a fold's commit checkpoints only if the WAL still grows past this (a safety net).
            await self._conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        await dbthread.run(self._conn, self._prepare)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Create tables; a projection whose code version changed is dropped and starts over."""

        def prepare(db: sqlite3.Connection) -> None:
            db.execute(CHECKPOINTS)
            db.execute(FAILURES)
            db.execute(REBUILDS)
            existing = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            self._renew_stale(db, existing)

        dbthread.in_transaction(db, prepare)

    def _renew_stale(self, db: sqlite3.Connection, existing: set[str]) -> None:
        """Drop and create again every projection whose version moved or whose tables are missing
        (`existing`: the tables the file or schema holds); its checkpoint starts at 0."""
        stored = dict(db.execute("SELECT name, version FROM checkpoints").fetchall())
        for p in self.projections:
            if stored.get(p.name) == p.version and existing.issuperset(p.tables):
                continue
            self._drop(db, p)
            self._create(db, p)
            db.execute("INSERT INTO checkpoints VALUES (?, ?, 0)", (p.name, p.version))

    @staticmethod
    def _drop(db: sqlite3.Connection, p: Projection) -> None:
        for table in p.tables:
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute("DELETE FROM checkpoints WHERE name = ?", (p.name,))
        db.execute("DELETE FROM projection_failures WHERE name = ?", (p.name,))

    def _create(self, db: sqlite3.Connection, p: Projection) -> None:
        """Create a projection's tables. A scratch file defers its plain indexes (`CREATE INDEX`)
        to `create_deferred_indexes`: one sort at the end of a rebuild costs far less than keeping
        them up to date row by row, and no fold looks rows up by them (folds use keys). A SQLite
        scratch file also defers the `CREATE UNIQUE INDEX`es of a projection that can fold without
        them (`build_many(db, events, state)`, then `finish_build(db, state)` makes its rows fit
        them): inserting random keys into a unique index costs about as much as the row itself."""
        can_build = self.scratch and hasattr(p, "build_many") and isinstance(db, sqlite3.Connection)
        for statement in p.schema.split(";"):
            if not statement.strip():
                continue
            head = statement.lstrip().upper()
            if self.scratch and head.startswith("CREATE INDEX"):
                self._deferred.append(statement)
                continue
            if can_build and head.startswith("CREATE UNIQUE INDEX"):
                self._deferred.append(statement)
                self._building[p.name] = {}
                continue
            db.execute(statement)

    def create_deferred_indexes(self, db: sqlite3.Connection) -> None:
        """Create the indexes `_create` deferred."""

        def create(db: sqlite3.Connection) -> None:
            for name, state in self._building.items():
                self.by_name(name).finish_build(db, state)  # type: ignore[attr-defined]  # see _create
            for statement in self._deferred:
                db.execute(statement)

        dbthread.in_transaction(db, create)
        self._deferred.clear()
        self._building.clear()

    def reset(self, db: sqlite3.Connection, names: Sequence[str]) -> None:
        """Empty the named projections' tables and set their checkpoints to 0 (one transaction)."""

        def run(db: sqlite3.Connection) -> None:
            for p in (self.by_name(n) for n in names):
                self._drop(db, p)
                self._create(db, p)
                db.execute("INSERT INTO checkpoints VALUES (?, ?, 0)", (p.name, p.version))

        dbthread.in_transaction(db, run)

    async def checkpoints(self) -> dict[str, int]:
        assert self._conn is not None
        rows = await self._conn.execute_fetchall("SELECT name, position FROM checkpoints")
        return {name: pos for name, pos in rows}

    def _route(self, events: list[Event]) -> list[list[Event] | None]:
        """Each projection's events of the page (None: it takes every event, the page itself)."""
        groups: list[list[Event] | None] = [None if p.handles is None else [] for p in self.projections]
        routes = self._routes
        for event in events:
            targets = routes.get(event.type)
            if targets is None:
                targets = routes[event.type] = tuple(
                    i for i, p in enumerate(self.projections) if p.handles is not None and event.type in p.handles
                )
            for i in targets:
                groups[i].append(event)  # type: ignore[union-attr]  # selective ones have lists
        return groups

    def _apply(self, db: sqlite3.Connection, events: list[Event], isolate: bool = False) -> int | None:
        """Apply one page to every projection that has reached its start; returns the new
        minimum checkpoint, or None when a rebuild is swapping its tables in (nothing applied).
        With `isolate`, each event is applied under its own savepoint and one that fails is
        recorded in `projection_failures` and skipped, so a single event no projection can fold
        does not stall every read model (and every request waiting on them)."""

        if paused(db):  # looked at first outside a transaction: no write lock while a swap runs
            return None
        return dbthread.in_transaction(db, self._apply_open, events, isolate)

    def _apply_open(self, db: sqlite3.Connection, events: list[Event], isolate: bool = False) -> int | None:
        """`_apply` inside a transaction the caller has opened."""
        if paused(db):
            return None
        checkpoints = dict(db.execute("SELECT name, position FROM checkpoints").fetchall())
        first, last = events[0].position, events[-1].position
        groups = self._route(events)
        for p, group in zip(self.projections, groups, strict=True):
            checkpoint = checkpoints.get(p.name, 0)
            if checkpoint >= last or checkpoint < first - 1:
                continue  # up to date, or behind this page (it catches up next round)
            mine = events if group is None else group
            if checkpoint >= first:
                mine = [e for e in mine if e.position > checkpoint]
            if mine:
                self._fold(db, p, mine, isolate)
            db.execute("UPDATE checkpoints SET position = ? WHERE name = ?", (last, p.name))
            checkpoints[p.name] = last
        return min((checkpoints.get(p.name, 0) for p in self.projections), default=last)

    def _fold(self, db: sqlite3.Connection, p: Projection, events: list[Event], isolate: bool) -> None:
        state = self._building.get(p.name)
        if state is not None:  # a scratch file without its unique indexes yet (see _create)
            build_many = p.build_many  # type: ignore[attr-defined]
            if not isolate:
                build_many(db, events, state)
                return
            for event in events:
                self._apply_isolated(db, p, event, lambda db, e: build_many(db, [e], state))
            return
        if isolate:
            for event in events:
                self._apply_isolated(db, p, event)
            return
        apply_many = getattr(p, "apply_many", None)
        if apply_many is not None:
            apply_many(db, events)
            return
        apply = p.apply
        for event in events:
            apply(db, event)

    @staticmethod
    def _apply_isolated(
        db: sqlite3.Connection, p: Projection, event: Event, apply: Callable[[Any, Event], None] | None = None
    ) -> None:
        db.execute("SAVEPOINT fold")
        try:
            (apply or p.apply)(db, event)
        except Exception as exc:
            if storage_fault(exc):  # the disk, not the event: never skip it, retry the page later
                raise
            db.execute("ROLLBACK TO fold")
            log.error("projection %s cannot fold event %s (%s): %r", p.name, event.position, event.type, exc)
            db.execute(
                "INSERT OR REPLACE INTO projection_failures VALUES (?, ?, ?, ?)",
                (p.name, event.position, event.type, repr(exc)[:500]),
            )
        db.execute("RELEASE fold")

    async def failures(self) -> list[tuple[str, int, str, str]]:
        """(projection, position, event type, error) for every event a projection skipped."""
        assert self._conn is not None
        rows = await self._conn.execute_fetchall("SELECT * FROM projection_failures ORDER BY position, name")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def catch_up(self, progress: Progress | None = None, until: int | None = None) -> int:
        """Apply every committed event (up to `until`, when given); returns the position reached.
        The next page is read while the current one is applied."""
        head = await self.store.head()  # (checkpoints and _apply_page check the connection)
        if until is not None:
            head = min(head, until)
        low = min((await self.checkpoints()).values(), default=0)
        ahead: tuple[int, asyncio.Task[list[Event]]] | None = None
        try:
            while True:
                if until is not None and low >= until:
                    break
                if ahead is not None and ahead[0] == low:
                    events = await ahead[1]
                else:
                    if ahead is not None:
                        ahead[1].cancel()
                    events = await self._read(low, until)
                ahead = None
                if not events:
                    break
                if until is None or events[-1].position < until:
                    nxt = events[-1].position
                    ahead = (nxt, asyncio.ensure_future(self._read(nxt, until)))
                reached = await self._apply_page(events)
                if reached is None:  # a rebuild is swapping its tables in: look again shortly
                    await asyncio.sleep(PAUSE_POLL)
                    return self.position
                low = reached
                self._advance(reached)
                if progress is not None:
                    progress(reached, max(head, reached))
        finally:
            if ahead is not None:
                ahead[1].cancel()
                with contextlib.suppress(BaseException):
                    await ahead[1]
        self._advance(low)
        return low

    async def build(
        self,
        progress: Progress | None = None,
        until: int | None = None,
        on_page: Callable[[int, int], None] | None = None,
    ) -> int:
        """`catch_up` for a file no one else uses yet (a rebuild's): when the store can read pages
        synchronously, every page is read, decoded and applied in this file's own thread, with no
        hop between threads per page. `on_page(position, head)` is called in that thread,
        `progress` on the event loop. Returns the position reached."""
        assert self._conn is not None
        open_reader = getattr(self.store, "page_reader", None)
        if open_reader is None:
            return await self.catch_up(progress, until)
        head = await self.store.head()
        if until is not None:
            head = min(head, until)
        loop = asyncio.get_running_loop()

        def reached_page(position: int) -> None:
            if on_page is not None:
                on_page(position, max(head, position))
            if progress is not None:
                loop.call_soon_threadsafe(progress, position, max(head, position))

        reached = await dbthread.run(self._conn, self._build_pages, open_reader(), until, reached_page)
        self._advance(reached)
        return reached

    def _build_pages(
        self, db: sqlite3.Connection, reader: Any, until: int | None, reached_page: Callable[[int], None]
    ) -> int:
        try:
            low = min((pos for (pos,) in db.execute("SELECT position FROM checkpoints")), default=0)
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "off":
                return self._build_unjournaled(db, reader, low, until, reached_page)
            while until is None or low < until:
                limit = self.page if until is None else min(self.page, until - low)
                events = reader.read(low, limit)
                if not events:
                    break
                try:
                    reached = self._apply(db, events)
                except Exception as exc:
                    if storage_fault(exc):  # disk full or read-only: the rebuild fails, nothing is swapped
                        raise
                    log.exception("projection page after %s failed; refolding it event by event", low)
                    reached = self._apply(db, events, True)
                if reached is None or reached <= low:  # paused, or a projection stalls: not a scratch's case
                    break
                low = reached
                reached_page(low)
            return low
        finally:
            reader.close()

    def _build_unjournaled(
        self, db: sqlite3.Connection, reader: Any, low: int, until: int | None, reached_page: Callable[[int], None]
    ) -> int:
        """`_build_pages` into a file without a rollback journal: BUILD_GROUP pages to a transaction,
        so a page the folds touch again and again (random keys) is written out once per group rather
        than once per page. Nothing can be rolled back there, so a page that fails raises
        UnjournaledFailure instead of being folded again event by event."""
        pages = 0
        try:
            while until is None or low < until:
                limit = self.page if until is None else min(self.page, until - low)
                events = reader.read(low, limit)
                if not events:
                    break
                if not db.in_transaction:
                    db.execute("BEGIN IMMEDIATE")
                try:
                    reached = self._apply_open(db, events)
                except Exception as exc:
                    if storage_fault(exc):  # disk full or read-only: the rebuild fails, nothing is swapped
                        raise
                    raise UnjournaledFailure(f"projection page after {low} failed") from exc
                if reached is None or reached <= low:  # paused, or a projection stalls: not a scratch's case
                    break
                low = reached
                pages += 1
                if pages % BUILD_GROUP == 0:
                    db.execute("COMMIT")
                reached_page(low)
            if db.in_transaction:
                db.execute("COMMIT")
            return low
        finally:
            if db.in_transaction:  # failed: the file is thrown away, the connection must just leave it
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

    async def _read(self, after: int, until: int | None) -> list[Event]:
        limit = self.page if until is None else max(0, min(self.page, until - after))
        return await self.store.read_all(after, limit) if limit else []

    async def _apply_page(self, events: list[Event]) -> int | None:
        assert self._conn is not None
        try:
            return await dbthread.run(self._conn, self._apply, events)
        except Exception as exc:
            if storage_fault(exc):  # disk full or read-only: nothing applied; retried next round
                raise
            log.exception("projection page after %s failed; refolding it event by event", events[0].position - 1)
            return await dbthread.run(self._conn, self._apply, events, True)

    def _advance(self, position: int) -> None:
        if position > self.position:
            self.position = position
            self._advanced.set()
            self._advanced = asyncio.Event()
            waiters = self._waiters
            while waiters and waiters[0][0] <= position:
                future = heapq.heappop(waiters)[2]
                if not future.done():
                    future.set_result(None)

    async def start(self) -> None:
        """Catch up, then follow the log in the background."""
        await self.catch_up()
        self._task = asyncio.create_task(self._follow(), name="kroma-projections")

    async def _follow(self) -> None:
        while True:
            try:
                await self.catch_up()
                self.fault = None
                await self.store.wait_for_append(self.position, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving reads; the next round retries the page
                self.fault = storage_fault(exc)
                log.exception("projection batch failed")
                await asyncio.sleep(0.5)

    async def wait_for(self, position: int, timeout: float = 10.0) -> None:
        """Return once every read model reflects the log up to `position` (read-your-writes).

        Raises StorageUnavailable once the read models have failed to be written for
        FAULT_PATIENCE seconds of the wait (disk full), Internal after `timeout`. A waiter is one
        future, resolved by `_advance`: no task, timer or wake-up of its own."""
        if self.position >= position:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (position, next(self._waiter_seq), future, deadline, now))
        watch = self._watch
        if watch is None or watch.when() > deadline:
            if watch is not None:
                watch.cancel()
            self._watch = loop.call_at(min(now + WATCH, deadline), self._look_at_waiters)
        await future

    def _look_at_waiters(self) -> None:
        """Fail the waiters past their deadline, or waiting through a lasting fault; forget the
        ones whose caller went away; look again while any is left."""
        self._watch = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = []
        for waiter in self._waiters:
            _, _, future, deadline, since = waiter
            if future.done():
                continue
            if self.fault is not None and now - since > FAULT_PATIENCE:
                future.set_exception(StorageUnavailable())  # the read models cannot be written (disk full)
            elif now >= deadline:
                future.set_exception(Internal())
            else:
                left.append(waiter)
        heapq.heapify(left)
        self._waiters = left
        if left:
            soonest = min(w[3] for w in left)
            self._watch = loop.call_at(min(now + WATCH, soonest), self._look_at_waiters)

    async def rebuild(self, names: Sequence[str] | None = None, progress: Progress | None = None) -> int:
        """Fold the named projections (all when None) again from position zero into a fresh file
        while this file keeps answering, then swap them in atomically (see kroma.projections.rebuild).
        Returns the position the swapped-in read models reflect."""
        from kroma.projections.rebuild import rebuild_live

        for name in names or ():
            self.by_name(name)  # KeyError before any work
        reached = await rebuild_live(self, names, progress)
        self._advance(reached)
        return reached
