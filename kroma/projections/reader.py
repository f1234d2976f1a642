"""Read access to the read models for request handlers: rows come back as dicts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from kroma import dbthread


def _dict_factory(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class ReadModels:
    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._conn = await dbthread.connect(self.path)
        self._conn.row_factory = _dict_factory  # type: ignore[assignment]  # any callable works

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        assert self._conn is not None, "read models are not open"
        rows: Any = await self._conn.execute_fetchall(sql, params)  # dicts, by _dict_factory
        return list(rows)

    async def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        assert self._conn is not None, "read models are not open"
        rows = list(await self._conn.execute_fetchall(sql, params))
        return rows[0][next(iter(rows[0]))] if rows else None
