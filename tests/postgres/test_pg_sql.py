"""The SQLite -> PostgreSQL translation of the read models' statements (no server needed)."""

from __future__ import annotations

from kroma.projections.pg_sql import TableInfo, translate

TABLES = {
    "audit_entries": TableInfo(("group_id", "event_count", "project_id", "type"), ("group_id",)),
    "projection_failures": TableInfo(("name", "position", "type", "error"), ("name", "position")),
    "token_usage": TableInfo(("token_id", "last_used_at"), ("token_id",)),
}


def pg(sql: str, with_params: bool = True) -> str | None:
    return translate(sql, TABLES.__getitem__, with_params=with_params)


def test_placeholders_and_percent_signs() -> None:
    assert pg("SELECT * FROM t WHERE a = ? AND b = '?' AND c LIKE 'x%'") == (
        "SELECT * FROM t WHERE a = %s AND b = '?' AND c ILIKE 'x%%'"
    )
    assert pg("SELECT 'x%'", with_params=False) == "SELECT 'x%'"


def test_insert_or_replace_and_ignore() -> None:
    assert pg("INSERT OR REPLACE INTO projection_failures VALUES (?, ?, ?, ?)") == (
        "INSERT INTO projection_failures VALUES (%s, %s, %s, %s) ON CONFLICT (name, position)"
        " DO UPDATE SET type = EXCLUDED.type, error = EXCLUDED.error"
    )
    assert pg("INSERT OR IGNORE INTO t (a, b) VALUES (?, ?)") == (
        "INSERT INTO t (a, b) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    )


def test_upsert_columns_on_the_right_are_qualified() -> None:
    assert pg(
        "INSERT INTO audit_entries VALUES (?,?,?,?) ON CONFLICT (group_id) DO UPDATE SET"
        " event_count = event_count + excluded.event_count, project_id = coalesce(project_id, excluded.project_id)"
    ) == (
        "INSERT INTO audit_entries VALUES (%s,%s,%s,%s) ON CONFLICT (group_id) DO UPDATE SET"
        " event_count = audit_entries.event_count + excluded.event_count,"
        " project_id = coalesce(audit_entries.project_id, excluded.project_id)"
    )
    assert pg(
        "INSERT INTO token_usage VALUES (?, ?) ON CONFLICT(token_id) DO UPDATE SET"
        " last_used_at = excluded.last_used_at WHERE excluded.last_used_at > last_used_at"
    ).endswith("WHERE excluded.last_used_at > token_usage.last_used_at")


def test_sqlite_null_order_and_scalar_max() -> None:
    assert pg("SELECT max(a, b) FROM t ORDER BY a DESC, b LIMIT ?") == (
        "SELECT greatest(a, b) FROM t ORDER BY a DESC NULLS LAST, b NULLS FIRST LIMIT %s"
    )
    assert pg("SELECT (SELECT x FROM u ORDER BY y) FROM t ORDER BY z NULLS LAST") == (
        "SELECT (SELECT x FROM u ORDER BY y NULLS FIRST) FROM t ORDER BY z NULLS LAST"
    )


def test_ddl_types_and_pragmas() -> None:
    assert pg("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL, r REAL, j JSON, b BLOB)") == (
        'CREATE TABLE t (id text COLLATE "C" PRIMARY KEY, n bigint NOT NULL, r double precision,'
        ' j text COLLATE "C", b bytea)'
    )
    assert pg("PRAGMA journal_mode=WAL") is None
