"""Keeps read models up to date: catch up from checkpoints, then follow the log.

Each batch of events is applied to every projection and each projection's checkpoint is written
in the same transaction as its rows, so no event is applied twice or skipped, even across a
crash. Checkpoints are re-read inside every transaction, so a rebuild by another process (the
CLI) is never overrun: a projection whose checkpoint is behind a batch is left for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence

import aiosqlite

from kroma import dbthread
from kroma.domain.errors import Internal
from kroma.events.envelope import Event
from kroma.events.store import EventStore
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

Progress = Callable[[int, int], None]  # (position reached, head)


class ProjectionRunner:
    def __init__(
        self, store: EventStore, path: str, projections: Sequence[Projection], page: int = 2000
    ) -> None:
        self.store = store
        self.path = path
        self.projections = list(projections)
        self.page = page
        self.position = 0  # every projection has applied at least this far
        self._conn: aiosqlite.Connection | None = None
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def by_name(self, name: str) -> Projection:
        for p in self.projections:
            if p.name == name:
                return p
        raise KeyError(name)

    async def open(self) -> None:
        self._conn = await dbthread.connect(self.path)
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
            stored = dict(db.execute("SELECT name, version FROM checkpoints").fetchall())
            existing = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for p in self.projections:
                if stored.get(p.name) == p.version and existing.issuperset(p.tables):
                    continue
                self._drop(db, p)
                self._create(db, p)
                db.execute("INSERT INTO checkpoints VALUES (?, ?, 0)", (p.name, p.version))

        dbthread.in_transaction(db, prepare)

    @staticmethod
    def _drop(db: sqlite3.Connection, p: Projection) -> None:
        for table in p.tables:
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute("DELETE FROM checkpoints WHERE name = ?", (p.name,))
        db.execute("DELETE FROM projection_failures WHERE name = ?", (p.name,))

    @staticmethod
    def _create(db: sqlite3.Connection, p: Projection) -> None:
        for statement in p.schema.split(";"):
            if statement.strip():
                db.execute(statement)

    async def checkpoints(self) -> dict[str, int]:
        assert self._conn is not None
        rows = await self._conn.execute_fetchall("SELECT name, position FROM checkpoints")
        return {name: pos for name, pos in rows}

    def _apply(self, db: sqlite3.Connection, events: list[Event], isolate: bool = False) -> int:
        """Apply one page to every projection that has reached its start; returns the new
        minimum checkpoint. With `isolate`, each event is applied under its own savepoint and one
        that fails is recorded in `projection_failures` and skipped, so a single event no
        projection can fold does not stall every read model (and every request waiting on them)."""

        def apply(db: sqlite3.Connection) -> int:
            checkpoints = dict(db.execute("SELECT name, position FROM checkpoints").fetchall())
            first, last = events[0].position, events[-1].position
            for p in self.projections:
                checkpoint = checkpoints.get(p.name, 0)
                if checkpoint >= last or checkpoint < first - 1:
                    continue  # up to date, or behind this page (it catches up next round)
                handles = p.handles
                for event in events:
                    if event.position > checkpoint and (handles is None or event.type in handles):
                        if isolate:
                            self._apply_isolated(db, p, event)
                        else:
                            p.apply(db, event)
                db.execute("UPDATE checkpoints SET position = ? WHERE name = ?", (last, p.name))
                checkpoints[p.name] = last
            return min((checkpoints.get(p.name, 0) for p in self.projections), default=last)

        return dbthread.in_transaction(db, apply)

    @staticmethod
    def _apply_isolated(db: sqlite3.Connection, p: Projection, event: Event) -> None:
        db.execute("SAVEPOINT fold")
        try:
            p.apply(db, event)
        except Exception as exc:
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

    async def catch_up(self, progress: Progress | None = None) -> int:
        """Apply every committed event; returns the position reached."""
        assert self._conn is not None
        head = await self.store.head()
        while True:
            low = min((await self.checkpoints()).values(), default=0)
            events = await self.store.read_all(low, self.page)
            if not events:
                self._advance(low)
                return low
            try:
                reached = await dbthread.run(self._conn, self._apply, events)
            except Exception:
                log.exception("projection page after %s failed; refolding it event by event", low)
                reached = await dbthread.run(self._conn, self._apply, events, True)
            self._advance(reached)
            if progress is not None:
                progress(reached, max(head, reached))

    def _advance(self, position: int) -> None:
        if position > self.position:
            self.position = position
            self._advanced.set()
            self._advanced = asyncio.Event()

    async def start(self) -> None:
        """Catch up, then follow the log in the background."""
        await self.catch_up()
        self._task = asyncio.create_task(self._follow(), name="kroma-projections")

    async def _follow(self) -> None:
        while True:
            try:
                await self.catch_up()
                await self.store.wait_for_append(self.position, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving reads; the next round retries the page
                log.exception("projection batch failed")
                await asyncio.sleep(0.5)

    async def wait_for(self, position: int, timeout: float = 10.0) -> None:
        """Return once every read model reflects the log up to `position` (read-your-writes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Internal()
            advanced = self._advanced
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), min(remaining, 0.5))

    async def rebuild(self, names: Sequence[str] | None = None, progress: Progress | None = None) -> int:
        """Drop the named projections' tables (all when None) and fold the log again from zero."""
        assert self._conn is not None
        chosen = [self.by_name(n) for n in names] if names else self.projections

        def reset(db: sqlite3.Connection) -> None:
            def run(db: sqlite3.Connection) -> None:
                for p in chosen:
                    self._drop(db, p)
                    self._create(db, p)
                    db.execute("INSERT INTO checkpoints VALUES (?, ?, 0)", (p.name, p.version))

            dbthread.in_transaction(db, run)

        await dbthread.run(self._conn, reset)
        self.position = 0
        return await self.catch_up(progress)
