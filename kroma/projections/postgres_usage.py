"""`token_usage` (best-effort `last_used_at`, see kroma.auth.TokenUsage) in the PostgreSQL read-model
schema: the table no projection owns, carried over by a rebuild like on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

from kroma.auth import TokenUsage
from kroma.projections import tokens as read
from kroma.projections.pg_sql import translate
from kroma.projections.postgres import _no_tables, fold_lock_key

log = logging.getLogger(__name__)


class PostgresTokenUsage(TokenUsage):
    def __init__(self, url: str, schema: str) -> None:
        super().__init__(schema)
        self.url = url
        self.schema = schema
        self._pg: psycopg.AsyncConnection | None = None

    async def open(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, prepare_threshold=None)
        try:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            async with conn.transaction():  # under the fold lock: processes starting at once
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (fold_lock_key(self.schema),))
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
                await conn.execute(translate(read.USAGE_TABLE, _no_tables) or "")  # TEXT in "C" order
        except BaseException:
            await conn.close()
            raise
        self._pg = conn

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        conn, self._pg = self._pg, None
        if conn is not None:
            await conn.close()

    def touch(self, token_id: str, now: str) -> None:
        if self._seen.get(token_id) == now:
            return
        self._seen[token_id] = now
        if self._pg is None:
            return
        task = asyncio.create_task(self._write(token_id, now))  # one connection: psycopg queues them
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, token_id: str, now: str) -> None:
        conn = self._pg
        if conn is None:
            return
        try:
            await conn.execute(
                "INSERT INTO token_usage VALUES (%s, %s) ON CONFLICT (token_id) DO UPDATE SET"
                " last_used_at = excluded.last_used_at WHERE excluded.last_used_at > token_usage.last_used_at",
                (token_id, now),
            )
        except Exception:  # best effort: the in-memory value still answers this process
            log.debug("could not record last_used_at", exc_info=True)
