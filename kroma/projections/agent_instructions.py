"""Read model of agent instructions and their event lists, and the API's queries (contract §3.16).

The `*_repeated` events (idempotent confirm/cancel) change nothing here: they are audit entries only.
The worker columns (attempts, max_attempts, next_attempt_at, last_error, locked_by, locked_at,
agent_response_json; pipeline spec §7.1) come from the dispatch events, which carry the record they
leave behind; they are not part of the API object. `lease_id`/`lease_expires_at` are the open lease
(`kroma.domain.agent_instructions`), which confirm and cancel do not end, unlike the reference's
lock columns: the dispatcher finds its candidates here and decides on the instruction's stream.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import msgspec

from kroma.clock import iso_micro, to_seconds
from kroma.domain.agent_instructions import (
    CANCELED,
    CONFIRMED,
    CREATED,
    DISPATCH_FAILED,
    DISPATCHED,
    OUTCOMES,
    RESERVED,
    RETRY_SCHEDULED,
)
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

EVENT_TYPES = {
    CREATED: "created",
    CONFIRMED: "confirmed",
    CANCELED: "canceled",
    DISPATCHED: "result",
    RETRY_SCHEDULED: "retry_scheduled",
    DISPATCH_FAILED: "error",
}


class AgentInstructionsProjection:
    name = "agent_instructions"
    version = 2
    tables = ("agent_instructions", "agent_instruction_events")
    handles = frozenset({*EVENT_TYPES, RESERVED})
    schema = """
    CREATE TABLE agent_instructions (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        instruction_text TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        confirmed_at TEXT,
        canceled_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        next_attempt_at TEXT,
        last_error TEXT,
        locked_by TEXT,
        locked_at TEXT,
        agent_response_json TEXT,
        lease_id TEXT,
        lease_expires_at TEXT,
        position INTEGER NOT NULL
    );
    CREATE INDEX agent_instructions_by_project ON agent_instructions (project_id, updated_at);
    CREATE INDEX agent_instructions_by_status ON agent_instructions (status, updated_at, position);
    CREATE TABLE agent_instruction_events (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        message TEXT,
        created_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE INDEX agent_instruction_events_by_instruction
        ON agent_instruction_events (instruction_id, position)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == CREATED:
            db.execute(
                "INSERT INTO agent_instructions (id, project_id, instruction_text, status, created_at,"
                " updated_at, position) VALUES (?,?,?,?,?,?,?)",
                (
                    d["instruction_id"],
                    d["project_id"],
                    d["instruction_text"],
                    "pending",
                    at,
                    at,
                    event.position,
                ),
            )
        elif event.type == CONFIRMED:
            db.execute(
                "UPDATE agent_instructions SET status = 'confirmed', confirmed_at = ?, canceled_at = NULL,"
                " next_attempt_at = NULL, last_error = NULL, locked_by = NULL, locked_at = NULL,"
                " updated_at = ?, position = ? WHERE id = ?",
                (at, at, event.position, d["instruction_id"]),
            )
        elif event.type == CANCELED:
            db.execute(
                "UPDATE agent_instructions SET status = 'canceled', canceled_at = ?, locked_by = NULL,"
                " locked_at = NULL, updated_at = ?, position = ? WHERE id = ?",
                (at, at, event.position, d["instruction_id"]),
            )
        elif event.type == RESERVED:
            db.execute(
                "UPDATE agent_instructions SET status = 'running', max_attempts = ?, locked_by = ?,"
                " locked_at = ?, lease_id = ?, lease_expires_at = ?, updated_at = ?, position = ?"
                " WHERE id = ?",
                (
                    d["max_attempts"],
                    d["worker_id"],
                    at,
                    d["lease_id"],
                    d["lease_expires_at"],
                    at,
                    event.position,
                    d["instruction_id"],
                ),
            )
            return  # the reference lists no event for a reservation
        else:
            self._outcome(db, event, at)
        db.execute(
            "INSERT INTO agent_instruction_events VALUES (?,?,?,?,?,?,?)",
            (
                d["entry_id"],
                d["project_id"],
                d["instruction_id"],
                EVENT_TYPES[event.type],
                d.get("message"),
                at,
                event.position,
            ),
        )

    @staticmethod
    def _outcome(db: sqlite3.Connection, event: Event, at: str) -> None:
        d = event.data
        assert event.type in OUTCOMES
        db.execute(
            "UPDATE agent_instructions SET status = ?, attempts = ?, max_attempts = ?, next_attempt_at = ?,"
            " last_error = ?, updated_at = ?, position = ? WHERE id = ?",
            (
                d["status"],
                d["attempts"],
                d["max_attempts"],
                d["next_attempt_at"],
                d["last_error"],
                at,
                event.position,
                d["instruction_id"],
            ),
        )
        if event.type == DISPATCHED:
            response = msgspec.json.encode(d["response"], order="sorted").decode()
            db.execute(
                "UPDATE agent_instructions SET agent_response_json = ? WHERE id = ?",
                (response, d["instruction_id"]),
            )
        if not d["superseded"]:  # the running lease ended: the reference clears its lock
            db.execute(
                "UPDATE agent_instructions SET locked_by = NULL, locked_at = NULL WHERE id = ?",
                (d["instruction_id"],),
            )
        db.execute(
            "UPDATE agent_instructions SET lease_id = NULL, lease_expires_at = NULL"
            " WHERE id = ? AND lease_id = ?",
            (d["instruction_id"], d["lease_id"]),
        )


INSTRUCTION_FIELDS = ("id", "project_id", "instruction_text", "status", "created_at", "updated_at")
EVENT_FIELDS = ("id", "project_id", "instruction_id", "event_type", "created_at")


def instruction_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {k: row[k] for k in INSTRUCTION_FIELDS}
    view["confirmed_at"] = row["confirmed_at"] or ""
    view["canceled_at"] = row["canceled_at"] or ""
    return view


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in EVENT_FIELDS}, "message": row["message"] or ""}


async def list_instructions(rm: ReadModels, project_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM agent_instructions WHERE project_id = ? ORDER BY updated_at DESC, position DESC",
        (project_id,),
    )
    return [instruction_view(r) for r in rows]


async def find_instruction(rm: ReadModels, project_id: str, instruction_id: str) -> dict[str, Any] | None:
    row = await rm.one(
        "SELECT * FROM agent_instructions WHERE id = ? AND project_id = ?", (instruction_id, project_id)
    )
    return instruction_view(row) if row else None


async def list_events(rm: ReadModels, project_id: str, instruction_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM agent_instruction_events WHERE project_id = ? AND instruction_id = ? ORDER BY position",
        (project_id, instruction_id),
    )
    return [event_view(r) for r in rows]


DISPATCH_CANDIDATES = """
SELECT id FROM agent_instructions
WHERE (status = 'confirmed' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
       AND (lease_expires_at IS NULL OR lease_expires_at <= ?))
   OR (status = 'running' AND lease_expires_at <= ?)
ORDER BY updated_at, position
LIMIT ?
"""


async def dispatch_candidates(rm: ReadModels, now: datetime, limit: int = 20) -> list[str]:
    """Instructions a worker may act on at `now`, oldest first (pipeline spec §7.2): confirmed and
    due with no live lease, or running under an expired lease. Only a hint: the worker decides on
    each instruction's own stream."""
    seconds, micro = now.strftime("%Y-%m-%dT%H:%M:%SZ"), iso_micro(now)
    rows = await rm.all(DISPATCH_CANDIDATES, (seconds, micro, micro, limit))
    return [r["id"] for r in rows]


async def worker_record(rm: ReadModels, instruction_id: str) -> dict[str, Any] | None:
    """The instruction's whole row, worker columns included (the API object leaves them out)."""
    return await rm.one("SELECT * FROM agent_instructions WHERE id = ?", (instruction_id,))
