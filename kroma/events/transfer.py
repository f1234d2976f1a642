"""Export the log as JSON lines, and import such a file into an empty data folder.

One event a line, in position order, each with every stored column: `data` and `metadata` are the
stored JSON bytes embedded verbatim (not re-encoded), and `hash` is the stored link in hex, so a
reader can recompute the chain from the file alone (`kroma.events.codec.link`) and an import
writes back exactly the bytes that were hashed. Exports and imports stream page by page: memory
stays bounded whatever the size of the log. The data is exported as stored (not upcast): it is the
log itself, not a view of it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing, suppress
from pathlib import Path
from typing import BinaryIO

import msgspec

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
    count = 0
    buffer = bytearray()
    with closing(verification.open_log(events_db)) as db:
        for rows in verification.pages(db, after, until, page):
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
    """Each stream's last version seen, for the streams seen lately (bounded), else from the file
    being written (which holds every earlier line)."""

    def __init__(self, db: sqlite3.Connection, capacity: int = 100_000) -> None:
        self.db = db
        self.capacity = capacity
        self.recent: dict[str, int] = {}

    def last(self, stream_id: str) -> int:
        version = self.recent.pop(stream_id, None)
        if version is None:
            row = self.db.execute("SELECT max(stream_version) FROM events WHERE stream_id = ?", (stream_id,))
            version = row.fetchone()[0] or 0
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


def _load(db: sqlite3.Connection, lines: Iterable[bytes]) -> int:
    versions = _Versions(db)
    count = position = 0
    prev_hash = codec.GENESIS
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            event = _decoder.decode(raw)
            prev_hash = _check(event, position, prev_hash, versions)
            db.execute(
                INSERT_EVENT,
                (
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
                ),
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ImportRefused(number, f"not an exported event ({exc})") from None
        except sqlite3.IntegrityError:
            raise ImportRefused(number, f"event id {event.event_id!r} appears twice") from None
        except ValueError as exc:
            raise ImportRefused(number, str(exc)) from None
        position = event.position
        count += 1
    return count


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
