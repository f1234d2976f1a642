"""The verdict on a log's hash chain: intact through its head, or the first bad position and why.

`verify_store` asks any EventStore (the HTTP route); `verify_path` reads a SQLite event file
directly, without opening a store (the CLI: nothing is created or written, so it can check a copy
of a data folder, or a file that turns out not to be a log at all). `verify_pg` is the same for a
log on PostgreSQL: one read-only connection, no schema created, the chain walked page by page
through one snapshot (a server may be appending meanwhile; the verdict's head is that snapshot's).
Both walk the stored rows with `codec.verify_rows`, as the stores' `verify_chain` do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql

from kroma.events import codec
from kroma.events.store import EventStore

COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, data, metadata, recorded_at, hash"
)


class Verdict(msgspec.Struct, frozen=True):
    """`intact`: every event from position 1 to `head` continues the chain. Otherwise `position` is
    the first bad event, `reason` what is wrong there (`hash mismatch`, `gap after position N`, ...)
    and `verified_through` the last position that still checks out."""

    intact: bool
    head: int
    verified_through: int
    position: int | None = None
    reason: str | None = None

    def line(self) -> str:
        if self.intact:
            return f"hash chain intact through position {self.head}"
        return (
            f"hash chain broken at position {self.position}: {self.reason}"
            f" (intact through position {self.verified_through}, head {self.head})"
        )


class LogUnreadable(Exception):
    """The file is missing or is not a readable event log (said in one line)."""


def broken(head: int, at: codec.ChainBreak) -> Verdict:
    return Verdict(False, head, at.verified_through, at.position, at.reason)


async def verify_store(store: EventStore) -> Verdict:
    try:
        head = await store.verify_chain()
    except codec.ChainBreak as at:
        return broken(await store.head(), at)
    return Verdict(True, head, head)


def open_log(path: str) -> sqlite3.Connection:
    """A connection to an existing event file that only ever reads (never creates the file)."""
    if not Path(path).is_file():
        raise LogUnreadable(f"no event log at {path}")
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)


def pages(db: sqlite3.Connection, after: int = 0, until: int | None = None, page: int = 5000) -> Iterator[list]:
    """The stored rows (COLUMNS) after `after` and up to `until`, in position order, page by page:
    memory stays bounded by one page whatever the size of the log."""
    position = after
    limit = "" if until is None else " AND position <= ?"
    while True:
        params = (position, until, page) if until is not None else (position, page)
        rows = db.execute(
            f"SELECT {COLUMNS} FROM events WHERE position > ?{limit} ORDER BY position LIMIT ?", params
        ).fetchall()
        if not rows:
            return
        yield rows
        position = rows[-1][0]
        if not isinstance(position, int):  # only a tampered file gets here; check_link names it
            return


def verify_file(path: str, page: int = 5000) -> int:
    """Walk the chain of the event file at `path`; the head when intact, else raises ChainBreak."""
    with closing(open_log(path)) as db:
        position, prev = 0, codec.GENESIS
        for rows in pages(db, page=page):
            position, prev = codec.verify_rows(rows, prev, position)
        return position


def verify_path(path: str, page: int = 5000) -> Verdict:
    """The verdict on the event file at `path`; LogUnreadable if it is missing or not a log."""
    try:
        try:
            head = verify_file(path, page)
        except codec.ChainBreak as at:
            with closing(open_log(path)) as db:
                last = db.execute("SELECT max(position) FROM events").fetchone()[0]
            return broken(last if isinstance(last, int) else at.position, at)
    except sqlite3.Error as exc:
        raise LogUnreadable(f"cannot read the event log at {path}: {exc}") from None
    return Verdict(True, head, head)


# -- the log on PostgreSQL --------------------------------------------------------------------------


def pg_where(url: str, schema: str) -> str:
    """Where a PostgreSQL log is, for messages: the URL without its password, and the schema."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username
    netloc = f"{user}@{host}" if user else host
    return f"schema {schema} of {urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def pg_unreadable(url: str, schema: str, exc: BaseException) -> LogUnreadable:
    return LogUnreadable(f"cannot read the event log in {pg_where(url, schema)}: {_first_line(exc)}")


def pg_unreachable(url: str, schema: str, exc: BaseException) -> LogUnreadable:
    return LogUnreadable(f"cannot reach the event log in {pg_where(url, schema)}: {_first_line(exc)}")


def open_pg_log(url: str, schema: str) -> psycopg.Connection:
    """A read-only connection to an existing log in `schema` (never creates it), in a repeatable-read
    transaction: every query of one command sees one snapshot. LogUnreadable when the server does
    not answer or the schema holds no log."""
    try:
        conn = psycopg.connect(url.strip(), connect_timeout=10, application_name="kroma-cli")
    except psycopg.Error as exc:
        raise pg_unreachable(url, schema, exc) from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        table = sql.Identifier(schema, "events").as_string(conn)
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise pg_unreadable(url, schema, exc) from None
    if found is None or found[0] is None:
        conn.close()
        raise LogUnreadable(f"no event log in {pg_where(url, schema)}")
    return conn


def pg_pages(
    conn: psycopg.Connection, schema: str, after: int = 0, until: int | None = None, page: int = 5000
) -> Iterator[list]:
    """`pages` for a log on PostgreSQL: the stored rows (COLUMNS, data and metadata as the bytes
    that were hashed) by position, one bounded page at a time."""
    query = sql.SQL("SELECT {} FROM {} WHERE position > %s{} ORDER BY position LIMIT %s").format(
        sql.SQL(COLUMNS),
        sql.Identifier(schema, "events"),
        sql.SQL("") if until is None else sql.SQL(" AND position <= %s"),
    )
    position = after
    while True:
        params = (position, page) if until is None else (position, until, page)
        rows = conn.execute(query, params).fetchall()
        if not rows:
            return
        yield rows
        position = rows[-1][0]


def pg_head(conn: psycopg.Connection, schema: str) -> int:
    query = sql.SQL("SELECT coalesce(max(position), 0) FROM {}").format(sql.Identifier(schema, "events"))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def verify_pg(url: str, schema: str, page: int = 5000) -> Verdict:
    """The verdict on the log in `schema` on the server at `url`; LogUnreadable if the server does
    not answer or there is no log there."""
    with closing(open_pg_log(url, schema)) as conn:
        try:
            position, prev = 0, codec.GENESIS
            try:
                for rows in pg_pages(conn, schema, page=page):
                    position, prev = codec.verify_rows(rows, prev, position)
            except codec.ChainBreak as at:
                return broken(pg_head(conn, schema), at)
        except psycopg.Error as exc:
            raise pg_unreadable(url, schema, exc) from None
    return Verdict(True, position, position)
