"""Export the log as JSON lines, and import such a file into an empty data folder.

One event a line, in position order, each with every stored column: `data` and `metadata` are the
stored JSON bytes embedded verbatim (not re-encoded), and `hash` is the stored link in hex, so a
reader can recompute the chain from the file alone (`kroma.events.codec.link`) and an import
writes back exactly the bytes that were hashed. Exports and imports stream page by page: memory
stays bounded whatever the size of the log. The data is exported as stored (not upcast): it is the
log itself, not a view of it.

Either store: `export`/`import_lines` read and write a SQLite event file, `export_pg`/`import_pg`
a log in a PostgreSQL schema. The file format and every check on an imported line are the same.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import BinaryIO

import msgspec
import psycopg
from psycopg import sql

from kroma.events import codec, verification
from kroma.events.envelope import Metadata
from kroma.events.sqlite import INSERT_EVENT, SCHEMA


class ExportedEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    position: int
    event_id: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at: str
    data: msgspec.Raw
    metadata: msgspec.Raw
    hash: str


class ImportRefused(Exception):
    """The file cannot be imported; nothing was written. `line` is the first bad line (0: none)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)
_meta = msgspec.json.Decoder(Metadata)


def export(events_db: str, out: BinaryIO, after: int = 0, until: int | None = None, page: int = 5000) -> int:
    """Write the events with `after < position <= until` to `out`; returns how many."""
    with closing(verification.open_log(events_db)) as db:
        return _write_pages(verification.pages(db, after, until, page), out)


def export_pg(
    url: str, schema: str, out: BinaryIO, after: int = 0, until: int | None = None, page: int = 5000
) -> int:
    """`export` from the log in a PostgreSQL schema, through one snapshot (a server may append
    meanwhile: the file is the log as it was when the export began). LogUnreadable when the server
    does not answer or holds no log there."""
    with closing(verification.open_pg_log(url, schema)) as conn:
        try:
            return _write_pages(verification.pg_pages(conn, schema, after, until, page), out)
        except psycopg.Error as exc:
            raise verification.pg_unreadable(url, schema, exc) from None


def _write_pages(pages: Iterable[list], out: BinaryIO) -> int:
    count = 0
    buffer = bytearray()
    for rows in pages:
        for pos, eid, sid, sver, typ, schema, data, meta, rec, digest in rows:
            line = ExportedEvent(
                pos, eid, sid, sver, typ, schema, rec, msgspec.Raw(data), msgspec.Raw(meta), digest.hex()
            )
            buffer += _encoder.encode(line)
            buffer += b"\n"
        count += len(rows)
        out.write(buffer)
        buffer.clear()
    out.flush()
    return count


class _Versions:
    """Each stream's last version seen, for the streams seen lately (bounded), else from the log
    being written (`stored`: it holds every earlier line, as long as rows not yet written number
    fewer than `capacity`)."""

    def __init__(self, stored: Callable[[str], int], capacity: int = 100_000) -> None:
        self.stored = stored
        self.capacity = capacity
        self.recent: dict[str, int] = {}

    def last(self, stream_id: str) -> int:
        version = self.recent.pop(stream_id, None)
        if version is None:
            version = self.stored(stream_id)
        return version

    def record(self, stream_id: str, version: int) -> None:
        self.recent[stream_id] = version  # (re)inserted last: the dict keeps recency order
        if len(self.recent) > self.capacity:
            del self.recent[next(iter(self.recent))]


def _check(event: ExportedEvent, prev_position: int, prev_hash: bytes, versions: _Versions) -> bytes:
    """The event's hash once every rule holds; raises ValueError with the reason otherwise."""
    if event.position != prev_position + 1:
        if prev_position == 0:
            raise ValueError(f"starts at position {event.position}: an import needs the log from position 1")
        raise ValueError(f"position {event.position} where {prev_position + 1} was expected")
    last = versions.last(event.stream_id)
    if event.stream_version != last + 1:
        raise ValueError(
            f"stream {event.stream_id!r} goes from version {last} to {event.stream_version}"
        )
    data, meta = bytes(event.data), bytes(event.metadata)
    if not isinstance(msgspec.json.decode(data), dict):
        raise ValueError("data is not a JSON object")
    try:
        _meta.decode(meta)
    except msgspec.ValidationError as exc:
        raise ValueError(f"metadata is not valid ({exc})") from None
    try:
        stored = bytes.fromhex(event.hash)
    except ValueError:
        raise ValueError("hash is not hex") from None
    header = codec.header_bytes(
        event.position,
        event.event_id,
        event.stream_id,
        event.stream_version,
        event.type,
        event.schema_version,
        event.recorded_at,
    )
    if codec.link(prev_hash, header, data, meta) != stored:
        raise ValueError("hash mismatch")
    versions.record(event.stream_id, event.stream_version)
    return stored


def import_lines(lines: Iterable[bytes], events_db: str) -> int:
    """Load an export into the event file `events_db`, which must be missing or hold no events.
    Every line is checked as it is read (its position follows the previous one, its stream version
    follows the stream's, its data and metadata are JSON, its hash continues the chain); the first
    bad line refuses the whole file and nothing is written (one transaction, rolled back).
    Returns the number of events."""
    target = Path(events_db)
    created = not target.exists()
    try:
        db = sqlite3.connect(target, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")  # held to the end: a store opened meanwhile waits, then sees it all
    except sqlite3.Error as exc:
        raise ImportRefused(0, f"{target} is not an event log ({exc})") from None
    try:
        existing = db.execute("SELECT count(*) FROM events").fetchone()[0]
        if existing:
            raise ImportRefused(0, f"{target} already holds {existing} events: import into an empty data folder")
        count = _load(db, lines)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        db.close()
        if created:
            _remove(target)
        raise
    db.close()
    return count


def _checked(lines: Iterable[bytes], versions: _Versions) -> Iterator[tuple[int, tuple]]:
    """(line number, stored row) for each line of an export, once every rule holds for it; the
    first bad line raises ImportRefused. A duplicate event id is left to the writer (it needs the
    log written so far)."""
    position = 0
    prev_hash = codec.GENESIS
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            event = _decoder.decode(raw)
            prev_hash = _check(event, position, prev_hash, versions)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ImportRefused(number, f"not an exported event ({exc})") from None
        except ValueError as exc:
            raise ImportRefused(number, str(exc)) from None
        yield number, (
            event.position,
            event.event_id,
            event.stream_id,
            event.stream_version,
            event.type,
            event.schema_version,
            bytes(event.data),
            bytes(event.metadata),
            event.recorded_at,
            prev_hash,
        )
        position = event.position


def _twice(number: int, event_id: str) -> ImportRefused:
    return ImportRefused(number, f"event id {event_id!r} appears twice")


def _load(db: sqlite3.Connection, lines: Iterable[bytes]) -> int:
    def stored(stream_id: str) -> int:
        row = db.execute("SELECT max(stream_version) FROM events WHERE stream_id = ?", (stream_id,))
        return row.fetchone()[0] or 0

    count = 0
    for number, row in _checked(lines, _Versions(stored)):
        try:
            db.execute(INSERT_EVENT, row)
        except sqlite3.IntegrityError:
            raise _twice(number, row[1]) from None
        count += 1
    return count


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


# -- into PostgreSQL ----------------------------------------------------------------------------------

PG_BATCH = 1000  # rows written at a time by an import into PostgreSQL (well under _Versions' capacity)


def _pg_ddl(schema: str) -> str:
    """The store's own DDL for `schema` (one source of truth for the tables) without its BEGIN and
    COMMIT, so that an import creates the tables inside its own transaction: a refused file then
    leaves nothing behind, not even an empty schema."""
    from kroma.events.postgres import _Sql  # here: kroma.events.postgres imports this package's sqlite

    ddl = _Sql(schema).ddl.strip()
    body = ddl.removeprefix("BEGIN;").removesuffix("COMMIT;")
    if len(body) != len(ddl) - len("BEGIN;") - len("COMMIT;"):
        raise RuntimeError("the PostgreSQL store's DDL no longer reads BEGIN; ...; COMMIT;")
    return body


def import_pg(lines: Iterable[bytes], url: str, schema: str) -> int:
    """`import_lines` into the log in `schema` on the server at `url`, which must be missing or hold
    no events. One transaction, which first takes the store's append lock (servers appending to
    that schema wait, then see the whole import) and creates the tables if missing: the first bad
    line rolls it all back. LogUnreadable when the server does not answer; returns the count."""
    from kroma.events.postgres import SCHEMA_NAME

    if not SCHEMA_NAME.fullmatch(schema):
        raise ImportRefused(0, f"invalid event store schema {schema!r}")
    where = verification.pg_where(url, schema)
    try:
        conn = psycopg.connect(url.strip(), connect_timeout=10, application_name="kroma-import")
    except psycopg.Error as exc:
        raise verification.pg_unreachable(url, schema, exc) from None
    try:
        with conn.transaction():
            conn.execute(_pg_ddl(schema))
            events = sql.Identifier(schema, "events")
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(events)).fetchone()
            existing = row[0] if row else 0
            if existing:
                raise ImportRefused(0, f"{where} already holds {existing} events: import into an empty schema")
            return _load_pg(conn, events, lines)
    except psycopg.Error as exc:
        raise verification.pg_unreadable(url, schema, exc) from None
    finally:
        conn.close()


def _load_pg(conn: psycopg.Connection, events: sql.Identifier, lines: Iterable[bytes]) -> int:
    last_version = sql.SQL("SELECT coalesce(max(stream_version), 0) FROM {} WHERE stream_id = %s").format(events)
    taken = sql.SQL("SELECT event_id FROM {} WHERE event_id = ANY(%s)").format(events)
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(events, sql.SQL(verification.COLUMNS))

    def stored(stream_id: str) -> int:
        row = conn.execute(last_version, (stream_id,)).fetchone()
        return int(row[0]) if row else 0

    def flush(pending: list[tuple[int, tuple]]) -> None:
        """Write the batch, first naming its first line whose event id is already taken (in the log
        or earlier in the batch): the line a row-by-row import would have refused."""
        if not pending:
            return
        ids = [row[1] for _, row in pending]
        seen = {r[0] for r in conn.execute(taken, (ids,)).fetchall()}
        for number, row in pending:
            if row[1] in seen:
                raise _twice(number, row[1])
            seen.add(row[1])
        with conn.cursor().copy(copy) as out:
            for _, row in pending:
                out.write_row(row)
        pending.clear()

    count = 0
    pending: list[tuple[int, tuple]] = []
    try:
        for number, row in _checked(lines, _Versions(stored)):
            pending.append((number, row))
            count += 1
            if len(pending) >= PG_BATCH:
                flush(pending)
    except ImportRefused:
        flush(pending)  # a duplicate on an earlier line is the first bad line
        raise
    flush(pending)
    return count
