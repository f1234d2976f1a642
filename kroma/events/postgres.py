"""The PostgreSQL event store (asyncpg): the SQLite store's guarantees on a server that several
processes and machines share.

Write path. As on SQLite, appenders encode their events on the event loop, queue a (command,
future) pair and wait; one writer task per process takes everything waiting and writes it as one
transaction (group commit). Each transaction first takes `pg_advisory_xact_lock` on the store's
key, so appends from every process on the database are serialised: under the lock the writer reads
the log's head (position and hash) and the versions and idempotency keys the batch touches in one
query, decides every command in memory (a conflicting command fails alone, the rest commit), and
inserts the rows with explicit positions head+1, head+2, ... in one statement, which also queues
one NOTIFY carrying the new head. The lock is released when the transaction ends, after its commit
is visible, so the next writer (in any process) reads a head that includes it.

Why positions are gap-free as readers see them: positions are handed out only under the lock and
only to commands that commit, and transactions holding the lock commit one after another in
position order. A reader's snapshot that shows position N therefore shows every position below N
too: no reader can page past a position that is filled in later. (A sequence would hand out
numbers that roll back, and commit them out of order: the visible high-water mark would then
have to be tracked separately.) The cost is that appends on one database are serial: group
commit per process is what makes that fast, one lock, one round of queries and one commit per
batch however many commands it holds. The primary key on position and the unique (stream id,
stream version) and event id indexes are the safety net: a batch the database refuses is rolled
back whole and retried command by command, so only the offender fails.

Reads go through a small connection pool; `follow`/`wait_for_append` wake on this process's own
commits at once and on every other process's through LISTEN/NOTIFY (one notification per committed
batch), with a poll every `poll_interval` as the fallback while the listening connection is down.

Everything lives in one schema (`schema`, default "kroma"): tables `events` and `idempotency`
with the SQLite store's columns, data and metadata stored as the exact canonical bytes the chain
hashes. Read models, claims or data keys can later take schemas of their own on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from kroma.clock import Clock
from kroma.events import codec
from kroma.events.envelope import Event, ExpectedVersion, Metadata, NewEvent
from kroma.events.rows import row_to_event
from kroma.events.store import AppendResult, ConcurrencyConflict, IdempotencyMismatch

log = logging.getLogger(__name__)

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")  # fits a channel name "kroma_events_<schema>"
COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, data, metadata, recorded_at, hash"
)

_result_decoder = msgspec.json.Decoder(AppendResult)
_NO_METADATA = Metadata()
_EMPTY_META = codec.encode(_NO_METADATA)
_HEAD, _VERSION, _KEY = 0, 1, 2  # row kinds of the prefetch query


def lock_key(schema: str) -> int:
    """The advisory-lock key that serialises appends to the log in `schema` (a signed bigint)."""
    return int.from_bytes(hashlib.sha256(f"kroma.events:{schema}".encode()).digest()[:8], "big", signed=True)


class _Sql:
    """Every statement the store runs, with its schema's qualified names."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        lock = f"SELECT pg_advisory_xact_lock({lock_key(schema)})"
        # A stream's version, NULL if it has none: one probe of the (stream_id, stream_version)
        # index, whatever the planner's statistics say (a GROUP BY over `= ANY(...)` may become a
        # scan of the whole table on a young log).
        last_version = (
            f"SELECT stream_version FROM {s}.events WHERE stream_id = {{sid}}"
            " ORDER BY stream_version DESC LIMIT 1"
        )
        # READ COMMITTED whatever the server's default: each statement after the lock then reads
        # a snapshot taken once the lock was granted (REPEATABLE READ would fix it before).
        self.begin = f"BEGIN ISOLATION LEVEL READ COMMITTED; {lock}"
        self.ddl = f"""
            BEGIN;
            {lock};
            CREATE SCHEMA IF NOT EXISTS {s};
            CREATE TABLE IF NOT EXISTS {s}.events (
                position       bigint  PRIMARY KEY,
                event_id       text    NOT NULL UNIQUE,
                stream_id      text    NOT NULL,
                stream_version integer NOT NULL,
                type           text    NOT NULL,
                schema_version integer NOT NULL,
                data           bytea   NOT NULL,
                metadata       bytea   NOT NULL,
                recorded_at    text    NOT NULL,
                hash           bytea   NOT NULL,
                UNIQUE (stream_id, stream_version)
            );
            CREATE TABLE IF NOT EXISTS {s}.idempotency (
                key         text  PRIMARY KEY,
                fingerprint text  NOT NULL,
                result      bytea NOT NULL,
                response    bytea
            );
            COMMIT;
        """
        # Under the lock, one statement (one snapshot, taken after the lock was granted): the head,
        # the versions of the streams asked for, the idempotency keys asked for.
        self.prefetch = f"""
            SELECT {_HEAD}, NULL::text, h.position, h.hash, NULL::text, NULL::bytea
              FROM (SELECT position, hash FROM {s}.events ORDER BY position DESC LIMIT 1) AS h
            UNION ALL
            SELECT {_VERSION}, u.stream_id, ({last_version.format(sid="u.stream_id")})::bigint, NULL, NULL, NULL
              FROM unnest($1::text[]) AS u(stream_id)
            UNION ALL
            SELECT {_KEY}, key, NULL, result, fingerprint, response
              FROM {s}.idempotency WHERE key = ANY($2::text[])
        """
        self.versions = (
            f"SELECT u.stream_id, ({last_version.format(sid='u.stream_id')})"
            " FROM unnest($1::text[]) AS u(stream_id)"
        )
        # The batch's whole write, one round trip: events, new keys, saved responses, and the
        # notification (delivered at commit, only if the batch commits).
        self.write = f"""
            WITH appended AS (
                INSERT INTO {s}.events ({COLUMNS})
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::text[],
                                     $6::integer[], $7::bytea[], $8::bytea[], $9::text[], $10::bytea[])
            ), keyed AS (
                INSERT INTO {s}.idempotency (key, fingerprint, result, response)
                SELECT * FROM unnest($11::text[], $12::text[], $13::bytea[], $14::bytea[])
            ), answered AS (
                UPDATE {s}.idempotency AS i SET response = r.response
                  FROM unnest($15::text[], $16::bytea[]) AS r(key, response) WHERE i.key = r.key
            )
            SELECT pg_notify($17::text, $18::text) WHERE $18::text IS NOT NULL
        """
        self.head = f"SELECT coalesce(max(position), 0) FROM {s}.events"
        self.page = f"SELECT {COLUMNS} FROM {s}.events WHERE position > $1 ORDER BY position LIMIT $2"
        self.page_of_types = (
            f"SELECT {COLUMNS} FROM {s}.events WHERE position > $1 AND type = ANY($3::text[])"
            " ORDER BY position LIMIT $2"
        )
        self.positions = (
            f"SELECT {COLUMNS} FROM {s}.events WHERE position = ANY($1::bigint[]) ORDER BY position"
        )
        self.stream = (
            f"SELECT {COLUMNS} FROM {s}.events WHERE stream_id = $1 AND stream_version > $2"
            " ORDER BY stream_version"
        )
        self.stream_version = f"SELECT coalesce(({last_version.format(sid='$1')}), 0)"
        self.event = f"SELECT {COLUMNS} FROM {s}.events WHERE event_id = $1"
        self.key = f"SELECT fingerprint, result, response FROM {s}.idempotency WHERE key = $1"


@dataclass(slots=True)
class _Command:
    rows: list[tuple[str, str, str, int, bytes, bytes, str]]  # id, stream, type, schema, data, meta, at
    expected: Mapping[str, int]
    key: str | None
    fingerprint: str
    future: asyncio.Future[AppendResult]


@dataclass(slots=True)
class _SaveResponse:
    key: str
    response: bytes
    future: asyncio.Future[None]


@dataclass(slots=True)
class _WriterState:
    """The writer's cache: the log's head and stream versions as of its last commit. Valid only
    while the head read under the lock equals the cached one (else another process appended)."""

    head_position: int = 0
    head_hash: bytes = codec.GENESIS
    versions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Plan:
    """What a batch writes, decided in memory under the lock."""

    outcomes: list[Any] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    keys: dict[str, list[Any]] = field(default_factory=dict)  # key -> [fingerprint, result bytes, response]
    responses: dict[str, bytes] = field(default_factory=dict)  # saved for keys of earlier batches
    versions: dict[str, int] = field(default_factory=dict)


class PostgresEventStore:
    """EventStore on a PostgreSQL database (see the module docstring for the strategy)."""

    #: Commands queued for the writer at most; an appender past it waits until a batch commits.
    max_pending = 4096

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        schema: str = "kroma",
        poll_interval: float = 0.5,
        pool_size: int = 4,
    ) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"invalid event store schema {schema!r}: use [a-z_][a-z0-9_]*, at most 48 chars")
        self.url = url
        self.schema = schema
        self.clock = clock or Clock()
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.channel = f"kroma_events_{schema}"
        self._sql = _Sql(schema)
        self._writer_conn: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._pending: list[_Command | _SaveResponse] = []
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._visible_head = 0
        self._state = _WriterState()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema and tables if missing, start listening and the writer."""
        self._closing = False
        try:
            self._writer_conn = await asyncpg.connect(self.url)
            try:
                await self._writer_conn.execute(self._sql.ddl)
            except BaseException:
                await _abort(self._writer_conn)
                raise
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
            await self._listen()
            await self.head()
        except BaseException:
            await self._disconnect()
            raise
        self._writer_task = asyncio.create_task(self._writer_loop(), name="kroma-event-writer")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
            self._writer_task = None
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(BaseException):
                await self._relisten
            self._relisten = None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._on_listener_lost)
            if not listener.is_closed():
                await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        writer, self._writer_conn = self._writer_conn, None
        if writer is not None and not writer.is_closed():
            await writer.close()

    async def __aenter__(self) -> PostgresEventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- notifications -----------------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        """A committed batch (ours or another process's): its payload is the new head. Our own
        batches arrive here after the writer has already woken readers for them: no news."""
        try:
            head = int(str(payload))
        except ValueError:  # not a payload this store sends
            return
        if head > self._visible_head:
            self._visible_head = head
            self._wake_readers()

    def _on_listener_lost(self, _conn: object) -> None:
        if self._closing or (self._relisten is not None and not self._relisten.done()):
            return
        log.warning(
            "event store: LISTEN connection lost; polling every %ss until it is back", self.poll_interval
        )
        self._relisten = asyncio.get_running_loop().create_task(self._reconnect_listener())

    async def _reconnect_listener(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._listen()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            with contextlib.suppress(Exception):  # commits made meanwhile went unannounced
                await self.head()
            self._wake_readers()
            return

    def _wake_readers(self) -> None:
        self._committed.set()
        self._committed = asyncio.Event()

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
        self._pending.append(_Command(rows, expected or {}, idempotency_key, fingerprint, future))
        self._wake.set()
        return future

    async def save_response(self, idempotency_key: str, response: bytes) -> None:
        if self._closing or self._writer_task is None:
            raise RuntimeError("event store is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_SaveResponse(idempotency_key, response, future))
        self._wake.set()
        await future

    async def _writer_loop(self) -> None:
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
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
            self._visible_head = max(self._visible_head, self._state.head_position)
            self._wake_readers()
            if self._pending or self._closing:
                self._wake.set()

    async def _write(self, batch: list[_Command | _SaveResponse]) -> list[Any]:
        """Write a batch in one transaction. If the database refuses it (a constraint the plan
        could not foresee, such as a reused event id), nothing was written: retry each command
        alone so only the offending one fails. Any other failure fails the whole batch."""
        try:
            return await self._write_batch(batch)
        except asyncpg.IntegrityConstraintViolationError as exc:
            if len(batch) == 1:
                return [exc]
            return [(await self._write([item]))[0] for item in batch]
        except Exception as exc:
            return [exc] * len(batch)

    async def _write_batch(self, batch: list[_Command | _SaveResponse]) -> list[Any]:
        if self._writer_conn is None or self._writer_conn.is_closed():
            self._writer_conn = None
            self._writer_conn = await asyncpg.connect(self.url)
        conn = self._writer_conn
        try:
            await conn.execute(self._sql.begin)
            keys = await self._read_under_lock(conn, batch)
            plan = self._plan(batch, keys)
            last = plan.events[-1] if plan.events else None
            await conn.execute(self._sql.write, *self._write_args(plan, last))
            await conn.execute("COMMIT")
        except BaseException:
            await _abort(conn)
            self._state.versions.clear()
            self._state.head_position, self._state.head_hash = -1, b""
            raise
        self._state.versions.update(plan.versions)
        if last is not None:
            self._state.head_position, self._state.head_hash = last[0], last[9]
        return plan.outcomes

    async def _read_under_lock(
        self, conn: asyncpg.Connection, batch: list[_Command | _SaveResponse]
    ) -> dict[str, tuple[str, AppendResult]]:
        """Refresh the head and the versions the batch needs; return the batch's known keys."""
        state = self._state
        touched = {
            sid
            for item in batch
            if isinstance(item, _Command)
            for sid in (*(row[1] for row in item.rows), *item.expected)
        }
        missing = [sid for sid in touched if sid not in state.versions]
        wanted = list({item.key for item in batch if isinstance(item, _Command) and item.key is not None})
        head, digest = 0, codec.GENESIS
        found: dict[str, int] = {}
        keys: dict[str, tuple[str, AppendResult]] = {}
        for kind, name, number, blob, fingerprint, response in await conn.fetch(
            self._sql.prefetch, missing, wanted
        ):
            if kind == _HEAD:
                head, digest = number, blob
            elif kind == _VERSION:
                found[name] = number or 0
            else:
                result = msgspec.structs.replace(_result_decoder.decode(blob), response=response)
                keys[name] = (fingerprint, result)
        if (head, digest) != (state.head_position, state.head_hash):
            # another process appended since our last batch: every cached version may be stale
            state.versions.clear()
            state.head_position, state.head_hash = head, digest
            rest = [sid for sid in touched if sid not in found]  # the ones taken from the cache
            if rest:
                found.update(
                    (sid, version or 0) for sid, version in await conn.fetch(self._sql.versions, rest)
                )
        for sid in touched:
            state.versions.setdefault(sid, found.get(sid, 0))
        return keys

    def _plan(
        self, batch: list[_Command | _SaveResponse], keys: dict[str, tuple[str, AppendResult]]
    ) -> _Plan:
        """Decide every command of the batch in order and build the rows to insert."""
        plan = _Plan()
        position, prev_hash = self._state.head_position, self._state.head_hash
        batch_keys = dict(keys)
        for item in batch:
            if isinstance(item, _SaveResponse):
                if item.key in plan.keys:  # keyed in this very batch: store it with the key's row
                    plan.keys[item.key][2] = item.response
                else:
                    plan.responses[item.key] = item.response
                plan.outcomes.append(None)
                continue
            refused = self._refuse(item, batch_keys, plan.versions)
            if refused is not None:
                plan.outcomes.append(refused)
                continue
            first = position + 1
            versions: dict[str, int] = {}
            for event_id, stream_id, type_, schema, data, meta, at in item.rows:
                version = versions.get(stream_id)
                if version is None:
                    version = self._version(stream_id, plan.versions)
                version += 1
                versions[stream_id] = version
                position += 1
                header = codec.header_bytes(position, event_id, stream_id, version, type_, schema, at)
                prev_hash = codec.link(prev_hash, header, data, meta)
                plan.events.append(
                    (position, event_id, stream_id, version, type_, schema, data, meta, at, prev_hash)
                )
            plan.versions.update(versions)
            result = AppendResult(first, position, [r[0] for r in item.rows], versions)
            if item.key is not None:
                batch_keys[item.key] = (item.fingerprint, result)
                plan.keys[item.key] = [item.fingerprint, codec.encode(result), None]
            plan.outcomes.append(result)
        return plan

    def _version(self, stream_id: str, batch_versions: dict[str, int]) -> int:
        version = batch_versions.get(stream_id)
        return self._state.versions[stream_id] if version is None else version

    def _refuse(
        self, item: _Command, keys: dict[str, tuple[str, AppendResult]], batch_versions: dict[str, int]
    ) -> AppendResult | Exception | None:
        """A replay, a mismatch or a conflict that decides the command without appending; None
        when it appends."""
        if item.key is not None and item.key in keys:
            fingerprint, result = keys[item.key]
            if fingerprint != item.fingerprint:
                return IdempotencyMismatch(item.key)
            return msgspec.structs.replace(result, replayed=True)
        for stream_id, want in item.expected.items():
            if want == ExpectedVersion.ANY:
                continue
            have = self._version(stream_id, batch_versions)
            if have != want:
                return ConcurrencyConflict(stream_id, want, have)
        return None

    def _write_args(self, plan: _Plan, last: tuple | None) -> list[Any]:
        events: list[Any] = [list(column) for column in zip(*plan.events, strict=True)] or [[]] * 10
        keys = [[k, *v] for k, v in plan.keys.items()]
        keyed: list[Any] = [list(column) for column in zip(*keys, strict=True)] or [[]] * 4
        return [
            *events,
            *keyed,
            list(plan.responses),
            list(plan.responses.values()),
            self.channel,
            None if last is None else str(last[0]),
        ]

    # -- reading -----------------------------------------------------------------------------

    def _readers(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("event store is not open")
        return self._pool

    async def _events(self, sql: str, *args: Any) -> list[Event]:
        return [row_to_event(row) for row in await self._readers().fetch(sql, *args)]

    async def lookup_idempotency(self, key: str) -> tuple[str, AppendResult] | None:
        row = await self._readers().fetchrow(self._sql.key, key)
        if row is None:
            return None
        return row[0], msgspec.structs.replace(_result_decoder.decode(row[1]), response=row[2])

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[Event]:
        return await self._events(self._sql.stream, stream_id, after_version)

    async def stream_version(self, stream_id: str) -> int:
        return int(await self._readers().fetchval(self._sql.stream_version, stream_id))

    async def read_all(
        self, after: int = 0, limit: int = 1000, types: Sequence[str] | None = None
    ) -> list[Event]:
        if types:
            return await self._events(self._sql.page_of_types, after, limit, list(types))
        return await self._events(self._sql.page, after, limit)

    async def read_positions(self, positions: Sequence[int]) -> list[Event]:
        if not positions:
            return []
        return await self._events(self._sql.positions, list(positions))

    async def read_event(self, event_id: str) -> Event | None:
        found = await self._events(self._sql.event, event_id)
        return found[0] if found else None

    async def head(self) -> int:
        self._visible_head = max(self._visible_head, int(await self._readers().fetchval(self._sql.head)))
        return self._visible_head

    async def wait_for_append(self, after: int, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._visible_head <= after and (remaining := deadline - loop.time()) > 0:
            committed = self._committed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(committed.wait(), remaining)
        if self._visible_head <= after:
            await self.head()  # a missed notification (the listener was down) is caught here
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
        """Walks the log page by page on one pooled connection; each page is hashed in a worker
        thread, so the event loop is not held while a large log is checked."""
        position, prev = 0, codec.GENESIS
        async with self._readers().acquire() as conn:
            while rows := await conn.fetch(self._sql.page, position, page):
                position, prev = await asyncio.to_thread(
                    codec.verify_rows, [tuple(r) for r in rows], prev, position
                )
        return position


async def _abort(conn: asyncpg.Connection) -> None:
    """Leave no transaction open on `conn` (or drop the connection if it cannot say)."""
    if conn.is_closed():
        return
    try:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception:
        conn.terminate()
