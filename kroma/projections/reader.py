"""Read access to the read models for request handlers: rows come back as dicts.

A request's reads are a few indexed lookups in a WAL file, each far cheaper than a hop to a worker
thread and back. So a statement first runs inline, on the event loop, on a read-only connection
that no other thread uses; a statement still running after `inline_budget` seconds is interrupted
(SQLite's progress handler) and run again on a pooled connection in a worker thread, so a long read
(a big page, a cold cache) stalls the loop for at most that budget. A statement that meets a lock
(SQLITE_BUSY, which WAL readers only see while another connection recovers the file) also moves to
a worker thread, where it may wait.

Every statement is its own read transaction on a snapshot at least as new as every commit that had
returned when it started, so a read after `runner.wait_for(position)` sees that position
(read-your-writes).

Results are cached until the file changes: SQLite's `PRAGMA data_version` moves whenever any other
connection (the projection runner, a rebuild by the CLI, another process) commits to it, and it is
read before every statement, so a cached answer is never older than what the statement itself would
have seen. Small results only (`CACHE_MAX_ROWS`, `CACHE_MAX_ENTRIES`); callers get their own copies
of the rows. `derived` remembers a value made from rows (a route's encoded answer) the same way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from kroma.walcheckpoint import Checkpointer

T = TypeVar("T")

INLINE_BUDGET = 0.002  # seconds a statement may run on the event loop before it moves to a thread
THREAD_CONNECTIONS = 4  # worker-thread statements at once (each on its own pooled connection)
THREAD_BUSY_TIMEOUT_MS = 5000
_CHECK_EVERY = 2000  # SQLite VM instructions between two looks at the clock
CACHE_MAX_ENTRIES = 2048  # distinct (statement, parameters) answers kept between two commits
CACHE_MAX_ROWS = 256  # larger answers are not cached
CACHE_MAX_BYTES = 256 * 1024  # nor larger derived bytes (an encoded answer)
LASTING_MAX_ENTRIES = 65536  # values that never change (`lasting`), kept while the reader is open


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    rows = cursor.fetchall()
    if not rows:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _open(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    db.execute("PRAGMA query_only=1")  # a reader: a bug here can never write a read model
    return db


class ReadModels:
    def __init__(
        self, path: str, inline_budget: float = INLINE_BUDGET, thread_connections: int = THREAD_CONNECTIONS
    ) -> None:
        self.path = path
        self.inline_budget = inline_budget
        self.thread_connections = thread_connections
        self._inline: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._idle: list[sqlite3.Connection] = []  # pooled worker-thread connections not in use
        self._slots: asyncio.Semaphore | None = None
        self.moved_to_thread = 0  # statements that outgrew the inline budget (or met a lock)
        self._cache: dict[tuple[str, tuple[Any, ...]], list[dict[str, Any]]] = {}
        self._derived: dict[Hashable, Any] = {}
        self._lasting: dict[Hashable, Any] = {}
        self._cache_version: int | None = None
        self._fresh = False  # _cache_version is current until the loop runs _stale
        self._checkpointer: Checkpointer | None = None

    async def open(self) -> None:
        # The file's schema and WAL mode come from the projection runner; a fresh file is fine too.
        self._inline = _open(self.path, 0)  # never wait on the loop: a busy file moves to a thread
        self._inline.set_progress_handler(self._over_budget, _CHECK_EVERY)
        self._slots = asyncio.Semaphore(self.thread_connections)
        # The file's checkpoints run here, not in the projection runner's commits (which
        # requests wait for); the reader is open wherever the runner writes.
        self._checkpointer = Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        inline, self._inline = self._inline, None
        self._cache.clear()
        self._derived.clear()
        self._cache_version = None
        self._fresh = False
        if inline is not None:
            inline.close()
        while self._idle:
            self._idle.pop().close()

    def forget(self) -> None:
        """Drop every remembered answer (the next statement reads the file again)."""
        self._cache.clear()
        self._derived.clear()
        self._lasting.clear()

    def _over_budget(self) -> int:
        return 1 if time.perf_counter() > self._deadline else 0

    def _look(self, db: sqlite3.Connection) -> int:
        """The file's data version now; the caches are emptied when another connection committed
        since the last look. Read before a statement, so a cached answer is never older.

        One look answers every statement until the event loop runs the callback it queues (the
        `PRAGMA` costs ~3 us, a request makes up to three). That is still read-your-writes: a
        commit after the look reaches a reader only through a callback queued after it (the
        loop's ready queue is FIFO: a thread's `call_soon_threadsafe`, a task woken by the
        runner, a socket read that starts a request), so `_stale` runs first."""
        self._deadline = time.perf_counter() + self.inline_budget
        if self._fresh:
            return self._cache_version  # type: ignore[return-value]  # set with _fresh
        version: int = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._cache_version:
            self._cache.clear()
            self._derived.clear()
            self._cache_version = version
        try:
            asyncio.get_running_loop().call_soon(self._stale)
        except RuntimeError:  # no loop running (a synchronous caller): look every time
            return version
        self._fresh = True
        return version

    def _stale(self) -> None:
        self._fresh = False

    async def derived(self, key: Hashable, build: Callable[[], Awaitable[T]]) -> T:
        """What `build()` returns, remembered as a statement's rows are (until another connection
        commits to the file): for a value made only from read-model rows, such as a route's
        encoded answer. `key` must name everything else it depends on; the value is shared, so
        it must never be changed. A `build()` that raises is not remembered."""
        db = self._inline
        assert db is not None, "read models are not open"
        try:
            version = self._look(db)
        except sqlite3.OperationalError:
            return await build()
        if key in self._derived:
            return self._derived[key]
        value = await build()
        small = not isinstance(value, bytes) or len(value) <= CACHE_MAX_BYTES
        if small and self._cache_version == version and len(self._derived) < CACHE_MAX_ENTRIES:
            self._derived[key] = value  # nobody saw a newer version meanwhile
        return value

    async def lasting(self, key: Hashable, build: Callable[[], Awaitable[T | None]]) -> T | None:
        """What `build()` returns, remembered for good once it is not None: for a value that never
        changes once it exists (a slug's project and its owner). None is asked again each time.
        The value is shared, so it must never be changed."""
        found = self._lasting.get(key)
        if found is not None:
            return found
        value = await build()
        if value is not None and len(self._lasting) < LASTING_MAX_ENTRIES:
            self._lasting[key] = value
        return value

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        db = self._inline
        assert db is not None, "read models are not open"
        key = (sql, tuple(params))
        try:
            self._look(db)
            cached = self._cache.get(key)
            if cached is not None:
                return [row.copy() for row in cached]
            rows = _rows(db.execute(sql, params))
        except sqlite3.OperationalError as exc:
            if not _retry_in_thread(exc):
                raise
            self.moved_to_thread += 1
            return await self._in_thread(sql, params)
        if len(rows) <= CACHE_MAX_ROWS and len(self._cache) < CACHE_MAX_ENTRIES:
            self._cache[key] = [row.copy() for row in rows]
        return rows

    async def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.all(sql, params)
        return next(iter(rows[0].values())) if rows else None

    async def _in_thread(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        slots = self._slots
        assert slots is not None, "read models are not open"
        await slots.acquire()
        try:
            work = asyncio.get_running_loop().run_in_executor(None, self._thread_query, sql, params)
        except BaseException:
            slots.release()
            raise
        work.add_done_callback(lambda _: slots.release())  # when the thread is done, not the caller
        return await asyncio.shield(work)

    def _thread_query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """In a worker thread: one statement on a pooled connection (list append/pop are atomic)."""
        try:
            db = self._idle.pop()
        except IndexError:
            db = _open(self.path, THREAD_BUSY_TIMEOUT_MS)
        try:
            return _rows(db.execute(sql, params))
        finally:
            if self._inline is None:  # closed meanwhile
                db.close()
            else:
                self._idle.append(db)


def _retry_in_thread(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return (
        message == "interrupted" or "database is locked" in message or "database table is locked" in message
    )
