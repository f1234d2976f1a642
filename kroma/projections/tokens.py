"""Read model of API tokens (hashes and prefixes only) and the queries auth and the API need.

`last_used_at` is not an event: appending one per authenticated request would grow the log with
noise. It is best-effort state kept by `kroma.auth.TokenUsage` (memory, written through to the
small non-projection table `token_usage` at most once per second per token); a rebuild never
touches that table.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

USAGE_TABLE = """
CREATE TABLE IF NOT EXISTS token_usage (
    token_id     TEXT PRIMARY KEY,
    last_used_at TEXT NOT NULL
)
"""


class TokensProjection:
    name = "tokens"
    version = 1
    tables = ("api_tokens",)
    handles = frozenset({"token.created", "token.revoked"})
    schema = """
    CREATE TABLE api_tokens (
        id           TEXT PRIMARY KEY,
        user_id      TEXT NOT NULL,
        project_id   TEXT,
        token_hash   TEXT NOT NULL UNIQUE,
        token_prefix TEXT NOT NULL,
        label        TEXT NOT NULL,
        expires_at   TEXT,
        revoked_at   TEXT,
        created_at   TEXT NOT NULL,
        position     INTEGER NOT NULL
    );
    CREATE INDEX api_tokens_active ON api_tokens (revoked_at, expires_at)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == "token.created":
            db.execute(
                "INSERT INTO api_tokens VALUES (?,?,?,?,?,?,?,NULL,?,?)",
                (
                    d["token_id"],
                    d["user_id"],
                    d.get("project_id"),
                    d["token_hash"],
                    d["token_prefix"],
                    d["label"],
                    d.get("expires_at"),
                    at,
                    event.position,
                ),
            )
        else:  # token.revoked: the first revoke wins (decisions never append a second one)
            db.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, d["token_id"]),
            )


_ACTIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"


async def find_active_by_hash(rm: ReadModels, token_hash: str, now: str) -> dict[str, Any] | None:
    return await rm.one(f"SELECT * FROM api_tokens WHERE token_hash = ? AND {_ACTIVE}", (token_hash, now))


async def has_active(rm: ReadModels, now: str) -> bool:
    return await rm.scalar(f"SELECT EXISTS (SELECT 1 FROM api_tokens WHERE {_ACTIVE}) AS e", (now,)) == 1


async def find_token(rm: ReadModels, token_id: str) -> dict[str, Any] | None:
    return await rm.one(
        "SELECT t.*, u.last_used_at FROM api_tokens t LEFT JOIN token_usage u ON u.token_id = t.id"
        " WHERE t.id = ?",
        (token_id,),
    )


async def list_tokens(rm: ReadModels) -> list[dict[str, Any]]:
    """Every token, newest first (created_at DESC; position breaks same-second ties)."""
    return await rm.all(
        "SELECT t.*, u.last_used_at FROM api_tokens t LEFT JOIN token_usage u ON u.token_id = t.id"
        " ORDER BY t.created_at DESC, t.position DESC"
    )


def token_view(row: dict[str, Any], active: bool, last_used_at: str | None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "project_id": row["project_id"],
        "token_prefix": row["token_prefix"],
        "label": row["label"],
        "expires_at": row["expires_at"],
        "revoked_at": row["revoked_at"],
        "last_used_at": last_used_at,
        "created_at": row["created_at"],
        "active": active,
    }
