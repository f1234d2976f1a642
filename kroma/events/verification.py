"""The verdict on a log's hash chain: intact through its head, or the first bad position and why.

`verify_store` asks any EventStore (the HTTP route); `verify_path` reads a SQLite event file
directly, without opening a store (the CLI: nothing is created or written, so it can check a copy
of a data folder, or a file that turns out not to be a log at all).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import msgspec

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
