"""Read model of chat sessions and messages, and the queries the API needs (contract §3.16)."""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.domain.chat import MESSAGE_POSTED, SESSION_CREATED
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

_POST = "INSERT INTO chat_messages VALUES (?,?,?,?,?,?,?)"


class ChatProjection:
    name = "chat"
    version = 1
    tables = ("chat_sessions", "chat_messages")
    handles = frozenset({SESSION_CREATED, MESSAGE_POSTED})
    schema = """
    CREATE TABLE chat_sessions (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE INDEX chat_sessions_by_project ON chat_sessions (project_id, updated_at);
    CREATE TABLE chat_messages (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE INDEX chat_messages_by_session ON chat_messages (session_id, position)
    """

    def apply_many(self, db: sqlite3.Connection, events: list[Event]) -> None:
        """The rows `apply` leaves event by event; a run of messages is one statement."""
        posted: list[tuple[Any, ...]] = []
        for event in events:
            if event.type == SESSION_CREATED:
                if posted:
                    db.executemany(_POST, posted)
                    posted = []
                self.apply(db, event)
                continue
            d = event.data
            posted.append(
                (
                    d["message_id"],
                    d["project_id"],
                    d["session_id"],
                    d["role"],
                    d["content"],
                    to_seconds(event.recorded_at),
                    event.position,
                )
            )
        if posted:
            db.executemany(_POST, posted)

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == SESSION_CREATED:
            db.execute(
                "INSERT INTO chat_sessions VALUES (?,?,?,?,?,?,?)",
                (d["session_id"], d["project_id"], d["title"], d["status"], at, at, event.position),
            )
        else:  # a message never touches its session's updated_at
            db.execute(
                _POST,
                (
                    d["message_id"],
                    d["project_id"],
                    d["session_id"],
                    d["role"],
                    d["content"],
                    at,
                    event.position,
                ),
            )


SESSION_FIELDS = ("id", "project_id", "title", "status", "created_at", "updated_at")
MESSAGE_FIELDS = ("id", "project_id", "session_id", "role", "content", "created_at")


def session_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in SESSION_FIELDS}


def message_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in MESSAGE_FIELDS}


async def list_sessions(rm: ReadModels, project_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM chat_sessions WHERE project_id = ? ORDER BY updated_at DESC, position DESC",
        (project_id,),
    )
    return [session_view(r) for r in rows]


async def find_session(rm: ReadModels, project_id: str, session_id: str) -> dict[str, Any] | None:
    row = await rm.one(
        "SELECT * FROM chat_sessions WHERE id = ? AND project_id = ?", (session_id, project_id)
    )
    return session_view(row) if row else None


async def list_messages(rm: ReadModels, project_id: str, session_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM chat_messages WHERE project_id = ? AND session_id = ? ORDER BY position",
        (project_id, session_id),
    )
    return [message_view(r) for r in rows]


async def find_message(rm: ReadModels, message_id: str) -> dict[str, Any] | None:
    row = await rm.one("SELECT * FROM chat_messages WHERE id = ?", (message_id,))
    return message_view(row) if row else None
