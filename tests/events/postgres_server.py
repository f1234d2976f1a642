"""The PostgreSQL server the tests use, and a schema of their own on it per test.

Tests reach the server at KROMA_TEST_POSTGRES_URL (default: the machine's local server,
postgresql://postgres@127.0.0.1:5432/test, trust auth). When nothing answers there, every test
that needs it is skipped, saying so; nothing else is affected.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

POSTGRES_URL = os.environ.get("KROMA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def connect_or_skip() -> asyncpg.Connection:
    """A connection to the test server, or the calling test skipped with the reason."""
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pytest.skip(
            f"no PostgreSQL server answers at {POSTGRES_URL} ({type(exc).__name__}: {exc}); "
            "start one or set KROMA_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )


async def drop_schemas(admin: asyncpg.Connection, name: str) -> None:
    """Drop schema `name` and every schema named `<name>_...`: the application keeps its read models
    and data keys beside the log, in `<name>_rm` and `<name>_keys` (kroma.config.Settings)."""
    rows = await admin.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $2", name, f"{name}\\_%"
    )
    for (schema,) in rows:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh, uniquely named schema on the test server; dropped with everything in it afterwards."""
    admin = await connect_or_skip()
    name = f"kroma_test_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await drop_schemas(admin, name)
        await admin.close()
