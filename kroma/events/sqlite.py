"""The SQLite event store: one writer task, group commit, WAL, a SHA-256 chain.

Appenders encode their events (ids, JSON bytes, timestamps) on the event loop, hand the writer a
(command, future) pair and wait. The writer takes everything waiting and writes it in one
BEGIN IMMEDIATE ... COMMIT with one thread hop per batch. Stream versions and the log head are
cached by the writer; each batch first re-reads the head inside its write lock, so an append by
another process (a CLI command) is noticed and the cache refreshed. Because every conflict is
decided under that lock before any row is written, a conflicting command fails alone and the
rest of the batch commits; positions are handed out only to commands that commit, so readers
never see a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import msgspec

from kroma import dbthread
from kroma.clock import Clock
from kroma.events import codec, verification
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent
from kroma.events.rows import row_to_event
from kroma.events.store import AppendResult, ConcurrencyConflict, IdempotencyMismatch
from kroma.walcheckpoint import Checkpointer

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    metadata       BLOB    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    hash           BLOB    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result      BLOB NOT NULL,
    response    BLOB
);
"""

INSERT_EVENT = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)"
COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, data, metadata, recorded_at, hash"
)

_result_decoder = msgspec.json.Decoder(AppendResult)
_NO_METADATA = Metadata()
_EMPTY_META = codec.encode(_NO_METADATA)


@dataclass(slots=True)
class _Command:
    rows: list[tuple[str, str, str, int, bytes, bytes, str]]  # id, stream, type, schema, data, meta, at
    expected: Mapping[str, int]
    key: str | None
    fingerprint: str
    future: asyncio.Future[AppendResult]
    streams: frozenset[str] = frozenset()  # every stream it appends to or expects a version of


@dataclass(slots=True)
class _SaveResponse:
    key: str
    response: bytes
    future: asyncio.Future[None]


@dataclass(slots=True)
class _WriterState:
    """Owned by the writer thread: never touched from the event loop after open()."""

    head_position: int = 0
    head_hash: bytes = codec.GENESIS
    versions: dict[str, int] = field(default_factory=dict)


class SQLiteEventStore:
    """EventStore on one SQLite file (see the module docstring for the write path)."""

    def __init__(self, path: str, clock: Clock | None = None, poll_interval: float = 0.5) -> None:
        self.path = path
        self.clock = clock or Clock()
        self.poll_interval = poll_interval
        self._writer_conn: aiosqlite.Connection | None = None
        self._reader_conn: aiosqlite.Connection | None = None
        self._pending: list[_Command | _SaveResponse] = []
        self._undecided: dict[str, int] = {}  # stream -> commands queued or being written
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._visible_head = 0
        self._state = _WriterState()
        self._writer_task: asyncio.Task[None] | None = None
        self._checkpointer: Checkpointer | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._writer_conn = await dbthread.connect(self.path)
        await self._writer_conn.executescript(SCHEMA)
        self._reader_conn = await dbthread.connect(self.path)
        await dbthread.run(self._writer_conn, self._load_head)
        self._visible_head = self._state.head_position
        self._writer_task = asyncio.create_task(self._writer_loop(), name="kroma-event-writer")
        self._checkpointer = Checkpointer(self.path)  # no commit of the writer waits for one
        self._checkpointer.start()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        for conn in (self._writer_conn, self._reader_conn):
            if conn is not None:
                await conn.close()
        self._writer_conn = self._reader_conn = None

    async def __aenter__(self) -> SQLiteEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing -----------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> AppendResult:
        await self.wait_for_room()
        return await self.submit(events, expected, idempotency_key=idempotency_key, fingerprint=fingerprint)

    #: Commands queued for the writer at most; an appender past it waits (back-pressure) until
    #: the writer has taken and committed a batch, so the queue never grows without bound.
    max_pending = 4096

    async def wait_for_room(self) -> None:
        """Return once the writer's queue has room (at once, nearly always)."""
        while len(self._pending) >= self.max_pending and not self._closing:
            await self._committed.wait()

    def submit(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        recorded_at: str | None = None,
    ) -> asyncio.Future[AppendResult]:
        if not events:
            raise ValueError("append needs at least one event")
        if self._closing or self._writer_task is None:
            raise RuntimeError("event store is not open")
        now = recorded_at or self.clock.now_iso()
        rows = [
            (
                e.event_id or self.clock.event_id(),
                e.stream_id,
                e.type,
                e.schema_version,
                codec.encode(e.data),
                _EMPTY_META if e.metadata == _NO_METADATA else codec.encode(e.metadata),
                now,
            )
            for e in events
        ]
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        expected = expected or {}
        streams = frozenset([*(r[1] for r in rows), *expected])
        for stream_id in streams:
            self._undecided[stream_id] = self._undecided.get(stream_id, 0) + 1
        self._pending.append(_Command(rows, expected, idempotency_key, fingerprint, future, streams))
        self._wake.set()
        return future

    def _decided(self, streams: frozenset[str]) -> None:
        for stream_id in streams:
            left = self._undecided[stream_id] - 1
            if left:
                self._undecided[stream_id] = left
            else:
                del self._undecided[stream_id]

    async def wait_for_stream(self, stream_id: str, rounds: int = 3) -> None:
        """Return once no command queued in this store touches the stream (looking at most
        `rounds` batches ahead): a caller about to decide on the stream's version then meets
        no append of this process that it could not see yet."""
        for _ in range(rounds):
            if not self._undecided.get(stream_id):
                return
            committed = self._committed
            await committed.wait()

    def known_head(self) -> int:
        """The newest position this store has written or seen, without I/O (appends by another
        process show once the writer or `head()` meets them)."""
        return self._visible_head

    def known_version(self, stream_id: str) -> int | None:
        """The stream's version as the writer last saw it, without I/O (None: not looked at yet).

        A hint, current with every append this store made or checked (appends by another process
        show from the writer's next batch on): a command decided on a stale one conflicts. The
        writer thread updates the versions; reading one entry from the event loop is safe."""
        return self._state.versions.get(stream_id)

    async def save_response(self, idempotency_key: str, response: bytes) -> None:
        if self._closing or self._writer_task is None:  # no writer would ever resolve the future
            raise RuntimeError("event store is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_SaveResponse(idempotency_key, response, future))
        self._wake.set()
        await future

    async def _writer_loop(self) -> None:
        assert self._writer_conn is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                if self._closing:
                    return
                continue
            outcomes = await self._write(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(item, _Command):
                    self._decided(item.streams)
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
            self._visible_head = max(self._visible_head, self._state.head_position)
            self._committed.set()
            self._committed = asyncio.Event()
            if self._pending or self._closing:  # close() may have set _wake before we cleared it
                self._wake.set()

    async def _write(self, batch: list[_Command | _SaveResponse]) -> list[Any]:
        """Write a batch in one transaction. If the database itself refuses it (a constraint the
        in-memory plan could not foresee, such as a reused event id), nothing was written: retry
        each command alone so only the offending one fails."""
        assert self._writer_conn is not None
        try:
            return await dbthread.run(self._writer_conn, self._write_batch, batch)
        except sqlite3.IntegrityError as exc:
            if len(batch) == 1:
                return [exc]
            return [(await self._write([item]))[0] for item in batch]
        except Exception as exc:  # an I/O failure fails the whole batch; nothing was written
            return [exc] * len(batch)

    def _load_head(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
        position, digest = row if row else (0, codec.GENESIS)
        if position != self._state.head_position or digest != self._state.head_hash:
            # another process appended: our cached stream versions may be stale
            self._state.versions.clear()
            self._state.head_position, self._state.head_hash = position, digest

    def _current_version(self, db: sqlite3.Connection, stream_id: str, batch_versions: dict[str, int]) -> int:
        version = batch_versions.get(stream_id)
        if version is None:
            version = self._state.versions.get(stream_id)
        if version is None:
            row = db.execute(
                "SELECT max(stream_version) FROM events WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            version = row[0] or 0
            self._state.versions[stream_id] = version
        return version

    def _write_batch(self, db: sqlite3.Connection, batch: list[_Command | _SaveResponse]) -> list[Any]:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._load_head(db)
            outcomes, event_rows, idem_rows, responses, batch_versions = self._plan(db, batch)
            if event_rows:
                db.executemany(INSERT_EVENT, event_rows)
            if idem_rows:
                db.executemany("INSERT INTO idempotency VALUES (?,?,?,NULL)", idem_rows)
            if responses:
                db.executemany("UPDATE idempotency SET response = ? WHERE key = ?", responses)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL / SQLITE_IOERR
                db.execute("ROLLBACK")
            self._state.versions.clear()
            self._state.head_position, self._state.head_hash = -1, b""
            self._load_head(db)
            raise
        self._state.versions.update(batch_versions)
        if event_rows:
            last = event_rows[-1]
            self._state.head_position, self._state.head_hash = last[0], last[9]
        return outcomes

    def _plan(self, db: sqlite3.Connection, batch: list[_Command | _SaveResponse]) -> tuple:
        """Decide every command of the batch under the write lock and build the rows to insert."""
        self._prefetch_versions(db, batch)
        position, prev_hash = self._state.head_position, self._state.head_hash
        outcomes: list[Any] = []
        event_rows: list[tuple] = []
        idem_rows: list[tuple] = []
        responses: list[tuple] = []
        batch_versions: dict[str, int] = {}
        batch_keys: dict[str, tuple[str, AppendResult]] = {}
        for item in batch:
            if isinstance(item, _SaveResponse):
                responses.append((item.response, item.key))
                outcomes.append(None)
                continue
            if item.key is not None:
                earlier = batch_keys.get(item.key) or self._lookup_key(db, item.key)
                if earlier is not None:
                    fingerprint, result = earlier
                    if fingerprint != item.fingerprint:
                        outcomes.append(IdempotencyMismatch(item.key))
                    else:
                        outcomes.append(msgspec.structs.replace(result, replayed=True))
                    continue
            conflict = None
            for stream_id, want in item.expected.items():
                if want == ExpectedVersion.ANY:
                    continue
                have = self._current_version(db, stream_id, batch_versions)
                if have != want:
                    conflict = ConcurrencyConflict(stream_id, want, have)
                    break
            if conflict is not None:
                outcomes.append(conflict)
                continue
            first = position + 1
            versions: dict[str, int] = {}
            for event_id, stream_id, type_, schema, data, meta, at in item.rows:
                version = versions.get(stream_id)
                if version is None:
                    version = self._current_version(db, stream_id, batch_versions)
                version += 1
                versions[stream_id] = version
                position += 1
                header = codec.header_bytes(position, event_id, stream_id, version, type_, schema, at)
                prev_hash = codec.link(prev_hash, header, data, meta)
                event_rows.append(
                    (position, event_id, stream_id, version, type_, schema, data, meta, at, prev_hash)
                )
            batch_versions.update(versions)
            result = AppendResult(first, position, [r[0] for r in item.rows], versions)
            if item.key is not None:
                batch_keys[item.key] = (item.fingerprint, result)
                idem_rows.append((item.key, item.fingerprint, codec.encode(result)))
            outcomes.append(result)
        return outcomes, event_rows, idem_rows, responses, batch_versions

    def _prefetch_versions(self, db: sqlite3.Connection, batch: list[_Command | _SaveResponse]) -> None:
        """Load the versions of every stream the batch touches that the cache lacks, in a few
        queries rather than one per stream (new streams are the common case for creates)."""
        known = self._state.versions
        missing = {
            row[1] for item in batch if isinstance(item, _Command) for row in item.rows if row[1] not in known
        }
        missing.update(
            sid for item in batch if isinstance(item, _Command) for sid in item.expected if sid not in known
        )
        if not missing:
            return
        ids = list(missing)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT stream_id, max(stream_version) FROM events WHERE stream_id IN ({marks}) GROUP BY stream_id",
                chunk,
            ).fetchall()
            found = dict(rows)
            for sid in chunk:
                known[sid] = found.get(sid, 0)

    @staticmethod
    def _lookup_key(db: sqlite3.Connection, key: str) -> tuple[str, AppendResult] | None:
        row = db.execute(
            "SELECT fingerprint, result, response FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        result = _result_decoder.decode(row[1])
        return row[0], msgspec.structs.replace(result, response=row[2])

    # -- reading -----------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._reader_conn is not None, "event store is not open"
        return await dbthread.run(self._reader_conn, lambda db: db.execute(sql, params).fetchall())

    async def _fetch_events(self, sql: str, params: Sequence[Any]) -> list[Event]:
        """Rows decoded into Events in the reader's thread, so a large page (a rebuild reads many)
        is decoded off the event loop and beside the work of other threads."""
        assert self._reader_conn is not None, "event store is not open"
        return await dbthread.run(
            self._reader_conn, lambda db: [row_to_event(r) for r in db.execute(sql, params)]
        )

    async def lookup_idempotency(self, key: str) -> tuple[str, AppendResult] | None:
        assert self._reader_conn is not None, "event store is not open"
        return await dbthread.run(self._reader_conn, self._lookup_key, key)

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[Event]:
        return await self._fetch_events(
            f"SELECT {COLUMNS} FROM events WHERE stream_id = ? AND stream_version > ?"
            " ORDER BY stream_version",
            (stream_id, after_version),
        )

    async def stream_version(self, stream_id: str) -> int:
        rows = await self._fetch("SELECT max(stream_version) FROM events WHERE stream_id = ?", (stream_id,))
        return rows[0][0] or 0

    async def read_all(
        self, after: int = 0, limit: int = 1000, types: Sequence[str] | None = None
    ) -> list[Event]:
        if types:
            marks = ",".join("?" * len(types))
            return await self._fetch_events(
                f"SELECT {COLUMNS} FROM events WHERE position > ? AND type IN ({marks})"
                " ORDER BY position LIMIT ?",
                (after, *types, limit),
            )
        return await self._fetch_events(
            f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?", (after, limit)
        )

    async def read_positions(self, positions: Sequence[int]) -> list[Event]:
        if not positions:
            return []
        marks = ",".join("?" * len(positions))
        return await self._fetch_events(
            f"SELECT {COLUMNS} FROM events WHERE position IN ({marks}) ORDER BY position",
            tuple(positions),
        )

    async def read_event(self, event_id: str) -> Event | None:
        found = await self._fetch_events(f"SELECT {COLUMNS} FROM events WHERE event_id = ?", (event_id,))
        return found[0] if found else None

    async def head(self) -> int:
        rows = await self._fetch("SELECT max(position) FROM events", ())
        self._visible_head = max(self._visible_head, rows[0][0] or 0)
        return self._visible_head

    async def wait_for_append(self, after: int, timeout: float) -> int:
        if self._visible_head > after:
            return self._visible_head
        committed = self._committed
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
        # commit lands, and a follower being closed then never stops (kroma worker hung on exit).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await committed.wait()
        if self._visible_head <= after:
            await self.head()  # appends by another process are seen by polling
        return self._visible_head

    async def follow(self, after: int = 0, page: int = 1000) -> AsyncIterator[list[Event]]:
        position = after
        while True:
            events = await self.read_all(position, page)
            if events:
                position = events[-1].position
                yield events
                continue
            await self.wait_for_append(position, self.poll_interval)

    async def verify_chain(self, page: int = 5000) -> int:
        """Walks the log on a connection of its own in a worker thread, so neither the event loop
        nor the store's reader is held while a large log is hashed."""
        return await asyncio.to_thread(verification.verify_file, self.path, page)

    def page_reader(self) -> PageReader:
        """A synchronous reader of pages of this log on a connection of its own, for work that runs
        whole in one worker thread (a rebuild): no event-loop hop and no thread switch per page."""
        return PageReader(self.path)


class PageReader:
    """Pages of the log read and decoded (and upcast) in the calling thread."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")

    def read(self, after: int, limit: int) -> list[Event]:
        """Events with position > after, in position order, at most `limit`."""
        rows = self._db.execute(
            f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?", (after, limit)
        )
        return [row_to_event(r) for r in rows]

    def close(self) -> None:
        self._db.close()
