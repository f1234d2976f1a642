"""What `kroma projections status` shows when the read models are on PostgreSQL: the log's head,
each projection's checkpoint and last skipped event, and a rebuild in progress, read through one
read-only snapshot (so a checkpoint is never ahead of the head it is compared with).

A rebuild there (kroma.projections.postgres.rebuild_schema) keeps no row of its own: it holds a
session advisory lock for the live schema and folds into `<schema>_rb`. The lock's holder (a
server backend: its pid and client address) and the fresh schema's lowest checkpoint say who
rebuilds and how far it got.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import psycopg
from psycopg import sql

from kroma.events import verification
from kroma.projections.postgres import _rebuild_lock_key

_LOCK_HOLDER = """
SELECT coalesce(a.client_hostname, host(a.client_addr), 'local socket'), l.pid
  FROM pg_locks AS l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = %s AND l.objid::bigint = %s
"""


def _exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def _rebuild_row(conn: psycopg.Connection, schema: str, head: int) -> tuple | None:
    """(host, pid, phase, position, head) of a rebuild of `schema` in progress, as the SQLite
    read models' `projection_rebuild` row gives them; None when none runs."""
    key = _rebuild_lock_key(schema)
    holder = conn.execute(_LOCK_HOLDER, ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    if holder is None:
        return None
    position = 0
    fresh = f"{schema}_rb"
    if _exists(conn, fresh, "checkpoints"):
        query = sql.SQL("SELECT coalesce(min(position), 0) FROM {}").format(
            sql.Identifier(fresh, "checkpoints")
        )
        row = conn.execute(query).fetchone()
        position = int(row[0]) if row else 0
    return holder[0], holder[1], "folding", position, head


def _read_models(url: str, log_schema: str, schema: str) -> psycopg.Connection:
    conn = verification.open_pg_log(url, log_schema)
    try:
        found = _exists(conn, schema, "checkpoints")
    except psycopg.Error as exc:
        conn.close()
        raise verification.pg_unreadable(url, log_schema, exc) from None
    if not found:
        conn.close()
        raise verification.LogUnreadable(f"no read models in {verification.pg_where(url, schema)}")
    return conn


def sample(url: str, log_schema: str, schema: str) -> tuple[int, dict[str, int], tuple | None]:
    """(log head, checkpoints by projection, rebuild row or None) as one snapshot shows them."""
    with closing(_read_models(url, log_schema, schema)) as conn:
        try:
            head = verification.pg_head(conn, log_schema)
            rows = conn.execute(
                sql.SQL("SELECT name, position FROM {}").format(sql.Identifier(schema, "checkpoints"))
            ).fetchall()
            return head, {name: int(pos) for name, pos in rows}, _rebuild_row(conn, schema, head)
        except psycopg.Error as exc:
            raise verification.pg_unreadable(url, schema, exc) from None


def last_errors(url: str, log_schema: str, schema: str) -> dict[str, dict[str, Any]]:
    """Each projection's last skipped event (position, type, error), as on SQLite."""
    with closing(_read_models(url, log_schema, schema)) as conn:
        try:
            rows = conn.execute(
                sql.SQL("SELECT name, position, type, error FROM {} ORDER BY position").format(
                    sql.Identifier(schema, "projection_failures")
                )
            ).fetchall()
        except psycopg.Error as exc:
            raise verification.pg_unreadable(url, schema, exc) from None
    return {name: {"position": pos, "type": typ, "error": err} for name, pos, typ, err in rows}
