"""Read models on PostgreSQL, when the event store is there too (a schema of their own).

Projections fold synchronously (`apply(db, event)` on a sqlite3 connection, in a worker thread).
On PostgreSQL they get `PgConnection`: the part of sqlite3.Connection they use, on a psycopg 3
(sync) connection, with their SQL translated once per statement (`kroma.projections.pg_sql`) and
SQLite's loose typing kept where it matters (integers are sent untyped so a text column accepts
them; `sum`/`avg` come back as int/float, not Decimal).

Several processes share one read-model schema. `BEGIN IMMEDIATE` (the runner's write transaction)
becomes BEGIN plus `pg_advisory_xact_lock(<key of the schema>)`: one process folds a page at a
time, and since the runner re-reads the checkpoints inside that transaction, a process that waited
finds the page folded by another and only moves its own `position` on (read-your-writes: `settle`
waits until the checkpoints, whoever wrote them, reach the write). Rows and checkpoints commit in
one transaction as on SQLite.

A rebuild folds into a fresh schema while the live one keeps answering, then, holding the live
schema's fold lock (so no runner folds meanwhile), folds what was appended since, copies the tables
no projection owns (`token_usage`) and swaps the schemas by renaming them in one transaction.
Every connection finds its tables through `search_path` by name, so each statement after the commit
sees the new tables; none is reopened.

Every transaction that writes the read models (a fold, a rebuild's swap) also queues
`pg_notify('<schema>_changed', <who>)`, delivered at its commit: readers of every process LISTEN
on that channel and drop their cached answers (`PostgresReadModels`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper, Loader
from psycopg.rows import dict_row

from kroma import dbthread
from kroma.events.store import EventStore
from kroma.projections.base import Projection
from kroma.projections.pg_sql import TableInfo, translate
from kroma.projections.reader import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, CACHE_MAX_ROWS, ReadModels
from kroma.projections.rebuild import RebuildBusy
from kroma.projections.runner import (
    CHECKPOINTS,
    FAILURES,
    REBUILDS,
    RUNNER_TABLES,
    Progress,
    ProjectionRunner,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSLATIONS_KEPT = 4096  # translated statements cached per connection (then the cache starts over)
POOL_SIZE = 10  # read connections per process (storage.readmodels_pool_size)
LISTEN_PING = 5.0  # seconds between two checks that the LISTEN connection still answers
LISTEN_PING_TIMEOUT = 5.0  # a check not answered by then counts as a lost connection
_CHANNEL_MAX = 63  # PostgreSQL's identifier length (NAMEDATALEN - 1): a channel name is one


def change_channel(schema: str) -> str:
    """The NOTIFY channel on which every write to the read models of `schema` is announced."""
    name = f"{schema}_changed"
    if len(name.encode()) <= _CHANNEL_MAX:
        return name
    return f"kroma_rm_{hashlib.sha256(schema.encode()).hexdigest()[:32]}_changed"  # a rebuild's `_rb`


def fold_lock_key(schema: str) -> int:
    """The advisory-lock key that lets one process at a time fold into the read models of `schema`."""
    return int.from_bytes(
        hashlib.sha256(f"kroma.readmodels:{schema}".encode()).digest()[:8], "big", signed=True
    )


def _rebuild_lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(f"kroma.rebuild:{schema}".encode()).digest()[:8], "big", signed=True)


# -- types: SQLite's loose typing where the projections rely on it ---------------------------------


class _UntypedInt(Dumper):
    """Integers (and bools) go untyped: the server gives them the type their context needs, as SQLite
    would store 1 in a TEXT column (a typed int8 would make `text_column = $1` an error)."""

    oid = 0

    def dump(self, obj: Any) -> bytes:
        return str(int(obj)).encode()


class _NumericLoader(Loader):
    """`numeric` (what sum() and avg() of integers give) as SQLite answers: int when whole, float
    when it has a fractional part (avg always has one on PostgreSQL, and is a float on SQLite)."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return float(text) if "." in text or "e" in text.lower() else int(Decimal(text))


def _configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_dumper(int, _UntypedInt)
    conn.adapters.register_dumper(bool, _UntypedInt)
    conn.adapters.register_loader("numeric", _NumericLoader)


def ensure_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the schema if missing. Under its fold lock: concurrent `CREATE SCHEMA IF NOT EXISTS`
    from two processes starting at once can still collide in the catalog."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (fold_lock_key(schema),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def _search_path(schema: str) -> sql.Composed:
    return sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))


# -- the connection the projections fold through -----------------------------------------------------


class _NoRows:
    """What a statement with no meaning on PostgreSQL (a PRAGMA) returns."""

    rowcount = -1
    description = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Any:
        return iter(())


class PgConnection:
    """The sqlite3.Connection subset projections and the runner use, on one psycopg connection
    (autocommit; transactions are the explicit BEGIN/COMMIT the runner issues).

    A write transaction (`BEGIN IMMEDIATE`: the fold lock) queues `pg_notify(<channel>, tag)` just
    before its COMMIT, so every reader listening learns of the commit as it becomes visible;
    `commits` counts the COMMITs tried (landed or not), so the caller can tell its own readers."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, tag: str = "") -> None:
        self.conn = conn
        self.schema = schema
        self.tag = tag
        self.commits = 0
        self._writing = False  # inside a write transaction (BEGIN IMMEDIATE), not yet ended
        self._lock = f"SELECT pg_advisory_xact_lock({fold_lock_key(schema)})"
        self._notify = sql.SQL("SELECT pg_notify({}, {})").format(
            sql.Literal(change_channel(schema)), sql.Literal(tag)
        )
        self._sql: dict[tuple[str, bool], str | None] = {}
        self._tables: dict[str, TableInfo] = {}

    @classmethod
    def connect(cls, url: str, schema: str, tag: str = "") -> PgConnection:
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=None, application_name="kroma-fold")
        try:
            _configure(conn)
            ensure_schema(conn, schema)
            conn.execute(_search_path(schema))
        except BaseException:
            conn.close()
            raise
        return cls(conn, schema, tag)

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    def table(self, name: str) -> TableInfo:
        info = self._tables.get(name)
        if info is None:
            columns = self.conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = %s ORDER BY ordinal_position",
                (name,),
            ).fetchall()
            keys = self.conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indisprimary AND i.indrelid = %s::regclass"
                " ORDER BY array_position(i.indkey, a.attnum)",
                (name,),
            ).fetchall()
            info = self._tables[name] = TableInfo(tuple(c for (c,) in columns), tuple(k for (k,) in keys))
        return info

    def _translate(self, statement: str, with_params: bool) -> str | None:
        key = (statement, with_params)
        try:
            return self._sql[key]
        except KeyError:
            pass
        word = statement.lstrip()[:6].upper()
        if word in ("CREATE", "DROP", "ALTER"):
            self._tables.clear()
            return translate(statement, self.table, with_params=with_params)
        if len(self._sql) >= TRANSLATIONS_KEPT:  # statements built with varying IN lists
            self._sql.clear()
        text = self._sql[key] = translate(statement, self.table, with_params=with_params)
        return text

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        head = statement.lstrip()[:16].upper()
        if head.startswith("BEGIN"):
            self.conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            self._writing = "IMMEDIATE" in head
            if self._writing:  # the runner's write transaction: one folding process at a time
                self.conn.execute(self._lock)
            return _NoRows()
        if head.startswith(("COMMIT", "END", "ROLLBACK")) and "TO" not in head.split():
            writing, self._writing = self._writing, False
            if head.startswith("ROLLBACK"):
                return self.conn.execute("ROLLBACK")
            if writing:  # readers everywhere drop their cached answers as the commit lands
                self.conn.execute(self._notify)
            self.commits += 1
            return self.conn.execute("COMMIT")
        text = self._translate(statement, bool(params))
        if text is None:
            return _NoRows()
        return self.conn.execute(text, params or None)

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> Any:
        text = self._translate(statement, True)
        if text is None:
            return _NoRows()
        cursor = self.conn.cursor()
        cursor.executemany(text, rows)
        return cursor

    def close(self) -> None:
        self.conn.close()


def _as_sqlite(db: PgConnection) -> sqlite3.Connection:
    """The adapter where the projections' type says sqlite3.Connection (it is duck-typed)."""
    return db  # type: ignore[return-value]


# -- the runner --------------------------------------------------------------------------------------


class PostgresProjectionRunner(ProjectionRunner):
    """ProjectionRunner on a PostgreSQL schema: the same folds, checkpoints and waits; every
    database call runs in this runner's own thread (one connection, used by one thread).

    `on_change` callbacks (this process's readers, see `PostgresReadModels.follow`) are called
    after every call that committed (in the runner's thread, once the commit has returned) and
    whenever `position` moves on (before the waiters of `wait_for` wake): a read after `settle`
    never gets an answer cached before the write. Other processes learn of the commit through the
    NOTIFY it carries, with this runner's `tag` (so its own readers can ignore that one)."""

    def __init__(
        self,
        store: EventStore,
        url: str,
        schema: str,
        projections: Sequence[Projection],
        page: int = 2000,
        *,
        scratch: bool = False,
    ) -> None:
        super().__init__(store, schema, projections, page, scratch=scratch)
        self.url = url
        self.schema = schema
        self.tag = uuid.uuid4().hex  # the payload of this runner's NOTIFYs
        self.on_change: list[Callable[[], None]] = []  # thread-safe callables
        self._pg: PgConnection | None = None
        self._thread: ThreadPoolExecutor | None = None

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def _advance(self, position: int) -> None:
        if position > self.position:  # another process may have folded it: drop cached answers first
            self._changed()
        super()._advance(position)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(connection, *args) in this runner's thread."""
        assert self._pg is not None and self._thread is not None, "read models are not open"

        def call() -> T:
            pg = self._pg
            assert pg is not None
            if pg.conn.broken:  # the server went away: the next round folds on a new connection
                pg.close()
                pg = self._pg = PgConnection.connect(self.url, self.schema, self.tag)
            commits = pg.commits
            try:
                return fn(_as_sqlite(pg), *args)
            finally:  # after a pipeline's last sync: the commit has landed (or failed)
                if pg.commits != commits:
                    self._changed()

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def open(self, copy_from: str | None = None, like: str | None = None) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kroma-pg-{self.schema}")
        loop = asyncio.get_running_loop()
        self._pg = await loop.run_in_executor(
            self._thread, PgConnection.connect, self.url, self.schema, self.tag
        )
        await self._run(self._prepare_pipelined)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pg, self._pg = self._pg, None
        thread, self._thread = self._thread, None
        if pg is not None and thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, pg.close)
        if thread is not None:
            thread.shutdown(wait=False)

    def _prepare_pipelined(self, db: sqlite3.Connection) -> None:
        pg: PgConnection = db  # type: ignore[assignment]  # what _run hands over
        with pg.conn.pipeline():  # a fresh schema's many CREATEs: one round trip, not one each
            self._prepare(db)

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Create tables; a projection whose code version changed is dropped and starts over."""

        def prepare(db: sqlite3.Connection) -> None:
            db.execute(CHECKPOINTS)
            db.execute(FAILURES)
            db.execute(REBUILDS)
            existing = {
                r[0]
                for r in db.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                ).fetchall()
            }
            self._renew_stale(db, existing)

        # IMMEDIATE: takes the fold lock, so two processes starting at once do not both create
        dbthread.in_transaction(db, prepare)

    async def checkpoints(self) -> dict[str, int]:
        rows = await self._run(lambda db: db.execute("SELECT name, position FROM checkpoints").fetchall())
        return {name: pos for name, pos in rows}

    async def failures(self) -> list[tuple[str, int, str, str]]:
        rows = await self._run(
            lambda db: db.execute("SELECT * FROM projection_failures ORDER BY position, name").fetchall()
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _apply_pipelined(self, db: sqlite3.Connection, events: list[Any]) -> int | None:
        """`_apply` in psycopg's pipeline mode: statements go out without waiting for each answer
        (a fold is mostly writes), and the connection waits only where a fold reads a row or at
        COMMIT: one round trip per read instead of one per statement. An error may surface a few
        statements late; the page is then rolled back whole and refolded event by event."""
        pg: PgConnection = db  # type: ignore[assignment]  # what _run hands over
        try:
            with pg.conn.pipeline():
                return self._apply(db, events)
        except BaseException:
            if not pg.conn.closed and pg.in_transaction:
                pg.conn.execute("ROLLBACK")
            raise

    async def _apply_page(self, events: list[Any]) -> int | None:
        try:
            return await self._run(self._apply_pipelined, events)
        except Exception:
            if self._pg is None or self._pg.conn.closed or self._pg.conn.broken:
                raise  # the connection, not an event: retried next round
            log.exception(
                "projection page after %s failed; refolding it event by event", events[0].position - 1
            )
            return await self._run(self._apply, events, True)

    async def build(
        self,
        progress: Progress | None = None,
        until: int | None = None,
        on_page: Callable[[int, int], None] | None = None,
    ) -> int:
        return await self.catch_up(progress, until)

    async def rebuild(self, names: Sequence[str] | None = None, progress: Progress | None = None) -> int:
        for name in names or ():
            self.by_name(name)  # KeyError before any work
        reached = await rebuild_schema(self, names, progress)
        self._advance(reached)
        return reached


# -- rebuild: a fresh schema, swapped in by renaming --------------------------------------------------


def _copy_tables(conn: psycopg.Connection[Any], source: str, target: str, tables: Iterable[str]) -> None:
    for table in tables:
        src, dst = sql.Identifier(source, table), sql.Identifier(target, table)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(dst))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(dst, src))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(dst, src))


def _tables_of(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
        (schema,),
    ).fetchall()
    return [name for (name,) in rows]


async def rebuild_schema(
    runner: PostgresProjectionRunner, names: Sequence[str] | None = None, progress: Progress | None = None
) -> int:
    """Rebuild the named projections (all when None) of `runner`'s schema without downtime; returns
    the position the swapped-in read models reflect."""
    live = runner.schema
    fresh_name = f"{live}_rb"
    owned = set(RUNNER_TABLES) | {t for p in runner.projections for t in p.tables}
    control: psycopg.Connection[Any] = await asyncio.to_thread(
        lambda: psycopg.connect(runner.url, autocommit=True, prepare_threshold=None)
    )
    try:
        got = await asyncio.to_thread(
            lambda: control.execute("SELECT pg_try_advisory_lock(%s)", (_rebuild_lock_key(live),)).fetchone()
        )
        if not (got and got[0]):
            raise RebuildBusy(f"another rebuild of the read models in schema {live} is running")

        def start() -> None:
            control.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(fresh_name)))
            control.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(fresh_name)))
            if names:  # the other projections as they are now: one snapshot of the live schema
                with control.transaction():
                    control.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    _copy_tables(
                        control, live, fresh_name, [t for t in _tables_of(control, live) if t in owned]
                    )

        await asyncio.to_thread(start)
        fresh = PostgresProjectionRunner(
            runner.store, runner.url, fresh_name, runner.projections, runner.page, scratch=not names
        )
        try:
            await fresh.open()
            if names:
                await fresh._run(fresh.reset, list(names))
            await fresh.catch_up(progress)
            await fresh._run(fresh.create_deferred_indexes)
            # Hold the live fold lock (session-wide): live runners wait; fold what came meanwhile.
            await asyncio.to_thread(control.execute, "SELECT pg_advisory_lock(%s)", (fold_lock_key(live),))
            try:
                reached = await fresh.catch_up(progress)
            finally:
                await fresh.close()

            def swap() -> None:
                old = f"{live}_old"  # one rebuild at a time (the rebuild lock)
                with control.transaction():
                    _copy_tables(
                        control, live, fresh_name, [t for t in _tables_of(control, live) if t not in owned]
                    )
                    control.execute(
                        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                            sql.Identifier(live), sql.Identifier(old)
                        )
                    )
                    control.execute(
                        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                            sql.Identifier(fresh_name), sql.Identifier(live)
                        )
                    )
                    control.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(old)))
                    control.execute("SELECT pg_notify(%s, '')", (change_channel(live),))  # every reader

            await asyncio.to_thread(swap)
            runner._changed()
            return reached
        finally:
            await fresh.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                control.execute,
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(fresh_name)),
            )
        await asyncio.to_thread(control.close)  # ends the session: its advisory locks go with it


# -- the reader --------------------------------------------------------------------------------------


class PostgresReadModels(ReadModels):
    """ReadModels (same interface: rows as dicts, `all`/`one`/`scalar`/`derived`/`lasting`) on a
    PostgreSQL schema. Statements run on a pool of async connections (`pool_size`, opened as
    needed), one statement each in autocommit, so nothing blocks the event loop and each statement
    is its own snapshot, taken after every commit that had returned (a read after `settle` sees its
    write).

    Answers are cached as SQLite's reader caches them, until the read models change. What says they
    changed is a generation counter, moved on (`changed`, thread-safe)
    - by every NOTIFY on the schema's channel (`change_channel`): each transaction that writes the
      read models, in any process, sends one, delivered at its commit; this reader LISTENs on a
      connection of its own;
    - by this process's runner (`follow`), synchronously, after each of its commits and before its
      position moves on, so `settle` never returns while an answer cached before the write is kept
      (another process's fold included: the runner moves on only once it has seen its checkpoints).
    An answer is kept only when no change was heard while it was read; the next statement after a
    change empties the cache. Without the LISTEN connection nothing would say another process
    committed: while it is down (lost, or its periodic check not answered) the cache is emptied and
    off, every statement goes to the server, and it comes back on only once LISTEN is re-established.
    Statements on `token_usage` (written outside any fold, without a NOTIFY) are never cached."""

    def __init__(self, url: str, schema: str, pool_size: int = POOL_SIZE) -> None:
        super().__init__(schema, thread_connections=max(1, pool_size))
        self.url = url
        self.schema = schema
        self.channel = change_channel(schema)
        self.hits = 0  # answers served from the cache
        self._pool: list[psycopg.AsyncConnection[dict[str, Any]]] = []
        self._sql: dict[tuple[str, bool], tuple[str, bool]] = {}
        self._open = False
        self._generation = 0  # moves on whenever the read models may have changed
        self._generation_lock = threading.Lock()
        self._cached_at = -1  # the generation every cached answer was read at
        self._listening = False  # the cache is on only while the LISTEN connection is up
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._own_tags: set[str] = set()  # NOTIFY payloads of this process's runners

    @property
    def caching(self) -> bool:
        """Whether answers are cached now (the LISTEN connection is up)."""
        return self._listening and self._open

    def follow(self, runner: PostgresProjectionRunner) -> None:
        """Hear of `runner`'s commits and progress directly (synchronously, before `settle` returns);
        its own NOTIFYs then bring no news."""
        runner.on_change.append(self.changed)
        self._own_tags.add(runner.tag)

    def changed(self) -> None:
        """The read models may have changed: no answer read before now is served again. Any thread."""
        with self._generation_lock:
            self._generation += 1

    async def open(self) -> None:
        self._slots = asyncio.Semaphore(self.thread_connections)
        self._pool.append(await self._connect())
        self._open = True
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._listen()  # else the supervisor keeps trying; uncached meanwhile
        self._supervisor = asyncio.create_task(self._supervise(), name="kroma-readmodels-listen")

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        conn = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            prepare_threshold=None,
            row_factory=dict_row,
            application_name="kroma-read",
        )
        _configure(conn)
        await conn.execute(_search_path(self.schema))
        return conn

    async def close(self) -> None:
        self._open = False
        self._listening = False
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._on_listener_lost)
            if not listener.is_closed():
                with contextlib.suppress(Exception):
                    await listener.close(timeout=5)
        self._cache.clear()
        self._derived.clear()
        while self._pool:
            await self._pool.pop().close()

    # -- change notifications ----------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self.url, timeout=10, server_settings={"application_name": "kroma-read-listen"}
        )
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        if conn.is_closed() or not self._open:
            conn.terminate()
            return
        self._listener = conn
        self.changed()  # whatever was committed while nobody listened went unannounced
        self._listening = True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload not in self._own_tags:  # this process's runner already said so, synchronously
            self.changed()

    def _on_listener_lost(self, conn: object) -> None:
        if conn is self._listener and self._open:
            log.warning("read models: LISTEN connection lost; answers are not cached until it is back")
            self._drop_listener()

    def _drop_listener(self) -> None:
        """Cache off and empty; the supervisor reconnects."""
        conn, self._listener = self._listener, None
        self._listening = False
        self.changed()
        self._cache.clear()
        self._derived.clear()
        if conn is not None:
            conn.remove_termination_listener(self._on_listener_lost)
            if not conn.is_closed():
                conn.terminate()
        self._wake.set()

    async def _supervise(self) -> None:
        """Keep the LISTEN connection up: re-open it when lost, and check it answers every
        LISTEN_PING seconds (a connection that silently stopped would otherwise keep the cache on)."""
        delay = 0.1
        lost = not self._listening  # the first try, in open(), failed
        while self._open:
            found = self._listener
            if found is None or found.is_closed():
                if found is not None:
                    self._drop_listener()
                lost = True
                try:
                    await self._listen()
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if lost and self._listening:
                    log.info("read models: LISTEN connection re-established; caching again")
                    lost = False
                delay = 0.1
                continue
            conn: asyncpg.Connection = found
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LISTEN_PING):
                    await self._wake.wait()
            if conn.is_closed() or not self._is_listener(conn):
                continue
            try:
                async with asyncio.timeout(LISTEN_PING_TIMEOUT):
                    await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._is_listener(conn):
                    log.warning(
                        "read models: LISTEN connection does not answer; not caching until it is back"
                    )
                    self._drop_listener()

    def _is_listener(self, conn: asyncpg.Connection) -> bool:
        return conn is self._listener

    # -- reads -------------------------------------------------------------------------------

    def _look(self) -> int:  # type: ignore[override]  # no connection to look at: the generation
        """The generation now; the cache is emptied when it moved since the answers were read."""
        generation = self._generation
        if generation != self._cached_at:
            self._cache.clear()
            self._derived.clear()
            self._cached_at = generation
        return generation

    def _may_keep(self, generation: int) -> bool:
        """Whether an answer read since `generation` was looked at may be cached: no change heard meanwhile."""
        return self._listening and self._generation == generation == self._cached_at

    def _translate(self, statement: str, with_params: bool) -> tuple[str, bool]:
        """The statement's PostgreSQL text, and whether its answer may be cached."""
        key = (statement, with_params)
        found = self._sql.get(key)
        if found is None:
            text = translate(statement, _no_tables, with_params=with_params)
            if text is None:
                raise ValueError(f"read models on PostgreSQL cannot run {statement!r}")
            if len(self._sql) >= TRANSLATIONS_KEPT:
                self._sql.clear()
            found = self._sql[key] = (text, "token_usage" not in statement.lower())
        return found

    async def derived(self, key: Hashable, build: Callable[[], Awaitable[T]]) -> T:
        if not self.caching:
            return await build()
        generation = self._look()
        if key in self._derived:
            self.hits += 1
            return self._derived[key]
        value = await build()
        small = not isinstance(value, bytes) or len(value) <= CACHE_MAX_BYTES
        if small and self._may_keep(generation) and len(self._derived) < CACHE_MAX_ENTRIES:
            self._derived[key] = value
        return value

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        assert self._open, "read models are not open"
        text, cacheable = self._translate(sql, bool(params))
        if not (cacheable and self._listening):
            return await self._query(text, params)
        generation = self._look()
        key = (sql, tuple(params))
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return [row.copy() for row in cached]
        rows = await self._query(text, params)
        if (
            len(rows) <= CACHE_MAX_ROWS
            and len(self._cache) < CACHE_MAX_ENTRIES
            and self._may_keep(generation)
        ):
            self._cache[key] = [row.copy() for row in rows]
        return rows

    async def _query(self, text: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        slots = self._slots
        assert slots is not None and self._open, "read models are not open"
        async with slots:
            pooled = bool(self._pool)
            conn = self._pool.pop() if pooled else await self._connect()
            try:
                rows = await self._fetch(conn, text, params)
            except psycopg.OperationalError:
                await conn.close()
                if not pooled or not conn.broken:
                    raise
                # An idle connection the server dropped (a restart): a read is safe to run again.
                await self._drop_idle()
                conn = await self._connect()
                try:
                    rows = await self._fetch(conn, text, params)
                except BaseException:
                    await conn.close()
                    raise
            except BaseException:
                await conn.close()  # its state is unknown (a cancel mid-statement): never reused
                raise
            if self._open and not conn.broken:
                self._pool.append(conn)
            else:
                await conn.close()
        return rows

    @staticmethod
    async def _fetch(
        conn: psycopg.AsyncConnection[dict[str, Any]], text: str, params: Sequence[Any]
    ) -> list[dict[str, Any]]:
        cursor = await conn.execute(text, tuple(params) or None)
        return await cursor.fetchall() if cursor.description is not None else []

    async def _drop_idle(self) -> None:
        """Close the idle connections: the server likely dropped them too."""
        idle, self._pool = self._pool, []
        for conn in idle:
            await conn.close()


def _no_tables(name: str) -> TableInfo:
    raise ValueError(f"read models are read-only here (statement on {name})")
