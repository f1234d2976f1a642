"""The data-key store on PostgreSQL: when the log is on a server, the data keys move with it.

Same envelope scheme and guarantees as `kroma.crypto.keystore` (whose methods this reuses): a table
of its own, `data_keys`, in a schema of its own (never in the log, never in the read models), every
key wrapped under the master key that every process is given. Several processes share it; each
operation is one statement or one transaction, so they need no lock between them.

Shredding on PostgreSQL: `destroy` deletes the row; the server does not overwrite it at once (the
old row version stays in the table's pages until vacuumed and reused, and in WAL/backups). What is
left there is a data key still wrapped under the master key, so, as with the SQLite file, shredding
is as strong as the secrecy of the master keys that wrapped it.

The idempotency fingerprint key (`kroma.crypto.pepper`) lives here too, so every process on the
database fingerprints a keyed request alike (a replay through another server is still a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from kroma.crypto.aead import seal
from kroma.crypto.keystore import (
    DataKeyExistsError,
    DataKeyNotFoundError,
    KeyStore,
    KeyStoreError,
    RewrapReport,
    _check_key_id,
    _now,
    plan_rewrap,
)
from kroma.crypto.master_key import MasterKeyring
from kroma.crypto.pepper import PEPPER_FILE

log = logging.getLogger(__name__)


def _schema_sql(schema: str) -> str:
    s = f'"{schema}"'
    return f"""
        CREATE SCHEMA IF NOT EXISTS {s};
        CREATE TABLE IF NOT EXISTS {s}.data_keys (
            key_id         text PRIMARY KEY,
            wrapped        text NOT NULL,  -- enc:v1 token of the 32-byte data key under the master key
            master_key_ref text NOT NULL,
            created_at     text NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {s}.fingerprint_key (
            id  integer PRIMARY KEY CHECK (id = 1),
            key bytea   NOT NULL
        );
    """


async def _ensure_schema(conn: asyncpg.Connection, schema: str) -> None:
    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: serialise them.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"kroma.keys:{schema}")
        await conn.execute(_schema_sql(schema))


async def load_or_create_pepper(url: str, schema: str, data_dir: Path | None = None) -> bytes:
    """The fingerprint key every process on this database shares (set by the first). A data folder
    that already has one (the log moved to PostgreSQL before its keys did) offers it, so requests
    keyed before the move are still recognised."""
    local = data_dir / PEPPER_FILE if data_dir is not None else None
    offered = local.read_bytes() if local is not None and local.is_file() else b""
    conn = await asyncpg.connect(url)
    try:
        await _ensure_schema(conn, schema)
        await conn.execute(
            f'INSERT INTO "{schema}".fingerprint_key VALUES (1, $1) ON CONFLICT (id) DO NOTHING',
            offered if len(offered) == 32 else os.urandom(32),
        )
        key: bytes = await conn.fetchval(f'SELECT key FROM "{schema}".fingerprint_key WHERE id = 1')
    finally:
        await conn.close()
    return key


def _read_legacy(path: Path) -> list[tuple[str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'data_keys'"
        ).fetchone()
        if found is None:
            return []
        rows = db.execute("SELECT key_id, wrapped, master_key_ref, created_at FROM data_keys").fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


class PostgresKeyStore(KeyStore):
    """KeyStore whose `data_keys` table is in `schema` on the store's PostgreSQL database."""

    def __init__(self, url: str, schema: str, keyring: MasterKeyring, legacy: Path | None = None) -> None:
        """`legacy`: a data folder's keys.db whose keys move here when the store opens."""
        super().__init__(f"{schema}.data_keys", keyring)
        self._legacy = legacy
        self._url = url
        self._schema = schema
        self._table = f'"{schema}".data_keys'
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self._url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await _ensure_schema(conn, self._schema)
                if self._legacy is not None and self._legacy.is_file():
                    await self._move_legacy(conn, self._legacy)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _move_legacy(self, conn: asyncpg.Connection, path: Path) -> None:
        """Move the data keys of a data folder's keys.db (kept there while the log alone was on
        PostgreSQL) into the shared table, then delete the file: the keys live in one place, so a
        key destroyed later cannot come back from a stale copy. Keys already in the table win."""
        rows = await asyncio.to_thread(_read_legacy, path)
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {self._table} VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING", rows
            )
            have = await conn.fetchval(
                f"SELECT count(*) FROM {self._table} WHERE key_id = ANY($1::text[])", [r[0] for r in rows]
            )
        if have != len(rows):  # pragma: no cover - the insert above committed every id
            raise KeyStoreError(f"{path}: {len(rows) - have} data keys did not reach the shared table")
        for suffix in ("", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        log.warning("moved %d data keys from %s to PostgreSQL schema %s", len(rows), path, self._schema)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _db_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise KeyStoreError("key store is not open")
        return self._pool

    async def _row(self, key_id: str) -> tuple[str, str, str] | None:
        row = await self._db_pool().fetchrow(
            f"SELECT key_id, wrapped, master_key_ref FROM {self._table} WHERE key_id = $1", key_id
        )
        return None if row is None else (row[0], row[1], row[2])

    async def create_data_key(self, key_id: str) -> bytes:
        _check_key_id(key_id)
        key, wrapped = self._wrap_new()
        try:
            await self._db_pool().execute(
                f"INSERT INTO {self._table} VALUES ($1, $2, $3, $4)",
                key_id,
                wrapped,
                self._keyring.current_ref,
                _now(),
            )
        except asyncpg.UniqueViolationError:
            raise DataKeyExistsError(f"data key {key_id!r} already exists") from None
        return key

    async def data_key(self, key_id: str) -> bytes | None:
        _check_key_id(key_id)
        row = await self._row(key_id)
        return None if row is None else self._unwrap(*row)

    async def _data_key_or_create(self, key_id: str) -> bytes:
        _check_key_id(key_id)
        _, wrapped = self._wrap_new()
        # One statement: the new row, or the one another process inserted first.
        row = await self._db_pool().fetchrow(
            f"""WITH new AS (
                    INSERT INTO {self._table} VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING
                    RETURNING key_id, wrapped, master_key_ref)
                SELECT * FROM new UNION ALL
                SELECT key_id, wrapped, master_key_ref FROM {self._table} WHERE key_id = $1""",
            key_id,
            wrapped,
            self._keyring.current_ref,
            _now(),
        )
        if row is None:  # pragma: no cover - destroyed between the insert and the read
            raise DataKeyNotFoundError(f"data key {key_id!r} vanished while being created")
        return self._unwrap(row[0], row[1], row[2])

    async def destroy(self, key_id: str) -> bool:
        _check_key_id(key_id)
        status = await self._db_pool().execute(f"DELETE FROM {self._table} WHERE key_id = $1", key_id)
        return status != "DELETE 0"

    async def refs(self) -> dict[str, str]:
        rows = await self._db_pool().fetch(
            f"SELECT key_id, master_key_ref FROM {self._table} ORDER BY key_id"
        )
        return {row[0]: row[1] for row in rows}

    async def rewrap(
        self,
        key_ids: Iterable[str] | None = None,
        *,
        force: bool = False,
        from_key_ref: str | None = None,
    ) -> RewrapReport:
        ids = None if key_ids is None else list(dict.fromkeys(key_ids))
        for key_id in ids or ():
            _check_key_id(key_id)
        source_ref = (from_key_ref or "").strip() or None
        target = self._keyring.current_ref
        current = self._keyring.current.key
        async with self._db_pool().acquire() as conn, conn.transaction():
            select = f"SELECT key_id, wrapped, master_key_ref FROM {self._table}"
            if ids is None:
                found = await conn.fetch(f"{select} ORDER BY key_id FOR UPDATE")
            else:
                found = await conn.fetch(
                    f"{select} WHERE key_id = ANY($1::text[]) ORDER BY key_id FOR UPDATE", ids
                )
            rows = {r[0]: (r[1], r[2]) for r in found}
            outcomes, rotate = plan_rewrap(rows, ids, source_ref, target, force)
            updates = [
                (seal(current, await asyncio.to_thread(self._unwrap, k, *rows[k])), target, k) for k in rotate
            ]
            if updates:
                await conn.executemany(
                    f"UPDATE {self._table} SET wrapped = $1, master_key_ref = $2 WHERE key_id = $3", updates
                )
        return RewrapReport(target_key_ref=target, outcomes=outcomes)
