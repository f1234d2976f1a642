"""Run a whole unit of synchronous sqlite3 work in an aiosqlite connection's own thread.

aiosqlite hops to its worker thread once per statement. Group commit and projection batches
need one hop per *batch*, so they hand the thread a function that runs every statement itself.
`Connection._execute` is aiosqlite's (private but long-stable) entry point for exactly that.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
)


async def connect(path: str) -> aiosqlite.Connection:
    """An autocommit connection (we issue BEGIN ourselves) with the house pragmas."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        await conn.execute(pragma)
    return conn


async def run(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Call fn(raw_sqlite3_connection, *args) in conn's worker thread: one hop in, one out."""

    def call() -> T:
        return fn(conn._conn, *args)

    return await conn._execute(call)


def in_transaction(db: sqlite3.Connection, fn: Callable[..., T], *args: Any, immediate: bool = True) -> T:
    """Run fn(db, *args) inside BEGIN [IMMEDIATE] ... COMMIT, rolling back on any error."""
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        result = fn(db, *args)
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) must not leave the connection inside a transaction, and
        # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR).
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result
